//! The Kubernetes object model as etcd stores it: where an object lives (`/registry/…` keys), the
//! storage encodings kube-apiserver writes (the `k8s\0` protobuf envelope, JSON, `k8s:enc:` values
//! encrypted at rest) and the few objects cpr reads. Pure functions over the bytes handed to them:
//! this module reads no file and talks to no server.
//!
//! Protobuf is decoded with prost (already a dependency, through etcd-client and for the kubeadm
//! config): each message is a struct naming only the fields cpr reads, with the field numbers of
//! Kubernetes' `generated.proto` files; prost skips every other field, and refuses truncated
//! input, overlong varints, wrong wire types and nesting beyond its recursion limit with an error,
//! never a panic. A hand-written wire reader would have to do all of that again.

mod core;
mod json;
mod meta;
pub mod registry;

pub use self::core::{config_map, is_status_taint, node, ConfigMap, Node, Taint};
pub use self::json::{for_apply, object_json};
pub use self::meta::{metadata, Encoding, Metadata};

/// k8s.io/apimachinery/pkg/runtime/serializer/protobuf/protobuf.go: every protobuf-encoded object
/// starts with these four bytes.
const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// k8s.io/apiserver/pkg/server/options/encryptionconfig/config.go: a value encrypted at rest starts
/// with `k8s:enc:<provider>:<version>:<key name>:` (aescbc, aesgcm, secretbox, kms).
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

/// What is wrong with a stored value. The caller names the key it came from and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("it is encrypted at rest by kube-apiserver (provider prefix k8s:enc:{provider}:), as the cluster's EncryptionConfiguration encrypts this resource; cpr does not decrypt the snapshot's Secrets/ConfigMaps")]
    Encrypted { provider: String },
    #[error("it is neither a protobuf (k8s\\0) nor a JSON Kubernetes object")]
    NotAnObject,
    #[error("its protobuf {message} does not decode: {source}")]
    Protobuf {
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("its JSON does not decode as a {kind}: {source}")]
    Json {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("it holds a {found:?}, not a {expected}")]
    WrongKind {
        expected: &'static str,
        found: String,
    },
    #[error("its protobuf envelope uses content encoding {0:?}, which cpr does not read")]
    ContentEncoding(String),
    #[error("it is a {api_version} {kind}, a type cpr has no protobuf definition of (src/k8s/proto holds the API groups' storage versions); read it with etcdctl, or update src/k8s/proto")]
    UnknownType { api_version: String, kind: String },
    #[error("its field {field} is out of range ({value})")]
    OutOfRange { field: &'static str, value: String },
}

/// The resources cpr reads, as kube-apiserver names their etcd directories
/// (k8s.io/kubernetes/pkg/registry/<group>/<resource>/storage: `ResourcePrefix`; Nodes keep the
/// historic name `minions`, pkg/registry/core/node/storage/storage.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    ConfigMaps,
    Nodes,
    DaemonSets,
    Deployments,
}

impl Resource {
    fn dir(self) -> &'static str {
        match self {
            Resource::ConfigMaps => "configmaps",
            Resource::Nodes => "minions",
            Resource::DaemonSets => "daemonsets",
            Resource::Deployments => "deployments",
        }
    }

    /// The etcd key of object `name` (in `namespace` for namespaced resources) under `prefix`
    /// (kube-apiserver's `--etcd-prefix`, `/registry` by default).
    pub fn key(self, prefix: &str, namespace: Option<&str>, name: &str) -> String {
        let prefix = prefix.trim_end_matches('/');
        match namespace {
            Some(ns) => format!("{prefix}/{}/{ns}/{name}", self.dir()),
            None => format!("{prefix}/{}/{name}", self.dir()),
        }
    }
}

/// A stored object with its envelope opened: protobuf bytes of the named kind, or JSON.
enum Stored<'a> {
    Protobuf {
        api_version: String,
        kind: String,
        raw: Vec<u8>,
    },
    Json(&'a [u8]),
}

/// k8s.io/apimachinery/pkg/runtime/generated.proto `Unknown`.
#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
    #[prost(string, tag = "3")]
    content_encoding: String,
    /// Empty for the storage encoding: `raw` is protobuf when the envelope is.
    #[prost(string, tag = "4")]
    content_type: String,
}

/// k8s.io/apimachinery/pkg/runtime/generated.proto `TypeMeta`.
#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

/// Opens the storage envelope of `value` without decoding the object itself.
fn open(value: &[u8]) -> Result<Stored<'_>, Error> {
    if let Some(body) = value.strip_prefix(PROTOBUF_MAGIC) {
        let unknown: Unknown = decode(body, "runtime.Unknown envelope")?;
        if !unknown.content_encoding.is_empty() {
            return Err(Error::ContentEncoding(unknown.content_encoding));
        }
        let type_meta = unknown.type_meta.unwrap_or_default();
        return Ok(Stored::Protobuf {
            api_version: type_meta.api_version,
            kind: type_meta.kind,
            raw: unknown.raw,
        });
    }
    if let Some(rest) = value.strip_prefix(ENCRYPTED_PREFIX) {
        return Err(Error::Encrypted {
            provider: provider(rest),
        });
    }
    if value.trim_ascii_start().first() == Some(&b'{') {
        return Ok(Stored::Json(value));
    }
    Err(Error::NotAnObject)
}

/// `<provider>:<version>:<key name>` of an encrypted value (without `k8s:enc:`), printable ASCII only.
fn provider(rest: &[u8]) -> String {
    let mut colons = 0;
    let end = rest
        .iter()
        .take(128)
        .position(|&b| {
            colons += usize::from(b == b':');
            colons == 3 || !b.is_ascii_graphic()
        })
        .unwrap_or(rest.len().min(128));
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// metav1.Time's JSON form: `t.UTC().Format(time.RFC3339)`, whole seconds; `field` names it in
/// the error.
fn rfc3339(field: &'static str, seconds: i64) -> Result<String, Error> {
    let out_of_range = || Error::OutOfRange {
        field,
        value: seconds.to_string(),
    };
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|_| out_of_range())?
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| out_of_range())
}

fn decode<M: prost::Message + Default>(bytes: &[u8], message: &'static str) -> Result<M, Error> {
    M::decode(bytes).map_err(|source| Error::Protobuf { message, source })
}

/// Decodes a stored object of `kind`: its protobuf message `P` or its JSON form `J`.
fn object<P, J>(value: &[u8], kind: &'static str) -> Result<Result<P, J>, Error>
where
    P: prost::Message + Default,
    J: serde::de::DeserializeOwned,
{
    match open(value)? {
        Stored::Protobuf {
            kind: found, raw, ..
        } => {
            if found != kind {
                return Err(Error::WrongKind {
                    expected: kind,
                    found,
                });
            }
            Ok(Ok(decode(&raw, kind)?))
        }
        Stored::Json(json) => {
            #[derive(serde::Deserialize)]
            struct Kind {
                #[serde(default)]
                kind: String,
            }
            let found: Kind =
                serde_json::from_slice(json).map_err(|source| Error::Json { kind, source })?;
            if found.kind != kind {
                return Err(Error::WrongKind {
                    expected: kind,
                    found: found.kind,
                });
            }
            let object =
                serde_json::from_slice(json).map_err(|source| Error::Json { kind, source })?;
            Ok(Err(object))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kube_apiserver_layout() {
        assert_eq!(
            Resource::ConfigMaps.key("/registry/", Some("kube-system"), "kube-proxy"),
            "/registry/configmaps/kube-system/kube-proxy"
        );
        assert_eq!(
            Resource::Nodes.key("/registry", None, "cp0"),
            "/registry/minions/cp0"
        );
        assert_eq!(
            Resource::DaemonSets.key("/k8s", Some("kube-system"), "kube-proxy"),
            "/k8s/daemonsets/kube-system/kube-proxy"
        );
    }

    #[test]
    fn encrypted_values_name_their_provider() {
        for (value, provider) in [
            (
                &b"k8s:enc:aescbc:v1:key1:\x8a\x01garbage"[..],
                "aescbc:v1:key1",
            ),
            (b"k8s:enc:secretbox:v1:k:", "secretbox:v1:k"),
            (b"k8s:enc:kms:v2:vault:\x00", "kms:v2:vault"),
            (b"k8s:enc:aesgcm", "aesgcm"),
            (b"k8s:enc:a\x00b", "a"),
        ] {
            match open(value) {
                Err(Error::Encrypted { provider: p }) => assert_eq!(p, provider),
                _ => panic!("{value:?} was not reported as encrypted"),
            }
        }
        let text = open(b"k8s:enc:aescbc:v1:key1:x").err().unwrap().to_string();
        assert!(text.contains("k8s:enc:aescbc:v1:key1:"), "{text}");
        assert!(text.contains("encrypted at rest"), "{text}");
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        assert!(matches!(open(b""), Err(Error::NotAnObject)));
        assert!(matches!(open(b"\x00\x01"), Err(Error::NotAnObject)));
        assert!(matches!(open(b"k8s"), Err(Error::NotAnObject)));
    }
}
