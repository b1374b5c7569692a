//! `cpr get`: one object from a snapshot, as `kubectl apply` takes it again.

use crate::etcd::keys::{current_values, Revisions};
use crate::k8s::{self, registry};

use super::Error;

/// What the operator asked for: `RESOURCE [NAMESPACE/]NAME`.
pub struct Wanted<'a> {
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl Wanted<'_> {
    /// `RESOURCE [NAMESPACE/]NAME`, as the operator gave it.
    fn describe(&self) -> String {
        match self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.resource, self.name),
            None => format!("{} {}", self.resource, self.name),
        }
    }
}

/// The object `wanted` in `snapshot` (a snapshot or db file, or a bundle's snapshot as it streams)
/// under `prefix`, without the fields the server sets (`k8s::for_apply`); `source` names the bundle
/// or file in errors. Only the wanted object's values are kept.
pub fn get<S: Revisions>(
    snapshot: S,
    source: &str,
    prefix: &str,
    wanted: &Wanted<'_>,
) -> Result<serde_json::Value, crate::Error>
where
    crate::Error: From<S::Error>,
{
    let prefix = registry::normalise_prefix(prefix);
    let matches = |key: &[u8]| {
        registry::locate(&prefix, key).is_some_and(|l| {
            registry::names(wanted.resource, &l.resource)
                && l.namespace.as_deref() == wanted.namespace
                && l.name == wanted.name
        })
    };
    let found = current_values(snapshot, &matches)?;
    let (key, value) = match found.len() {
        1 => found.into_iter().next().expect("one value"),
        0 => {
            return Err(Error::NoObject {
                source_name: source.to_string(),
                object: wanted.describe(),
                prefix,
            }
            .into())
        }
        _ => {
            return Err(Error::AmbiguousObject {
                source_name: source.to_string(),
                object: wanted.describe(),
                keys: found
                    .keys()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect(),
            }
            .into())
        }
    };
    let object = k8s::object_json(&value).map_err(|e| Error::ObjectUnreadable {
        source_name: source.to_string(),
        object: wanted.describe(),
        key: String::from_utf8_lossy(&key).into_owned(),
        source: Box::new(e),
    })?;
    Ok(k8s::for_apply(object))
}
