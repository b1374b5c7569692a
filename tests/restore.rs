//! `cpr restore` (phase 1) onto a fresh root: real bundles from a real etcd, and a real etcd started on
//! the restored data dir with kubeadm's flags.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const BUMP: i64 = 1_000_000_000;

/// A source node that backed itself up into a directory store, then died.
struct Backup {
    node: KubeadmNode,
    store: tempfile::TempDir,
    revision: i64,
    keys: i64,
}

fn backed_up(version: EtcdVersion, keys: usize) -> Backup {
    let mut node = KubeadmNode::start(version, keys);
    let store = tempfile::tempdir().unwrap();
    ok(&cpr_backup(node.root(), store.path(), &[]));
    let (revision, keys) = (node.revision(), node.key_count());
    node.stop_etcd();
    Backup {
        node,
        store,
        revision,
        keys,
    }
}

impl Backup {
    fn restore(&self, target: &Path, extra: &[&str]) -> std::process::Output {
        let args = restore_args(self.store.path(), target, NODE_IP);
        cpr(&with(&args, &[&["--no-finish"], extra].concat()))
    }

    /// Runs etcd as kubelet would from the bundle's own etcd.yaml, on the restored root.
    fn start_restored_etcd(&self, target: &Path) -> KubeadmNode {
        let manifests = target.join("etc/kubernetes/manifests");
        fs::create_dir_all(&manifests).unwrap();
        fs::copy(
            self.node.root().join("etc/kubernetes/manifests/etcd.yaml"),
            manifests.join("etcd.yaml"),
        )
        .unwrap();
        KubeadmNode::adopt(
            target,
            self.node.version,
            self.node.client_port,
            self.node.peer_port,
        )
    }
}

/// Every file and directory below `dir`, relative, with a file's bytes (`None`: a directory), so an
/// empty directory left behind shows too.
fn tree(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(dir).unwrap().to_path_buf();
            if path.is_dir() {
                out.push((relative, None));
                stack.push(path);
            } else {
                out.push((relative, Some(fs::read(&path).unwrap())));
            }
        }
    }
    out.sort();
    out
}

/// A provisioned replacement node: kubeadm's packages created the dirs, a stale pki lies around.
fn fresh_target() -> tempfile::TempDir {
    let target = tempfile::tempdir().unwrap();
    let pki = target.path().join("etc/kubernetes/pki");
    fs::create_dir_all(&pki).unwrap();
    fs::write(pki.join("stale.crt"), "from the provisioning\n").unwrap();
    fs::create_dir_all(target.path().join("var/lib")).unwrap();
    target
}

#[test]
fn restore_brings_back_pki_and_an_etcd_that_serves_every_key() {
    for version in [EtcdVersion::V3_5, EtcdVersion::V3_4] {
        let backup = backed_up(version, 30);
        let target = fresh_target();
        let out = backup.restore(target.path(), &["--output", "json"]);
        let report: Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(
            report["restore"]["revision"].as_i64(),
            Some(backup.revision)
        );
        assert_eq!(
            report["restore"]["bumpedRevision"].as_i64(),
            Some(backup.revision + BUMP)
        );

        assert_eq!(
            tree(&target.path().join("etc/kubernetes/pki")),
            tree(&backup.node.root().join("etc/kubernetes/pki")),
            "the restored pki is the backed-up one"
        );
        let moved = report["restore"]["movedAside"].as_array().unwrap();
        assert_eq!(moved.len(), 1, "{report}");
        let old = PathBuf::from(moved[0].as_str().unwrap());
        assert_eq!(
            fs::read_to_string(old.join("stale.crt")).unwrap(),
            "from the provisioning\n"
        );

        let restored = backup.start_restored_etcd(target.path());
        assert_eq!(restored.revision(), backup.revision + BUMP, "{version:?}");
        assert_eq!(restored.key_count(), backup.keys, "{version:?}");
        let kubeadm_config = restored.etcdctl(&[
            "get",
            "/registry/configmaps/kube-system/kubeadm-config",
            "--print-value-only",
        ]);
        assert!(String::from_utf8_lossy(&kubeadm_config.stdout).contains("ClusterConfiguration"));
        let old_read = restored.etcdctl(&[
            "get",
            "/registry",
            "--prefix",
            "--rev",
            &backup.revision.to_string(),
        ]);
        assert!(
            !old_read.status.success(),
            "a read at the old revision must be refused as compacted"
        );
        assert!(
            String::from_utf8_lossy(&old_read.stderr).contains("compacted"),
            "{}",
            String::from_utf8_lossy(&old_read.stderr)
        );
        let members = String::from_utf8(restored.etcdctl(&["member", "list"]).stdout).unwrap();
        assert!(
            members.contains(NODE_NAME) && members.contains(&backup.node.peer_url()),
            "{members}"
        );
        let put = restored.etcdctl(&["put", "/registry/after-restore", "x", "-w", "json"]);
        let put: Value = serde_json::from_slice(&put.stdout).unwrap();
        assert_eq!(
            put["header"]["revision"].as_i64(),
            Some(backup.revision + BUMP + 1)
        );
    }
}

#[test]
fn a_second_run_changes_nothing() {
    let backup = backed_up(EtcdVersion::V3_5, 5);
    let target = fresh_target();
    ok(&backup.restore(target.path(), &[]));
    let before = tree(target.path());
    let out = backup.restore(target.path(), &[]);
    assert!(
        ok(&out).contains("already restored"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(tree(target.path()), before);
}

#[test]
fn refusals_name_the_step_and_change_nothing() {
    let backup = backed_up(EtcdVersion::V3_5, 5);
    let target = fresh_target();
    let before = tree(target.path());

    let out = cpr(&[
        "restore",
        "--store",
        backup.store.path().to_str().unwrap(),
        "--root",
        target.path().to_str().unwrap(),
        "--node",
        NODE_NAME,
        "--hostname",
        "someone-else",
        "--ip",
        NODE_IP,
        "--no-finish",
    ]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("someone-else")
            && stderr(&out).contains("--force-identity")
            && stderr(&out).contains("--new-address (boot: cpr.new_address=1)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree(target.path()), before);

    let args = restore_args(backup.store.path(), target.path(), "127.0.9.9");
    let out = cpr(&with(&args, &["--no-finish"]));
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains(NODE_IP), "{}", stderr(&out));
    assert_eq!(tree(target.path()), before);

    let out = cpr(&[
        "restore",
        "--store",
        backup.store.path().to_str().unwrap(),
        "--root",
        target.path().to_str().unwrap(),
        "--node",
        "nobody",
        "--no-finish",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("nobody"), "{}", stderr(&out));

    let down = format!("http://127.0.0.1:{}/backups", free_port());
    let out = cpr(&[
        "restore",
        "--store",
        &down,
        "--root",
        target.path().to_str().unwrap(),
        "--cluster",
        CLUSTER,
        "--node",
        NODE_NAME,
        "--no-finish",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(tree(target.path()), before);
}

/// Flips a byte inside the compressed snapshot of a stored bundle.
fn corrupt(bundle: &Path) {
    let mut bytes = fs::read(bundle).unwrap();
    let at = bytes.len() - bytes.len() / 5;
    bytes[at] ^= 0x55;
    fs::write(bundle, bytes).unwrap();
}

fn bundles(store: &Path) -> Vec<PathBuf> {
    let dir = store.join(CLUSTER).join(NODE_NAME);
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    found.sort();
    found
}

#[test]
fn a_corrupt_newest_bundle_falls_back_to_the_next_and_all_corrupt_changes_nothing() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    let store = tempfile::tempdir().unwrap();
    let backup = |node: &KubeadmNode| {
        ok(&cpr(&[
            "backup",
            "--root",
            node.root().to_str().unwrap(),
            "--store",
            store.path().to_str().unwrap(),
        ]))
    };
    backup(&node);
    let older_revision = node.revision();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    node.etcdctl(&["put", "/registry/newer", "x"]);
    backup(&node);
    node.stop_etcd();
    let all = bundles(store.path());
    assert_eq!(all.len(), 2);
    corrupt(&all[1]);
    let restore = |target: &Path| {
        let args = restore_args(store.path(), target, NODE_IP);
        cpr(&with(&args, &["--no-finish", "--output", "json"]))
    };
    let target = fresh_target();
    let report: Value = serde_json::from_str(&ok(&restore(target.path()))).unwrap();
    assert!(
        all[0].ends_with(report["restore"]["bundle"].as_str().unwrap()),
        "{report}"
    );
    assert_eq!(report["restore"]["revision"].as_i64(), Some(older_revision));
    assert!(
        all[1].ends_with(report["restore"]["skipped"][0][0].as_str().unwrap()),
        "{report}"
    );

    corrupt(&all[0]);
    let target = fresh_target();
    let before = tree(target.path());
    let out = restore(target.path());
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("every candidate failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        tree(target.path()),
        before,
        "live paths and staging are as they were"
    );
}

#[test]
fn a_restore_killed_at_any_step_converges_when_run_again() {
    use std::os::unix::process::ExitStatusExt;
    let backup = backed_up(EtcdVersion::V3_5, 20);
    let reference = fresh_target();
    ok(&backup.restore(reference.path(), &[]));
    let expected_pki = tree(&reference.path().join("etc/kubernetes/pki"));
    let expected_etcd = tree(&reference.path().join("var/lib/etcd"));
    for point in [
        "restore:mid-snapshot",
        "restore:staged-files",
        "restore:staged",
        "restore:state-saved",
        "restore:moved-aside",
        "restore:swapped-one",
        "restore:swapped",
    ] {
        let target = fresh_target();
        let owned = restore_args(backup.store.path(), target.path(), NODE_IP);
        let args = with(&owned, &["--no-finish"]);
        let killed = cpr_env(&args, &[("CPR_FAILPOINT", point)]);
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "{point} was never reached: {}",
            stderr(&killed)
        );
        ok(&cpr(&args));
        assert_eq!(
            tree(&target.path().join("etc/kubernetes/pki")),
            expected_pki,
            "pki after a kill at {point}"
        );
        assert_eq!(
            tree(&target.path().join("var/lib/etcd")),
            expected_etcd,
            "etcd data after a kill at {point}"
        );
        let aside: Vec<PathBuf> = fs::read_dir(target.path().join("etc/kubernetes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("pki.cpr-old-"))
            .collect();
        assert_eq!(aside.len(), 1, "{point}: {aside:?}");
        assert_eq!(
            fs::read_to_string(aside[0].join("stale.crt")).unwrap(),
            "from the provisioning\n",
            "{point}"
        );
        let leftovers: Vec<PathBuf> = [
            target.path().join("etc/kubernetes"),
            target.path().join("var/lib"),
        ]
        .iter()
        .flat_map(|d| fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| {
            p.to_string_lossy().contains(".cpr-new") || p.to_string_lossy().ends_with(".tmp")
        })
        .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
    }
}

#[test]
fn a_full_disk_while_staging_is_a_clear_error_and_changes_nothing() {
    let backup = backed_up(EtcdVersion::V3_5, 5);
    let target = fresh_target();
    let small = target.path().join("var/lib");
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small));
    fs::write(small.join("kept"), "provisioned\n").unwrap();
    let before = tree(target.path());
    let out = backup.restore(target.path(), &[]);
    let after = tree(target.path());
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("free space"), "{}", stderr(&out));
    assert_eq!(
        after, before,
        "nothing live changed and nothing staged was left behind"
    );
}

/// `cpr restore --new-address` refuses, before anything changes, a bundle whose certificate
/// authority kubeadm could not sign the re-issued certificates with (a key missing, a CA expired), an
/// address another etcd member has, and a cluster of several members (a rejoin, until HA covers it).
#[test]
fn a_new_address_is_refused_without_a_usable_ca_on_a_members_address_and_with_several_members() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    let back_up = |node: &KubeadmNode| {
        let store = tempfile::tempdir().unwrap();
        ok(&cpr_backup(node.root(), store.path(), &[]));
        store
    };
    let swapped = |path: PathBuf, with: Option<String>, node: &KubeadmNode| {
        let kept = fs::read(&path).unwrap();
        match with {
            Some(text) => fs::write(&path, text).unwrap(),
            None => fs::remove_file(&path).unwrap(),
        }
        let store = back_up(node);
        fs::write(&path, kept).unwrap();
        store
    };
    let no_key = swapped(node.pki("etcd/ca.key"), None, &node);
    let expired = swapped(
        node.pki("front-proxy-ca.crt"),
        Some(common::certs::cert_expiring_in(-1, "front-proxy-ca")),
        &node,
    );
    let good = back_up(&node);
    let new_ip = "10.0.1.20";
    let learner = format!("https://{new_ip}:2380");
    ok(&node
        .etcdctl_command()
        .args([
            "member",
            "add",
            "learner0",
            "--learner",
            "--peer-urls",
            &learner,
        ])
        .output()
        .unwrap());
    let two_members = back_up(&node);
    node.stop_etcd();

    let target = fresh_target();
    let before = tree(target.path());
    for (store, ip, says) in [
        (&no_key, new_ip, "holds no etcd/ca.key"),
        (&expired, new_ip, "front-proxy-ca.crt expired"),
        (
            &two_members,
            new_ip,
            "10.0.1.20 is the address of etcd member ",
        ),
        (&two_members, "10.0.1.21", "has 2 members ("),
    ] {
        let args = restore_args(store.path(), target.path(), ip);
        let out = cpr(&with(&args, &["--new-address", "--no-finish"]));
        assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
        let message = stderr(&out);
        assert!(
            message.contains(says) && message.contains("Nothing was changed"),
            "{says}: {message}"
        );
        assert_eq!(tree(target.path()), before);
    }
    // --plan-only verifies the bundle and prints the plan, and changes nothing.
    let args = restore_args(good.path(), target.path(), new_ip);
    let planned = ok(&cpr(&with(&args, &["--new-address", "--plan-only"])));
    assert!(
        planned.contains("changed nothing")
            && planned.contains(&format!("restore onto a new address: node {NODE_NAME} at ")),
        "{planned}"
    );
    assert_eq!(tree(target.path()), before);
    // A hostname that cannot name a Node, before anything else is looked at.
    let mut args = restore_args(no_key.path(), target.path(), new_ip);
    let at = args.iter().position(|a| a == "--hostname").unwrap();
    args[at + 1] = "master_0".to_string();
    let out = cpr(&with(&args, &["--new-address", "--no-finish"]));
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hostname \"master_0\" cannot name a Node")
            && stderr(&out).contains("Nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree(target.path()), before);
}
