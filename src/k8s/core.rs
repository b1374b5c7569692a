//! The core/v1 objects cpr reads: ConfigMap and Node (with its taints), from protobuf or JSON.
//!
//! Field numbers: k8s.io/api core/v1/generated.proto (`ConfigMap`, `Node`, `NodeSpec`, `Taint`) and
//! k8s.io/apimachinery pkg/apis/meta/v1/generated.proto (`ObjectMeta`, `Time`).

use std::collections::BTreeMap;

use super::{object, rfc3339, Error};

/// meta/v1 `ObjectMeta`: name (1) and namespace (3); the other fields are skipped.
#[derive(Clone, PartialEq, prost::Message, serde::Deserialize)]
struct ObjectMeta {
    #[prost(string, tag = "1")]
    #[serde(default)]
    name: String,
    #[prost(string, tag = "3")]
    #[serde(default)]
    namespace: String,
}

/// core/v1 `ConfigMap`: metadata (1), data (2); binaryData (3) and immutable (4) are skipped.
#[derive(Clone, PartialEq, prost::Message, serde::Deserialize)]
struct ConfigMapMessage {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// core/v1 `Node`: metadata (1), spec (2); status (3) is skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct NodeMessage {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<NodeSpecMessage>,
}

/// core/v1 `NodeSpec`: taints (5).
#[derive(Clone, PartialEq, prost::Message)]
struct NodeSpecMessage {
    #[prost(message, repeated, tag = "5")]
    taints: Vec<TaintMessage>,
}

/// core/v1 `Taint`: key (1), value (2), effect (3), timeAdded (4).
#[derive(Clone, PartialEq, prost::Message)]
struct TaintMessage {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
    #[prost(string, tag = "3")]
    effect: String,
    #[prost(message, optional, tag = "4")]
    time_added: Option<Time>,
}

/// meta/v1 `Time`: seconds (1) and nanos (2) since the Unix epoch.
#[derive(Clone, PartialEq, prost::Message)]
struct Time {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The JSON form of a Node (`--storage-media-type=application/json`).
#[derive(serde::Deserialize)]
struct NodeJson {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: NodeSpecJson,
}

#[derive(Default, serde::Deserialize)]
struct NodeSpecJson {
    #[serde(default)]
    taints: Vec<Taint>,
}

/// A ConfigMap's name, namespace and `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMap {
    pub name: String,
    pub namespace: String,
    pub data: BTreeMap<String, String>,
}

/// A Node's name and taints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub taints: Vec<Taint>,
}

impl Node {
    /// The Node's taints without those its conditions set (`is_status_taint`): the ones an operator
    /// or kubeadm put there.
    pub fn operator_taints(self) -> Vec<Taint> {
        self.taints
            .into_iter()
            .filter(|t| !is_status_taint(&t.key))
            .collect()
    }
}

/// A core/v1 Taint, serialised as in the API (and in kubeadm's `nodeRegistration.taints`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: String,
    /// RFC 3339 in UTC, seconds precision (metav1.Time's JSON form); set for NoExecute taints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

/// Decodes a stored ConfigMap.
pub fn config_map(value: &[u8]) -> Result<ConfigMap, Error> {
    let message = match object::<ConfigMapMessage, ConfigMapMessage>(value, "ConfigMap")? {
        Ok(message) | Err(message) => message,
    };
    let meta = message.metadata.unwrap_or_default();
    Ok(ConfigMap {
        name: meta.name,
        namespace: meta.namespace,
        data: message.data,
    })
}

/// Decodes a stored Node.
pub fn node(value: &[u8]) -> Result<Node, Error> {
    match object::<NodeMessage, NodeJson>(value, "Node")? {
        Ok(message) => Ok(Node {
            name: message.metadata.unwrap_or_default().name,
            taints: message
                .spec
                .unwrap_or_default()
                .taints
                .into_iter()
                .map(taint)
                .collect::<Result<_, _>>()?,
        }),
        Err(json) => Ok(Node {
            name: json.metadata.unwrap_or_default().name,
            taints: json.spec.taints,
        }),
    }
}

fn taint(message: TaintMessage) -> Result<Taint, Error> {
    let time_added = match message.time_added {
        None => None,
        Some(t) => Some(rfc3339("timeAdded", t.seconds)?),
    };
    Ok(Taint {
        key: message.key,
        value: message.value,
        effect: message.effect,
        time_added,
    })
}

/// Taints the node lifecycle controller, the kubelet or a cloud provider sets and clears from the
/// Node's conditions (k8s.io/api core/v1/well_known_taints.go, except the operator's
/// `out-of-service`; k8s.io/cloud-provider api/well_known_taints.go). A backup taken while one was
/// set must not pin it on the restored node.
pub fn is_status_taint(key: &str) -> bool {
    const STATUS_TAINTS: [&str; 9] = [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/unschedulable",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/network-unavailable",
        "node.kubernetes.io/pid-pressure",
        "node.cloudprovider.kubernetes.io/uninitialized",
        "node.cloudprovider.kubernetes.io/shutdown",
    ];
    STATUS_TAINTS.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::super::{Error, TypeMeta, Unknown};
    use super::*;
    use prost::Message;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: "v1".into(),
                kind: kind.into(),
            }),
            raw,
            content_encoding: String::new(),
            content_type: String::new(),
        };
        [b"k8s\0".to_vec(), unknown.encode_to_vec()].concat()
    }

    fn stored_node() -> Vec<u8> {
        let node = NodeMessage {
            metadata: Some(ObjectMeta {
                name: "cp0".into(),
                namespace: String::new(),
            }),
            spec: Some(NodeSpecMessage {
                taints: vec![
                    TaintMessage {
                        key: "dedicated".into(),
                        value: "infra".into(),
                        effect: "NoSchedule".into(),
                        time_added: None,
                    },
                    TaintMessage {
                        key: "maintenance".into(),
                        value: String::new(),
                        effect: "NoExecute".into(),
                        time_added: Some(Time {
                            seconds: 1_700_000_000,
                            nanos: 5,
                        }),
                    },
                ],
            }),
        };
        envelope("Node", node.encode_to_vec())
    }

    #[test]
    fn reads_a_protobuf_node_with_its_taints() {
        let node = node(&stored_node()).unwrap();
        assert_eq!(node.name, "cp0");
        assert_eq!(
            node.taints,
            vec![
                Taint {
                    key: "dedicated".into(),
                    value: "infra".into(),
                    effect: "NoSchedule".into(),
                    time_added: None,
                },
                Taint {
                    key: "maintenance".into(),
                    value: String::new(),
                    effect: "NoExecute".into(),
                    time_added: Some("2023-11-14T22:13:20Z".into()),
                },
            ]
        );
    }

    #[test]
    fn reads_a_json_node_and_config_map() {
        let node = node(br#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"cp0"},"spec":{"taints":[{"key":"a","effect":"NoExecute","timeAdded":"2024-01-02T03:04:05Z"}]},"status":{}}"#).unwrap();
        assert_eq!(node.name, "cp0");
        assert_eq!(
            node.taints[0].time_added.as_deref(),
            Some("2024-01-02T03:04:05Z")
        );
        assert_eq!(node.taints[0].value, "");
        let map = config_map(br#" {"kind":"ConfigMap","metadata":{"name":"x","namespace":"kube-system"},"data":{"k":"v"}}"#).unwrap();
        assert_eq!(
            (map.name.as_str(), map.namespace.as_str()),
            ("x", "kube-system")
        );
        assert_eq!(map.data["k"], "v");
    }

    #[test]
    fn a_node_without_spec_has_no_taints() {
        let bare = envelope("Node", NodeMessage::default().encode_to_vec());
        assert_eq!(node(&bare).unwrap().taints, vec![]);
    }

    #[test]
    fn refuses_the_wrong_kind() {
        let err = config_map(&stored_node()).unwrap_err();
        assert!(
            matches!(&err, Error::WrongKind { expected: "ConfigMap", found } if found == "Node"),
            "{err}"
        );
        let err = node(br#"{"kind":"ConfigMap"}"#).unwrap_err();
        assert!(matches!(err, Error::WrongKind { .. }), "{err}");
    }

    #[test]
    fn malformed_protobuf_is_an_error_never_a_panic() {
        let good = stored_node();
        // Every truncation of a valid object: either a clean error or (at field boundaries) a
        // shorter object, never a panic.
        for len in 0..good.len() {
            let _ = node(&good[..len]);
        }
        // Every single-byte corruption.
        for i in 4..good.len() {
            for b in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = node(&bad);
                let _ = config_map(&bad);
            }
        }
        let cases: [(&str, Vec<u8>); 6] = [
            (
                "varint overflow",
                [b"k8s\0".to_vec(), vec![0x28], vec![0xff; 11]].concat(),
            ),
            (
                "length past the end",
                [b"k8s\0".to_vec(), vec![0x12, 0x7f, 0x01]].concat(),
            ),
            (
                "wrong wire type for typeMeta",
                [b"k8s\0".to_vec(), vec![0x08, 0x01]].concat(),
            ),
            (
                "huge length",
                [b"k8s\0".to_vec(), vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat(),
            ),
            ("group wire type", [b"k8s\0".to_vec(), vec![0x0b]].concat()),
            (
                "wrong wire type inside the Node",
                envelope("Node", vec![0x0a, 0x02, 0x08, 0x01]),
            ),
        ];
        for (what, bytes) in cases {
            assert!(
                matches!(node(&bytes), Err(Error::Protobuf { .. })),
                "{what}: {:?}",
                node(&bytes)
            );
        }
        // Deep nesting hits prost's recursion limit instead of the stack.
        let mut deep = vec![];
        for _ in 0..200 {
            let mut outer = vec![0x12];
            prost::encoding::encode_varint(deep.len() as u64, &mut outer);
            outer.extend_from_slice(&deep);
            deep = outer;
        }
        let _ = node(&envelope("Node", deep));
    }

    #[test]
    fn a_time_out_of_range_is_an_error() {
        let node_message = NodeMessage {
            metadata: None,
            spec: Some(NodeSpecMessage {
                taints: vec![TaintMessage {
                    key: "k".into(),
                    value: String::new(),
                    effect: "NoExecute".into(),
                    time_added: Some(Time {
                        seconds: i64::MAX,
                        nanos: 0,
                    }),
                }],
            }),
        };
        let err = node(&envelope("Node", node_message.encode_to_vec())).unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
    }

    #[test]
    fn status_taints_are_told_apart_from_the_operators() {
        assert!(is_status_taint("node.kubernetes.io/not-ready"));
        assert!(is_status_taint(
            "node.cloudprovider.kubernetes.io/uninitialized"
        ));
        assert!(!is_status_taint("node.kubernetes.io/out-of-service"));
        assert!(!is_status_taint("node-role.kubernetes.io/control-plane"));
    }
}
