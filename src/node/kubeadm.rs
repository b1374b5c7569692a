//! Driving `kubeadm init` for a restore: the configuration it is given and the preflight checks a
//! restore must skip.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use super::Error;
use crate::k8s::Taint;

/// What the InitConfiguration says about this node, and the cluster's settings carried along with
/// the backed-up ClusterConfiguration (ops::carryover reads them from the backup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitNode {
    pub name: String,
    pub advertise_address: IpAddr,
    pub bind_port: u16,
    pub cri_socket: Option<String>,
    /// `nodeRegistration.taints`: `None` lets kubeadm apply its control-plane taint.
    pub taints: Option<Vec<Taint>>,
    /// `nodeRegistration.kubeletExtraArgs`, in order.
    pub kubelet_extra_args: Vec<(String, String)>,
    /// `skipPhases` (InitConfiguration).
    pub skip_phases: Vec<String>,
    /// Component config documents (KubeletConfiguration, KubeProxyConfiguration) appended as they are.
    pub component_configs: Vec<String>,
}

const V1BETA2: &str = "kubeadm.k8s.io/v1beta2";
const V1BETA3: &str = "kubeadm.k8s.io/v1beta3";
const V1BETA4: &str = "kubeadm.k8s.io/v1beta4";
/// The kubeadm config API versions cpr reads a ClusterConfiguration in, oldest first.
const API_VERSIONS: [&str; 3] = [V1BETA2, V1BETA3, V1BETA4];

/// A Kubernetes release, `vMAJOR.MINOR.PATCH` (a pre-release or build suffix is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let core = text.strip_prefix('v').unwrap_or(text);
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let version = Version {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(version)
    }

    fn minor_of(self, minor: u32) -> Version {
        Version {
            major: self.major,
            minor,
            patch: 0,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What a restore runs `kubeadm init` with: the installed kubeadm and kubelet, and the bundle's
/// control-plane version and ClusterConfiguration API version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skew {
    pub kubeadm: Version,
    pub kubelet: Version,
    pub bundle: Version,
    pub api_version: String,
}

/// How `kubeadm init` gets the backed-up ClusterConfiguration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The API version written: the newest the installed kubeadm reads without complaint.
    pub api_version: &'static str,
    /// The bundle's version differs, so the ClusterConfiguration is converted forward.
    pub converted: bool,
}

/// Whether kubeadm `skew.kubeadm` and kubelet `skew.kubelet` can restore the bundle, by kubeadm's rules
/// (paths below cmd/kubeadm/app/), checked before anything changes; a refusal names the packages to install.
/// - util/config/common.go `NormalizeKubernetesVersion`: kubeadm deploys control planes from its own
///   minor - 1 (`MinimumControlPlaneVersion`).
/// - preflight/checks.go `KubernetesVersionCheck`: a control plane newer than kubeadm is only a warning and
///   kubeadm deploys it with an older release's rules; cpr refuses that too.
/// - preflight/checks.go `KubeletVersionCheck`: the kubelet's minor not above the control plane's, and not
///   below constants.go `MinimumKubeletVersion` (kubeadm's minor - 3; - 1 up to v1.27).
/// - util/config/common.go `validateSupportedVersion`: v1beta2 is refused from v1.27 (cpr converts it to
///   v1beta3, as `kubeadm config migrate` did up to v1.26); v1beta4 is unknown to v1.27, experimental (refused
///   by `kubeadm init`) in v1.28-v1.30, read from v1.31, where v1beta3 is deprecated (cpr converts it forward).
pub fn plan(skew: &Skew) -> Result<Plan, Error> {
    let (kubeadm, bundle, kubelet) = (skew.kubeadm, skew.bundle, skew.kubelet);
    let api = skew.api_version.as_str();
    let mut problems = Vec::new();
    if !API_VERSIONS.contains(&api) {
        problems.push(format!(
            "the ClusterConfiguration's apiVersion {api:?} is none cpr converts ({})",
            API_VERSIONS.join(", ")
        ));
    }
    if bundle < kubeadm.minor_of(kubeadm.minor.saturating_sub(1)) {
        problems.push(format!(
            "kubeadm {kubeadm} deploys control planes from {} on, not the bundle's {bundle}",
            kubeadm.minor_of(kubeadm.minor.saturating_sub(1))
        ));
    }
    if (bundle.major, bundle.minor) > (kubeadm.major, kubeadm.minor) {
        problems.push(format!(
            "kubeadm {kubeadm} is older than the bundle's control plane {bundle} (kubeadm would only warn and deploy it with an older release's rules)"
        ));
    }
    let reads_v1beta4 = (kubeadm.major, kubeadm.minor) >= (1, 31);
    if api == V1BETA4 && !reads_v1beta4 {
        problems.push(format!(
            "kubeadm {kubeadm} does not read a {V1BETA4} ClusterConfiguration (kubeadm 1.31 and later do)"
        ));
    }
    let kubelet_floor =
        kubeadm.minor_of(
            kubeadm
                .minor
                .saturating_sub(if kubeadm.minor <= 27 { 1 } else { 3 }),
        );
    if (kubelet.major, kubelet.minor) > (bundle.major, bundle.minor) {
        problems.push(format!(
            "kubelet {kubelet} is newer than the bundle's control plane {bundle} (kubeadm's preflight check KubeletVersion fails)"
        ));
    } else if kubelet < kubelet_floor {
        problems.push(format!(
            "kubelet {kubelet} is older than kubeadm {kubeadm} supports ({kubelet_floor}; kubeadm's preflight check KubeletVersion fails)"
        ));
    }
    if problems.is_empty() {
        let api_version = if reads_v1beta4 { V1BETA4 } else { V1BETA3 };
        return Ok(Plan {
            api_version,
            converted: api_version != api,
        });
    }
    Err(Error::VersionSkew {
        found: format!(
            "kubeadm {kubeadm}, kubelet {kubelet}, bundle kubernetesVersion {bundle} (ClusterConfiguration {api})"
        ),
        problems: problems.join("; "),
        install: install_advice(skew),
    })
}

/// The packages that restore this bundle: kubeadm and kubelet of the bundle's minor (kubeadm 1.31 at
/// least for a v1beta4 ClusterConfiguration), from the pkgs.k8s.io repository of that minor.
fn install_advice(skew: &Skew) -> String {
    let bundle = skew.bundle;
    let mut kubeadm_minor = bundle.minor;
    if skew.api_version == V1BETA4 && bundle.minor < 31 {
        if bundle.minor < 30 {
            return format!(
                "No kubeadm reads {V1BETA4} (1.31 and later) and deploys {bundle} (1.{} at most): rewrite the ClusterConfiguration as {V1BETA3} in {} and restore again",
                bundle.minor + 1,
                crate::node::layout::CLUSTER_CONFIGURATION_ENTRY
            );
        }
        kubeadm_minor = 31;
    }
    let repo = |minor: u32| {
        format!("the pkgs.k8s.io repository for v1.{minor}: deb https://pkgs.k8s.io/core:/stable:/v1.{minor}/deb/ /")
    };
    let kubeadm_ok = (skew.kubeadm.major, skew.kubeadm.minor) == (bundle.major, kubeadm_minor);
    if kubeadm_ok {
        return format!(
            "Install kubelet 1.{m} (apt-get install kubelet=1.{m}.*, from {})",
            repo(bundle.minor),
            m = bundle.minor
        );
    }
    if kubeadm_minor == bundle.minor {
        return format!(
            "Install kubeadm and kubelet 1.{m} (apt-get install kubeadm=1.{m}.* kubelet=1.{m}.*, from {})",
            repo(bundle.minor),
            m = bundle.minor
        );
    }
    format!(
        "Install kubeadm 1.{kubeadm_minor} and kubelet 1.{m} (apt-get install kubeadm=1.{kubeadm_minor}.* from {}, kubelet=1.{m}.* from {})",
        repo(kubeadm_minor),
        repo(bundle.minor),
        m = bundle.minor
    )
}

/// `kubeadm version -o short` (`v1.30.2`).
pub fn kubeadm_version(kubeadm: &Path) -> Result<Version, Error> {
    probe_version(kubeadm, &["version", "-o", "short"], "")
}

/// `kubelet --version` (`Kubernetes v1.30.2`, as preflight/utils.go `GetKubeletVersion` parses it).
pub fn kubelet_version(kubelet: &Path) -> Result<Version, Error> {
    probe_version(kubelet, &["--version"], "Kubernetes ")
}

fn probe_version(program: &Path, args: &[&str], prefix: &str) -> Result<Version, Error> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::Run {
            command: command.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix(prefix)
        .and_then(Version::parse)
        .filter(|_| out.status.success())
        .ok_or_else(|| Error::Run {
            command,
            source: std::io::Error::other(format!(
                "exited with {} and printed {:?}, not a version",
                out.status,
                text.trim()
            )),
        })
}

fn parse_yaml(text: &str, origin: &str) -> Result<serde_norway::Value, Error> {
    serde_norway::from_str(text).map_err(|e| Error::KubeadmConfig {
        key: origin.to_string(),
        why: format!("the ClusterConfiguration is not valid YAML: {e}"),
    })
}

/// An InitConfiguration in `api_version` (a `Plan`'s), followed by the backed-up ClusterConfiguration:
/// as it was when already in that version, else converted forward one version at a time (v1beta3/doc.go:
/// `useHyperKubeImage` and `dns.type` removed; v1beta4/doc.go and v1beta3/conversion.go: extraArgs maps
/// become name/value lists sorted by name, `apiServer.timeoutForControlPlane` moves to the
/// InitConfiguration's `timeouts.controlPlaneComponentHealthCheck`).
pub fn init_config(
    node: &InitNode,
    cluster_configuration: &str,
    origin: &str,
    api_version: &str,
) -> Result<String, Error> {
    let mut cluster = parse_yaml(cluster_configuration, origin)?;
    let from = cluster
        .get("apiVersion")
        .and_then(serde_norway::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (Some(start), Some(end)) = (
        API_VERSIONS.iter().position(|v| *v == from),
        API_VERSIONS.iter().position(|v| *v == api_version),
    ) else {
        return Err(Error::KubeadmConfig {
            key: origin.to_string(),
            why: format!(
                "cpr converts a ClusterConfiguration from {} to {V1BETA3} or {V1BETA4}, not {from:?} to {api_version:?}",
                API_VERSIONS.join(", ")
            ),
        });
    };
    if start > end {
        return Err(Error::KubeadmConfig {
            key: origin.to_string(),
            why: format!(
                "cpr does not convert a {from} ClusterConfiguration back to {api_version}"
            ),
        });
    }
    let mut timeout = None;
    for step in &API_VERSIONS[start + 1..=end] {
        if *step == V1BETA3 {
            convert_to_v1beta3(&mut cluster);
        } else {
            timeout = convert_to_v1beta4(&mut cluster);
        }
    }
    let cluster_text = if start == end {
        cluster_configuration.trim_end().to_string()
    } else {
        cluster["apiVersion"] = api_version.into();
        serde_norway::to_string(&cluster)
            .expect("YAML values serialize")
            .trim_end()
            .to_string()
    };
    let mut init = format!(
        "apiVersion: {api_version}\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: {}\n  bindPort: {}\nnodeRegistration:\n  name: {}\n",
        node.advertise_address,
        node.bind_port,
        yaml_string(&node.name)
    );
    if let Some(socket) = &node.cri_socket {
        init.push_str(&format!("  criSocket: {}\n", yaml_string(socket)));
    }
    if let Some(taints) = &node.taints {
        init.push_str(&taints_yaml(taints));
    }
    init.push_str(&kubelet_extra_args_yaml(
        &node.kubelet_extra_args,
        api_version == V1BETA4,
    ));
    if !node.skip_phases.is_empty() {
        init.push_str("skipPhases:\n");
        for phase in &node.skip_phases {
            init.push_str(&format!("- {}\n", yaml_string(phase)));
        }
    }
    if let Some(timeout) = timeout {
        init.push_str(&format!(
            "timeouts:\n  controlPlaneComponentHealthCheck: {}\n",
            yaml_string(&timeout)
        ));
    }
    let mut config = format!("{init}---\n{cluster_text}\n");
    for document in &node.component_configs {
        let document = document.trim();
        let document = document
            .strip_prefix("---")
            .unwrap_or(document)
            .trim_start();
        config.push_str(&format!("---\n{document}\n"));
    }
    Ok(config)
}

/// `nodeRegistration.taints` (a list in every API version): `[]` when there are none, so kubeadm adds
/// none. Taints with a `timeAdded` are left out: phases/markcontrolplane/markcontrolplane.go keeps the
/// Node's taints that are not `slices.Contains` the given ones, which compares v1.Taint with `==`, and
/// its `TimeAdded` is a pointer — such a taint never equals the Node's own, both would be sent, and the
/// API server refuses the duplicate (taints are unique by key and effect). Left out, the restored Node
/// keeps it anyway: kubeadm adds taints and never removes one.
fn taints_yaml(taints: &[Taint]) -> String {
    let kept: Vec<&Taint> = taints.iter().filter(|t| t.time_added.is_none()).collect();
    if kept.is_empty() {
        return "  taints: []\n".to_string();
    }
    let mut out = String::from("  taints:\n");
    for taint in kept {
        out.push_str(&format!("  - key: {}\n", yaml_string(&taint.key)));
        if !taint.value.is_empty() {
            out.push_str(&format!("    value: {}\n", yaml_string(&taint.value)));
        }
        out.push_str(&format!("    effect: {}\n", yaml_string(&taint.effect)));
    }
    out
}

/// `nodeRegistration.kubeletExtraArgs`: a map in v1beta3, a `[{name, value}]` list in v1beta4
/// (v1beta4/doc.go), which can repeat a flag; in a map the last value of a repeated flag wins, as it
/// does for kubelet's own flag parsing of a string flag.
fn kubelet_extra_args_yaml(args: &[(String, String)], as_list: bool) -> String {
    if args.is_empty() {
        return String::new();
    }
    let mut out = String::from("  kubeletExtraArgs:\n");
    for (i, (name, value)) in args.iter().enumerate() {
        if as_list {
            out.push_str(&format!(
                "  - name: {}\n    value: {}\n",
                yaml_string(name),
                yaml_string(value)
            ));
        } else if !args[i + 1..].iter().any(|(n, _)| n == name) {
            out.push_str(&format!(
                "    {}: {}\n",
                yaml_string(name),
                yaml_string(value)
            ));
        }
    }
    out
}

/// v1beta2 → v1beta3 (v1beta3/doc.go): the removed `useHyperKubeImage` and `dns.type` go.
fn convert_to_v1beta3(cluster: &mut serde_norway::Value) {
    if let Some(map) = cluster.as_mapping_mut() {
        map.remove("useHyperKubeImage");
    }
    if let Some(dns) = cluster.get_mut("dns").and_then(|d| d.as_mapping_mut()) {
        dns.remove("type");
    }
}

/// v1beta3 → v1beta4: extraArgs maps to `[{name, value}]` sorted by name (v1beta3/conversion.go
/// `convertToArgs`); returns `apiServer.timeoutForControlPlane`, which moves to the InitConfiguration.
fn convert_to_v1beta4(cluster: &mut serde_norway::Value) -> Option<String> {
    use serde_norway::Value;
    let mut timeout = None;
    for path in [
        &["apiServer"][..],
        &["controllerManager"],
        &["scheduler"],
        &["etcd", "local"],
    ] {
        let mut component = Some(&mut *cluster);
        for key in path {
            component = component.and_then(|c| c.get_mut(*key));
        }
        let Some(component) = component.and_then(Value::as_mapping_mut) else {
            continue;
        };
        if path == ["apiServer"] {
            timeout = component
                .remove("timeoutForControlPlane")
                .and_then(|t| t.as_str().map(str::to_string));
        }
        let Some(Value::Mapping(args)) = component.get("extraArgs").cloned() else {
            continue;
        };
        let mut list: Vec<(String, String)> =
            args.iter().map(|(k, v)| (scalar(k), scalar(v))).collect();
        list.sort();
        let list = list
            .into_iter()
            .map(|(name, value)| {
                let mut arg = serde_norway::Mapping::new();
                arg.insert("name".into(), name.into());
                arg.insert("value".into(), value.into());
                Value::Mapping(arg)
            })
            .collect();
        component.insert("extraArgs".into(), Value::Sequence(list));
    }
    timeout
}

/// A YAML scalar as the string kubeadm reads it (`v: 4` is the argument `4`).
fn scalar(value: &serde_norway::Value) -> String {
    match value {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Null => String::new(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

/// kubeadm names a directory check after its path: `/var/lib/etcd` → `DirAvailable--var-lib-etcd`
/// (cmd/kubeadm/app/preflight/checks.go, `DirAvailableCheck.Name`).
pub fn dir_available_check(data_dir: &str) -> String {
    format!("DirAvailable-{}", data_dir.replace('/', "-"))
}

/// The preflight checks a restore must skip. Only the etcd data dir: it holds the restored member on
/// purpose. cpr moves stale static pod manifests aside instead of ignoring FileAvailable checks, so
/// every other check keeps guarding the operator.
pub fn restore_preflight_ignores(data_dir: &str) -> Vec<String> {
    vec![dir_available_check(data_dir)]
}

/// kubelet's port (cmd/kubeadm/app/constants/constants.go `KubeletPort`).
pub const KUBELET_PORT: u16 = 10250;

/// The ports `kubeadm init`'s preflight requires free (`PortOpenCheck`, check name `Port-<port>`), with
/// the component that listens on each once the node runs: preflight/checks.go `InitNodeChecks` (the API
/// server's bind port, 10259, 10257, and 2379, 2380 for a local etcd) and `addCommonChecks` (10250).
/// cpr restores a local etcd, so its ports are always in.
pub fn preflight_ports(bind_port: u16) -> [(u16, &'static str); 6] {
    [
        (bind_port, "kube-apiserver"),
        (10259, "kube-scheduler"),
        (10257, "kube-controller-manager"),
        (KUBELET_PORT, "kubelet"),
        (2379, "etcd (clients)"),
        (2380, "etcd (peers)"),
    ]
}

/// Runs `kubeadm init --config CONFIG --ignore-preflight-errors=...`, its output on stderr.
pub fn run_init(kubeadm: &Path, config: &Path, ignores: &[String]) -> Result<(), Error> {
    let mut command = Command::new(kubeadm);
    command
        .arg("init")
        .arg("--config")
        .arg(config)
        .arg(format!("--ignore-preflight-errors={}", ignores.join(",")))
        // cpr's stdout carries its own report (possibly JSON); kubeadm's progress goes with the logs.
        .stdout(std::process::Stdio::from(std::io::stderr()));
    log::info!("finish: running {command:?}");
    let status = command.status().map_err(|source| Error::Run {
        command: format!("{command:?}"),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Kubeadm {
            status: status.code().unwrap_or(-1),
            config: config.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_follow_kubeadm() {
        assert_eq!(
            dir_available_check("/var/lib/etcd"),
            "DirAvailable--var-lib-etcd"
        );
        assert_eq!(dir_available_check("/data/etcd"), "DirAvailable--data-etcd");
    }

    #[test]
    fn init_config_uses_the_backed_up_api_version() {
        let node = InitNode {
            name: "master0".into(),
            advertise_address: "10.0.1.10".parse().unwrap(),
            bind_port: 6443,
            cri_socket: Some("unix:///var/run/containerd/containerd.sock".into()),
            taints: None,
            kubelet_extra_args: vec![],
            skip_phases: vec![],
            component_configs: vec![],
        };
        let cluster = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nkubernetesVersion: v1.27.4\n";
        let config = init_config(&node, cluster, "bundle", V1BETA3).unwrap();
        let docs: Vec<serde_norway::Value> = config
            .split("---\n")
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        assert_eq!(docs[0]["apiVersion"], "kubeadm.k8s.io/v1beta3");
        assert_eq!(docs[0]["kind"], "InitConfiguration");
        assert_eq!(docs[0]["localAPIEndpoint"]["advertiseAddress"], "10.0.1.10");
        assert_eq!(
            docs[0]["nodeRegistration"]["criSocket"],
            "unix:///var/run/containerd/containerd.sock"
        );
        assert_eq!(docs[1]["kubernetesVersion"], "v1.27.4");
        let old = cluster.replace("v1beta3", "v1alpha3");
        assert!(init_config(&node, &old, "bundle", V1BETA3).is_err());
    }
}
