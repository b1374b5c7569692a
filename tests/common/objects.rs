//! Kubernetes objects as kube-apiserver stores them in etcd, from `tests/fixtures/k8s-configmap.py`
//! (Google's protobuf runtime, independent of cpr's decoder), and raw values put with etcdctl.

use std::io::Write;
use std::process::{Command, Stdio};

use super::fixtures;

/// The stored form of an object: `k8s-configmap.py ARGS`, run in tests/fixtures/component-configs
/// (so `KEY=FILE` names its kubeadm-written configs).
pub fn stored(args: &[&str]) -> Vec<u8> {
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

/// `etcdctl … put KEY` with `value` on stdin; `etcdctl` carries the endpoint and TLS flags.
pub fn etcdctl_put(mut etcdctl: Command, key: &str, value: &[u8]) {
    let mut child = etcdctl
        .args(["put", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("etcdctl runs");
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success(), "etcdctl put {key}");
}
