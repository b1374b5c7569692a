//! The operations: `backup`, and (phase 1, phase 2 of a recovery) `restore` and `finish`.

pub mod backup;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, more than the {limit} a bundle admits per file; it does not belong in a control-plane backup")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("no etcd client certificate under {pki} (looked for etcd/healthcheck-client and apiserver-etcd-client). Pass --cacert, --cert and --key")]
    NoClientCertificate { pki: PathBuf },
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    #[error(transparent)]
    Etcd(#[from] crate::etcd::Error),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl Error {
    /// The exit code of the step that failed underneath, so scripts see the same code either way.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Read { .. } | Error::TooLarge { .. } | Error::NoClientCertificate { .. } => 6,
            Error::Node(_) => 6,
            Error::Etcd(_) => 5,
            Error::Bundle(_) => 4,
            Error::Store(_) => 3,
        }
    }
}
