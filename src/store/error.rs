//! Store errors: one variant per failing step, each naming the object (credentials stripped) and what
//! the operator can do about it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store URL {url}: {reason}. Use file:///path, a plain path, http(s)://host/path or s3://bucket/prefix")]
    Url { url: String, reason: String },

    #[error("object name \"{name}\": {reason}. Names are relative, /-separated paths")]
    Name { name: String, reason: &'static str },

    #[error("S3 store {url}: no credentials. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials)")]
    Credentials { url: String },

    #[error("TLS set-up: {what}: {reason}. Pass a PEM file of CA certificates (the store's CA file option or SSL_CERT_FILE)")]
    Tls { what: String, reason: String },

    #[error("{op} {url}: cannot reach the server: {reason}. Check the address, the network, that the server is running and, for https, the CA certificates")]
    Unreachable {
        op: &'static str,
        url: String,
        reason: String,
    },

    #[error("{op} {url}: more than {limit} redirects (a redirect loop?). Point the store URL at the final location")]
    Redirects {
        op: &'static str,
        url: String,
        limit: usize,
    },

    #[error("{op} {url}: the server answered {status}{detail}. {hint}")]
    Status {
        op: &'static str,
        url: String,
        status: u16,
        detail: String,
        hint: &'static str,
    },

    #[error("{url}: no such object. Check the name (`cpr list` shows what the store holds)")]
    NotFound { url: String },

    #[error("{op} {url}: the transfer broke off: {reason}. Check the network and the server, then run again")]
    Interrupted {
        op: &'static str,
        url: String,
        reason: String,
    },

    #[error("reading {url}: larger than the expected {limit} bytes; refusing the rest. Check that the URL serves the right object")]
    TooLarge { url: String, limit: u64 },

    #[error("reading {url}: the object changed on the server while it was being downloaded. Start again")]
    Changed { url: String },

    #[error("{op} {path}: {source}. Check that the path exists, its permissions and the free space there")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("store directory {} does not exist. Check the store path for a typo; a new store's directory is made by its first cpr backup", path.display())]
    NoDir { path: PathBuf },

    #[error("writing {}: it already exists{}. Bundle names have one-second resolution, so another backup of this node was taken in the same second; run the backup again", path.display(), if *unfinished { " as an upload still in progress" } else { "" })]
    Exists { path: PathBuf, unfinished: bool },

    #[error("writing {path}: the file system is full. Free space there or choose another store; the partial file was removed")]
    DiskFull { path: PathBuf },

    #[error("writing {url}: this store cannot create an object only if it is absent, which the nodes of a lost quorum need to agree on one restore point. Pin the restore point on every node instead (cpr restore --bundle NAME, boot: cpr.bundle=NAME), or use a directory or S3 store")]
    NoCreateIfAbsent { url: String },

    #[error("index {url}: {reason}. Fix or delete it: the next backup rewrites it, and listing falls back to the store's own listing where it can")]
    Index { url: String, reason: String },
}

impl Error {
    /// Whether trying the same step again may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Interrupted { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    /// `self`, the last of `attempts` failed attempts over `elapsed`, saying that the retries ran out
    /// (a recovery boot's `cpr.retries=N` allows more).
    pub(crate) fn retries_ran_out(mut self, attempts: u32, elapsed: Duration) -> Error {
        if attempts > 1 {
            let note = format!(
                " (the retries ran out: {attempts} attempts over {:.1} s)",
                elapsed.as_secs_f64()
            );
            match &mut self {
                Error::Unreachable { reason, .. } | Error::Interrupted { reason, .. } => {
                    reason.push_str(&note)
                }
                Error::Status { detail, .. } => detail.push_str(&note),
                _ => {}
            }
        }
        self
    }

    /// Local I/O errors, with "disk full" (and quota) made unmistakable.
    pub(crate) fn io(op: &'static str, path: PathBuf, source: io::Error) -> Error {
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::DiskFull { path },
            _ => Error::Io { op, path, source },
        }
    }

    /// The store error inside an `io::Error` from a store's reader or `Upload` (see `into_io`), or the
    /// I/O error itself, attributed to `op` on `url`.
    pub fn from_io(op: &'static str, url: &str, error: io::Error) -> Error {
        let reason = error.to_string();
        match error.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(inner)) => *inner,
            _ => Error::Interrupted {
                op,
                url: url.to_string(),
                reason,
            },
        }
    }

    /// Carries this error through `std::io::Write`, keeping it recoverable by downcasting.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            Error::DiskFull { .. } => io::ErrorKind::StorageFull,
            Error::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// An HTTP error status, with advice that depends on the status.
    pub(crate) fn status(op: &'static str, url: String, status: u16, detail: String) -> Error {
        let hint = match status {
            401 | 403 => "Check the credentials and the server's access rules",
            405 | 501 => "The server does not allow this method here: enable PUT/DELETE (WebDAV) or use a writable store",
            409 => "The server's state conflicts with the request (a missing bucket or parent collection?)",
            413 => "The server refuses objects this large (nginx: client_max_body_size)",
            408 | 429 | 500..=599 => "The server failed or is overloaded; try again later or check its logs",
            404 if detail.starts_with("NoSuchBucket") => {
                "Check the bucket name in the store URL and the endpoint and region, or create the bucket"
            }
            _ => "Check the store URL",
        };
        let detail = if detail.is_empty() {
            detail
        } else {
            format!(" ({detail})")
        };
        Error::Status {
            op,
            url,
            status,
            detail,
            hint,
        }
    }
}
