//! Driving `kubeadm init` for a restore: the configuration it is given and the preflight checks a
//! restore must skip.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use super::Error;

/// What the InitConfiguration says about this node; the ClusterConfiguration comes from the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitNode {
    pub name: String,
    pub advertise_address: IpAddr,
    pub bind_port: u16,
    pub cri_socket: Option<String>,
}

/// The kubeadm config API versions cpr writes an InitConfiguration for.
const API_VERSIONS: [&str; 3] = [
    "kubeadm.k8s.io/v1beta2",
    "kubeadm.k8s.io/v1beta3",
    "kubeadm.k8s.io/v1beta4",
];

/// An InitConfiguration in the backed-up ClusterConfiguration's API version, followed by that
/// ClusterConfiguration as it was.
pub fn init_config(
    node: &InitNode,
    cluster_configuration: &str,
    origin: &str,
) -> Result<String, Error> {
    let doc: serde_norway::Value =
        serde_norway::from_str(cluster_configuration).map_err(|e| Error::KubeadmConfig {
            key: origin.to_string(),
            why: format!("the ClusterConfiguration is not valid YAML: {e}"),
        })?;
    let api_version = doc
        .get("apiVersion")
        .and_then(serde_norway::Value::as_str)
        .unwrap_or_default();
    if !API_VERSIONS.contains(&api_version) {
        return Err(Error::KubeadmConfig {
            key: origin.to_string(),
            why: format!(
                "apiVersion {api_version:?} is not one cpr can write an InitConfiguration for ({})",
                API_VERSIONS.join(", ")
            ),
        });
    }
    let mut init = format!(
        "apiVersion: {api_version}\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: {}\n  bindPort: {}\nnodeRegistration:\n  name: {}\n",
        node.advertise_address,
        node.bind_port,
        yaml_string(&node.name)
    );
    if let Some(socket) = &node.cri_socket {
        init.push_str(&format!("  criSocket: {}\n", yaml_string(socket)));
    }
    Ok(format!("{init}---\n{}\n", cluster_configuration.trim_end()))
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
        };
        let cluster = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nkubernetesVersion: v1.27.4\n";
        let config = init_config(&node, cluster, "bundle").unwrap();
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
        assert!(init_config(&node, &old, "bundle").is_err());
    }
}
