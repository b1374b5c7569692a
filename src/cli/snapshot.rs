//! The snapshot that `inspect --objects`, `get` and `diff` read: an etcd snapshot or bbolt db file
//! in place, or a bundle's, read and checked whole while its snapshot streams through
//! `etcd::stream`.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{open_bundle, KeyFlags};
use crate::bundle::{blake3_to_end, FileEntry, Manifest, Sink, SnapshotEntry};
use crate::etcd;
use crate::etcd::bbolt::{Corruption, Meta, ReadError, META_PAGE_PREFIX};
use crate::etcd::keys::{Revision, Revisions};
use crate::etcd::stream::{self, LeafRecords, Recorded, Stopped};
use crate::ops::sealed::{Opened, SignatureCheck};
use crate::Error;

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
        wanted: &(dyn Fn(&[u8]) -> bool + Sync),
        map: &mut (dyn FnMut(Revision) -> T + Send),
        visit: &mut dyn FnMut(T),
    ) -> Result<(), Error> {
        let (input, scratch) = match self {
            Snapshot::InPlace(path) => return Ok(path.as_path().each(wanted, map, visit)?),
            Snapshot::Bundle { input, scratch } => (input, scratch),
        };
        let streamed = stream_bundle(input, &scratch, &mut stream::revisions(wanted, map))?;
        streamed.finish(streamed.recorded.replay(wanted, map, visit))
    }
}

/// A bundle read and checked whole, its snapshot recorded as it streamed past.
pub(crate) struct Streamed<T> {
    pub name: String,
    pub manifest: Manifest,
    pub recorded: Recorded<T>,
    scratch: PathBuf,
}

/// Reads bundle `input` whole, checking every digest, while its snapshot streams through
/// `etcd::stream`, which records `leaf` of each leaf page and spills into `scratch`.
pub(crate) fn stream_bundle<T: prost::Message + Default>(
    mut input: Opened,
    scratch: &Path,
    leaf: &mut LeafRecords<'_, T>,
) -> Result<Streamed<T>, Error> {
    let name = input.name.clone();
    let mut sink = StreamToRecords {
        scratch,
        leaf,
        recorded: None,
        damaged: None,
        no_room: None,
    };
    let read = input.read_bundle(&mut sink);
    let StreamToRecords {
        recorded,
        damaged,
        no_room,
        ..
    } = sink;
    if let Some(why) = no_room {
        return Err(Error::Usage(format!("reading bundle {name}: {why}")));
    }
    let manifest = match read {
        Ok(manifest) => manifest,
        Err(e) => return Err(input.refused_at_end().unwrap_or(e).into()),
    };
    input.finish()?;
    if let Some(detail) = damaged {
        return Err(etcd::Error::Corrupt {
            path: snapshot_in(&manifest, &name),
            detail,
        }
        .into());
    }
    let recorded = recorded.expect("a verified bundle has a snapshot");
    let (skeletons, records) = recorded.spilled();
    log::debug!(
        "{}: streamed, {skeletons} bytes of page skeletons and {records} bytes of records spilled into {}",
        snapshot_in(&manifest, &name).display(),
        scratch.display()
    );
    Ok(Streamed {
        name,
        manifest,
        recorded,
        scratch: scratch.to_path_buf(),
    })
}

impl<T> Streamed<T> {
    /// The outcome of the walk over the recorded snapshot: what is wrong names the snapshot in
    /// its bundle, or the scratch dir whose spill failed.
    pub fn finish<R>(&self, walked: Result<R, ReadError>) -> Result<R, Error> {
        let name = &self.name;
        walked.map_err(|e| match e {
            ReadError::Scratch(e) => Error::Usage(format!(
                "reading bundle {name}: {}",
                scratch_failed(&self.scratch, &e)
            )),
            e => etcd::Error::from_read("reading snapshot", snapshot_in(&self.manifest, name), e)
                .into(),
        })
    }
}

/// How errors name a bundle's snapshot.
fn snapshot_in(manifest: &Manifest, bundle: &str) -> PathBuf {
    PathBuf::from(format!("{} in bundle {bundle}", manifest.snapshot.path))
}

/// Hands the bundle's snapshot to `etcd::stream` as it passes; the files are checked and dropped.
struct StreamToRecords<'a, 'l, T> {
    scratch: &'a Path,
    leaf: &'a mut LeafRecords<'l, T>,
    recorded: Option<Recorded<T>>,
    /// No meta page is valid: said once the digests are checked, which a tampered bundle fails.
    damaged: Option<Corruption>,
    /// Why the scratch dir did not take the spill; the reader would blame the bundle.
    no_room: Option<String>,
}

impl<T: prost::Message + Default> Sink for StreamToRecords<'_, '_, T> {
    fn file(&mut self, _: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(drop)
    }

    fn snapshot(&mut self, entry: &SnapshotEntry, data: &mut dyn Read) -> io::Result<()> {
        let recorded = stream::record(data, entry.size, self.scratch, self.leaf);
        self.record(recorded)
    }

    /// Hashes the snapshot where `etcd::stream` records its pages, sparing the copy of each
    /// read to a third thread (the reading thread's CPU time fell by a fifth).
    fn snapshot_blake3(
        &mut self,
        entry: &SnapshotEntry,
        data: &mut dyn Read,
    ) -> io::Result<blake3::Hash> {
        blake3_to_end(data, |data, blake3| {
            let recorded =
                stream::record_hashing(data, entry.size, self.scratch, self.leaf, blake3);
            self.record(recorded)
        })
    }
}

impl<T: prost::Message + Default> StreamToRecords<'_, '_, T> {
    /// Keeps what recording the snapshot gave, or the error the bundle's reader is to stop on.
    fn record(&mut self, recorded: Result<Recorded<T>, Stopped>) -> io::Result<()> {
        match recorded {
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
    let fix = match e.kind() {
        io::ErrorKind::StorageFull => {
            "point --scratch (or TMPDIR) at a directory on a filesystem with more free space"
        }
        // A spill past what its 4-byte offsets address: no scratch dir takes it.
        io::ErrorKind::FileTooLarge => {
            "read the snapshot as a file instead: extract etcd/snapshot.db from the bundle file (age -d -i IDENTITY first if it is encrypted, then zstd -dc | tar -x etcd/snapshot.db)"
        }
        _ => "point --scratch (or TMPDIR) at a directory cpr can create files in and read them back",
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
    let input = open_bundle(
        bundle,
        store,
        config,
        cluster_node,
        keys,
        SignatureCheck::AtEnd,
        scratch,
    )?;
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
