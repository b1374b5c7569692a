//! `cpr/manifest.json`, the first entry of every bundle: what the bundle holds and where it came from.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;

use super::Error;

pub const FORMAT_MAJOR: u32 = 1;
/// 1.1 added `files[].source` (files static pods read, restored in phase 1); 1.0 bundles lack it.
/// 1.2 added `snapshot.blake3` and the snapshot's BLAKE3 digest after the tar's end-of-archive
/// marker: restores check it instead of etcd's sha256 trailer, which backup checks as etcd streams.
pub const FORMAT_MINOR: u32 = 2;
pub const MANIFEST_PATH: &str = "cpr/manifest.json";
pub const SNAPSHOT_PATH: &str = "etcd/snapshot.db";
/// `snapshot.blake3` of a 1.2 bundle: the snapshot's BLAKE3 digest, as `b3sum` prints it, follows
/// the tar's end-of-archive marker inside the zstd stream. Readers of 1.0 and 1.1, GNU tar and
/// Python's tarfile stop at the marker, so it is no entry they could refuse; zstd's checksum, age
/// and minisign still cover it.
pub const SNAPSHOT_BLAKE3_END_OF_ARCHIVE: &str = "end-of-archive";

/// Bounds that keep a hostile manifest from driving allocation or disk use.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub const MAX_FILES: usize = 10_000;
pub const MAX_FILE_BYTES: u64 = 64 << 20;
pub const MAX_TOTAL_FILE_BYTES: u64 = 512 << 20;
/// etcd's own backend quota tops out at 8 GiB by default and 100 GiB by recommendation.
pub const MAX_SNAPSHOT_BYTES: u64 = 128 << 30;
/// etcd snapshots end in sha256(db); the db itself is a whole number of bbolt pages.
pub const SNAPSHOT_TRAILER_BYTES: u64 = 32;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `MAJOR.MINOR`: readers refuse another major; a newer minor only adds fields.
    pub format_version: String,
    pub cpr_version: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub cluster: Cluster,
    pub node: Node,
    pub etcd: Etcd,
    /// In bundle order, which is also the order of the tar entries after the manifest.
    pub files: Vec<FileEntry>,
    pub snapshot: SnapshotEntry,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_subnet: Option<String>,
    /// The apiVersion of the backed-up ClusterConfiguration (`kubeadm.k8s.io/v1beta3`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeadm_api_version: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    pub hostname: String,
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cri_socket: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Etcd {
    pub version: String,
    pub member_name: String,
    /// Lowercase hex, as `etcdctl member list` prints it.
    pub member_id: String,
    pub cluster_id: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub members: Vec<Member>,
    /// The revision etcd reported when the snapshot began; the snapshot holds at least this revision.
    pub revision: i64,
    pub db_size: u64,
    /// The data dir from the etcd static pod manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_learner: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Relative, `/`-separated: `etc/kubernetes/pki/ca.key`.
    pub path: String,
    pub size: u64,
    /// Permission bits only.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Lowercase hex.
    pub sha256: String,
    /// Why a file outside kubeadm's own set is in the bundle: the static pod flag or hostPath volume
    /// that names it (`kube-apiserver.yaml: --encryption-provider-config`). Phase 1 of a restore puts
    /// these back before `kubeadm init`. Absent for kubeadm's files and in format 1.0 bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotEntry {
    pub path: String,
    /// Bytes as etcd streamed them, sha256 trailer included.
    pub size: u64,
    /// Where the snapshot's BLAKE3 digest is: [`SNAPSHOT_BLAKE3_END_OF_ARCHIVE`], the only place.
    /// Absent in format 1.0 and 1.1 bundles, whose snapshots are checked by their sha256 trailer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

impl SnapshotEntry {
    /// The snapshot of a bundle this cpr writes: `size` bytes, followed by its BLAKE3 digest.
    pub fn new(size: u64) -> SnapshotEntry {
        SnapshotEntry {
            path: SNAPSHOT_PATH.to_string(),
            size,
            blake3: Some(SNAPSHOT_BLAKE3_END_OF_ARCHIVE.to_string()),
        }
    }

    /// What follows the end-of-archive marker: `b3sum`'s line for the snapshot.
    pub fn blake3_line(&self, digest: &blake3::Hash) -> String {
        format!("{}  {}\n", digest.to_hex(), self.path)
    }
}

impl Manifest {
    pub fn format_version() -> String {
        format!("{FORMAT_MAJOR}.{FORMAT_MINOR}")
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses and checks a manifest read from an untrusted bundle.
    pub fn from_json(bytes: &[u8], bundle: &str) -> Result<Manifest, Error> {
        let probe: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Error::ManifestParse {
                bundle: bundle.to_string(),
                message: e.to_string(),
            })?;
        let version = probe
            .get("formatVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        check_format_version(version, bundle)?;
        let manifest: Manifest =
            serde_json::from_value(probe).map_err(|e| Error::ManifestParse {
                bundle: bundle.to_string(),
                message: e.to_string(),
            })?;
        manifest.validate(bundle)?;
        Ok(manifest)
    }

    /// The structural rules every reader relies on before it extracts a single byte.
    pub fn validate(&self, bundle: &str) -> Result<(), Error> {
        let invalid = |message: String| Error::ManifestInvalid {
            bundle: bundle.to_string(),
            message,
        };
        if self.files.len() > MAX_FILES {
            return Err(invalid(format!(
                "{} files listed, more than the limit of {MAX_FILES}",
                self.files.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut total: u64 = 0;
        for file in &self.files {
            check_entry_path(&file.path)
                .map_err(|why| invalid(format!("file {:?}: {why}", file.path)))?;
            if file.path == MANIFEST_PATH || file.path == self.snapshot.path {
                return Err(invalid(format!(
                    "file {:?} collides with a reserved entry",
                    file.path
                )));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(invalid(format!("file {:?} is listed twice", file.path)));
            }
            if file.size > MAX_FILE_BYTES {
                return Err(invalid(format!(
                    "file {:?} claims {} bytes, more than the limit of {MAX_FILE_BYTES}",
                    file.path, file.size
                )));
            }
            if file.mode & !0o777 != 0 {
                return Err(invalid(format!(
                    "file {:?} has mode {:o}; only permission bits are allowed",
                    file.path, file.mode
                )));
            }
            if file.source.as_ref().is_some_and(|s| s.len() > 1024) {
                return Err(invalid(format!(
                    "file {:?} has a source longer than 1024 bytes",
                    file.path
                )));
            }
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "file {:?} has a malformed sha256",
                    file.path
                )));
            }
            total += file.size;
        }
        if total > MAX_TOTAL_FILE_BYTES {
            return Err(invalid(format!(
                "files add up to {total} bytes, more than the limit of {MAX_TOTAL_FILE_BYTES}"
            )));
        }
        if self.snapshot.path != SNAPSHOT_PATH {
            return Err(invalid(format!(
                "snapshot path is {:?}, expected {SNAPSHOT_PATH:?}",
                self.snapshot.path
            )));
        }
        if let Some(at) = self.snapshot.blake3.as_deref() {
            if at != SNAPSHOT_BLAKE3_END_OF_ARCHIVE {
                return Err(invalid(format!(
                    "the snapshot's BLAKE3 digest is at {at:?}, expected {SNAPSHOT_BLAKE3_END_OF_ARCHIVE:?}"
                )));
            }
        }
        if self.snapshot.size > MAX_SNAPSHOT_BYTES
            || self.snapshot.size % 512 != SNAPSHOT_TRAILER_BYTES
        {
            return Err(invalid(format!(
                "snapshot size {} is not a bbolt db plus etcd's 32-byte sha256 trailer (or exceeds {MAX_SNAPSHOT_BYTES})",
                self.snapshot.size
            )));
        }
        Ok(())
    }
}

fn check_format_version(version: &str, bundle: &str) -> Result<(), Error> {
    let major = version
        .split_once('.')
        .and_then(|(major, minor)| minor.parse::<u32>().ok().and(major.parse::<u32>().ok()));
    match major {
        Some(FORMAT_MAJOR) => Ok(()),
        _ => Err(Error::UnsupportedVersion {
            bundle: bundle.to_string(),
            found: version.to_string(),
            supported: Manifest::format_version(),
        }),
    }
}

/// A bundle path must name a file strictly below the extraction root.
pub fn check_entry_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > 1024 {
        return Err("path is empty or longer than 1024 bytes");
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("path contains a NUL or a backslash");
    }
    if path.ends_with('/') || path.contains("//") {
        return Err("path is not a normalized file path");
    }
    if path.starts_with('/') {
        return Err("path is absolute");
    }
    // Split by hand: `Path::components` silently drops inner `.` components.
    if path.split('/').any(|part| part == "." || part == "..") {
        return Err("path contains a '.' or '..' component");
    }
    Ok(())
}
