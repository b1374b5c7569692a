//! Where kubeadm keeps things on a node. Every well-known path lives here and nowhere else; all are
//! relative so that a restore can work under any root (`/`, `/sysroot`, a test's temp dir).

use std::path::{Path, PathBuf};

pub const KUBERNETES_DIR: &str = "etc/kubernetes";
pub const PKI_DIR: &str = "etc/kubernetes/pki";
pub const MANIFESTS_DIR: &str = "etc/kubernetes/manifests";
pub const ETCD_MANIFEST: &str = "etc/kubernetes/manifests/etcd.yaml";
pub const APISERVER_MANIFEST: &str = "etc/kubernetes/manifests/kube-apiserver.yaml";
pub const ADMIN_CONF: &str = "etc/kubernetes/admin.conf";
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
pub const KUBEADM_CONFIG_MAP: &str = "configmaps/kube-system/kubeadm-config";

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
