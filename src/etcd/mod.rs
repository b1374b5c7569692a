//! The etcd domain: snapshot save over mTLS, and the native data-dir restore (bbolt, WAL, .snap).
//!
//! The restore reproduces `etcdutl snapshot restore` (3.5/3.6 semantics, which etcd 3.4 accepts):
//! same member and cluster IDs, byte-identical WAL and `.snap`, and a db with the same content,
//! patched copy-on-write so the restore costs one sequential write of the snapshot.

pub mod bbolt;
pub mod client;
pub mod keys;
pub mod member;
mod patch;
mod proto;
pub mod restore;
pub mod skeleton;
pub mod snap;
pub mod status;
pub mod stream;
pub mod wal;

use std::path::{Path, PathBuf};

pub use client::ClientError;
pub use member::{cluster_id, member_id, Cluster, Member};
pub use restore::{
    ensure_not_in_use, restore_from_file, restore_from_reader, RestoreOptions, Restored,
};
pub use status::{snapshot_status, Status};

/// Where etcd keeps its bbolt db below the data dir `data_dir`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member/snap/db")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),

    #[error("restore option {option}: {reason}. Correct the option and run the restore again")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },

    #[error("checking the data dir {}: it is not empty. Restore into a new or empty directory, or move the old data dir aside first", path.display())]
    DataDirNotEmpty { path: PathBuf },

    #[error("checking the WAL dir {}: it already exists. Choose a new --wal-dir or move the old one aside first", path.display())]
    WalDirExists { path: PathBuf },

    #[error("locking {}: a running etcd holds it. Stop etcd (for kubeadm: move etcd.yaml out of /etc/kubernetes/manifests and wait for the container to exit) and run again", path.display())]
    InUse { path: PathBuf },

    #[error("checking snapshot {}: it has no sha256 trailer ({size} bytes is not 32 bytes past a multiple of 512). If it is a copy of member/snap/db rather than a `snapshot save` file, pass --skip-hash-check", path.display())]
    MissingHash { path: PathBuf, size: u64 },

    #[error("verifying snapshot {}: its sha256 is {actual} but its trailer says {expected}; the file is damaged or truncated. Use another backup", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("reading snapshot {}: the bbolt db is damaged ({detail}). Take a new snapshot or use another backup", path.display())]
    Corrupt {
        path: PathBuf,
        detail: bbolt::Corruption,
    },

    #[error("{step} {}: {source}. Check the path, its permissions and the free space", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        step: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { step, path, source }
    }

    /// Wraps a db read error: corruption names the snapshot, I/O errors the step.
    pub(crate) fn from_read(
        step: &'static str,
        path: impl Into<PathBuf>,
        e: bbolt::ReadError,
    ) -> Error {
        match e {
            bbolt::ReadError::Corrupt(detail) => Error::Corrupt {
                path: path.into(),
                detail,
            },
            bbolt::ReadError::Io(source) => Error::Io {
                step,
                path: path.into(),
                source,
            },
            bbolt::ReadError::Scratch(source) => Error::Io {
                step: "reading the scratch dir's spill of",
                path: path.into(),
                source,
            },
        }
    }
}
