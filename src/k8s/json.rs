//! Stored built-in objects back in the API's JSON form, decoded through the descriptors of
//! Kubernetes' published .proto files (src/k8s/proto, compiled by build.rs).
//!
//! Kubernetes names each .proto field after its JSON field (k8s.io/code-generator go-to-protobuf),
//! so the JSON of a message is its present fields by name, except for the types whose Go JSON form
//! is not their protobuf shape: meta/v1 `Time` and `MicroTime` (RFC 3339 strings), `Duration`
//! (Go's duration string), `IntOrString`, resource `Quantity` (a string), `RawExtension`,
//! `FieldsV1` and apiextensions `JSON` (embedded JSON), and the apiextensions `JSONSchemaPropsOr*`
//! unions. Bytes are base64, as encoding/json writes `[]byte`.

use std::sync::OnceLock;

use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Map, Value as Json};

use super::Error;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s.pb"));

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("build.rs compiled a valid descriptor set")
    })
}

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// The message of `kind` in API version `api_version` (`v1`, `apps/v1`, `rbac.authorization.k8s.io/v1`).
///
/// A group's protobuf package ends in `<short name>.<version>`: the group's first label
/// (`rbac` for rbac.authorization.k8s.io), `core` for the legacy group, `apiserverinternal` for
/// internal.apiserver.k8s.io (k8s.io/api/apiserverinternal/v1alpha1/doc.go).
fn message_of(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let short = match group {
        "" => "core",
        "internal.apiserver.k8s.io" => "apiserverinternal",
        other => other.split('.').next().unwrap_or(other),
    };
    let suffix = format!(".{short}.{version}.{kind}");
    pool().all_messages().find(|m| {
        m.full_name().ends_with(&suffix)
            && m.get_field_by_name("metadata")
                .is_some_and(|f| f.number() == 1)
    })
}

/// The JSON form (with apiVersion and kind) of the protobuf object `raw` of `kind`.
pub fn to_json(api_version: &str, kind: &str, raw: &[u8]) -> Result<Json, Error> {
    let descriptor = message_of(api_version, kind).ok_or_else(|| Error::UnknownType {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    })?;
    let message = DynamicMessage::decode(descriptor, raw).map_err(|source| Error::Protobuf {
        message: "object",
        source,
    })?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), api_version.into());
    object.insert("kind".into(), kind.into());
    if let Json::Object(fields) = message_json(&message)? {
        object.extend(fields);
    }
    Ok(Json::Object(object))
}

fn message_json(message: &DynamicMessage) -> Result<Json, Error> {
    let descriptor = message.descriptor();
    let field = |name: &str| {
        descriptor
            .get_field_by_name(name)
            .filter(|f| message.has_field(f))
            .map(|f| message.get_field(&f).into_owned())
    };
    match descriptor.full_name() {
        name if name == format!("{META}.Time") => {
            let seconds = field("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            return Ok(super::rfc3339("Time", seconds)?.into());
        }
        name if name == format!("{META}.MicroTime") => {
            let seconds = field("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            let nanos = field("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
            let whole = super::rfc3339("MicroTime", seconds)?;
            // Go's RFC3339Micro: always six fractional digits.
            let micros = nanos / 1000;
            return Ok(format!("{}.{micros:06}Z", whole.trim_end_matches('Z')).into());
        }
        name if name == format!("{META}.Duration") => {
            let nanos = field("duration").and_then(|v| v.as_i64()).unwrap_or(0);
            return Ok(go_duration(nanos).into());
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return Ok(match field("type").and_then(|v| v.as_i64()) {
                Some(1) => field("strVal")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
                    .into(),
                _ => field("intVal").and_then(|v| v.as_i32()).unwrap_or(0).into(),
            });
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            return Ok(field("string")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
                .into());
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => {
            return embedded(field("raw"));
        }
        name if name == format!("{META}.FieldsV1") => return embedded(field("Raw")),
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray" => {
            return match field("schema") {
                Some(schema) => value_json(&schema),
                None => value_json(&field("jSONSchemas").unwrap_or(Value::List(Vec::new()))),
            };
        }
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool" => {
            return match field("schema") {
                Some(schema) => value_json(&schema),
                None => Ok(field("allows")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false)
                    .into()),
            };
        }
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray" => {
            return match field("schema") {
                Some(schema) => value_json(&schema),
                None => value_json(&field("property").unwrap_or(Value::List(Vec::new()))),
            };
        }
        _ => {}
    }
    let mut out = Map::new();
    for (field, value) in message.fields() {
        out.insert(field.name().to_string(), value_json(value)?);
    }
    Ok(Json::Object(out))
}

/// Embedded JSON bytes (`raw`), or null when absent.
fn embedded(raw: Option<Value>) -> Result<Json, Error> {
    match raw.as_ref().and_then(Value::as_bytes) {
        Some(bytes) if !bytes.is_empty() => {
            serde_json::from_slice(bytes).map_err(|source| Error::Json {
                kind: "embedded object",
                source,
            })
        }
        _ => Ok(Json::Null),
    }
}

fn value_json(value: &Value) -> Result<Json, Error> {
    use base64::Engine as _;
    Ok(match value {
        Value::Bool(b) => (*b).into(),
        Value::I32(n) => (*n).into(),
        Value::I64(n) => (*n).into(),
        Value::U32(n) => (*n).into(),
        Value::U64(n) => (*n).into(),
        Value::F32(n) => (*n).into(),
        Value::F64(n) => (*n).into(),
        Value::String(s) => s.clone().into(),
        Value::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b).into(),
        Value::EnumNumber(n) => (*n).into(),
        Value::Message(m) => message_json(m)?,
        Value::List(items) => Json::Array(items.iter().map(value_json).collect::<Result<_, _>>()?),
        Value::Map(entries) => {
            let mut out = Map::new();
            for (key, value) in entries {
                let key = match key {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                out.insert(key, value_json(value)?);
            }
            Json::Object(out)
        }
    })
}

/// Go's `time.Duration.String()` for whole and fractional seconds: `1h2m3s`, `1.5s`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let (hours, minutes) = (n / 3_600_000_000_000, n / 60_000_000_000 % 60);
    let (seconds, fraction) = (n / 1_000_000_000 % 60, n % 1_000_000_000);
    let mut out = String::from(sign);
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&seconds.to_string());
    if fraction > 0 {
        out.push_str(format!(".{fraction:09}").trim_end_matches('0'));
    }
    out.push('s');
    out
}

/// The JSON form of a stored object, whatever its storage encoding.
pub fn object_json(value: &[u8]) -> Result<Json, Error> {
    match super::open(value)? {
        super::Stored::Protobuf {
            api_version,
            kind,
            raw,
        } => to_json(&api_version, &kind, &raw),
        super::Stored::Json(json) => serde_json::from_slice(json).map_err(|source| Error::Json {
            kind: "Kubernetes object",
            source,
        }),
    }
}

/// Metadata the API server sets and refuses or ignores from a client (k8s.io/apimachinery
/// pkg/apis/meta/v1/types.go: "Populated by the system. Read-only."): `kubectl apply` of an
/// object that still carries them fails on the resourceVersion or fights the server over them.
const SERVER_SET_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// `object` as `kubectl apply` takes it again: without the server-set metadata and without
/// `status`, which the status subresource owns and apply does not write.
pub fn for_apply(mut object: Json) -> Json {
    if let Some(fields) = object.as_object_mut() {
        fields.remove("status");
        if let Some(meta) = fields.get_mut("metadata").and_then(Json::as_object_mut) {
            for key in SERVER_SET_METADATA {
                meta.remove(*key);
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_in_the_descriptors_resolves_by_api_version() {
        for (api_version, kind) in [
            ("v1", "ConfigMap"),
            ("apps/v1", "Deployment"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole"),
            ("coordination.k8s.io/v1", "Lease"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            ("apiregistration.k8s.io/v1", "APIService"),
            ("internal.apiserver.k8s.io/v1alpha1", "StorageVersion"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ] {
            assert!(
                message_of(api_version, kind).is_some(),
                "{api_version} {kind}"
            );
        }
        assert!(message_of("v1", "NoSuchKind").is_none());
    }

    #[test]
    fn durations_read_as_go_prints_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(60_000_000_000), "1m0s");
    }
}
