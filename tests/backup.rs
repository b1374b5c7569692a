//! `cpr backup` against a real etcd (3.4.23 and 3.5.1) serving kubeadm's mTLS flags on loopback.

mod common;

use common::bbolt_snapshot::{write_snapshot, Shape};
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn backup(node: &KubeadmNode, store: &str) -> Value {
    json(&cpr(&[
        "backup",
        "--root",
        node.root().to_str().unwrap(),
        "--store",
        store,
        "--output",
        "json",
    ]))
}

/// The snapshot inside a bundle file, extracted with the standard tools an operator would use.
fn extract_snapshot(bundle: &Path, into: &Path) -> std::path::PathBuf {
    run(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -x -C '{}' etcd/snapshot.db kubeadm/cluster-configuration.yaml",
        bundle.display(),
        into.display()
    )));
    into.join("etcd/snapshot.db")
}

fn etcdutl_status(snapshot: &Path) -> Value {
    serde_json::from_str(&run(Command::new(etcdutl()).args([
        "snapshot",
        "status",
        snapshot.to_str().unwrap(),
        "-w",
        "json",
    ])))
    .unwrap()
}

fn backup_matches_live_etcd(version: EtcdVersion) {
    let node = KubeadmNode::start(version, 40);
    let store = tempfile::tempdir().unwrap();
    let store_url = store.path().to_str().unwrap();
    let report = backup(&node, store_url);
    let live_revision = node.revision();
    assert_eq!(report["revision"].as_i64(), Some(live_revision), "{report}");
    let name = report["bundle"].as_str().unwrap().to_string();
    assert!(
        name.starts_with(&format!("{CLUSTER}/{NODE_NAME}/")),
        "{name}"
    );
    assert!(store.path().join(&name).is_file());

    let listed = json(&cpr(&["list", "--store", store_url, "--output", "json"]));
    assert_eq!(listed[0]["name"].as_str(), Some(name.as_str()), "{listed}");

    let manifest = json(&cpr(&[
        "inspect", "--store", store_url, &name, "--output", "json",
    ]));
    assert_eq!(manifest["node"]["name"], NODE_NAME);
    assert_eq!(manifest["node"]["advertiseAddress"], NODE_IP);
    assert_eq!(manifest["cluster"]["name"], CLUSTER);
    assert_eq!(manifest["cluster"]["kubernetesVersion"], "v1.27.4");
    assert_eq!(manifest["cluster"]["podSubnet"], "192.168.0.0/16");
    assert_eq!(
        manifest["cluster"]["kubeadmApiVersion"],
        "kubeadm.k8s.io/v1beta3"
    );
    assert_eq!(manifest["etcd"]["memberName"], NODE_NAME);
    assert_eq!(manifest["etcd"]["dataDir"], "/var/lib/etcd");
    let peer = node.peer_url();
    assert_eq!(manifest["etcd"]["members"][0]["peerUrls"][0], peer.as_str());
    assert_eq!(manifest["etcd"]["peerUrls"][0], peer.as_str());
    let files: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for expected in [
        "etc/kubernetes/pki/ca.key",
        "etc/kubernetes/pki/etcd/ca.key",
        "etc/kubernetes/pki/sa.key",
        "etc/kubernetes/manifests/etcd.yaml",
        "etc/kubernetes/admin.conf",
        "var/lib/kubelet/config.yaml",
        "var/lib/kubelet/kubeadm-flags.env",
        "kubeadm/cluster-configuration.yaml",
    ] {
        assert!(
            files.contains(&expected),
            "{expected} missing from {files:?}"
        );
    }
    let ca_key = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "etc/kubernetes/pki/ca.key")
        .unwrap();
    assert_eq!(ca_key["mode"], 0o600);

    let verified = json(&cpr(&[
        "verify", "--store", store_url, &name, "--output", "json",
    ]));
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(
        verified["revision"].as_i64(),
        Some(live_revision),
        "{verified}"
    );

    let scratch = tempfile::tempdir().unwrap();
    let snapshot = extract_snapshot(&store.path().join(&name), scratch.path());
    let status = etcdutl_status(&snapshot);
    assert_eq!(status["revision"].as_i64(), Some(live_revision), "{status}");
    assert_eq!(
        status["totalKey"], verified["totalKeys"],
        "{status} vs {verified}"
    );
    // verify's hash is computed from per-page tallies as the snapshot streams past.
    assert_eq!(status["hash"], verified["hash"], "{status} vs {verified}");
    let cluster_config =
        std::fs::read_to_string(scratch.path().join("kubeadm/cluster-configuration.yaml")).unwrap();
    assert!(
        cluster_config.contains("clusterName: prod")
            && cluster_config.contains("kind: ClusterConfiguration")
    );
}

#[test]
fn backup_of_etcd_3_4_matches_the_live_cluster() {
    backup_matches_live_etcd(EtcdVersion::V3_4);
}

#[test]
fn backup_of_etcd_3_5_matches_the_live_cluster() {
    backup_matches_live_etcd(EtcdVersion::V3_5);
}

fn store_is_empty(store: &Path) -> bool {
    files_below(store)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tar.zst"))
}

#[test]
fn failures_name_the_step_and_leave_no_bundle() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    let root = node.root().to_str().unwrap().to_string();
    let store = tempfile::tempdir().unwrap();
    let store_url = store.path().to_str().unwrap();

    // The wrong CA for etcd's serving certificate, and a client certificate etcd's CA never signed.
    let out = cpr(&[
        "backup",
        "--root",
        &root,
        "--store",
        store_url,
        "--cacert",
        node.pki("ca.crt").to_str().unwrap(),
        "--cert",
        node.pki("apiserver.crt").to_str().unwrap(),
        "--key",
        node.pki("apiserver.key").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains(&node.endpoint()), "{}", stderr(&out));
    assert!(store_is_empty(store.path()));

    // A store that is down.
    let closed = format!("http://127.0.0.1:{}/backups", free_port());
    let out = cpr(&["backup", "--root", &root, "--store", &closed]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("127.0.0.1"), "{}", stderr(&out));

    // etcd down.
    node.stop_etcd();
    let out = cpr(&["backup", "--root", &root, "--store", store_url]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains(&node.endpoint()), "{}", stderr(&out));
    assert!(store_is_empty(store.path()));

    // Not a kubeadm node at all.
    let empty = tempfile::tempdir().unwrap();
    let out = cpr(&[
        "backup",
        "--root",
        empty.path().to_str().unwrap(),
        "--store",
        store_url,
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("etc/kubernetes/manifests/etcd.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn verify_catches_truncation_and_bit_flips_of_a_real_bundle() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 20);
    let store = tempfile::tempdir().unwrap();
    let report = backup(&node, store.path().to_str().unwrap());
    let bundle = store.path().join(report["bundle"].as_str().unwrap());
    let bytes = std::fs::read(&bundle).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let damaged = scratch.path().join("damaged.tar.zst");

    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let out = cpr(&["verify", damaged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged.tar.zst"), "{}", stderr(&out));

    let mut flipped = bytes.clone();
    let at = bytes.len() * 3 / 4;
    flipped[at] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let out = cpr(&["verify", damaged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    let out = cpr(&["inspect", damaged.to_str().unwrap(), "--output", "json"]);
    assert!(
        out.status.success(),
        "the manifest at the front is intact: {}",
        stderr(&out)
    );
}

#[test]
fn a_full_disk_fails_the_upload_as_a_store_error_and_leaves_nothing() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs"])
        .arg(&small));
    let out = cpr(&[
        "backup",
        "--root",
        node.root().to_str().unwrap(),
        "--store",
        small.to_str().unwrap(),
    ]);
    let left: Vec<_> = files_below(&small);
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("full"), "{}", stderr(&out));
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// etcd killed while its snapshot streams: the backup fails as etcd's failure (exit 5, naming the
/// endpoint and the stream), not as the store's, and leaves nothing in the store.
#[test]
fn etcd_dying_mid_snapshot_fails_as_etcd_and_leaves_nothing() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 0);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let snapshot = tmp.path().join("snapshot.db");
    // Large enough that the stream outlasts the polling below by seconds.
    write_snapshot(&snapshot, 512 << 20, Shape::Large);
    node.load_snapshot(&snapshot);
    std::fs::remove_file(&snapshot).unwrap();
    let store = tmp.path().join("store");
    // A panic below drops the node, which stops etcd: the backup then ends on its own.
    let mut backup = Command::new(cpr_bin())
        .args(["backup", "--root", node.root().to_str().unwrap(), "--store"])
        .arg(&store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !files_below(&store).iter().any(|part| {
        part.to_string_lossy().ends_with(".part")
            && std::fs::metadata(part).is_ok_and(|m| m.len() > 1 << 20)
    }) {
        assert!(
            backup.try_wait().unwrap().is_none(),
            "the backup ended before etcd was stopped"
        );
        assert!(Instant::now() < deadline, "no upload grew past 1 MiB");
        std::thread::sleep(Duration::from_millis(20));
    }
    node.stop_etcd();
    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains(&node.endpoint()), "{text}");
    assert!(text.contains("snapshot stream"), "{text}");
    let left = files_below(&store);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A backup cut off by a power cut leaves its `.part`; the node's next backup removes it, and only it.
#[test]
fn a_backup_removes_the_dead_uploads_of_its_node_only() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    let store = tempfile::tempdir().unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let dead = format!("{CLUSTER}/{NODE_NAME}/20261130T070000Z.tar.zst.part");
    let other_node = format!("{CLUSTER}/other/20261130T070000Z.tar.zst.part");
    for name in [&dead, &other_node] {
        let path = store.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"cut off").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(hour_ago).unwrap();
    }

    let report = backup(&node, store.path().to_str().unwrap());
    assert_eq!(
        report["removedDeadUploads"],
        serde_json::json!([dead]),
        "{report}"
    );
    assert!(!store.path().join(&dead).exists());
    assert!(
        store.path().join(&other_node).exists(),
        "another node's .part was removed"
    );
    // Bundle names have one-second resolution: a backup in the same second is refused.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let text = ok(&cpr(&[
        "backup",
        "--root",
        node.root().to_str().unwrap(),
        "--store",
        store.path().to_str().unwrap(),
    ]));
    assert!(!text.contains("dead uploads"), "{text}");
}
