//! The cluster configuration a restore carries into `kubeadm init`, read from a real etcd 3.5
//! snapshot whose objects were written in kube-apiserver's protobuf storage encoding by Google's
//! protobuf runtime (`tests/fixtures/k8s-configmap.py`), with kubeadm-written component configs
//! (`tests/fixtures/component-configs`, see its SOURCE).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::etcd_cluster::{v35, Server, Spec};
use common::fixtures;
use cpr::k8s::Taint;
use cpr::ops::carryover::{Carryover, Error};
use tempfile::TempDir;

/// The stored form of an object, from the fixture script.
fn object(args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3")
        .arg(fixtures().join("k8s-configmap.py"))
        .args(args)
        .current_dir(fixtures().join("component-configs"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "k8s-configmap.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn put(server: &Server, key: &str, value: &[u8]) {
    let mut child = Command::new(&server.tools.etcdctl)
        .args(["--endpoints", &server.client, "put", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("etcdctl runs");
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success(), "etcdctl put {key}");
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("component-configs").join(name)).unwrap()
}

/// A snapshot of one etcd holding three clusters under three prefixes:
/// `/registry` a customised kubeadm cluster, `/bare` one without kube-proxy and CoreDNS, `/enc`
/// one whose ConfigMaps are encrypted at rest.
struct Snapshot {
    _tmp: TempDir,
    path: PathBuf,
    bundle: PathBuf,
}

/// Built once for all tests, under target/tmp.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(build_snapshot)
}

fn build_snapshot() -> Snapshot {
    let tmp = TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut server = Server::start(&Spec::single(&v35(), &tmp.path().join("data")));
    server.wait_healthy();
    let config_map = |prefix: &str, name: &str, pairs: &[&str]| {
        let key = format!("{prefix}/configmaps/kube-system/{name}");
        put(
            &server,
            &key,
            &object(&[&["kube-system", name][..], pairs].concat()),
        );
    };
    let workload = |prefix: &str, kind: &str, resource: &str, name: &str| {
        let key = format!("{prefix}/{resource}/kube-system/{name}");
        put(&server, &key, &object(&[kind, "kube-system", name]));
    };
    let node = |prefix: &str, name: &str, taints: &[&str]| {
        let key = format!("{prefix}/minions/{name}");
        put(
            &server,
            &key,
            &object(&[&["--node", name][..], taints].concat()),
        );
    };

    // /registry: history first (kubeadm's default kube-proxy config, older kubelet-config-1.X,
    // an untainted node), then the current objects.
    let default_proxy = tmp.path().join("default-proxy.conf");
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

    // /enc: ConfigMaps encrypted at rest with aescbc (only the prefix matters to cpr).
    workload("/enc", "--daemonset", "daemonsets", "kube-proxy");
    put(
        &server,
        "/enc/configmaps/kube-system/kube-proxy",
        b"k8s:enc:aescbc:v1:key1:\x8c\x11\x02ciphertext",
    );

    let path = tmp.path().join("snapshot.db");
    server.ctl_ok(&["snapshot", "save", path.to_str().unwrap()]);
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(bundle.join("var/lib/kubelet")).unwrap();
    std::fs::copy(
        fixtures().join("component-configs/kubeadm-flags.env"),
        bundle.join("var/lib/kubelet/kubeadm-flags.env"),
    )
    .unwrap();
    Snapshot {
        _tmp: tmp,
        path,
        bundle,
    }
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
            kube_proxy_config: Some(fixture("kube-proxy-config.conf")),
            skip_addons: vec![],
            taints: Some(vec![
                taint("dedicated", "infra", "NoSchedule", None),
                taint("maintenance", "", "NoExecute", Some("2023-11-14T22:13:20Z")),
            ]),
            kubelet_extra_args: vec![("node-ip".into(), "10.0.0.5".into())],
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
            kube_proxy_config: None,
            skip_addons: vec!["addon/kube-proxy", "addon/coredns"],
            taints: Some(vec![]),
            kubelet_extra_args: vec![],
        }
    );
    // A node the snapshot does not know: kubeadm's default taints apply.
    let facts = Carryover::from_snapshot(&snap.path, "/bare", "cp9", empty.path()).unwrap();
    assert_eq!(facts.taints, None);
}

#[test]
fn encrypted_config_maps_are_reported_not_decoded() {
    let snap = snapshot();
    let err = Carryover::from_snapshot(&snap.path, "/enc", "cp0", &snap.bundle).unwrap_err();
    assert!(matches!(err, Error::Object { .. }), "{err:?}");
    let text = err.to_string();
    for part in [
        "/enc/configmaps/kube-system/kube-proxy",
        "k8s:enc:aescbc:v1:key1:",
        "encrypted at rest",
        "snapshot.db",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
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
