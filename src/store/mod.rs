//! Where bundles live: a directory, an HTTP(S) server, or an S3 bucket.
//!
//! A store holds objects by name (`<cluster>/<node>/<UTC stamp>.tar.zst[.age]`, plus `.minisig` beside
//! a signed bundle) and a `<cluster>/<node>/index.json` written after each complete upload, so that a
//! read-only server can answer "latest" without listing. Stores know bundle *names*, never contents.

use std::io::{Read, Write};
use std::time::SystemTime;

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
    /// Objects whose names start with `prefix`, in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error>;
    /// A streaming reader of the whole object; transient failures are retried and resumed inside.
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, Error>;
    /// A writer whose data becomes visible under `name` only when `Upload::commit` succeeds.
    fn create(&self, name: &str) -> Result<Box<dyn Upload>, Error>;
    fn delete(&self, name: &str) -> Result<(), Error>;
}

/// An object being written. Dropping it without `commit` leaves nothing visible under the final name.
pub trait Upload: Write + Send {
    fn commit(self: Box<Self>) -> Result<ObjectInfo, Error>;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store {location}: {message}")]
    Io { location: String, message: String },
}

#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub ca_file: Option<std::path::PathBuf>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
}

pub fn open(url: &str, _options: &StoreOptions) -> Result<Box<dyn Store>, Error> {
    Err(Error::Io {
        location: url.to_string(),
        message: "not yet".to_string(),
    })
}

/// Bundle names in the store for a cluster and node (either may be open), oldest first.
pub fn bundles(
    store: &dyn Store,
    cluster: Option<&str>,
    node: Option<&str>,
) -> Result<Vec<String>, Error> {
    let prefix = cluster.map(|c| format!("{c}/")).unwrap_or_default();
    let mut names: Vec<String> = store
        .list(&prefix)?
        .into_iter()
        .filter_map(|o| crate::bundle::name::BundleName::parse(&o.name).ok())
        .filter(|n| node.is_none_or(|node| n.node == node))
        .map(|n| n.to_string())
        .collect();
    names.sort_by_key(|n| n.rsplit('/').next().map(String::from));
    Ok(names)
}
