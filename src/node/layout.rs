//! Where kubeadm keeps things on a node. Every well-known path lives here and nowhere else; all are
//! relative so that a restore can work under any root (`/`, `/sysroot`, a test's temp dir).

use std::path::{Path, PathBuf};

pub const KUBERNETES_DIR: &str = "etc/kubernetes";
pub const PKI_DIR: &str = "etc/kubernetes/pki";
pub const MANIFESTS_DIR: &str = "etc/kubernetes/manifests";
pub const ETCD_MANIFEST: &str = "etc/kubernetes/manifests/etcd.yaml";
pub const APISERVER_MANIFEST: &str = "etc/kubernetes/manifests/kube-apiserver.yaml";
pub const ADMIN_CONF: &str = "etc/kubernetes/admin.conf";
pub const KUBELET_CONF: &str = "etc/kubernetes/kubelet.conf";
pub const KUBELET_DIR: &str = "var/lib/kubelet";
pub const KUBELET_CONFIG: &str = "var/lib/kubelet/config.yaml";
pub const KUBEADM_FLAGS: &str = "var/lib/kubelet/kubeadm-flags.env";
pub const DEFAULT_ETCD_DATA_DIR: &str = "/var/lib/etcd";
pub const CPR_STATE_DIR: &str = "var/lib/cpr";
pub const CPR_CONFIG: &str = "etc/cpr/config.yaml";
/// Left by a `cpr finish --unit` run that failed: what failed and what to do.
pub const FINISH_FAILED: &str = "var/lib/cpr/finish-failed";
/// Shown by agetty above the console's login prompt (util-linux agetty reads `/etc/issue.d/*.issue`).
pub const FINISH_ISSUE_BANNER: &str = "etc/issue.d/cpr-finish.issue";
/// Shown at login by pam_motd, whose default `motd_dir` includes `/etc/motd.d`.
pub const FINISH_MOTD_BANNER: &str = "etc/motd.d/cpr-finish";

/// The kubeconfigs kubeadm writes (`kubeadm init phase kubeconfig`); super-admin.conf from v1.29.
pub const KUBEADM_KUBECONFIGS: [&str; 5] = [
    "etc/kubernetes/admin.conf",
    "etc/kubernetes/super-admin.conf",
    "etc/kubernetes/controller-manager.conf",
    "etc/kubernetes/scheduler.conf",
    KUBELET_CONF,
];

/// Host paths (and everything below them) that static pods mount or name but that are not the
/// cluster's configuration, so a backup does not take them and a restore does not write them.
/// Derived from kubeadm's own volumes (cmd/kubeadm/app/phases/controlplane/volumes.go:
/// `caCertsVolumePath`, `caCertsExtraVolumePaths`, `defaultFlexvolumeDirVolumePath`), kubeadm's
/// default etcd data dir and upgrade backups, and the host's runtime and system trees.
pub const NOT_CONFIGURATION: [(&str, &str); 20] = [
    (
        "/etc/kubernetes/pki",
        "already in the bundle (kubeadm's certificates)",
    ),
    (
        "/etc/kubernetes/manifests",
        "already in the bundle (the static pod manifests)",
    ),
    (
        "/etc/kubernetes/tmp",
        "kubeadm upgrade's backups (old manifests and etcd data dirs)",
    ),
    (
        "/etc/ssl/certs",
        "the host's CA bundle, which kubeadm mounts (ca-certs)",
    ),
    (
        "/etc/pki",
        "the host's CA bundle, which kubeadm mounts (etc-pki, etc-pki-ca-trust, etc-pki-tls-certs)",
    ),
    (
        "/etc/ca-certificates",
        "the host's CA bundle, which kubeadm mounts (etc-ca-certificates)",
    ),
    (
        "/usr/share/ca-certificates",
        "the host's CA bundle, which kubeadm mounts (usr-share-ca-certificates)",
    ),
    (
        "/usr/local/share/ca-certificates",
        "the host's CA bundle, which kubeadm mounts (usr-local-share-ca-certificates)",
    ),
    (
        "/usr/libexec/kubernetes/kubelet-plugins",
        "flexvolume plugins, which kubeadm mounts (flexvolume-dir)",
    ),
    ("/etc/localtime", "the host's time zone"),
    (
        "/var/lib/etcd",
        "etcd's data dir: the bundle's snapshot carries it",
    ),
    (
        "/var/lib/kubelet",
        "the kubelet's state; the bundle holds kubeadm's config.yaml and kubeadm-flags.env",
    ),
    ("/var/log", "logs"),
    ("/run", "runtime state (sockets, pid files)"),
    ("/var/run", "runtime state (sockets, pid files)"),
    ("/tmp", "scratch space"),
    ("/dev", "devices"),
    ("/proc", "the kernel's process view"),
    ("/sys", "the kernel's device view"),
    ("/lib/modules", "kernel modules"),
];

/// `path` equals `dir` or lies below it (both absolute and normalized).
pub fn within(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Why `path` (absolute, normalized, as on the node) is not configuration to back up or restore, if
/// it is not: below a `NOT_CONFIGURATION` tree, one of kubeadm's kubeconfigs or kubelet files, or
/// something a restore moved aside or staged (`*.cpr-old-*`, `*.cpr-new`).
pub fn not_configuration(path: &str) -> Option<&'static str> {
    if let Some((_, why)) = NOT_CONFIGURATION
        .iter()
        .find(|(tree, _)| within(path, tree))
    {
        return Some(why);
    }
    let relative = path.trim_start_matches('/');
    if KUBEADM_KUBECONFIGS.contains(&relative)
        || [KUBELET_CONFIG, KUBEADM_FLAGS].contains(&relative)
    {
        return Some("already in the bundle (kubeadm writes it)");
    }
    if path
        .split('/')
        .any(|part| part.contains(".cpr-old-") || part.ends_with(".cpr-new"))
    {
        return Some("moved aside or staged by a cpr restore");
    }
    None
}

/// The bundle path under which the ClusterConfiguration read from etcd is kept.
pub const CLUSTER_CONFIGURATION_ENTRY: &str = "kubeadm/cluster-configuration.yaml";

/// etcd's kubeadm client pairs, in order of preference: the health-check client has no other rights.
pub const ETCD_CLIENT_PAIRS: [(&str, &str); 2] = [
    (
        "etc/kubernetes/pki/etcd/healthcheck-client.crt",
        "etc/kubernetes/pki/etcd/healthcheck-client.key",
    ),
    (
        "etc/kubernetes/pki/apiserver-etcd-client.crt",
        "etc/kubernetes/pki/apiserver-etcd-client.key",
    ),
];
pub const ETCD_CA_CERT: &str = "etc/kubernetes/pki/etcd/ca.crt";

/// Where kube-apiserver keeps objects in etcd unless `--etcd-prefix` says otherwise.
pub const DEFAULT_ETCD_PREFIX: &str = "/registry";

/// A node's filesystem seen from `root`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `relative` may be written as an absolute host path (`/etc/kubernetes/pki/ca.crt`, as static pod
    /// manifests do); it is always resolved below the root.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative.trim_start_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_configuration_from_what_kubeadm_and_the_host_own() {
        for (path, kept) in [
            ("/etc/kubernetes/enc/enc.yaml", true),
            ("/etc/kubernetes/audit-policy.yaml", true),
            ("/etc/kubernetes/webhook.conf", true),
            ("/etc/ssl/etcd/ssl/ca.pem", true),
            ("/etc/kubernetes/pki/ca.key", false),
            ("/etc/kubernetes/pki", false),
            ("/etc/kubernetes/pkix/a", true),
            ("/etc/kubernetes/admin.conf", false),
            ("/etc/ssl/certs", false),
            ("/etc/pki/ca-trust/x.pem", false),
            ("/var/log/kubernetes/audit/audit.log", false),
            ("/var/lib/etcd/member", false),
            ("/var/lib/kubelet/config.yaml", false),
            ("/etc/kubernetes/pki.cpr-old-20250101T000000Z/ca.key", false),
            ("/etc/kubernetes/.enc.yaml.cpr-new", false),
        ] {
            assert_eq!(not_configuration(path).is_none(), kept, "{path}");
        }
    }
}
