//! `cpr inspect --objects`: the Kubernetes objects in a snapshot, from one walk over etcd's `key`
//! bucket. Each revision's metadata is read as it passes and replaces the key's earlier one, so
//! memory is one small record per live key and no value is kept.

use std::collections::BTreeMap;
use std::io::Write;

use crate::etcd::keys::{Revision, Revisions};
use crate::k8s::{self, registry, Encoding};
use crate::store::human_bytes;

/// How a value is stored, as far as cpr can tell without a key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "storage", content = "detail")]
pub enum Storage {
    Protobuf,
    Json,
    /// Encrypted at rest: `<provider>:<version>:<key name>`, never decoded.
    Encrypted(String),
    /// No Kubernetes object: what is wrong with it.
    Undecodable(String),
}

/// One object: where it lives and what its metadata says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    pub mod_revision: i64,
    pub size: u64,
    #[serde(flatten)]
    pub storage: Storage,
}

/// Counts and sizes of one resource in one namespace (`None`: cluster-scoped).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub objects: u64,
    pub bytes: u64,
    pub largest: u64,
    pub encrypted: u64,
    pub undecodable: u64,
}

impl Tally {
    fn add(&mut self, object: &Object) {
        self.objects += 1;
        self.bytes += object.size;
        self.largest = self.largest.max(object.size);
        self.encrypted += u64::from(matches!(object.storage, Storage::Encrypted(_)));
        self.undecodable += u64::from(matches!(object.storage, Storage::Undecodable(_)));
    }
}

/// The objects of a snapshot under one `--etcd-prefix`, by etcd key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub prefix: String,
    pub objects: BTreeMap<Vec<u8>, Object>,
    /// Current keys outside the prefix, or under it without an object's shape.
    pub other_keys: u64,
}

/// What the inventory keeps of one revision: the etcd key and, for an object, its metadata — never
/// the value, so a streamed read (`etcd::stream`) keeps little of each.
#[derive(Clone, PartialEq, prost::Message)]
struct Seen {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bool, tag = "2")]
    deleted: bool,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(uint64, tag = "4")]
    size: u64,
    #[prost(string, optional, tag = "5")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    created: Option<String>,
    #[prost(enumeration = "StoredAs", tag = "7")]
    storage: i32,
    /// An encrypted value's provider, or why a value is no object.
    #[prost(string, tag = "8")]
    detail: String,
}

/// The `Storage` variant of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
enum StoredAs {
    Protobuf = 0,
    Json = 1,
    Encrypted = 2,
    Undecodable = 3,
}

/// Reads the inventory of `source` (a snapshot or bbolt db file, or a bundle's snapshot as it
/// streams); `prefix` is kube-apiserver's `--etcd-prefix`.
pub fn read<S: Revisions>(source: S, prefix: &str) -> Result<Inventory, S::Error> {
    let prefix = registry::normalise_prefix(prefix);
    let mut objects = BTreeMap::new();
    let mut others = std::collections::BTreeSet::new();
    source.each(
        &|_| true,
        &mut |revision| seen(&prefix, revision),
        &mut |seen| {
            if seen.deleted {
                objects.remove(&seen.key);
                others.remove(&seen.key);
                return;
            }
            match registry::locate(&prefix, &seen.key) {
                Some(location) => {
                    let object = object(location, &seen);
                    objects.insert(seen.key, object);
                }
                None => {
                    others.insert(seen.key);
                }
            }
        },
    )?;
    Ok(Inventory {
        prefix,
        objects,
        other_keys: others.len() as u64,
    })
}

fn seen(prefix: &str, revision: Revision) -> Seen {
    let (key, mod_revision, value) = match revision {
        Revision::Put {
            key,
            mod_revision,
            value,
        } => (key, mod_revision, value),
        Revision::Delete { key } => {
            return Seen {
                key,
                deleted: true,
                ..Seen::default()
            }
        }
    };
    let mut seen = Seen {
        mod_revision,
        size: value.len() as u64,
        ..Seen::default()
    };
    if registry::locate(prefix, &key).is_some() {
        match k8s::metadata(&value) {
            Ok(meta) => {
                seen.set_storage(match meta.encoding {
                    Encoding::Protobuf => StoredAs::Protobuf,
                    Encoding::Json => StoredAs::Json,
                });
                seen.uid = Some(meta.uid).filter(|u| !u.is_empty());
                seen.created = meta.created;
            }
            Err(k8s::Error::Encrypted { provider }) => {
                seen.set_storage(StoredAs::Encrypted);
                seen.detail = provider;
            }
            Err(e) => {
                seen.set_storage(StoredAs::Undecodable);
                seen.detail = e.to_string();
            }
        }
    }
    seen.key = key;
    seen
}

fn object(location: registry::Location, seen: &Seen) -> Object {
    Object {
        resource: location.resource,
        namespace: location.namespace,
        name: location.name,
        uid: seen.uid.clone(),
        creation_timestamp: seen.created.clone(),
        mod_revision: seen.mod_revision,
        size: seen.size,
        storage: match seen.storage() {
            StoredAs::Protobuf => Storage::Protobuf,
            StoredAs::Json => Storage::Json,
            StoredAs::Encrypted => Storage::Encrypted(seen.detail.clone()),
            StoredAs::Undecodable => Storage::Undecodable(seen.detail.clone()),
        },
    }
}

impl Inventory {
    /// Per resource, per namespace (`""` for cluster-scoped objects).
    pub fn tallies(&self) -> BTreeMap<&str, BTreeMap<&str, Tally>> {
        let mut out: BTreeMap<&str, BTreeMap<&str, Tally>> = BTreeMap::new();
        for object in self.objects.values() {
            out.entry(&object.resource)
                .or_default()
                .entry(object.namespace.as_deref().unwrap_or(""))
                .or_default()
                .add(object);
        }
        out
    }

    /// Objects per resource.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for object in self.objects.values() {
            *out.entry(object.resource.clone()).or_default() += 1;
        }
        out
    }

    /// The objects that are no Kubernetes object (encrypted ones are not counted here).
    pub fn undecodable(&self) -> impl Iterator<Item = (&[u8], &Object)> {
        self.objects
            .iter()
            .filter(|(_, o)| matches!(o.storage, Storage::Undecodable(_)))
            .map(|(k, o)| (k.as_slice(), o))
    }

    /// The inventory as JSON, streamed to `out`: the items are not copied into a JSON tree first,
    /// which for a large snapshot would cost several times the inventory itself.
    pub fn write_json(&self, out: &mut dyn Write) -> std::io::Result<()> {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct View<'a> {
            prefix: &'a str,
            objects: usize,
            other_keys: u64,
            resources: Vec<serde_json::Value>,
            items: Vec<&'a Object>,
        }
        let resources = self
            .tallies()
            .into_iter()
            .map(|(resource, namespaces)| {
                let mut total = Tally::default();
                let namespaces: Vec<serde_json::Value> = namespaces
                    .into_iter()
                    .map(|(namespace, tally)| {
                        total.objects += tally.objects;
                        total.bytes += tally.bytes;
                        total.largest = total.largest.max(tally.largest);
                        total.encrypted += tally.encrypted;
                        total.undecodable += tally.undecodable;
                        let mut v = serde_json::to_value(&tally).expect("a tally serialises");
                        v["namespace"] = namespace.into();
                        v
                    })
                    .collect();
                let mut v = serde_json::to_value(&total).expect("a tally serialises");
                v["resource"] = resource.into();
                v["namespaces"] = namespaces.into();
                v
            })
            .collect();
        let view = View {
            prefix: &self.prefix,
            objects: self.objects.len(),
            other_keys: self.other_keys,
            resources,
            items: self.objects.values().collect(),
        };
        serde_json::to_writer(&mut *out, &view)?;
        writeln!(out)
    }

    /// A table per resource and namespace, then one line per object.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{} objects under {} ({} other keys)",
            self.objects.len(),
            self.prefix,
            self.other_keys
        )?;
        writeln!(
            out,
            "\n{:<48} {:<24} {:>8} {:>10} {:>10} {:>9} {:>11}",
            "RESOURCE", "NAMESPACE", "OBJECTS", "BYTES", "LARGEST", "ENCRYPTED", "UNDECODABLE"
        )?;
        for (resource, namespaces) in self.tallies() {
            for (namespace, t) in namespaces {
                writeln!(
                    out,
                    "{:<48} {:<24} {:>8} {:>10} {:>10} {:>9} {:>11}",
                    resource,
                    if namespace.is_empty() { "-" } else { namespace },
                    t.objects,
                    human_bytes(t.bytes),
                    human_bytes(t.largest),
                    t.encrypted,
                    t.undecodable
                )?;
            }
        }
        writeln!(
            out,
            "\n{:<48} {:<24} {:<40} {:<36} {:<20} {:>10} {:>10}  STORAGE",
            "RESOURCE", "NAMESPACE", "NAME", "UID", "CREATED", "REVISION", "SIZE"
        )?;
        let mut listed: Vec<&Object> = self.objects.values().collect();
        listed.sort_by(|a, b| {
            (&a.resource, &a.namespace, &a.name).cmp(&(&b.resource, &b.namespace, &b.name))
        });
        for o in listed {
            let storage = match &o.storage {
                Storage::Protobuf => "protobuf".to_string(),
                Storage::Json => "json".to_string(),
                Storage::Encrypted(p) => format!("encrypted ({p})"),
                Storage::Undecodable(why) => format!("undecodable: {why}"),
            };
            writeln!(
                out,
                "{:<48} {:<24} {:<40} {:<36} {:<20} {:>10} {:>10}  {storage}",
                o.resource,
                o.namespace.as_deref().unwrap_or("-"),
                o.name,
                o.uid.as_deref().unwrap_or("-"),
                o.creation_timestamp.as_deref().unwrap_or("-"),
                o.mod_revision,
                o.size
            )?;
        }
        Ok(())
    }
}
