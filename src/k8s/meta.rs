//! The metadata every stored object carries, whatever its type: apiVersion and kind from the
//! envelope (or the JSON), and from `ObjectMeta` the name, namespace, uid and creation time.
//!
//! Every top-level built-in type has `metadata` as field 1 (k8s.io/api */generated.proto), and
//! meta/v1 `ObjectMeta` numbers name 1, namespace 3, uid 5, creationTimestamp 8
//! (k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto), so one message reads them all.

use super::{decode, open, rfc3339, Error, Stored};

#[derive(Clone, PartialEq, prost::Message)]
struct WithMeta {
    #[prost(message, optional, tag = "1")]
    metadata: Option<MetaMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetaMessage {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(string, tag = "5")]
    uid: String,
    #[prost(message, optional, tag = "8")]
    creation_timestamp: Option<Time>,
}

/// meta/v1 `Time`: seconds (1) since the Unix epoch; its JSON form has no fraction.
#[derive(Clone, PartialEq, prost::Message)]
struct Time {
    #[prost(int64, tag = "1")]
    seconds: i64,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonObject {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: JsonMeta,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    creation_timestamp: Option<String>,
}

/// How kube-apiserver stored an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Protobuf,
    Json,
}

/// An object's type and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub encoding: Encoding,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// RFC 3339 in UTC, as the API shows `creationTimestamp`.
    pub created: Option<String>,
}

/// Reads the type and identity of a stored object without decoding the rest of it.
pub fn metadata(value: &[u8]) -> Result<Metadata, Error> {
    match open(value)? {
        Stored::Protobuf {
            api_version,
            kind,
            raw,
        } => {
            let meta = decode::<WithMeta>(&raw, "ObjectMeta")?
                .metadata
                .unwrap_or_default();
            let created = meta
                .creation_timestamp
                .map(|t| rfc3339("creationTimestamp", t.seconds))
                .transpose()?;
            Ok(Metadata {
                encoding: Encoding::Protobuf,
                api_version,
                kind,
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
                created,
            })
        }
        Stored::Json(json) => {
            let object: JsonObject =
                serde_json::from_slice(json).map_err(|source| Error::Json {
                    kind: "Kubernetes object",
                    source,
                })?;
            Ok(Metadata {
                encoding: Encoding::Json,
                api_version: object.api_version,
                kind: object.kind,
                name: object.metadata.name,
                namespace: object.metadata.namespace,
                uid: object.metadata.uid,
                created: object.metadata.creation_timestamp,
            })
        }
    }
}
