//! The files a static pod reads from the node beyond kubeadm's own: what its flags name and what its
//! hostPath volumes mount (kube-apiserver's `--encryption-provider-config`, `--audit-policy-file`,
//! webhook kubeconfigs, a custom pod's config dir, …). A backup takes them; phase 1 of a restore puts
//! them back before `kubeadm init`, which would not start the control plane without them.
//!
//! The rule, for every container (init containers too):
//! - a flag whose value, or an element of its comma-separated value, is an absolute path names a
//!   file the component reads — unless the flag names something it writes (`OUTPUT_FLAGS`). Such a
//!   path is taken where the container sees it: through the volumeMount that covers it (longest
//!   mountPath), on that volume's host path; not at all when the covering volume is not a hostPath;
//!   at the same path when no mount covers it. Only regular files are taken from flags: a directory
//!   named by a flag is one the component works or writes in (`--cert-dir`, `--data-dir`).
//! - a hostPath volume of type `File`, `FileOrCreate`, `Directory`, `DirectoryOrCreate` or untyped is
//!   taken whole (a directory recursively) — unless it holds or is held by a path an output flag
//!   names, or is a one-level system tree (`/etc`, `/var`, `/opt`, `/`), which no component's
//!   configuration is. Sockets and devices are not taken.
//!
//! Paths that are not configuration (`layout::not_configuration`: the host's CA bundles kubeadm
//! mounts, etcd's data dir, logs, runtime state, what the bundle already holds) are never taken.

use serde_norway::Value;

use super::layout::{self, within};
use super::pod::StaticPod;

/// Flags that name what a component writes, never what it reads: logs, data and working dirs.
const OUTPUT_FLAGS: [&str; 9] = [
    "audit-log-path",
    "log-file",
    "log-dir",
    "log-outputs",
    "cert-dir",
    "data-dir",
    "wal-dir",
    "write-config-to",
    "flex-volume-plugin-dir",
];

/// hostPath types kubelet checks for a file or a directory (`""`: no check).
const FILE_OR_DIR_TYPES: [&str; 5] = ["", "File", "FileOrCreate", "Directory", "DirectoryOrCreate"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Named by a flag: taken when it is a regular file.
    Flag,
    /// A hostPath volume: a file or a directory. `must_exist` for types `File` and `Directory`,
    /// whose absence keeps kubelet from starting the pod.
    Volume { must_exist: bool },
}

/// One path on the node a static pod reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Absolute and normalized, as on the node.
    pub path: String,
    /// What names it: `kube-apiserver.yaml: --encryption-provider-config`.
    pub origin: String,
    pub kind: Kind,
}

/// What a pod reads, and what it names that is not taken (path, why) for the log.
#[derive(Debug, Default)]
pub struct Inputs {
    pub take: Vec<Input>,
    pub skipped: Vec<(String, String)>,
}

pub fn inputs(pod: &StaticPod) -> Inputs {
    let manifest = pod
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut found = Inputs::default();
    let mut outputs = Vec::new();
    for container in &pod.containers {
        for (flag, value) in &container.flags {
            for element in value.split(',').filter(|v| v.starts_with('/')) {
                let Some(path) = host_path(pod, container, element) else {
                    continue;
                };
                if OUTPUT_FLAGS.contains(&flag.as_str()) {
                    outputs.push(path);
                    continue;
                }
                found.consider(Input {
                    path,
                    origin: format!("{manifest}: --{flag}"),
                    kind: Kind::Flag,
                });
            }
        }
    }
    for volume in &pod.host_paths {
        let Some(path) = normalize(&volume.path) else {
            continue;
        };
        let origin = format!("{manifest}: hostPath volume {}", volume.name);
        if !FILE_OR_DIR_TYPES.contains(&volume.kind.as_str()) {
            continue;
        }
        if let Some(output) = outputs
            .iter()
            .find(|o| within(o, &path) || within(&path, o))
        {
            found.skipped.push((
                path.clone(),
                format!("{origin} is where the pod writes ({output})"),
            ));
            continue;
        }
        if path.matches('/').count() < 2 {
            found.skipped.push((
                path.clone(),
                format!("{origin} mounts a whole system tree; mount the files it needs instead"),
            ));
            continue;
        }
        found.consider(Input {
            path,
            origin,
            kind: Kind::Volume {
                must_exist: volume.kind == "File" || volume.kind == "Directory",
            },
        });
    }
    found
}

impl Inputs {
    fn consider(&mut self, input: Input) {
        if let Some(why) = layout::not_configuration(&input.path) {
            self.skipped.push((input.path, why.to_string()));
        } else if !self.take.iter().any(|t| t.path == input.path) {
            self.take.push(input);
        }
    }
}

/// Where on the node the container finds `path`: through the hostPath volume mounted over it, or
/// at the same path when nothing is mounted there; `None` when another kind of volume covers it.
fn host_path(pod: &StaticPod, container: &super::pod::Container, path: &str) -> Option<String> {
    let path = normalize(path)?;
    let mount = container
        .mounts
        .iter()
        .filter_map(|m| Some((m, normalize(&m.mount_path)?)))
        .filter(|(_, at)| within(&path, at))
        .max_by_key(|(_, at)| at.len());
    let Some((mount, at)) = mount else {
        return Some(path);
    };
    let volume = pod.host_paths.iter().find(|v| v.name == mount.name)?;
    let mut host = normalize(&volume.path)?;
    if let Some(sub) = &mount.sub_path {
        host = normalize(&format!("{host}/{sub}"))?;
    }
    normalize(&format!("{host}{}", &path[at.len()..]))
}

/// `/a//b/./c/` → `/a/b/c`; `None` for relative paths and `..`, which no kubeadm manifest writes.
fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut out = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return None;
        }
        out.push('/');
        out.push_str(part);
    }
    Some(if out.is_empty() { "/".to_string() } else { out })
}

/// An `apiserver.config.k8s.io` EncryptionConfiguration: the keys that decrypt every Secret stored
/// at rest. A bundle holding one is as sensitive as the CA key.
pub fn is_encryption_configuration(data: &[u8]) -> bool {
    let Ok(doc) = serde_norway::from_slice::<Value>(data) else {
        return false;
    };
    let field = |key: &str| doc.get(key).and_then(Value::as_str).unwrap_or_default();
    field("kind") == "EncryptionConfiguration"
        && field("apiVersion").starts_with("apiserver.config.k8s.io/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --audit-log-path=/var/log/kubernetes/audit/audit.log
    - --audit-policy-file=/etc/kubernetes/policies/audit.yaml
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml
    - --authentication-token-webhook-config-file=/srv/webhook/authn.conf
    - --oidc-ca-file=/in/image/ca.pem
    - --cert-dir=/var/lib/apiserver-certs
    - --service-account-issuer=https://kubernetes.default.svc
    - --tracing-config-file=/secrets/tracing.yaml
    name: kube-apiserver
    volumeMounts:
    - mountPath: /etc/kubernetes/enc
      name: enc
      readOnly: true
    - mountPath: /srv/webhook
      name: webhook
    - mountPath: /secrets
      name: from-secret
    - mountPath: /var/lib/apiserver-certs
      name: certs
  volumes:
  - hostPath:
      path: /etc/kubernetes/enc
      type: DirectoryOrCreate
    name: enc
  - hostPath:
      path: /opt/authn
      type: ""
    name: webhook
  - emptyDir: {}
    name: from-secret
  - hostPath:
      path: /var/lib/apiserver-certs/
      type: DirectoryOrCreate
    name: certs
  - hostPath:
      path: /etc/ssl/certs
      type: DirectoryOrCreate
    name: ca-certs
  - hostPath:
      path: /etc
    name: everything
  - hostPath:
      path: /run/kms/socket.sock
      type: Socket
    name: kms
"#;

    #[test]
    fn takes_what_flags_and_host_paths_name_and_nothing_that_is_written_or_the_hosts() {
        let pod = StaticPod::parse(POD, Path::new("/r/kube-apiserver.yaml")).unwrap();
        let found = inputs(&pod);
        let taken: Vec<(&str, &str)> = found
            .take
            .iter()
            .map(|i| (i.path.as_str(), i.origin.as_str()))
            .collect();
        assert_eq!(
            taken,
            vec![
                (
                    "/etc/kubernetes/policies/audit.yaml",
                    "kube-apiserver.yaml: --audit-policy-file"
                ),
                (
                    "/etc/kubernetes/enc/enc.yaml",
                    "kube-apiserver.yaml: --encryption-provider-config"
                ),
                (
                    "/opt/authn/authn.conf",
                    "kube-apiserver.yaml: --authentication-token-webhook-config-file"
                ),
                ("/in/image/ca.pem", "kube-apiserver.yaml: --oidc-ca-file"),
                (
                    "/etc/kubernetes/enc",
                    "kube-apiserver.yaml: hostPath volume enc"
                ),
                ("/opt/authn", "kube-apiserver.yaml: hostPath volume webhook"),
            ]
        );
        assert_eq!(
            found.take[4].kind,
            Kind::Volume { must_exist: false },
            "DirectoryOrCreate"
        );
        let skipped: Vec<&str> = found.skipped.iter().map(|(p, _)| p.as_str()).collect();
        for path in [
            "/etc/kubernetes/pki/ca.crt",
            "/var/lib/apiserver-certs",
            "/etc/ssl/certs",
            "/etc",
        ] {
            assert!(skipped.contains(&path), "{path} not skipped: {skipped:?}");
        }
        assert!(
            !skipped.iter().any(|p| p.starts_with("/var/log")),
            "an output flag is never even considered: {skipped:?}"
        );
    }

    #[test]
    fn normalizes_and_refuses_relative_and_parent_paths() {
        assert_eq!(normalize("/a//b/./c/").as_deref(), Some("/a/b/c"));
        assert_eq!(normalize("/").as_deref(), Some("/"));
        assert_eq!(normalize("a/b"), None);
        assert_eq!(normalize("/a/../b"), None);
    }

    #[test]
    fn recognizes_an_encryption_configuration() {
        let config = b"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: []\n";
        assert!(is_encryption_configuration(config));
        assert!(!is_encryption_configuration(
            b"apiVersion: audit.k8s.io/v1\nkind: Policy\n"
        ));
        assert!(!is_encryption_configuration(&[0xff, 0x00, 0x12]));
    }
}
