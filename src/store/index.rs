//! `<cluster>/<node>/index.json`: the bundles of one node, oldest first, newest last, written through the
//! store's own create/commit after each complete upload. A read-only HTTP server answers "which bundles,
//! which is newest" from it alone; stores that can list are reconciled with it, so a bundle whose index
//! update was lost still shows and an entry whose object is gone does not.
//!
//! Bundle names embed a UTC stamp (`<cluster>/<node>/YYYYMMDDTHHMMSSZ.…`), so name order is time order.
//! This module knows names and the metadata below, never the bundle format.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::{check_name, Error, Store};

pub const INDEX_VERSION: u32 = 1;
const INDEX_FILE: &str = "index.json";
const SIGNATURE_SUFFIX: &str = ".minisig";
const ENCRYPTED_SUFFIX: &str = ".age";
/// An index lists a node's bundles; anything larger is not an index.
const MAX_INDEX_SIZE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub version: u32,
    pub bundles: Vec<IndexEntry>,
}

/// What `cpr list` shows of a bundle without opening it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The object name, `<cluster>/<node>/<stamp>.tar.zst[.age]`.
    pub name: String,
    pub size: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub node: String,
    /// The etcd revision of the snapshot; unknown for a bundle found in a listing but not in the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default)]
    pub signed: bool,
    /// sha256 of the stored object (ciphertext when encrypted), as earlier cpr versions recorded it;
    /// checked when the bundle is read back: it catches damage the bundle's own checks cannot see,
    /// such as a zstd frame-header bit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// BLAKE3 of the stored object, checked the same way: what cpr records now, in place of
    /// `sha256` (see `bundle::sign::IndexDigest`). An older cpr ignores it and checks nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The node's name before a restore onto a new address renamed it: that name's bundles are this
    /// node's older ones (`cpr list --node` shows them with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// The names of the etcd members when the bundle was taken, when there were several: which
    /// control-plane nodes should have bundles of their own (`cpr list` says which do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_members: Vec<String>,
    /// Fields a newer cpr wrote, kept when this one rewrites the index.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `<cluster>/<node>/index.json`, refusing a cluster or node that is not a single name component.
pub fn index_name(cluster: &str, node: &str) -> Result<String, Error> {
    Ok(format!("{}/{INDEX_FILE}", node_dir(cluster, node)?))
}

fn node_dir(cluster: &str, node: &str) -> Result<String, Error> {
    let dir = format!("{cluster}/{node}");
    check_name(&dir)?;
    if dir.matches('/').count() != 1 {
        return Err(Error::Name {
            name: dir,
            reason: "cluster and node names cannot contain `/`",
        });
    }
    Ok(dir)
}

/// The index of a node; an absent index is an empty one.
pub fn read(store: &dyn Store, cluster: &str, node: &str) -> Result<Index, Error> {
    read_dir(store, &node_dir(cluster, node)?)
}

/// The index in `dir` (`""` is the store's root).
pub(crate) fn read_dir(store: &dyn Store, dir: &str) -> Result<Index, Error> {
    let name = if dir.is_empty() {
        INDEX_FILE.to_string()
    } else {
        format!("{dir}/{INDEX_FILE}")
    };
    let url = format!("{}/{name}", store.location().trim_end_matches('/'));
    let mut text = Vec::new();
    match store.open_limited(&name, Some(MAX_INDEX_SIZE)) {
        Ok(mut reader) => reader
            .read_to_end(&mut text)
            .map_err(|e| Error::from_io("reading", &url, e))?,
        Err(Error::NotFound { .. }) => {
            return Ok(Index {
                version: INDEX_VERSION,
                bundles: Vec::new(),
            })
        }
        Err(e) => return Err(e),
    };
    let index: Index = serde_json::from_slice(&text).map_err(|e| Error::Index {
        url: url.clone(),
        reason: format!("not a cpr index: {e}"),
    })?;
    if index.version != INDEX_VERSION {
        return Err(Error::Index {
            url,
            reason: format!(
                "version {} (this cpr reads version {INDEX_VERSION}); use a newer cpr",
                index.version
            ),
        });
    }
    Ok(index)
}

fn write(store: &dyn Store, cluster: &str, node: &str, mut index: Index) -> Result<(), Error> {
    index.bundles.sort_by(|a, b| a.name.cmp(&b.name));
    let name = index_name(cluster, node)?;
    let url = format!("{}/{name}", store.location().trim_end_matches('/'));
    let mut text = serde_json::to_vec_pretty(&index).map_err(|e| Error::Index {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    let mut upload = store.create(&name)?;
    upload
        .write_all(&text)
        .map_err(|e| Error::from_io("writing", &url, e))?;
    upload.commit()?;
    Ok(())
}

/// Records a bundle after its upload completed; an entry of the same name is replaced.
pub fn append(
    store: &dyn Store,
    cluster: &str,
    node: &str,
    entry: IndexEntry,
) -> Result<(), Error> {
    let mut index = read(store, cluster, node)?;
    index.bundles.retain(|e| e.name != entry.name);
    index.bundles.push(entry);
    write(store, cluster, node, index)
}

/// Drops the named bundles from the index (after they were deleted, or to hide them).
pub fn remove(store: &dyn Store, cluster: &str, node: &str, names: &[&str]) -> Result<(), Error> {
    let mut index = read(store, cluster, node)?;
    let before = index.bundles.len();
    index.bundles.retain(|e| !names.contains(&e.name.as_str()));
    if index.bundles.len() == before {
        return Ok(());
    }
    write(store, cluster, node, index)
}

/// The bundles of a node, newest last: the store's listing (on an HTTP server, the index itself) joined
/// with the index's metadata. Listed bundles missing from the index are included with what their names
/// tell; index entries whose object is gone are left out, with a warning.
pub fn list_bundles(
    store: &dyn Store,
    cluster: &str,
    node: &str,
) -> Result<Vec<IndexEntry>, Error> {
    let dir = node_dir(cluster, node)?;
    let prefix = format!("{dir}/");
    let listed: Vec<_> = store
        .list(&prefix)?
        .into_iter()
        .filter(|o| !o.name[prefix.len()..].contains('/'))
        .collect();
    let index = match read(store, cluster, node) {
        Ok(index) => index.bundles,
        Err(e @ Error::Index { .. }) => {
            log::warn!("{e}");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let names: HashSet<&str> = listed.iter().map(|o| o.name.as_str()).collect();
    let mut indexed: BTreeMap<&str, &IndexEntry> = BTreeMap::new();
    for entry in &index {
        if names.contains(entry.name.as_str()) {
            indexed.insert(&entry.name, entry);
        } else {
            log::warn!(
                "{}: the index lists {} but the store has no such object; ignoring it",
                store.location(),
                entry.name
            );
        }
    }
    let mut bundles = Vec::new();
    for object in &listed {
        let Some(created) = bundle_stamp(&object.name[prefix.len()..]) else {
            continue;
        };
        let entry = match indexed.get(object.name.as_str()) {
            Some(&entry) => IndexEntry {
                size: object.size,
                ..entry.clone()
            },
            None => IndexEntry {
                name: object.name.clone(),
                size: object.size,
                created,
                node: node.to_string(),
                revision: None,
                encrypted: object.name.ends_with(ENCRYPTED_SUFFIX),
                signed: names.contains(format!("{}{SIGNATURE_SUFFIX}", object.name).as_str()),
                sha256: None,
                blake3: None,
                renamed_from: None,
                etcd_members: Vec::new(),
                extra: BTreeMap::new(),
            },
        };
        bundles.push(entry);
    }
    bundles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(bundles)
}

/// The creation time in a bundle's file name, or `None` for anything that is not a bundle (the index,
/// signatures, foreign files).
fn bundle_stamp(file_name: &str) -> Option<OffsetDateTime> {
    if file_name.ends_with(SIGNATURE_SUFFIX) {
        return None;
    }
    let stamp = file_name.get(..16)?;
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    PrimitiveDateTime::parse(stamp, format)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_bundle_names_only() {
        let t = bundle_stamp("20240229T235959Z.tar.zst.age").unwrap();
        assert_eq!(t.to_string(), "2024-02-29 23:59:59.0 +00:00:00");
        assert_eq!(bundle_stamp("20240229T235959Z.tar.zst.minisig"), None);
        assert_eq!(bundle_stamp("index.json"), None);
        assert_eq!(bundle_stamp("20241301T000000Z.tar.zst"), None);
    }

    #[test]
    fn node_dir_is_two_components() {
        assert_eq!(index_name("c", "n").unwrap(), "c/n/index.json");
        assert!(index_name("c/x", "n").is_err());
        assert!(index_name("..", "n").is_err());
        assert!(index_name("c", "").is_err());
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"{"name":"c/n/20240101T000000Z.tar.zst","size":1,"created":"2024-01-01T00:00:00Z",
            "node":"n","revision":7,"encrypted":false,"signed":true,"future":{"x":1}}"#;
        let entry: IndexEntry = serde_json::from_str(text).unwrap();
        assert_eq!(entry.revision, Some(7));
        let again = serde_json::to_value(&entry).unwrap();
        assert_eq!(again["future"]["x"], 1);
    }
}
