//! The keys of a snapshot as etcd's mvcc store holds them, read natively (no etcd process).
//!
//! etcd's mvcc store keeps every revision in bbolt bucket `key`: the bbolt key is the revision
//! (8 bytes main, `_`, 8 bytes sub; a deletion adds `t`) and the value an `mvccpb.KeyValue`
//! (etcd api/mvccpb/kv.proto: key = 1, mod_revision = 3, value = 5). Revisions ascend, so the last
//! revision met for an etcd key is its current value, unless it is a deletion. The walk reads page
//! by page (see `bbolt`), so memory is what the caller keeps plus a few pages whatever the db size.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use super::bbolt::{corrupt, Corruption, Db};
use super::status::checked_walk;
use super::Error;

/// `mvccpb.KeyValue` with only its key: the value (field 5) is skipped without a copy.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyOnly {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

/// `mvccpb.KeyValue`: key (1), mod_revision (3) and value (5).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub(crate) mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) value: Vec<u8>,
}

/// etcd's revision keys (server/storage/mvcc/revision.go): 8 bytes of main revision, `_`, 8 bytes
/// of sub revision; a deletion adds `t` (`markedRevBytesLen`, `markTombstone`).
pub(crate) const REVISION_KEY_LEN: usize = 17;
const TOMBSTONE_KEY_LEN: usize = 18;

/// One revision of an etcd key, in revision order.
pub enum Revision {
    Put {
        key: Vec<u8>,
        mod_revision: i64,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
}

/// The revision that element `key`, `value` of bucket `key` (on page `page`) records, if `wanted`
/// accepts its etcd key; what is wrong with the element when it records none.
pub(crate) fn revision_of(
    page: u64,
    key: &[u8],
    value: &[u8],
    wanted: &dyn Fn(&[u8]) -> bool,
) -> Result<Option<Revision>, Corruption> {
    let tombstone = key.len() == TOMBSTONE_KEY_LEN && key[REVISION_KEY_LEN] == b't';
    if !(key.len() == REVISION_KEY_LEN || tombstone) || key[8] != b'_' {
        return Err(corrupt(
            Some(page),
            format!(
                "bucket `key` holds key {}, which is no etcd revision (8 bytes, `_`, 8 bytes, `t` for a deletion)",
                hex::encode(key)
            ),
        ));
    }
    let bad = |e: prost::DecodeError| {
        corrupt(
            Some(page),
            format!(
                "bucket `key`, revision {}: not an mvccpb.KeyValue ({e})",
                hex::encode(key)
            ),
        )
    };
    let etcd_key = <KeyOnly as prost::Message>::decode(value).map_err(bad)?.key;
    if !wanted(&etcd_key) {
        return Ok(None);
    }
    if tombstone {
        return Ok(Some(Revision::Delete { key: etcd_key }));
    }
    let kv = <KeyValue as prost::Message>::decode(value).map_err(bad)?;
    Ok(Some(Revision::Put {
        key: kv.key,
        mod_revision: kv.mod_revision,
        value: kv.value,
    }))
}

/// Hands every revision in bucket `key` of the snapshot (or db) at `path` whose etcd key `wanted`
/// accepts to `visit`, oldest first; values of other keys are not copied.
pub fn each_revision(
    path: &Path,
    wanted: &dyn Fn(&[u8]) -> bool,
    visit: &mut dyn FnMut(Revision),
) -> Result<(), Error> {
    let step = "reading snapshot";
    let file = File::open(path).map_err(Error::io(step, path))?;
    let len = file.metadata().map_err(Error::io(step, path))?.len();
    // A snapshot's sha256 trailer lies past the db's last page, which Db::open does not read.
    let db = Db::open(&file, len).map_err(|e| Error::from_read(step, path, e))?;
    // The checks verify and the restore make, so that a db one refuses is refused here too.
    checked_walk(&db, None, &mut |v| {
        if v.depth == 1 && !v.bucket {
            if let Some(revision) = revision_of(v.page, v.key, v.value, wanted)? {
                visit(revision);
            }
        }
        Ok(())
    })
    .map_err(|e| Error::from_read(step, path, e))?;
    Ok(())
}

/// Where the revisions of bucket `key` come from: a snapshot or db file read in place (a path), or
/// a snapshot streaming out of a bundle (`etcd::stream`).
pub trait Revisions {
    type Error;

    /// Hands `visit` what `map` makes of every revision whose etcd key `wanted` accepts, oldest
    /// first. A stream keeps `map`'s records, not the revisions, until it knows which are live.
    fn each<T: prost::Message + Default>(
        self,
        wanted: &(dyn Fn(&[u8]) -> bool + Sync),
        map: &mut (dyn FnMut(Revision) -> T + Send),
        visit: &mut dyn FnMut(T),
    ) -> Result<(), Self::Error>;
}

impl Revisions for &Path {
    type Error = Error;

    fn each<T: prost::Message + Default>(
        self,
        wanted: &(dyn Fn(&[u8]) -> bool + Sync),
        map: &mut (dyn FnMut(Revision) -> T + Send),
        visit: &mut dyn FnMut(T),
    ) -> Result<(), Error> {
        each_revision(self, wanted, &mut |revision| visit(map(revision)))
    }
}

/// A revision as a record (what `etcd::stream` keeps until it knows which are live): the etcd key,
/// its mod revision and value; no value for a deletion.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub mod_revision: i64,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub value: Option<Vec<u8>>,
}

impl From<Revision> for Record {
    fn from(revision: Revision) -> Record {
        match revision {
            Revision::Put {
                key,
                mod_revision,
                value,
            } => Record {
                key,
                mod_revision,
                value: Some(value),
            },
            Revision::Delete { key } => Record {
                key,
                mod_revision: 0,
                value: None,
            },
        }
    }
}

/// The current value of every etcd key for which `wanted` is true, in `source`. A key deleted at
/// its last revision is absent.
pub fn current_values<S: Revisions>(
    source: S,
    wanted: &(dyn Fn(&[u8]) -> bool + Sync),
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, S::Error> {
    let mut values = BTreeMap::new();
    source.each(
        wanted,
        &mut Record::from,
        &mut |record| match record.value {
            Some(value) => {
                values.insert(record.key, value);
            }
            None => {
                values.remove(&record.key);
            }
        },
    )?;
    Ok(values)
}
