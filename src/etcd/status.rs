//! `snapshot status`: the figures `etcdutl snapshot status` prints, from a full checked walk.

use super::bbolt::{corrupt, Db, ReadError, Visit};
use super::keys::REVISION_KEY_LEN;
use super::skeleton::Skeletons;
use super::Error;
use std::fs::File;
use std::path::Path;

/// What `etcdutl snapshot status` reports (its JSON field names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// CRC-32C over each top-level bucket's name followed by its keys and values, in order.
    pub hash: u32,
    /// The main revision of the last key of bucket `key`.
    pub revision: i64,
    /// Keys of all top-level buckets.
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    /// Pages × page size, as `tx.Size()`.
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Computes the status of a snapshot or db file, checking the whole tree on the way.
pub fn snapshot_status(path: &Path) -> Result<Status, Error> {
    let file = File::open(path).map_err(Error::io("opening snapshot", path))?;
    let len = file
        .metadata()
        .map_err(Error::io("reading snapshot", path))?
        .len();
    let db = Db::open(&file, len).map_err(|e| Error::from_read("reading snapshot", path, e))?;
    status_of(&db).map_err(|e| Error::from_read("reading snapshot", path, e))
}

/// The status of an open db, from a walk over every page.
pub(crate) fn status_of(db: &Db<'_>) -> Result<Status, ReadError> {
    let mut hash = 0u32;
    let mut revision = 0i64;
    let mut total_key = 0u64;
    let mut in_key_bucket = false;
    db.walk(None, &mut |v| {
        match v.depth {
            0 => {
                in_key_bucket = top_level_bucket(db, &v)?;
                hash = crc32c::crc32c_append(hash, v.key);
            }
            1 => {
                // Go's bucket ForEach yields a nil value for a nested bucket.
                hash = crc32c::crc32c_append(hash, v.key);
                if !v.bucket {
                    hash = crc32c::crc32c_append(hash, v.value);
                }
                if in_key_bucket && v.key.len() >= 8 {
                    revision = main_revision(v.key);
                }
                total_key += 1;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(Status {
        hash,
        revision,
        total_key,
        total_size: db.meta.hwm * db.page_size as u64,
    })
}

/// The consistency check a restore runs before patching: the whole tree, checked as for
/// [`status_of`], through `skeletons` where they were recorded. Returns the main revision of the
/// last key of bucket `key` (0 when it is empty), which must be a revision key.
pub fn checked_revision(db: &Db<'_>, skeletons: Option<&Skeletons>) -> Result<i64, ReadError> {
    checked_walk(db, skeletons, &mut |_| Ok(()))
}

/// [`checked_revision`], handing `key_bucket` every visit of bucket `key`: its own entry in the
/// root bucket (depth 0), then its content.
pub(crate) fn checked_walk(
    db: &Db<'_>,
    skeletons: Option<&Skeletons>,
    key_bucket: &mut dyn FnMut(&Visit<'_>) -> Result<(), ReadError>,
) -> Result<i64, ReadError> {
    let mut in_key_bucket = false;
    let mut last_is_revision = true;
    let mut revision = 0i64;
    db.walk(skeletons, &mut |v| {
        match v.depth {
            0 => in_key_bucket = top_level_bucket(db, &v)?,
            1 if in_key_bucket => {
                // Only what etcd's status reads of the last key (its main revision): verify and
                // the restore keep to etcd's own checks; the readers of values need, and check,
                // each key's whole shape (`keys::revision_of`).
                last_is_revision = v.key.len() >= REVISION_KEY_LEN;
                if last_is_revision {
                    revision = main_revision(v.key);
                }
            }
            _ => {}
        }
        if in_key_bucket {
            key_bucket(&v)?;
        }
        Ok(())
    })?;
    if !last_is_revision {
        return Err(corrupt(
            None,
            "the last key of bucket `key` is shorter than an etcd revision key",
        )
        .into());
    }
    Ok(revision)
}

fn main_revision(key: &[u8]) -> i64 {
    i64::from_be_bytes(key[..8].try_into().expect("8 bytes"))
}

/// Refuses a top-level key that is not a bucket (etcd keeps everything in buckets); true for `key`.
fn top_level_bucket(db: &Db<'_>, v: &Visit<'_>) -> Result<bool, ReadError> {
    if !v.bucket {
        let name = String::from_utf8_lossy(v.key);
        return Err(corrupt(
            Some(db.meta.root),
            format!("top-level key {name:?} is not a bucket"),
        )
        .into());
    }
    Ok(v.key == b"key")
}

impl Status {
    /// etcdutl's `simple` output: `hash, revision, total keys, total size` (size in SI units).
    pub fn simple(&self) -> String {
        format!(
            "{:x}, {}, {}, {}",
            self.hash,
            self.revision,
            self.total_key,
            human_bytes(self.total_size)
        )
    }
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", units[e])
    } else {
        format!("{val:.0} {}", units[e])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_like_go_humanize() {
        assert_eq!(super::human_bytes(20480), "20 kB");
        assert_eq!(super::human_bytes(1_073_741_824), "1.1 GB");
        assert_eq!(super::human_bytes(5), "5 B");
    }
}
