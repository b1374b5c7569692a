//! `cpr verify`: check every digest of a bundle and its etcd snapshot, writing only to a temp dir.

use argh::FromArgs;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{open_bundle, scratch_dir, KeyFlags, Output};
use crate::bundle::{read_bundle, FileEntry, Manifest, Sink, SnapshotEntry};
use crate::etcd::bbolt::{Meta, META_PAGE_PREFIX};
use crate::etcd::snapshot_status;
use crate::store::human_bytes;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
/// Check a bundle: manifest, every file digest, the etcd snapshot's trailer and its bbolt structure.
pub struct VerifyCmd {
    /// a bundle file, or a bundle name in the store, or "latest"
    #[argh(positional)]
    pub bundle: String,
    /// store URL (see cpr backup --help)
    #[argh(option)]
    pub store: Option<String>,
    /// config file (default /etc/cpr/config.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// with "latest": the cluster (default: any)
    #[argh(option)]
    pub cluster: Option<String>,
    /// with "latest": the node (default: this host's name)
    #[argh(option)]
    pub node: Option<String>,
    /// age identity file for an encrypted bundle (default: restore.identity)
    #[argh(option)]
    pub identity: Option<PathBuf>,
    /// directory for the bundle's etcd snapshot while it is read, as large as the etcd db (default
    /// $TMPDIR, else /var/tmp: /tmp is often in memory)
    #[argh(option)]
    pub scratch: Option<PathBuf>,
    /// minisign public key: refuse a bundle it did not sign (default: restore.verifyKey)
    #[argh(option)]
    pub verify_key: Option<PathBuf>,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

/// Keeps only the snapshot, for the status walk, in an unlinked file of
/// the scratch dir (`O_TMPFILE`): it holds the cluster's Secrets and is as large as the db, so it
/// must not outlive cpr however cpr ends, SIGKILL and power loss included.
struct SnapshotToFile {
    scratch: PathBuf,
    file: Option<File>,
    /// Why the scratch dir cannot take the snapshot; the reader would blame the bundle.
    no_room: Option<String>,
}

impl Sink for SnapshotToFile {
    /// Refuses a snapshot the scratch filesystem cannot hold before writing any of it.
    fn manifest(&mut self, manifest: &Manifest) -> io::Result<()> {
        let available = crate::host::available_bytes(&self.scratch)?;
        if available < manifest.snapshot.size {
            let why = format!(
                "its etcd snapshot takes {}, {} has {} free: point --scratch (or TMPDIR) at a directory on a larger filesystem. Nothing was written",
                human_bytes(manifest.snapshot.size),
                self.scratch.display(),
                human_bytes(available)
            );
            self.no_room = Some(why.clone());
            return Err(io::Error::new(io::ErrorKind::StorageFull, why));
        }
        Ok(())
    }

    fn file(&mut self, _: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(drop)
    }

    fn snapshot(&mut self, _: &SnapshotEntry, data: &mut dyn Read) -> io::Result<()> {
        // tempfile_in makes the file 0600, whatever the umask.
        let file = tempfile::tempfile_in(&self.scratch)?;
        let mut out = io::BufWriter::with_capacity(1 << 20, &file);
        // A snapshot starts with bbolt's meta page: checking it before copying the rest stops a
        // decompression bomb of zeros at its first page instead of filling the temp dir with it.
        let mut first = Vec::with_capacity(META_PAGE_PREFIX);
        data.take(META_PAGE_PREFIX as u64).read_to_end(&mut first)?;
        if first.len() == META_PAGE_PREFIX {
            Meta::parse(0, &first).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("etcd snapshot: {e}"))
            })?;
        }
        out.write_all(&first)?;
        io::copy(data, &mut out)?;
        out.flush()?;
        drop(out);
        self.file = Some(file);
        Ok(())
    }
}

/// A bundle read and checked whole, its snapshot spooled (see `SnapshotToFile`).
struct VerifiedSnapshot {
    name: String,
    manifest: Manifest,
    spool: File,
}

/// Opens the bundle named on the command line (see `open_bundle`), checks every digest and the
/// snapshot trailer, and keeps the snapshot in an unlinked file in `scratch`: verify's status hash
/// covers every value of every bucket in key order, which the streamed read (`etcd::stream`) does
/// not keep.
fn verified_snapshot(
    bundle: &str,
    store: Option<String>,
    config: Option<&Path>,
    cluster_node: (Option<&str>, Option<&str>),
    keys: KeyFlags,
    scratch: &Path,
) -> Result<VerifiedSnapshot, Error> {
    let mut input = open_bundle(bundle, store, config, cluster_node, keys, scratch)?;
    let name = input.name.clone();
    let mut sink = SnapshotToFile {
        scratch: scratch.to_path_buf(),
        file: None,
        no_room: None,
    };
    let read = read_bundle(&mut input, &name, &mut sink);
    if let Some(why) = sink.no_room {
        return Err(Error::Usage(format!("reading bundle {name}: {why}")));
    }
    let manifest = read?;
    input.finish()?;
    Ok(VerifiedSnapshot {
        name,
        manifest,
        spool: sink.file.expect("a verified bundle has a snapshot"),
    })
}

pub fn run(cmd: VerifyCmd) -> Result<(), Error> {
    let scratch = scratch_dir("verify", cmd.scratch.as_deref())?;
    let VerifiedSnapshot {
        name,
        manifest,
        spool,
    } = verified_snapshot(
        &cmd.bundle,
        cmd.store,
        cmd.config.as_deref(),
        (cmd.cluster.as_deref(), cmd.node.as_deref()),
        KeyFlags {
            identity: cmd.identity,
            verify_key: cmd.verify_key,
        },
        scratch.path(),
    )?;
    // The spool has no name but its descriptor's.
    let status = snapshot_status(Path::new(&format!("/proc/self/fd/{}", spool.as_raw_fd())))?;
    if status.revision < manifest.etcd.revision {
        log::warn!(
            "verify: {name}: the snapshot's revision {} is below the {} etcd reported when the backup began",
            status.revision,
            manifest.etcd.revision
        );
    }
    match cmd.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "bundle": name,
                "ok": true,
                "files": manifest.files.len(),
                "snapshotSize": manifest.snapshot.size,
                "revision": status.revision,
                "totalKeys": status.total_key,
                "hash": status.hash,
            })
        ),
        Output::Text => println!(
            "bundle {name}: OK — {} files and their digests, etcd snapshot {} bytes (sha256 trailer and bbolt structure checked), revision {}, {} keys, hash {:x}",
            manifest.files.len(),
            manifest.snapshot.size,
            status.revision,
            status.total_key,
            status.hash
        ),
    }
    Ok(())
}
