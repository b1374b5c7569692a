//! The bundle FORMAT (version 1): a tar stream compressed with zstd.
//!
//! Entry order: `cpr/manifest.json`, then every file of the manifest in its order, then
//! `etcd/snapshot.db` exactly as etcd streamed it (sha256 trailer included). Readers trust nothing
//! until it has been checked against the manifest; see `reader`. Around the format, `crypt` encrypts
//! a stored bundle (age) and `sign` signs its stored bytes (minisign).

pub mod crypt;
pub mod keyfile;
pub mod manifest;
pub mod name;
pub mod reader;
pub mod sign;
mod trailer;
pub mod writer;

pub use manifest::{FileEntry, Manifest, SnapshotEntry};
pub use reader::{
    blake3_to_end, read_bundle, read_manifest, Discard, Extract, FrameChecksum, Sink,
};
pub use writer::{write_bundle, WriteOptions, WriteStats};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bundle {bundle}: reading the archive failed at {at}: {source}. The bundle is truncated or corrupt; use an older bundle (`cpr list`)")]
    Read {
        bundle: String,
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle {bundle}: the first entry must be {}, found {found:?}. This is not a cpr bundle, or it is damaged", manifest::MANIFEST_PATH)]
    NoManifest { bundle: String, found: String },
    #[error("bundle {bundle}: the manifest is not valid JSON of the bundle format ({message}). The bundle is damaged or was not written by cpr")]
    ManifestParse { bundle: String, message: String },
    #[error("bundle {bundle}: the manifest is invalid: {message}. Refusing to read further")]
    ManifestInvalid { bundle: String, message: String },
    #[error("bundle {bundle}: format version {found:?} is not supported (this cpr reads {supported}). Use the cpr release that wrote it, or a newer cpr")]
    UnsupportedVersion {
        bundle: String,
        found: String,
        supported: String,
    },
    #[error("bundle {bundle}: entry {path:?}: {why}. The bundle does not match its manifest; refusing it")]
    UnexpectedEntry {
        bundle: String,
        path: String,
        why: String,
    },
    #[error("bundle {bundle}: {path} has sha256 {actual}, the manifest says {expected}. The bundle is corrupt or was tampered with; use another bundle")]
    DigestMismatch {
        bundle: String,
        path: String,
        expected: String,
        actual: String,
    },
    #[error("bundle {bundle}: the etcd snapshot's sha256 trailer does not match its contents. The snapshot is corrupt; use another bundle")]
    SnapshotTrailer { bundle: String },
    #[error("bundle {bundle}: the etcd snapshot has BLAKE3 digest {actual}, but after the end of the archive {found}. The bundle is corrupt or was tampered with; use another bundle")]
    SnapshotDigest {
        bundle: String,
        actual: String,
        /// What the end of the archive holds instead of b3sum's line for `actual`.
        found: String,
    },
    #[error("bundle {bundle}: writing {path} failed: {source}. Check the free space and permissions where the bundle goes (the store, or the staging directory on restore), then run again")]
    Write {
        bundle: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle {bundle}: the etcd snapshot stream ended after {got} of {expected} bytes. etcd stopped sending; check etcd's health and run the backup again")]
    SnapshotShort {
        bundle: String,
        got: u64,
        expected: u64,
    },
    #[error("invalid bundle name {name:?}: {why}")]
    Name { name: String, why: String },
    #[error(transparent)]
    Key(#[from] keyfile::KeyError),
    #[error("bundle {bundle} is age-encrypted: pass --identity FILE (or restore.identity in the config file) with the key `cpr keygen` wrote")]
    NeedIdentity { bundle: String },
    #[error("bundle {bundle} is encrypted to other recipients than the given identity; pass the identity whose recipient the backup used (backup --encrypt-to)")]
    WrongIdentity { bundle: String },
    #[error("bundle {bundle}: decryption failed ({why}). The bundle is corrupt or was tampered with; use another bundle")]
    Decrypt { bundle: String, why: String },
    #[error("bundle {bundle} has no signature ({bundle}.minisig) but a verify key is configured; refusing it. Use a signed bundle, or sign backups with --sign-key")]
    Unsigned { bundle: String },
    #[error("bundle {bundle}: signature refused: {rejection}. Use another bundle; if none verifies, check --verify-key")]
    Signature {
        bundle: String,
        rejection: sign::Rejection,
    },
    #[error("bundle {bundle}: the stored object has {kind} {actual}, the store's index recorded {expected}. The bundle is corrupt; use another bundle")]
    ObjectDigest {
        bundle: String,
        kind: sign::IndexDigest,
        expected: String,
        actual: String,
    },
}

impl Error {
    /// True when this bundle is damaged or not trustworthy, so an older one is worth trying; false
    /// for what would fail alike for every bundle (a missing or wrong key, a full disk).
    pub fn is_bad_bundle(&self) -> bool {
        !matches!(
            self,
            Error::Key(_)
                | Error::NeedIdentity { .. }
                | Error::WrongIdentity { .. }
                | Error::Write { .. }
        )
    }
}
