//! kubeadm's ClusterConfiguration, from the `kube-system/kubeadm-config` ConfigMap as kube-apiserver
//! stores it in etcd (decoded by `crate::k8s`: protobuf, or JSON with
//! `--storage-media-type=application/json`).

use serde_norway::Value;

use super::Error;

const CLUSTER_CONFIGURATION_KEY: &str = "ClusterConfiguration";

/// The summary of a ClusterConfiguration that the bundle manifest records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    pub api_version: Option<String>,
    pub cluster_name: Option<String>,
    pub kubernetes_version: Option<String>,
    pub control_plane_endpoint: Option<String>,
    pub pod_subnet: Option<String>,
    pub service_subnet: Option<String>,
}

/// The ClusterConfiguration YAML held by the stored ConfigMap `value` read from etcd key `key`.
pub fn cluster_configuration(value: &[u8], key: &str) -> Result<String, Error> {
    let invalid = |why: String| Error::KubeadmConfig {
        key: key.to_string(),
        why,
    };
    let map = crate::k8s::config_map(value).map_err(|e| {
        invalid(format!(
            "the ConfigMap cannot be read: {e}. Pass the ClusterConfiguration with --cluster-config FILE"
        ))
    })?;
    map.data
        .get(CLUSTER_CONFIGURATION_KEY)
        .cloned()
        .ok_or_else(|| {
            invalid(format!(
                "the ConfigMap has no {CLUSTER_CONFIGURATION_KEY:?} key"
            ))
        })
}

/// Reads the fields cpr needs; the YAML itself is kept verbatim in the bundle.
pub fn cluster_info(yaml: &str, origin: &str) -> Result<ClusterInfo, Error> {
    let doc: Value = serde_norway::from_str(yaml).map_err(|e| Error::KubeadmConfig {
        key: origin.to_string(),
        why: format!("the ClusterConfiguration is not valid YAML: {e}"),
    })?;
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(&doc, |v, key| v.get(key))
            .and_then(Value::as_str)
            .map(String::from)
    };
    Ok(ClusterInfo {
        api_version: text(&["apiVersion"]),
        cluster_name: text(&["clusterName"]),
        kubernetes_version: text(&["kubernetesVersion"]),
        control_plane_endpoint: text(&["controlPlaneEndpoint"]),
        pod_subnet: text(&["networking", "podSubnet"]),
        service_subnet: text(&["networking", "serviceSubnet"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_values_it_cannot_read_and_says_why() {
        let err = cluster_configuration(b"k8s:enc:aescbc:v1:key1:xxxx", "/registry/x").unwrap_err();
        assert!(err.to_string().contains("--cluster-config"), "{err}");
        let err = cluster_configuration(b"\x00\x01garbage", "/registry/x").unwrap_err();
        assert!(err.to_string().contains("/registry/x"), "{err}");
    }

    #[test]
    fn reads_a_json_config_map() {
        let value = br#"{"kind":"ConfigMap","apiVersion":"v1","data":{"ClusterConfiguration":"apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nkubernetesVersion: v1.27.4\nnetworking:\n  podSubnet: 192.168.0.0/16\n"}}"#;
        let yaml = cluster_configuration(value, "k").unwrap();
        let info = cluster_info(&yaml, "k").unwrap();
        assert_eq!(info.api_version.as_deref(), Some("kubeadm.k8s.io/v1beta3"));
        assert_eq!(info.kubernetes_version.as_deref(), Some("v1.27.4"));
        assert_eq!(info.pod_subnet.as_deref(), Some("192.168.0.0/16"));
        assert_eq!(info.cluster_name, None);
    }
}
