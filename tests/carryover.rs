//! The cluster configuration a restore carries into `kubeadm init`, read from a real etcd 3.5
//! snapshot whose objects were written in kube-apiserver's protobuf storage encoding by Google's
//! protobuf runtime (`tests/fixtures/k8s-configmap.py`), with kubeadm-written component configs
//! (`tests/fixtures/component-configs`, see its SOURCE).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::etcd_cluster::{v35, Server, Spec};
use common::fixtures;
use common::objects::{etcdctl_put, stored};
use cpr::k8s::Taint;
use cpr::ops::carryover::{Carryover, Error};
use tempfile::TempDir;

fn put(server: &Server, key: &str, value: &[u8]) {
    let mut etcdctl = Command::new(&server.tools.etcdctl);
    etcdctl.args(["--endpoints", &server.client]);
    etcdctl_put(etcdctl, key, value);
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("component-configs").join(name)).unwrap()
}

/// A snapshot of one etcd holding three clusters under three prefixes:
/// `/registry` a customised kubeadm cluster, `/bare` one without kube-proxy and CoreDNS, `/enc`
/// one whose ConfigMaps and Nodes are encrypted at rest, `/bad` one with a value that is no object.
struct Snapshot {
    path: PathBuf,
    bundle: PathBuf,
}

/// Built once for all tests, under target/tmp.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(build_snapshot)
}

fn build_snapshot() -> Snapshot {
    let tmp = common::run_dir("carryover-snapshot");
    let mut server = Server::start(&Spec::single(&v35(), &tmp.join("data")));
    server.wait_healthy();
    let config_map = |prefix: &str, name: &str, pairs: &[&str]| {
        let key = format!("{prefix}/configmaps/kube-system/{name}");
        put(
            &server,
            &key,
            &stored(&[&["kube-system", name][..], pairs].concat()),
        );
    };
    let workload = |prefix: &str, kind: &str, resource: &str, name: &str| {
        let key = format!("{prefix}/{resource}/kube-system/{name}");
        put(&server, &key, &stored(&[kind, "kube-system", name]));
    };
    let node = |prefix: &str, name: &str, taints: &[&str]| {
        let key = format!("{prefix}/minions/{name}");
        put(
            &server,
            &key,
            &stored(&[&["--node", name][..], taints].concat()),
        );
    };

    // /registry: history first (kubeadm's default kube-proxy config, older kubelet-config-1.X,
    // an untainted node), then the current objects.
    let default_proxy = tmp.join("default-proxy.conf");
    std::fs::write(
        &default_proxy,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: \"\"\n",
    )
    .unwrap();
    let old = format!("kubelet={}", default_proxy.display());
    config_map(
        "/registry",
        "kube-proxy",
        &[&format!("config.conf={}", default_proxy.display())],
    );
    config_map("/registry", "kubelet-config-1.23", &[&old]);
    config_map(
        "/registry",
        "kube-proxy",
        &["config.conf=kube-proxy-config.conf"],
    );
    config_map(
        "/registry",
        "kubelet-config",
        &["kubelet=kubelet-config.yaml"],
    );
    config_map("/registry", "kubelet-config-1.22", &[&old]);
    workload("/registry", "--daemonset", "daemonsets", "kube-proxy");
    workload("/registry", "--deployment", "deployments", "coredns");
    node("/registry", "cp0", &[]);
    node(
        "/registry",
        "cp0",
        &[
            "dedicated=infra:NoSchedule",
            "maintenance:NoExecute@1700000000",
            "node.kubernetes.io/not-ready:NoExecute@1700000100",
        ],
    );
    node("/registry", "cp01", &["other:NoSchedule"]);
    for i in 0..100 {
        put(
            &server,
            &format!("/registry/configmaps/default/app-{i}"),
            format!("value-{i}").repeat(50).as_bytes(),
        );
    }

    // /bare: kube-proxy replaced by the CNI (its ConfigMap left behind), CoreDNS removed, an
    // untainted node.
    config_map(
        "/bare",
        "kube-proxy",
        &["config.conf=kube-proxy-config.conf"],
    );
    workload("/bare", "--deployment", "deployments", "coredns");
    server.ctl_ok(&["del", "/bare/deployments/kube-system/coredns"]);
    node("/bare", "cp0", &[]);

    // /enc: ConfigMaps and Nodes encrypted at rest (only the prefix matters to cpr).
    workload("/enc", "--daemonset", "daemonsets", "kube-proxy");
    put(
        &server,
        "/enc/configmaps/kube-system/kube-proxy",
        b"k8s:enc:aescbc:v1:key1:\x8c\x11\x02ciphertext",
    );
    put(
        &server,
        "/enc/configmaps/kube-system/kubelet-config",
        b"k8s:enc:secretbox:v1:k2:\x01\x02",
    );
    put(&server, "/enc/minions/cp0", b"k8s:enc:kms:v2:vault:\x00");
    // /bad: a value that is no object at all.
    workload("/bad", "--daemonset", "daemonsets", "kube-proxy");
    put(
        &server,
        "/bad/configmaps/kube-system/kube-proxy",
        b"\x00\x01garbage",
    );

    let path = tmp.join("snapshot.db");
    server.ctl_ok(&["snapshot", "save", path.to_str().unwrap()]);
    let bundle = tmp.join("bundle");
    std::fs::create_dir_all(bundle.join("var/lib/kubelet")).unwrap();
    std::fs::copy(
        fixtures().join("component-configs/kubeadm-flags.env"),
        bundle.join("var/lib/kubelet/kubeadm-flags.env"),
    )
    .unwrap();
    Snapshot { path, bundle }
}

fn taint(key: &str, value: &str, effect: &str, added: Option<&str>) -> Taint {
    Taint {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
        time_added: added.map(String::from),
    }
}

#[test]
fn a_customised_cluster_carries_its_configuration_over() {
    let snap = snapshot();
    let facts = Carryover::from_snapshot(&snap.path, "/registry", "cp0", &snap.bundle).unwrap();
    assert_eq!(
        facts,
        Carryover {
            kubelet_config: Some(fixture("kubelet-config.yaml")),
            kubelet_config_source: Some("/registry/configmaps/kube-system/kubelet-config".into()),
            kube_proxy_config: Some(fixture("kube-proxy-config.conf")),
            skip_addons: vec![],
            taints: Some(vec![
                taint("dedicated", "infra", "NoSchedule", None),
                taint("maintenance", "", "NoExecute", Some("2023-11-14T22:13:20Z")),
            ]),
            kubelet_extra_args: vec![("node-ip".into(), "10.0.0.5".into())],
            warnings: vec![],
        }
    );
    let proxy = facts.kube_proxy_config.unwrap();
    assert!(proxy.contains("mode: ipvs") && proxy.contains("strictARP: true"));
    let kubelet = facts.kubelet_config.unwrap();
    assert!(kubelet.contains("cgroupDriver: cgroupfs") && kubelet.contains("maxPods: 250"));
}

#[test]
fn a_cluster_without_kube_proxy_and_coredns_skips_both_addons() {
    let snap = snapshot();
    let empty = TempDir::new().unwrap();
    let facts = Carryover::from_snapshot(&snap.path, "/bare/", "cp0", empty.path()).unwrap();
    assert_eq!(
        facts,
        Carryover {
            kubelet_config: None,
            kubelet_config_source: None,
            kube_proxy_config: None,
            skip_addons: vec!["addon/kube-proxy".into(), "addon/coredns".into()],
            taints: Some(vec![]),
            kubelet_extra_args: vec![],
            warnings: vec![],
        }
    );
    // A node the snapshot does not know: kubeadm's default taints apply.
    let facts = Carryover::from_snapshot(&snap.path, "/bare", "cp9", empty.path()).unwrap();
    assert_eq!(facts.taints, None);
}

/// Values encrypted at rest are not decoded. Each fact falls back to what keeps the cluster as it
/// was and says so: kube-proxy's addon phase is skipped (its restored ConfigMap and DaemonSet stay),
/// the bundle's kubelet config.yaml stands in for kubelet-config, and `taints: []` lets the Node keep
/// its own.
#[test]
fn encrypted_objects_fall_back_to_what_keeps_the_cluster_and_say_so() {
    let snap = snapshot();
    let bundle = TempDir::new().unwrap();
    std::fs::create_dir_all(bundle.path().join("var/lib/kubelet")).unwrap();
    std::fs::write(
        bundle.path().join("var/lib/kubelet/config.yaml"),
        fixture("kubelet-config.yaml"),
    )
    .unwrap();
    let facts = Carryover::from_snapshot(&snap.path, "/enc", "cp0", bundle.path()).unwrap();
    assert_eq!(facts.kube_proxy_config, None);
    assert_eq!(facts.skip_addons, vec!["addon/kube-proxy", "addon/coredns"]);
    assert_eq!(facts.kubelet_config, Some(fixture("kubelet-config.yaml")));
    assert_eq!(
        facts.kubelet_config_source.as_deref(),
        Some("/var/lib/kubelet/config.yaml")
    );
    assert_eq!(facts.taints, Some(vec![]));
    assert_eq!(facts.warnings.len(), 3, "{:?}", facts.warnings);
    for (warning, parts) in facts.warnings.iter().zip([
        &[
            "/enc/configmaps/kube-system/kube-proxy",
            "k8s:enc:aescbc:v1:key1:",
            "addon/kube-proxy phase is skipped",
            "manageSkippedAddons",
        ][..],
        &[
            "/enc/configmaps/kube-system/kubelet-config",
            "k8s:enc:secretbox:v1:k2:",
            "backed-up /var/lib/kubelet/config.yaml",
        ],
        &["/enc/minions/cp0", "taints: []"],
    ]) {
        for part in parts {
            assert!(warning.contains(part), "{part:?} missing from: {warning}");
        }
    }
    // A value that is neither encrypted nor an object is still an error naming the key.
    let err = Carryover::from_snapshot(&snap.path, "/bad", "cp0", bundle.path()).unwrap_err();
    assert!(matches!(err, Error::Object { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/bad/configmaps/kube-system/kube-proxy"),
        "{err}"
    );
}

/// What `cpr finish` reads: the db of a data dir restored from the snapshot with the revision bumped
/// and older revisions marked compacted (the restore's extra revision entry included).
#[test]
fn a_restored_data_dir_db_gives_the_same_facts() {
    let snap = snapshot();
    let tmp = TempDir::new().unwrap();
    let data_dir = tmp.path().join("etcd");
    common::run(
        Command::new(env!("CARGO_BIN_EXE_cpr"))
            .args(["etcd", "snapshot", "restore"])
            .arg(&snap.path)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--bump-revision", "1000000000", "--mark-compacted"]),
    );
    let db = data_dir.join("member/snap/db");
    assert_eq!(
        Carryover::from_snapshot(&db, "/registry", "cp0", &snap.bundle).unwrap(),
        Carryover::from_snapshot(&snap.path, "/registry", "cp0", &snap.bundle).unwrap()
    );
}

#[test]
fn a_damaged_snapshot_is_an_etcd_error_naming_the_file() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("snapshot.db");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let err = Carryover::from_snapshot(&path, "/registry", "cp0", tmp.path()).unwrap_err();
    assert!(matches!(err, Error::Etcd(_)), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let missing: &Path = &tmp.path().join("nope.db");
    assert!(Carryover::from_snapshot(missing, "/registry", "cp0", tmp.path()).is_err());
}
