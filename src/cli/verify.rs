//! `cpr verify`: check every digest of a bundle and its etcd snapshot, writing only to a temp dir.

use argh::FromArgs;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{open_bundle, scratch_dir, KeyFlags, Output};
use crate::bundle::{read_bundle, FileEntry, Manifest, Sink, SnapshotEntry};
use crate::etcd::bbolt::{Corruption, Meta, ReadError, META_PAGE_PREFIX};
use crate::etcd::keys::{Revision, Revisions};
use crate::etcd::stream::{self, Recorded, Stopped};
use crate::etcd::{self, snapshot_status};
use crate::ops::sealed::Opened;
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

/// The snapshot a reading command (inspect --objects, get, diff) reads.
pub(crate) enum Snapshot {
    /// An etcd snapshot or bbolt db file named on the command line, read in place.
    InPlace(PathBuf),
    /// A bundle, read and checked whole while its snapshot streams through `etcd::stream`, which
    /// spills past its memory budget into unlinked files in `scratch`.
    Bundle { input: Opened, scratch: PathBuf },
}

impl Revisions for Snapshot {
    type Error = Error;

    fn each<T: prost::Message + Default>(
        self,
        wanted: &dyn Fn(&[u8]) -> bool,
        map: &mut dyn FnMut(Revision) -> T,
        visit: &mut dyn FnMut(T),
    ) -> Result<(), Error> {
        let (mut input, scratch) = match self {
            Snapshot::InPlace(path) => return Ok(path.as_path().each(wanted, map, visit)?),
            Snapshot::Bundle { input, scratch } => (input, scratch),
        };
        let name = input.name.clone();
        let mut sink = StreamToRecords {
            scratch: &scratch,
            wanted,
            map: &mut *map,
            recorded: None,
            damaged: None,
            no_room: None,
        };
        let read = read_bundle(&mut input, &name, &mut sink);
        let StreamToRecords {
            recorded,
            damaged,
            no_room,
            ..
        } = sink;
        if let Some(why) = no_room {
            return Err(Error::Usage(format!("reading bundle {name}: {why}")));
        }
        let manifest = read?;
        input.finish()?;
        let snapshot = PathBuf::from(format!("{} in bundle {name}", manifest.snapshot.path));
        let step = "reading snapshot";
        if let Some(detail) = damaged {
            return Err(etcd::Error::Corrupt {
                path: snapshot,
                detail,
            }
            .into());
        }
        let recorded = recorded.expect("a verified bundle has a snapshot");
        let (skeletons, records) = recorded.spilled();
        log::debug!(
            "{}: streamed, {skeletons} bytes of page skeletons and {records} bytes of records spilled into {}",
            snapshot.display(),
            scratch.display()
        );
        recorded.replay(wanted, map, visit).map_err(|e| match e {
            ReadError::Scratch(e) => Error::Usage(format!(
                "reading bundle {name}: {}",
                scratch_failed(&scratch, &e)
            )),
            e => etcd::Error::from_read(step, snapshot, e).into(),
        })?;
        Ok(())
    }
}

/// Hands the bundle's snapshot to `etcd::stream` as it passes; the files are checked and dropped.
struct StreamToRecords<'a, T> {
    scratch: &'a Path,
    wanted: &'a dyn Fn(&[u8]) -> bool,
    map: &'a mut dyn FnMut(Revision) -> T,
    recorded: Option<Recorded<T>>,
    /// No meta page is valid: said once the digests are checked, which a tampered bundle fails.
    damaged: Option<Corruption>,
    /// Why the scratch dir did not take the spill; the reader would blame the bundle.
    no_room: Option<String>,
}

impl<T: prost::Message + Default> Sink for StreamToRecords<'_, T> {
    fn file(&mut self, _: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(drop)
    }

    fn snapshot(&mut self, entry: &SnapshotEntry, data: &mut dyn Read) -> io::Result<()> {
        match stream::record(data, entry.size, self.scratch, self.wanted, self.map) {
            Ok(recorded) => self.recorded = Some(recorded),
            Err(Stopped::Read(e)) => return Err(e),
            Err(Stopped::Damaged(detail)) => self.damaged = Some(detail),
            Err(Stopped::Scratch(e)) => {
                let why = scratch_failed(self.scratch, &e);
                self.no_room = Some(why.clone());
                return Err(io::Error::new(e.kind(), why));
            }
        }
        Ok(())
    }
}

/// Why the streamed read stopped when its spill in the scratch dir failed (`e`), and what to do.
fn scratch_failed(scratch: &Path, e: &io::Error) -> String {
    let fix = if e.kind() == io::ErrorKind::StorageFull {
        "point --scratch (or TMPDIR) at a directory on a filesystem with more free space"
    } else {
        "point --scratch (or TMPDIR) at a directory cpr can create files in and read them back"
    };
    format!(
        "the streamed read of its etcd snapshot spills past its memory budget into --scratch {}, which failed ({e}): {fix}. The spill files are unlinked: nothing is left there",
        scratch.display()
    )
}

/// The snapshot a reading command was pointed at, and its name: an etcd snapshot or bbolt db file
/// is read in place; a bundle is opened, to be read and checked whole as its snapshot streams
/// (spilling into `scratch`).
pub(crate) fn snapshot_of(
    bundle: &str,
    store: Option<String>,
    config: Option<&Path>,
    cluster_node: (Option<&str>, Option<&str>),
    keys: KeyFlags,
    scratch: &Path,
) -> Result<(String, Snapshot), Error> {
    let path = Path::new(bundle);
    if store.is_none() && is_bbolt_file(path) {
        return Ok((bundle.to_string(), Snapshot::InPlace(path.to_path_buf())));
    }
    let input = open_bundle(bundle, store, config, cluster_node, keys, scratch)?;
    Ok((
        input.name.clone(),
        Snapshot::Bundle {
            input,
            scratch: scratch.to_path_buf(),
        },
    ))
}

/// Whether `path` is a file that starts with a bbolt meta page (an etcd snapshot or db).
fn is_bbolt_file(path: &Path) -> bool {
    let mut first = [0u8; META_PAGE_PREFIX];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut first))
        .is_ok_and(|()| Meta::parse(0, &first).is_ok())
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
