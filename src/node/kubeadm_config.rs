//! kubeadm's ClusterConfiguration, as kube-apiserver stores the `kube-system/kubeadm-config` ConfigMap
//! in etcd: `k8s\0` + a protobuf `runtime.Unknown` whose `raw` is a protobuf `v1.ConfigMap` (or plain
//! JSON when the apiserver runs with `--storage-media-type=application/json`).

use serde_norway::Value;
use std::collections::BTreeMap;

use super::Error;

/// k8s.io/apimachinery/pkg/runtime/serializer/protobuf: the prefix of every protobuf-encoded object.
const PROTOBUF_MAGIC: &[u8] = b"k8s\0";
/// k8s.io/apiserver/pkg/storage/value: values encrypted at rest start with this.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const CLUSTER_CONFIGURATION_KEY: &str = "ClusterConfiguration";

/// k8s.io/apimachinery/pkg/runtime/generated.proto `Unknown`.
#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
    #[prost(string, tag = "3")]
    content_encoding: String,
    #[prost(string, tag = "4")]
    content_type: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

/// k8s.io/api/core/v1/generated.proto `ConfigMap`: metadata (1) is skipped, `data` is field 2.
#[derive(Clone, PartialEq, prost::Message)]
struct ConfigMap {
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
}

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
    let data = if let Some(body) = value.strip_prefix(PROTOBUF_MAGIC) {
        let unknown: Unknown = prost::Message::decode(body)
            .map_err(|e| invalid(format!("not a protobuf object: {e}")))?;
        let kind = unknown
            .type_meta
            .as_ref()
            .map(|t| t.kind.as_str())
            .unwrap_or("");
        if kind != "ConfigMap" {
            return Err(invalid(format!(
                "the object is a {kind:?}, not a ConfigMap"
            )));
        }
        if !unknown.content_encoding.is_empty() {
            return Err(invalid(format!(
                "the object uses content encoding {:?}, which cpr does not read",
                unknown.content_encoding
            )));
        }
        let map: ConfigMap = prost::Message::decode(unknown.raw.as_slice())
            .map_err(|e| invalid(format!("the ConfigMap does not decode: {e}")))?;
        map.data
    } else if value.starts_with(ENCRYPTED_PREFIX) {
        return Err(invalid(
            "the ConfigMap is encrypted at rest by kube-apiserver and cpr cannot decrypt it; pass the ClusterConfiguration with --cluster-config FILE".to_string(),
        ));
    } else if value.first() == Some(&b'{') {
        #[derive(serde::Deserialize)]
        struct JsonConfigMap {
            #[serde(default)]
            data: BTreeMap<String, String>,
        }
        let map: JsonConfigMap = serde_json::from_slice(value)
            .map_err(|e| invalid(format!("not a JSON ConfigMap: {e}")))?;
        map.data
    } else {
        return Err(invalid(
            "neither a protobuf nor a JSON Kubernetes object".to_string(),
        ));
    };
    data.get(CLUSTER_CONFIGURATION_KEY).cloned().ok_or_else(|| {
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
