//! Files a hardened control plane reads beyond kubeadm's own (issue 11, finding 8): kube-apiserver's
//! EncryptionConfiguration, audit policy, webhook kubeconfig and external etcd certificates, named by
//! the flags and hostPath volumes of a real kubeadm-written manifest
//! (`tests/fixtures/static-pods/kube-apiserver-kubespray-v1.25.yaml`), against a real etcd.

mod common;

use common::objects::etcdctl_put;
use common::*;
use serde_json::Value;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Keys for both providers tested end to end; aescbc encrypts new writes, as it is listed first.
const ENCRYPTION_CONFIG: &str = "\
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - aescbc:
          keys:
            - name: key1
              secret: eOtJSbccZS307Z77gVXUnXjLIMMK4iDskB3qRQn489c=
      - secretbox:
          keys:
            - name: key2
              secret: JbK73j3sCLHMduFcFoxEnG4LamONydG8kZh4rnCl7e0=
      - identity: {}
";
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n";

/// Files of the hardened node: (path on the node, content, mode, uid, gid).
const NAMED: [(&str, &str, u32, u32, u32); 5] = [
    (
        "etc/kubernetes/enc/enc.yaml",
        ENCRYPTION_CONFIG,
        0o600,
        0,
        0,
    ),
    (
        "etc/kubernetes/audit-policy/apiserver-audit-policy.yaml",
        AUDIT_POLICY,
        0o640,
        0,
        0,
    ),
    (
        "etc/kubernetes/webhook.conf",
        "apiVersion: v1\nkind: Config\n",
        0o600,
        0,
        0,
    ),
    ("etc/ssl/etcd/ssl/ca.pem", "etcd ca\n", 0o644, 1234, 2345),
    (
        "etc/ssl/etcd/ssl/node-node1-key.pem",
        "etcd client key\n",
        0o400,
        1234,
        2345,
    ),
];
/// Present on the node and mounted or named, but never configuration: logs and the host's CAs.
const NOT_TAKEN: [&str; 4] = [
    "var/log/kubernetes/audit/audit.log",
    "var/log/audit/kube-apiserver-audit.log",
    "etc/ssl/certs/host-ca.pem",
    "usr/share/ca-certificates/host-ca.crt",
];

/// The fixture node, its kube-apiserver.yaml replaced by the kubespray-written one (advertising this
/// node's address), with encryption at rest and a token webhook added as an operator adds them (the
/// Kubernetes docs' "Encrypting Confidential Data at Rest" task: a flag, a mount, a hostPath).
fn harden(root: &Path) {
    let fixture =
        fs::read_to_string(fixtures().join("static-pods/kube-apiserver-kubespray-v1.25.yaml"))
            .unwrap();
    let manifest = fixture
        .replace("192.168.0.42", NODE_IP)
        .replace(
            "    - --enable-bootstrap-token-auth=true\n",
            "    - --authentication-token-webhook-config-file=/etc/kubernetes/webhook.conf\n    - --enable-bootstrap-token-auth=true\n    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml\n",
        )
        .replace(
            "    volumeMounts:\n",
            "    volumeMounts:\n    - mountPath: /etc/kubernetes/enc\n      name: enc\n      readOnly: true\n    - mountPath: /etc/kubernetes/webhook.conf\n      name: webhook\n      readOnly: true\n",
        )
        .replace(
            "  volumes:\n",
            "  volumes:\n  - hostPath:\n      path: /etc/kubernetes/enc\n      type: DirectoryOrCreate\n    name: enc\n  - hostPath:\n      path: /etc/kubernetes/webhook.conf\n      type: File\n    name: webhook\n",
        );
    assert_eq!(
        manifest.matches("name: enc").count(),
        2,
        "the fixture changed"
    );
    fs::write(
        root.join("etc/kubernetes/manifests/kube-apiserver.yaml"),
        manifest,
    )
    .unwrap();
    for (path, content, mode, uid, gid) in NAMED {
        put(&root.join(path), content, mode, uid, gid);
    }
    for path in NOT_TAKEN {
        put(&root.join(path), "not configuration\n", 0o644, 0, 0);
    }
}

fn put(path: &Path, content: &str, mode: u32, uid: u32, gid: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// `cpr backup … --output json EXTRA…`.
fn backup(root: &Path, store: &Path, extra: &[&str]) -> std::process::Output {
    cpr_backup(root, store, &[&["--output", "json"], extra].concat())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn check(args: &[&str]) -> Value {
    let out = cpr(&[&["check", "--output", "json"], args].concat());
    json(&String::from_utf8_lossy(&out.stdout))
}

fn pod_files(report: &Value) -> &Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "pod-files")
        .unwrap_or_else(|| panic!("no pod-files check: {report}"))
}

fn entries(bundle: &Path) -> Vec<Value> {
    let manifest = json(&ok(&cpr(&[
        "inspect",
        bundle.to_str().unwrap(),
        "--output",
        "json",
    ])));
    manifest["files"].as_array().unwrap().clone()
}

fn mode_owner(path: &Path) -> (u32, u32, u32) {
    let meta = fs::metadata(path).unwrap();
    (meta.mode() & 0o777, meta.uid(), meta.gid())
}

#[test]
fn files_static_pods_read_are_backed_up_and_restored_with_modes_and_owners() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    harden(node.root());
    let store = tempfile::tempdir().unwrap();
    let out = backup(node.root(), store.path(), &[]);
    let report = json(&ok(&out));
    let bundle = store.path().join(report["bundle"].as_str().unwrap());

    // Every named file, with its mode, owners and the flag or volume that named it.
    let files = entries(&bundle);
    for (path, content, mode, uid, gid) in NAMED {
        let entry = files
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("{path} is not in the bundle"));
        assert_eq!(
            (&entry["mode"], &entry["uid"], &entry["gid"], &entry["size"]),
            (
                &Value::from(mode),
                &Value::from(uid),
                &Value::from(gid),
                &Value::from(content.len())
            ),
            "{entry}"
        );
        assert!(
            entry["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("kube-apiserver.yaml: ")),
            "{entry}"
        );
    }
    let source = |path: &str| {
        files.iter().find(|f| f["path"] == path).unwrap()["source"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        source("etc/kubernetes/enc/enc.yaml"),
        "kube-apiserver.yaml: --encryption-provider-config"
    );
    assert_eq!(
        source("etc/ssl/etcd/ssl/ca.pem"),
        "kube-apiserver.yaml: --etcd-cafile"
    );
    for path in NOT_TAKEN {
        assert!(!files.iter().any(|f| f["path"] == path), "{path} was taken");
    }
    assert!(
        !files.iter().any(|f| f["path"]
            .as_str()
            .unwrap()
            .starts_with("etc/kubernetes/pki/")
            && f.get("source").is_some()),
        "kubeadm's own files carry no source"
    );

    // An unencrypted bundle with the keys to the Secrets: said by backup, and by check.
    let warning = report["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("/etc/kubernetes/enc/enc.yaml") && warning.contains("NOT encrypted"),
        "{report}"
    );
    assert!(stderr(&out).contains("NOT encrypted"), "{}", stderr(&out));
    let checked = check(&["--bundle", bundle.to_str().unwrap()]);
    assert_eq!(pod_files(&checked)["status"], "warn", "{checked}");
    assert!(
        pod_files(&checked)["detail"]
            .as_str()
            .unwrap()
            .contains("/etc/kubernetes/enc/enc.yaml"),
        "{checked}"
    );
    let checked = check(&["--root", node.root().to_str().unwrap()]);
    assert_eq!(pod_files(&checked)["status"], "warn", "{checked}");
    node.stop_etcd();

    // A replacement node with its own, different enc.yaml, and webhook.conf already as backed up.
    let target = provisioned_root();
    let live_enc = target.path().join("etc/kubernetes/enc/enc.yaml");
    put(&live_enc, "provisioned\n", 0o644, 0, 0);
    put(
        &target.path().join(NAMED[2].0),
        NAMED[2].1,
        NAMED[2].2,
        NAMED[2].3,
        NAMED[2].4,
    );
    let args = restore_args(store.path(), target.path(), NODE_IP);
    let restored = json(&ok(&cpr(&with(
        &args,
        &["--no-finish", "--output", "json"],
    ))));
    for (path, content, mode, uid, gid) in NAMED {
        let live = target.path().join(path);
        assert_eq!(fs::read_to_string(&live).unwrap(), content, "{path}");
        assert_eq!(mode_owner(&live), (mode, uid, gid), "{path}");
    }
    let moved: Vec<PathBuf> = restored["restore"]["movedAside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    let aside: Vec<&PathBuf> = moved
        .iter()
        .filter(|p| p.to_string_lossy().contains("enc.yaml.cpr-old-"))
        .collect();
    assert_eq!(aside.len(), 1, "{moved:?}");
    assert_eq!(fs::read_to_string(aside[0]).unwrap(), "provisioned\n");
    assert!(
        !moved
            .iter()
            .any(|p| p.to_string_lossy().contains("webhook")),
        "an identical file is left alone: {moved:?}"
    );
    for path in NOT_TAKEN {
        assert!(!target.path().join(path).exists(), "{path} was written");
    }

    // Killed between putting a file back and recording it: the next run converges.
    let target = provisioned_root();
    put(
        &target.path().join("etc/kubernetes/enc/enc.yaml"),
        "provisioned\n",
        0o644,
        0,
        0,
    );
    let args = restore_args(store.path(), target.path(), NODE_IP);
    let args = with(&args, &["--no-finish", "--output", "json"]);
    let killed = cpr_env(&args, &[("CPR_FAILPOINT", "restore:input-swapped")]);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(9),
        "{}",
        stderr(&killed)
    );
    let again = json(&ok(&cpr(&args)));
    for (path, content, mode, uid, gid) in NAMED {
        let live = target.path().join(path);
        assert_eq!(fs::read_to_string(&live).unwrap(), content, "{path}");
        assert_eq!(mode_owner(&live), (mode, uid, gid), "{path}");
    }
    assert!(
        again["restore"]["movedAside"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("enc.yaml.cpr-old-")),
        "{again}"
    );
}

#[test]
fn an_unreadable_named_file_fails_the_backup_and_an_encrypted_bundle_is_not_warned_about() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    harden(node.root());
    let store = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let keydir = keys.path().join("keys");
    ok(&cpr(&["keygen", "--out", keydir.to_str().unwrap()]));
    let recipient = fs::read_to_string(keydir.join("age.pub")).unwrap();
    let out = backup(
        node.root(),
        store.path(),
        &["--encrypt-to", recipient.trim()],
    );
    let report = json(&ok(&out));
    assert!(report.get("warnings").is_none(), "{report}");
    assert!(!stderr(&out).contains("NOT encrypted"), "{}", stderr(&out));
    let checked = check(&[
        "--bundle",
        store
            .path()
            .join(report["bundle"].as_str().unwrap())
            .to_str()
            .unwrap(),
        "--identity",
        keydir.join("age.key").to_str().unwrap(),
    ]);
    assert_eq!(pod_files(&checked)["status"], "ok", "{checked}");

    // Root without CAP_DAC_OVERRIDE (a hardened host, a restricted container) cannot read a file
    // another user owns with mode 0000.
    let enc = node.root().join("etc/kubernetes/enc/enc.yaml");
    put(&enc, ENCRYPTION_CONFIG, 0o000, 1234, 1234);
    let before = files_below(store.path());
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search",
        ])
        .arg(cpr_bin())
        .args(["backup", "--root"])
        .arg(node.root())
        .arg("--store")
        .arg(store.path())
        .env("CPR_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains(enc.to_str().unwrap())
            && message.contains("--encryption-provider-config")
            && message.contains("Nothing was uploaded"),
        "{message}"
    );
    assert_eq!(files_below(store.path()), before, "nothing was uploaded");
}

/// `tests/fixtures/k8s-secrets-at-rest.py` (kube-apiserver's at-rest formats) with `input` on stdin.
fn at_rest(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(fixtures().join("k8s-secrets-at-rest.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "k8s-secrets-at-rest.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn secrets_encrypted_at_rest_decrypt_with_the_restored_encryption_configuration() {
    use base64::Engine;
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    harden(node.root());
    let source_config = node.root().join("etc/kubernetes/enc/enc.yaml");
    let mut written = Vec::new();
    for provider in ["aescbc", "secretbox"] {
        let key = format!("/registry/secrets/default/{provider}-secret");
        let plain = format!(
            r#"{{"kind":"Secret","apiVersion":"v1","metadata":{{"name":"{provider}-secret","namespace":"default"}},"data":{{"password":"czNjcjN0LXtwcm92aWRlcn0="}}}}"#
        );
        let value = at_rest(
            &["encrypt", source_config.to_str().unwrap(), provider],
            plain.as_bytes(),
        );
        let prefix = format!("k8s:enc:{provider}:v1:key");
        assert!(value.starts_with(prefix.as_bytes()), "{provider}");
        etcdctl_put(node.etcdctl_command(), &key, &value);
        written.push((key, plain));
    }
    let store = tempfile::tempdir().unwrap();
    ok(&backup(node.root(), store.path(), &[]));
    node.stop_etcd();
    // The source node is gone, and its EncryptionConfiguration with it.
    fs::remove_file(&source_config).unwrap();

    let target = provisioned_root();
    let args = restore_args(store.path(), target.path(), NODE_IP);
    ok(&cpr(&with(&args, &["--no-finish"])));
    let restored_config = target.path().join("etc/kubernetes/enc/enc.yaml");
    let manifests = target.path().join("etc/kubernetes/manifests");
    fs::create_dir_all(&manifests).unwrap();
    fs::copy(
        node.root().join("etc/kubernetes/manifests/etcd.yaml"),
        manifests.join("etcd.yaml"),
    )
    .unwrap();
    let restored = KubeadmNode::adopt(
        target.path(),
        EtcdVersion::V3_5,
        node.client_port,
        node.peer_port,
    );
    for (key, plain) in written {
        let out = restored.etcdctl(&["get", &key, "-w", "json"]);
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        let value = base64::engine::general_purpose::STANDARD
            .decode(reply["kvs"][0]["value"].as_str().unwrap_or_default())
            .unwrap();
        assert!(value.starts_with(b"k8s:enc:"), "{key} is stored encrypted");
        let decrypted = at_rest(&["decrypt", restored_config.to_str().unwrap()], &value);
        assert_eq!(String::from_utf8_lossy(&decrypted), plain, "{key}");
    }
}
