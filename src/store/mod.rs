//! Where bundles live: a directory, an HTTP(S) server, or an S3 bucket.
//!
//! A store holds objects by name (`<cluster>/<node>/<UTC stamp>.tar.zst[.age]`, plus `.minisig` beside
//! a signed bundle) and a `<cluster>/<node>/index.json` written after each complete upload, so that a
//! read-only server can answer "latest" without listing. Stores know bundle *names*, never contents.
//!
//! The API is synchronous; network stores run their requests on the process runtime (`crate::rt`), so
//! a synchronous writer can feed a request body that a runtime worker is sending.

mod dir;
mod error;
mod http;
pub mod index;
mod net;
mod options;
mod progress;
pub mod retention;
mod s3;

use std::io::{Read, Write};
use std::time::SystemTime;

pub use error::Error;
pub use options::{S3Credentials, StoreOptions};
pub use progress::human_bytes;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// The operations every store kind offers. Names are `/`-separated and relative to the store's root.
pub trait Store: Send + Sync {
    /// The store's location for messages; never contains credentials.
    fn location(&self) -> String;
    /// Objects whose names start with `prefix`, in no particular order. An HTTP server cannot list: it
    /// answers from the `index.json` of the prefix's directory.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error>;
    /// A streaming reader of the whole object; transient failures are retried and resumed inside.
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, Error> {
        self.open_limited(name, None)
    }
    /// `open`, refusing an object (or a server's body) larger than `max_size` instead of reading on:
    /// pass the size from the listing or index when it is known.
    fn open_limited(
        &self,
        name: &str,
        max_size: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, Error>;
    /// A writer whose data becomes visible under `name` only when `Upload::commit` succeeds.
    fn create(&self, name: &str) -> Result<Box<dyn Upload>, Error>;
    /// `create` for an object that must not replace another of the same name (a bundle: names have
    /// one-second resolution, so two backups of a node in one second pick the same one). A directory
    /// store refuses with `Error::Exists`; network stores replace, as their PUT does.
    fn create_new(&self, name: &str) -> Result<Box<dyn Upload>, Error> {
        self.create(name)
    }
    /// Removes the unfinished uploads under `prefix` that no writer works on any more (left by a
    /// crash or a power cut), or with `dry_run` only finds them; returns their names. Stores that
    /// keep no such objects where cpr can see them return none.
    fn remove_dead_uploads(&self, _prefix: &str, _dry_run: bool) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
    /// Removes the object; removing one that does not exist is not an error.
    fn delete(&self, name: &str) -> Result<(), Error>;
    /// Writes a small object only if none exists under `name` (the first of several writers wins, the
    /// others see its content); returns whether this call wrote it. Stores without such a write (a
    /// plain HTTP server) refuse.
    fn create_if_absent(&self, name: &str, _data: &[u8]) -> Result<bool, Error> {
        Err(Error::NoCreateIfAbsent {
            url: format!("{}/{name}", self.location().trim_end_matches('/')),
        })
    }
}

/// An object being written. Dropping it without `commit` leaves nothing visible under the final name.
/// A failed `write` returns an `io::Error` whose inner error is the `store::Error` that says why.
pub trait Upload: Write + Send {
    fn commit(self: Box<Self>) -> Result<ObjectInfo, Error>;
}

/// Opens the store at `url`: `file:///path` or a plain path, `http://` / `https://`, `s3://bucket/prefix`.
pub fn open(url: &str, opts: &StoreOptions) -> Result<Box<dyn Store>, Error> {
    let bad = |reason: &str| Error::Url {
        url: net::redact_str(url),
        reason: reason.to_string(),
    };
    if url.is_empty() {
        return Err(bad("empty"));
    }
    let Some((scheme, _)) = url.split_once("://") else {
        return Ok(Box::new(dir::DirStore::new(
            url.into(),
            opts.progress_interval,
        )));
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|()| bad("not a local absolute path"))?;
            Ok(Box::new(dir::DirStore::new(path, opts.progress_interval)))
        }
        "http" | "https" => Ok(Box::new(http::HttpStore::new(parsed, opts)?)),
        "s3" => Ok(Box::new(s3::S3Store::new(&parsed, opts)?)),
        _ => Err(bad("unknown scheme")),
    }
}

/// Rejects names that could leave the store's root or hide among temporary files, for every store kind
/// alike, so a name that works in one store works in all.
fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.starts_with('/') {
        Some("absolute")
    } else if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        Some("empty, `.` or `..` path component")
    } else if name.ends_with(dir::PART_SUFFIX) {
        Some("ends in .part, which marks unfinished uploads")
    } else if name.chars().any(|c| c.is_control() || c == '\\') {
        Some("control character or backslash")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Name {
            name: name.escape_debug().to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The bundles of the matching nodes, oldest first (names end in a UTC stamp, so this is time order
/// across clusters too). With both `cluster` and `node` this reads that node's index alone, which is
/// all a read-only HTTP server offers; otherwise the store's listing finds the nodes.
pub fn bundles(
    store: &dyn Store,
    cluster: Option<&str>,
    node: Option<&str>,
) -> Result<Vec<index::IndexEntry>, Error> {
    let nodes: Vec<(String, String)> = match (cluster, node) {
        (Some(cluster), Some(node)) => vec![(cluster.to_string(), node.to_string())],
        _ => {
            let prefix = cluster.map(|c| format!("{c}/")).unwrap_or_default();
            let mut nodes: Vec<(String, String)> = store
                .list(&prefix)?
                .into_iter()
                .filter_map(|o| crate::bundle::name::BundleName::parse(&o.name).ok())
                .filter(|n| node.is_none_or(|node| n.node == node))
                .map(|n| (n.cluster, n.node))
                .collect();
            nodes.sort();
            nodes.dedup();
            nodes
        }
    };
    let mut entries = Vec::new();
    for (cluster, node) in &nodes {
        entries.extend(index::list_bundles(store, cluster, node)?);
    }
    // A node asked for by name brings the bundles it had under its names before each rename
    // (A renamed B, then C: C's bundles name B, B's name A).
    if node.is_some() {
        let mut seen = nodes;
        let mut unread = 0;
        while unread < entries.len() {
            let mut former: Vec<(String, String)> = entries[unread..]
                .iter()
                .filter_map(|e| {
                    let name = crate::bundle::name::BundleName::parse(&e.name).ok()?;
                    Some((name.cluster, e.renamed_from.clone()?))
                })
                .filter(|n| !seen.contains(n))
                .collect();
            former.sort();
            former.dedup();
            unread = entries.len();
            for (cluster, old) in former {
                entries.extend(index::list_bundles(store, &cluster, &old)?);
                seen.push((cluster, old));
            }
        }
    }
    entries.sort_by(|a, b| stamp(&a.name).cmp(stamp(&b.name)));
    Ok(entries)
}

fn stamp(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_renamed_twice_brings_the_bundles_of_both_its_former_names() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            dir::DirStore::new(dir.path().to_path_buf(), std::time::Duration::from_secs(60));
        for (node, stamp, from) in [
            ("a", "20260101T000000Z", None),
            ("b", "20260201T000000Z", Some("a")),
            ("c", "20260301T000000Z", Some("b")),
        ] {
            let name = format!("k/{node}/{stamp}.tar.zst");
            std::fs::create_dir_all(dir.path().join("k").join(node)).unwrap();
            std::fs::write(dir.path().join(&name), b"bundle").unwrap();
            let entry = index::IndexEntry {
                name,
                size: 6,
                created: time::OffsetDateTime::UNIX_EPOCH,
                node: node.to_string(),
                revision: None,
                encrypted: false,
                signed: false,
                sha256: None,
                blake3: None,
                renamed_from: from.map(str::to_string),
                etcd_members: Vec::new(),
                extra: Default::default(),
            };
            index::append(&store, "k", node, entry).unwrap();
        }
        let names: Vec<String> = bundles(&store, Some("k"), Some("c"))
            .unwrap()
            .into_iter()
            .map(|e| e.node)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
