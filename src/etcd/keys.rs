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

use super::bbolt::{corrupt, Db};
use super::Error;

/// `mvccpb.KeyValue` with only its key: the value (field 5) is skipped without a copy.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyOnly {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

/// `mvccpb.KeyValue`: key (1), mod_revision (3) and value (5).
#[derive(Clone, PartialEq, prost::Message)]
struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
}

/// A revision key that records a deletion ends in `t` (etcd server/storage/mvcc/revision.go).
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
    let mut in_key_bucket = false;
    db.walk(None, &mut |v| {
        match v.depth {
            0 => in_key_bucket = v.key == b"key",
            1 if in_key_bucket && !v.bucket => {
                let bad = |e: prost::DecodeError| {
                    corrupt(
                        None,
                        format!(
                            "bucket `key`, revision {}: not an mvccpb.KeyValue ({e})",
                            hex::encode(v.key)
                        ),
                    )
                };
                let key = <KeyOnly as prost::Message>::decode(v.value)
                    .map_err(bad)?
                    .key;
                if !wanted(&key) {
                    return Ok(());
                }
                if v.key.len() == TOMBSTONE_KEY_LEN && v.key.last() == Some(&b't') {
                    visit(Revision::Delete { key });
                } else {
                    let kv = <KeyValue as prost::Message>::decode(v.value).map_err(bad)?;
                    visit(Revision::Put {
                        key: kv.key,
                        mod_revision: kv.mod_revision,
                        value: kv.value,
                    });
                }
            }
            _ => {}
        }
        Ok(())
    })
    .map_err(|e| Error::from_read(step, path, e))?;
    Ok(())
}

/// The current value of every etcd key for which `wanted` is true, in the snapshot (or db) at
/// `path`. A key deleted at its last revision is absent.
pub fn current_values(
    path: &Path,
    wanted: &dyn Fn(&[u8]) -> bool,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Error> {
    let mut values = BTreeMap::new();
    each_revision(path, wanted, &mut |revision| match revision {
        Revision::Put { key, value, .. } => {
            values.insert(key, value);
        }
        Revision::Delete { key } => {
            values.remove(&key);
        }
    })?;
    Ok(values)
}
