//! What `kubeadm init` would otherwise reset on a restore, read from the backup: the cluster's
//! kubelet and kube-proxy component configs (the `kubelet-config` and `kube-proxy` ConfigMaps in the
//! etcd snapshot), the addons the cluster did not run (no kube-proxy DaemonSet, no CoreDNS
//! Deployment), the node's taints (its Node object) and the kubelet flags an operator added
//! (`kubeadm-flags.env` in the bundle). kubeadm takes none of these from the cluster: component
//! configs come from the config file or defaults, and `skipPhases`, `nodeRegistration.taints` and
//! `kubeletExtraArgs` live in the InitConfiguration, which kubeadm never uploads.
//!
//! The snapshot is read natively and streamed (`etcd::keys`), so no etcd runs and a large db costs
//! a few pages of memory.

use std::fs;
use std::path::{Path, PathBuf};

use crate::k8s::{self, Resource, Taint};
use crate::node::layout;
use crate::node::StaticPod;

pub(super) const KUBE_SYSTEM: &str = "kube-system";
/// k8s.io/kubernetes cmd/kubeadm/app/constants: `KubeProxyConfigMap`, `KubeProxyConfigMapKey`.
pub(super) const KUBE_PROXY: &str = "kube-proxy";
pub(super) const KUBE_PROXY_CONFIG_KEY: &str = "config.conf";
/// constants.go `KubeletBaseConfigurationConfigMap` (v1.24+; before, `kubelet-config-1.<minor>`)
/// and `KubeletBaseConfigurationConfigMapKey`.
pub(super) const KUBELET_CONFIG: &str = "kubelet-config";
pub(super) const KUBELET_CONFIG_KEY: &str = "kubelet";
/// The CoreDNS Deployment (constants.go `CoreDNSDeploymentName`).
pub(super) const COREDNS: &str = "coredns";
/// kubeadm's init phases for the two addons (cmd/phases/init/addons.go).
pub const SKIP_KUBE_PROXY: &str = "addon/kube-proxy";
pub const SKIP_COREDNS: &str = "addon/coredns";

/// constants.go `KubeletEnvFileVariableName`.
const KUBELET_ARGS_VARIABLE: &str = "KUBELET_KUBEADM_ARGS";

/// Flags kubeadm writes into kubeadm-flags.env itself, from the InitConfiguration or its own
/// defaults, so they are not the operator's `kubeletExtraArgs` and must not be carried over:
/// carried, an old value would override what kubeadm derives for this restore. Sources:
/// cmd/kubeadm/app/phases/kubelet/flags.go `buildKubeletArgsCommon` (v1.27+) and its older forms.
const KUBEADM_WRITTEN_FLAGS: [(&str, &str); 8] = [
    (
        "container-runtime-endpoint",
        "from nodeRegistration.criSocket",
    ),
    (
        "pod-infra-container-image",
        "images.GetPauseImage of the ClusterConfiguration",
    ),
    (
        "register-with-taints",
        "from nodeRegistration.taints, which carry the Node's taints",
    ),
    (
        "hostname-override",
        "written when nodeRegistration.name differs from the hostname",
    ),
    // Up to v1.23 (dockershim era); kubelet v1.24 removed --network-plugin and v1.27
    // --container-runtime, so carrying them would stop a current kubelet.
    (
        "container-runtime",
        "remote, written by kubeadm up to v1.23",
    ),
    ("network-plugin", "cni, written for Docker up to v1.23"),
    // flags_unix.go before v1.21/v1.24: now the KubeletConfiguration's cgroupDriver and resolvConf.
    ("cgroup-driver", "detected from Docker by old kubeadm"),
    (
        "resolv-conf",
        "set by old kubeadm when systemd-resolved ran",
    ),
];

/// The fact an object in the snapshot was read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    KubeProxyConfig,
    KubeletConfig,
    NodeTaints,
}

impl Fact {
    fn what(self) -> &'static str {
        match self {
            Fact::KubeProxyConfig => "kube-proxy configuration",
            Fact::KubeletConfig => "kubelet configuration",
            Fact::NodeTaints => "node taints",
        }
    }

    /// What happens instead when the fact's object in `key` is encrypted at rest, and what to do.
    fn encrypted(self, key: &str, provider: &str) -> String {
        let what = format!(
            "{key} is encrypted at rest (k8s:enc:{provider}:) and cpr does not decrypt the snapshot"
        );
        match self {
            Fact::KubeProxyConfig => format!(
                "{what}: kubeadm's addon/kube-proxy phase is skipped, so the restored kube-proxy ConfigMap and DaemonSet \
                 stay exactly as backed up (kubeadm does not update kube-proxy's image in this init; kubeadm 1.31+ also \
                 records proxy.disabled: true in kubeadm-config, cmd/init.go manageSkippedAddons — remove it with \
                 `kubectl -n kube-system edit configmap kubeadm-config` for `kubeadm upgrade` to manage kube-proxy again)"
            ),
            Fact::KubeletConfig => format!(
                "{what}: kubeadm gets this node's backed-up /{} instead (kubeadm wrote it from that ConfigMap) and uploads \
                 it as the cluster's kubelet-config; without that file it writes its defaults (cgroupDriver, maxPods, \
                 evictions … reset): compare with `kubectl -n kube-system get configmap kubelet-config -o yaml` of a worker's \
                 /var/lib/kubelet/config.yaml, edit the ConfigMap, then `kubeadm upgrade node phase kubelet-config` and \
                 `systemctl restart kubelet` on this node",
                layout::KUBELET_CONFIG
            ),
            Fact::NodeTaints => format!(
                "{what}: kubeadm gets `taints: []`, so it adds none and the restored Node keeps its own \
                 (phases/markcontrolplane merges, never removes); check them with `kubectl describe node`"
            ),
        }
    }

    /// What the operator can do when the fact cannot be read.
    fn advice(self) -> &'static str {
        match self {
            Fact::KubeProxyConfig | Fact::KubeletConfig => "kubeadm would reset it to its defaults; take the ConfigMap from the source cluster (kubectl -n kube-system get configmap) and apply it after the restore",
            Fact::NodeTaints => "Without them kubeadm re-applies its control-plane taint; set the node's taints after the restore with kubectl taint",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the cluster's {} from {key} in the etcd snapshot {}: {source}. {}", fact.what(), snapshot.display(), fact.advice())]
    Object {
        fact: Fact,
        key: String,
        snapshot: PathBuf,
        #[source]
        source: k8s::Error,
    },
    #[error("reading the cluster's {} from {key} in the etcd snapshot {}: the ConfigMap has no {data_key:?} entry. kubeadm would write its defaults instead; check the ConfigMap in the source cluster", fact.what(), snapshot.display())]
    MissingData {
        fact: Fact,
        key: String,
        data_key: &'static str,
        snapshot: PathBuf,
    },
    #[error("reading the kubelet flags in {}: {why}. kubeadm writes one line {KUBELET_ARGS_VARIABLE}=\"--flag=value ...\"; fix the file in the bundle's staging copy, or remove it to carry no kubelet extra args", path.display())]
    KubeletFlags { path: PathBuf, why: String },
    #[error("reading the kubelet flags in {}: {source}. Check the staged bundle (run `cpr restore` again) and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Etcd(#[from] crate::etcd::Error),
}

/// The cluster configuration a restore carries into `kubeadm init`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Carryover {
    /// The cluster's KubeletConfiguration YAML (the `kubelet` entry of `kubelet-config`, or of the
    /// newest `kubelet-config-1.<minor>` on clusters that predate v1.24), verbatim; when the snapshot
    /// has none or it is encrypted at rest, the bundle's `var/lib/kubelet/config.yaml` (kubeadm wrote
    /// it from that ConfigMap).
    pub kubelet_config: Option<String>,
    /// Where `kubelet_config` comes from: the ConfigMap's etcd key, or the bundle's file.
    pub kubelet_config_source: Option<String>,
    /// The KubeProxyConfiguration YAML (`config.conf` of the `kube-proxy` ConfigMap); `None` when
    /// the cluster runs no kube-proxy, or its ConfigMap is encrypted at rest (then `skip_addons`
    /// holds `addon/kube-proxy`).
    pub kube_proxy_config: Option<String>,
    /// kubeadm phases for the addons the cluster does not run (`addon/kube-proxy`, `addon/coredns`),
    /// or whose configuration cpr cannot read.
    pub skip_addons: Vec<String>,
    /// The Node's taints without those its conditions set (`k8s::is_status_taint`); `Some(empty)`
    /// when the node had none (kubeadm must then add none) or its object is encrypted at rest,
    /// `None` when the snapshot has no Node object of that name (kubeadm's default applies).
    pub taints: Option<Vec<Taint>>,
    /// `kubeletExtraArgs`: the flags of kubeadm-flags.env that kubeadm does not write itself, in order.
    pub kubelet_extra_args: Vec<(String, String)>,
    /// What could not be carried over as it was, what kubeadm does instead and what to do by hand.
    pub warnings: Vec<String>,
}

impl Carryover {
    /// Reads the facts from the etcd snapshot (or member db) at `snapshot`, whose keys live under
    /// `etcd_prefix` (kube-apiserver's `--etcd-prefix`, `/registry` by default), for the node named
    /// `node_name`, and the kubelet flags from `bundle_dir` (the bundle's files under their bundle
    /// paths, as `ops::restore::staged_bundle_dir` holds them; a missing kubeadm-flags.env means no
    /// extra args).
    pub fn from_snapshot(
        snapshot: &Path,
        etcd_prefix: &str,
        node_name: &str,
        bundle_dir: &Path,
    ) -> Result<Carryover, Error> {
        let keys = Keys::new(etcd_prefix, node_name);
        let values = crate::etcd::keys::current_values(snapshot, &|key| keys.wanted(key))?;
        let value = |key: &str| values.get(key.as_bytes());
        let mut warnings = Vec::new();
        // A value kube-apiserver encrypted at rest is not read (cpr holds no KMS, and the restored
        // EncryptionConfiguration is kube-apiserver's to use); each fact falls back to what keeps the
        // cluster as it was, and says so.
        let mut read =
            |key: &str, fact: Fact, data_key: &'static str| -> Result<Option<String>, Error> {
                let Some(v) = value(key) else {
                    return Ok(None);
                };
                match config_map_entry(v, key, fact, data_key, snapshot) {
                    Err(Error::Object {
                        source: k8s::Error::Encrypted { provider },
                        ..
                    }) => {
                        warnings.push(fact.encrypted(key, &provider));
                        Ok(None)
                    }
                    other => other.map(Some),
                }
            };

        let mut skip_addons = Vec::new();
        let mut kube_proxy_config = None;
        if value(&keys.kube_proxy_daemonset).is_some() {
            kube_proxy_config = read(
                &keys.kube_proxy_config,
                Fact::KubeProxyConfig,
                KUBE_PROXY_CONFIG_KEY,
            )?;
            if kube_proxy_config.is_none() && value(&keys.kube_proxy_config).is_some() {
                skip_addons.push(SKIP_KUBE_PROXY.to_string());
            }
        } else {
            skip_addons.push(SKIP_KUBE_PROXY.to_string());
        }
        if value(&keys.coredns).is_none() {
            skip_addons.push(SKIP_COREDNS.to_string());
        }
        let kubelet_key = keys.newest_kubelet_config(values.keys());
        let mut kubelet_config = match &kubelet_key {
            Some(key) => read(key, Fact::KubeletConfig, KUBELET_CONFIG_KEY)?,
            None => None,
        };
        let mut kubelet_config_source = kubelet_config.as_ref().and(kubelet_key);
        if kubelet_config.is_none() {
            if let Some(text) = read_optional(&bundle_dir.join(layout::KUBELET_CONFIG))? {
                kubelet_config = Some(text);
                kubelet_config_source = Some(format!("/{}", layout::KUBELET_CONFIG));
            }
        }
        let taints = match value(&keys.node) {
            None => None,
            Some(v) => match k8s::node(v) {
                Ok(node) => Some(node.operator_taints()),
                Err(k8s::Error::Encrypted { provider }) => {
                    warnings.push(Fact::NodeTaints.encrypted(&keys.node, &provider));
                    Some(Vec::new())
                }
                Err(source) => {
                    return Err(Error::Object {
                        fact: Fact::NodeTaints,
                        key: keys.node.clone(),
                        snapshot: snapshot.to_path_buf(),
                        source,
                    })
                }
            },
        };
        let flags_path = bundle_dir.join(layout::KUBEADM_FLAGS);
        let kubelet_extra_args = match read_optional(&flags_path)? {
            Some(text) => kubelet_extra_args(&text).map_err(|why| Error::KubeletFlags {
                path: flags_path.clone(),
                why,
            })?,
            None => Vec::new(),
        };
        Ok(Carryover {
            kubelet_config,
            kubelet_config_source,
            kube_proxy_config,
            skip_addons,
            taints,
            kubelet_extra_args,
            warnings,
        })
    }
}

/// The text of the bundle's file at `path`; `None` when the bundle has none.
fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The etcd keys the facts come from.
pub(super) struct Keys {
    pub(super) kube_proxy_config: String,
    pub(super) kubelet_config: String,
    /// `kubelet-config-1.` (the versioned names before v1.24).
    kubelet_config_versioned: String,
    pub(super) kube_proxy_daemonset: String,
    pub(super) coredns: String,
    pub(super) node: String,
}

impl Keys {
    pub(super) fn new(prefix: &str, node_name: &str) -> Keys {
        let config_map = |name: &str| Resource::ConfigMaps.key(prefix, Some(KUBE_SYSTEM), name);
        Keys {
            kube_proxy_config: config_map(KUBE_PROXY),
            kubelet_config: config_map(KUBELET_CONFIG),
            kubelet_config_versioned: config_map(&format!("{KUBELET_CONFIG}-1.")),
            kube_proxy_daemonset: Resource::DaemonSets.key(prefix, Some(KUBE_SYSTEM), KUBE_PROXY),
            coredns: Resource::Deployments.key(prefix, Some(KUBE_SYSTEM), COREDNS),
            node: Resource::Nodes.key(prefix, None, node_name),
        }
    }

    fn wanted(&self, key: &[u8]) -> bool {
        [
            &self.kube_proxy_config,
            &self.kubelet_config,
            &self.kube_proxy_daemonset,
            &self.coredns,
            &self.node,
        ]
        .iter()
        .any(|k| k.as_bytes() == key)
            || key.starts_with(self.kubelet_config_versioned.as_bytes())
    }

    /// `kubelet-config` when present (v1.24+), else the `kubelet-config-1.<minor>` of the highest
    /// minor: an upgraded cluster keeps the older ConfigMaps.
    fn newest_kubelet_config<'a>(
        &self,
        present: impl Iterator<Item = &'a Vec<u8>>,
    ) -> Option<String> {
        let mut newest: Option<(u32, String)> = None;
        for key in present.filter_map(|k| std::str::from_utf8(k).ok()) {
            if key == self.kubelet_config {
                return Some(key.to_string());
            }
            let minor = key
                .strip_prefix(self.kubelet_config_versioned.as_str())
                .and_then(|m| m.parse::<u32>().ok());
            if let Some(minor) = minor.filter(|m| newest.as_ref().is_none_or(|(n, _)| m > n)) {
                newest = Some((minor, key.to_string()));
            }
        }
        newest.map(|(_, key)| key)
    }
}

fn config_map_entry(
    value: &[u8],
    key: &str,
    fact: Fact,
    data_key: &'static str,
    snapshot: &Path,
) -> Result<String, Error> {
    config_map_data(value, data_key)
        .map_err(|source| Error::Object {
            fact,
            key: key.to_string(),
            snapshot: snapshot.to_path_buf(),
            source,
        })?
        .ok_or_else(|| Error::MissingData {
            fact,
            key: key.to_string(),
            data_key,
            snapshot: snapshot.to_path_buf(),
        })
}

/// The `data_key` entry of the stored ConfigMap `value`; `None` when the ConfigMap has none.
pub(super) fn config_map_data(value: &[u8], data_key: &str) -> Result<Option<String>, k8s::Error> {
    Ok(k8s::config_map(value)?.data.get(data_key).cloned())
}

/// The operator's kubelet flags in kubeadm-flags.env: `KUBELET_KUBEADM_ARGS="--a=b --c=d"` as
/// flags.go writes it (`%s=%q` of the `--name=value` list that `ArgumentsToCommand` builds), minus
/// [`KUBEADM_WRITTEN_FLAGS`]. Other lines (comments, other variables) are ignored.
fn kubelet_extra_args(text: &str) -> Result<Vec<(String, String)>, String> {
    let Some(line) = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix(KUBELET_ARGS_VARIABLE)
            .and_then(|rest| rest.trim_start().strip_prefix('='))
    }) else {
        return Err(format!("no {KUBELET_ARGS_VARIABLE}= line"));
    };
    let line = line.trim();
    let unquoted = match line.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| format!("the value {line:?} opens a quote it does not close"))?
            .replace("\\\"", "\"")
            .replace("\\\\", "\\"),
        None => line.to_string(),
    };
    let mut args = Vec::new();
    let mut words = unquoted.split_whitespace();
    while let Some(word) = words.next() {
        let flag = word
            .strip_prefix("--")
            .or_else(|| word.strip_prefix('-'))
            .ok_or_else(|| format!("{word:?} is not a flag (--name=value)"))?;
        // kubeadm writes --name=value; a hand-edited "--name value" is read as kubelet would.
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => match words.clone().next().filter(|w| !w.starts_with('-')) {
                Some(value) => {
                    words.next();
                    (flag.to_string(), value.to_string())
                }
                None => (flag.to_string(), "true".to_string()),
            },
        };
        if name.is_empty() {
            return Err(format!("{word:?} has no flag name"));
        }
        match KUBEADM_WRITTEN_FLAGS.iter().find(|(f, _)| *f == name) {
            Some((_, why)) => {
                log::info!("kubelet flag --{name} is not carried over: kubeadm writes it ({why})")
            }
            None => args.push((name, value)),
        }
    }
    Ok(args)
}

/// kube-apiserver's `--etcd-prefix` in the backed-up manifest under `bundle_dir` (kubeadm never sets
/// one, so kube-apiserver's default when the manifest does not say).
pub fn etcd_prefix(bundle_dir: &Path) -> String {
    let apiserver = bundle_dir.join(layout::APISERVER_MANIFEST);
    match StaticPod::load(&apiserver) {
        Ok(pod) => pod.flag("etcd-prefix").map(str::to_string),
        Err(e) => {
            log::warn!(
                "reading --etcd-prefix from the backed-up kube-apiserver manifest: {e}; using {}",
                layout::DEFAULT_ETCD_PREFIX
            );
            None
        }
    }
    .unwrap_or_else(|| layout::DEFAULT_ETCD_PREFIX.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn extra_args_are_the_flags_kubeadm_does_not_write() {
        // kubeadm v1.27+ on containerd with an operator's node-ip and labels.
        let env = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --node-ip=10.0.0.5 --pod-infra-container-image=registry.k8s.io/pause:3.9 --node-labels=tier=cp,zone=a\"\n";
        assert_eq!(
            kubelet_extra_args(env).unwrap(),
            args(&[("node-ip", "10.0.0.5"), ("node-labels", "tier=cp,zone=a")])
        );
        // kubeadm v1.22 (dockershim era) with nothing of the operator's.
        let old = "KUBELET_KUBEADM_ARGS=\"--container-runtime=remote --container-runtime-endpoint=/run/containerd/containerd.sock --pod-infra-container-image=k8s.gcr.io/pause:3.5\"\n";
        assert_eq!(kubelet_extra_args(old).unwrap(), vec![]);
        // Hand-edited: unquoted, space-separated value, a boolean, comments and other variables.
        let edited = "# edited\nOTHER=1\nKUBELET_KUBEADM_ARGS=--v 4 --fail-swap-on=false --rotate-server-certificates\n";
        assert_eq!(
            kubelet_extra_args(edited).unwrap(),
            args(&[
                ("v", "4"),
                ("fail-swap-on", "false"),
                ("rotate-server-certificates", "true")
            ])
        );
        assert_eq!(
            kubelet_extra_args("KUBELET_KUBEADM_ARGS=\"--x=a\\\"b\"").unwrap(),
            args(&[("x", "a\"b")])
        );
    }

    #[test]
    fn malformed_flags_are_refused_with_what_is_wrong() {
        for (text, why) in [
            ("", "no KUBELET_KUBEADM_ARGS= line"),
            ("KUBELET_KUBEADM_ARGS=\"--a=b", "does not close"),
            ("KUBELET_KUBEADM_ARGS=\"node-ip=1\"", "is not a flag"),
            ("KUBELET_KUBEADM_ARGS=\"--=1\"", "no flag name"),
        ] {
            let err = kubelet_extra_args(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_newest_kubelet_config_wins() {
        let keys = Keys::new("/registry", "cp0");
        let names = |names: &[&str]| -> Vec<Vec<u8>> {
            names
                .iter()
                .map(|n| format!("/registry/configmaps/kube-system/{n}").into_bytes())
                .collect()
        };
        let pick = |present: &[&str]| keys.newest_kubelet_config(names(present).iter());
        assert_eq!(
            pick(&[
                "kubelet-config-1.9",
                "kubelet-config-1.23",
                "kubelet-config-1.22"
            ])
            .as_deref(),
            Some("/registry/configmaps/kube-system/kubelet-config-1.23")
        );
        assert_eq!(
            pick(&["kubelet-config-1.23", "kubelet-config"]).as_deref(),
            Some("/registry/configmaps/kube-system/kubelet-config")
        );
        assert_eq!(pick(&["kubelet-config-1.x", "kube-proxy"]), None);
        assert!(keys.wanted(b"/registry/configmaps/kube-system/kubelet-config-1.21"));
        assert!(!keys.wanted(b"/registry/configmaps/kube-system/kubelet-configs"));
        assert!(!keys.wanted(b"/registry/minions/cp01"));
    }
}
