//! Turning a snapshot into an etcd data dir, like `etcdutl snapshot restore`.
//!
//! Everything is built in `<data-dir>.tmp` (and `<wal-dir>.tmp`) on the same filesystem, fsynced,
//! then renamed into place and the parent fsynced, so a crash or a bad snapshot never leaves a
//! half-restored data dir where etcd would start from it.

use super::bbolt::Db;
use super::member::Cluster;
use super::patch::{Changes, Patch};
use super::skeleton::Skeletons;
use super::{snap, status, wal, Error};
use crate::host::{self, LockKind, LockedFile};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

const TRAILER: u64 = 32;
/// Copy buffer: direct writes of 1 MiB run at the disk's speed here as 4 MiB ones did, and the
/// pipeline's buffers are most of a restore's memory.
const CHUNK: usize = 1 << 20;
/// What direct I/O asks of buffer addresses, file offsets and lengths (the largest logical block size).
const DIRECT_ALIGN: usize = 4096;
/// A buffer, how many of its aligned bytes hold data, and their offset in the db.
type Chunk = (Vec<u8>, usize, u64);
/// Chunks in flight in the copy pipeline: one per stage, and two to even out their pace.
const BUFFERS: usize = 6;
/// Memory for page skeletons: an etcd db of small objects needs about 2 % of its size, so this
/// holds those of a db of some 200 MB; the skeletons of a larger db past the budget go to a spill
/// file, read back at little cost (skeleton.rs).
const SKELETON_BUDGET: usize = 4 << 20;
// Skeletons are recorded per chunk: a chunk holds whole pages of every page size bbolt has.
const _: () = assert!(CHUNK % (64 << 10) == 0);

/// etcdutl's restore flags, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    /// Defaults to `<data-dir>/member/wal`; a separate dir must not exist yet.
    pub wal_dir: Option<PathBuf>,
    pub skip_hash_check: bool,
    /// `--bump-revision R --mark-compacted`: raise the revision by R and mark everything below compacted.
    pub bump_revision: Option<u64>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: "http://localhost:2380".into(),
            wal_dir: None,
            skip_hash_check: false,
            bump_revision: None,
        }
    }
}

/// What a restore produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub cluster: Cluster,
    /// The ID of the member named by `--name`.
    pub member_id: u64,
    /// The revision the db had in the snapshot (last key of bucket `key`).
    pub revision: i64,
    /// With a bump: the new revision, below which everything reads as compacted.
    pub bumped_revision: Option<u64>,
    /// Size of the restored db file.
    pub db_size: u64,
}

/// Refuses when an etcd process holds the db of `data_dir` (bbolt takes an flock on it).
pub fn ensure_not_in_use(data_dir: &Path) -> Result<(), Error> {
    let db = super::db_path(data_dir);
    match File::open(&db) {
        Ok(f) => lock_shared(f, &db).map(drop),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("opening", &db)(e)),
    }
}

fn lock_shared(file: File, path: &Path) -> Result<LockedFile, Error> {
    host::try_lock(file, LockKind::Shared)
        .map_err(Error::io("locking", path))?
        .ok_or_else(|| Error::InUse {
            path: path.to_path_buf(),
        })
}

/// Restores from a snapshot file (as written by `etcdctl snapshot save`, or a copied
/// `member/snap/db` with `skip_hash_check`).
pub fn restore_from_file(
    snapshot: &Path,
    data_dir: &Path,
    opts: &RestoreOptions,
) -> Result<Restored, Error> {
    let file = File::open(snapshot).map_err(Error::io("opening snapshot", snapshot))?;
    // A live etcd's own db changes under us: refuse it rather than copy a torn file.
    let file = lock_shared(file, snapshot)?;
    let size = file
        .metadata()
        .map_err(Error::io("reading snapshot", snapshot))?
        .len();
    restore_from_reader(&*file, size, snapshot, data_dir, opts, None)
}

/// Restores from a stream of `size` bytes (a snapshot straight out of a bundle). `source` names the
/// snapshot in messages.
///
/// The db is written once, sequentially, with direct I/O where the filesystem has it: filling a
/// fresh page cache for the copy costs more than the copy itself (on virtual machines whose freed
/// memory goes back to the hypervisor, several times more). It is hashed on the way and checked
/// against the sha256 trailer at the end; then its whole tree is checked through the page
/// skeletons recorded on the way (so the db is not read back), and it is patched in place.
///
/// `blake3` is fed all `size` bytes (a bundle's digest of its snapshot entry) from the copy's own
/// buffers, so the bytes need not be copied to a hashing thread of the bundle reader's.
pub fn restore_from_reader(
    reader: impl Read,
    size: u64,
    source: &Path,
    data_dir: &Path,
    opts: &RestoreOptions,
    blake3: Option<&mut blake3::Hasher>,
) -> Result<Restored, Error> {
    let plan = Plan::new(size, source, data_dir, opts)?;
    let result = plan
        .build(reader, blake3)
        .and_then(|restored| plan.commit().map(|()| restored));
    if result.is_err() {
        plan.clean_up();
    }
    result
}

/// The checked options and the paths of one restore.
struct Plan<'a> {
    opts: &'a RestoreOptions,
    source: &'a Path,
    size: u64,
    has_trailer: bool,
    cluster: Cluster,
    member_id: u64,
    data_dir: PathBuf,
    tmp: PathBuf,
    /// A separate WAL dir and its temporary twin.
    wal: Option<(PathBuf, PathBuf)>,
}

/// `path` with `suffix` appended to its last component (`a/b/` + `.tmp` is `a/b.tmp`, a sibling).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.components().collect::<PathBuf>().into_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn invalid(option: &'static str, reason: impl std::fmt::Display) -> Error {
    Error::InvalidOption {
        option,
        reason: reason.to_string(),
    }
}

/// Refuses a path that exists and is not an empty directory.
fn ensure_empty_or_absent(path: &Path) -> Result<bool, Error> {
    match fs::read_dir(path) {
        Ok(mut entries) => match entries.next() {
            None => Ok(true),
            Some(_) => Err(Error::DataDirNotEmpty {
                path: path.to_path_buf(),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Err(Error::DataDirNotEmpty {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(Error::io("reading the data dir", path)(e)),
    }
}

impl<'a> Plan<'a> {
    fn new(
        size: u64,
        source: &'a Path,
        data_dir: &Path,
        opts: &'a RestoreOptions,
    ) -> Result<Plan<'a>, Error> {
        let cluster = Cluster::bootstrap(
            &opts.initial_cluster,
            &opts.initial_cluster_token,
            &opts.name,
            &opts.initial_advertise_peer_urls,
        )
        .map_err(|e| invalid("--initial-cluster", e))?;
        if cluster.members.len() >= 1000 {
            return Err(invalid(
                "--initial-cluster",
                "etcd supports fewer than 1000 members",
            ));
        }
        let member_id = cluster
            .member(&opts.name)
            .expect("bootstrap checked the name")
            .id;
        if opts.bump_revision == Some(0) {
            return Err(invalid(
                "--bump-revision",
                "must be greater than 0 (with --mark-compacted)",
            ));
        }
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("--data-dir", "must not be empty"));
        }
        ensure_not_in_use(data_dir)?;
        ensure_empty_or_absent(data_dir)?;
        let wal = match &opts.wal_dir {
            Some(w) if w.symlink_metadata().is_ok() => {
                return Err(Error::WalDirExists { path: w.clone() })
            }
            Some(w) => Some((w.clone(), with_suffix(w, ".tmp"))),
            None => None,
        };
        let has_trailer = size % 512 == TRAILER;
        if !has_trailer && !opts.skip_hash_check {
            return Err(Error::MissingHash {
                path: source.to_path_buf(),
                size,
            });
        }
        Ok(Plan {
            opts,
            source,
            size,
            has_trailer,
            cluster,
            member_id,
            data_dir: data_dir.components().collect(),
            tmp: with_suffix(data_dir, ".tmp"),
            wal,
        })
    }

    fn build(
        &self,
        reader: impl Read,
        blake3: Option<&mut blake3::Hasher>,
    ) -> Result<Restored, Error> {
        for dir in std::iter::once(&self.tmp).chain(self.wal.as_ref().map(|(_, t)| t)) {
            if dir.symlink_metadata().is_ok() {
                // etcd's own WAL creation clears a stale `.tmp` the same way: it can only be ours.
                log::warn!("removing {} left by an interrupted restore", dir.display());
                fs::remove_dir_all(dir).map_err(Error::io("removing the stale", dir))?;
            }
        }
        let snap_dir = self.tmp.join("member/snap");
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder
            .create(&snap_dir)
            .map_err(Error::io("creating", &snap_dir))?;

        let db_path = snap_dir.join("db");
        let db_file = create(&db_path, 0o600)?;
        let db_len = self.db_len();
        let skeletons = self.copy_db(reader, blake3, &db_file, &db_path)?;

        let read_err = |e| Error::from_read("reading", self.source, e);
        let db = Db::open(&db_file, db_len).map_err(read_err)?;
        let revision = status::checked_revision(&db, Some(&skeletons)).map_err(read_err)?;
        let changes = Changes {
            members: self
                .cluster
                .members
                .iter()
                .map(|m| (m.hex_id().into_bytes(), m.json().into_bytes()))
                .collect(),
            consistent_index: self.cluster.members.len() as u64,
            term: 1,
            bump_revision: self.opts.bump_revision,
        };
        let patched = Patch::new(&db).apply(&changes).map_err(read_err)?;
        let ps = db.page_size as u64;
        db_file
            .write_all_at(&patched.pages, patched.first_page * ps)
            .map_err(Error::io("writing", &db_path))?;
        let db_size = patched.meta.hwm * ps;
        db_file
            .set_len(db_size)
            .map_err(Error::io("writing", &db_path))?;
        db_file
            .write_all_at(&patched.meta.page_bytes(), (patched.meta.txid % 2) * ps)
            .map_err(Error::io("writing", &db_path))?;
        db_file.sync_all().map_err(Error::io("syncing", &db_path))?;

        let snap_path = snap_dir.join(snap::file_name(changes.consistent_index));
        write_synced(&snap_path, 0o644, &snap::snap_file(&self.cluster))?;

        let wal_dir = match &self.wal {
            Some((_, tmp)) => tmp.clone(),
            None => self.tmp.join("member/wal"),
        };
        builder
            .create(&wal_dir)
            .map_err(Error::io("creating", &wal_dir))?;
        let wal_path = wal_dir.join(wal::SEGMENT_NAME);
        let wal_file = create(&wal_path, 0o600)?;
        host::preallocate(&wal_file, wal::SEGMENT_SIZE)
            .map_err(Error::io("preallocating", &wal_path))?;
        let records = wal::segment(&self.cluster, self.member_id);
        wal_file
            .write_all_at(&records, 0)
            .map_err(Error::io("writing", &wal_path))?;
        wal_file
            .sync_all()
            .map_err(Error::io("syncing", &wal_path))?;

        for dir in [&wal_dir, &snap_dir, &self.tmp.join("member"), &self.tmp] {
            sync_dir(dir)?;
        }
        Ok(Restored {
            cluster: self.cluster.clone(),
            member_id: self.member_id,
            revision,
            bumped_revision: patched.bumped_to,
            db_size,
        })
    }

    /// The snapshot without its sha256 trailer.
    fn db_len(&self) -> u64 {
        if self.has_trailer {
            self.size - TRAILER
        } else {
            self.size
        }
    }

    /// Streams the db part of the snapshot into `file`, hashing it and recording its pages'
    /// skeletons, and checks the trailer; `blake3` is fed every byte read, the trailer included.
    /// Whole blocks bypass the page cache when the filesystem allows it.
    fn copy_db(
        &self,
        mut reader: impl Read,
        mut blake3: Option<&mut blake3::Hasher>,
        file: &File,
        path: &Path,
    ) -> Result<Skeletons, Error> {
        let len = self.db_len();
        let mut out = DbWriter {
            buffered: file,
            direct: open_direct(path),
            path,
        };
        let short = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    e.kind(),
                    format!("the snapshot ends before its announced {} bytes", self.size),
                )
            } else {
                e
            }
        };
        let mut sha256 =
            (!self.opts.skip_hash_check).then(|| ring::digest::Context::new(&ring::digest::SHA256));
        // Skeletons past the memory budget, beside the db (unlinked: nothing to clean up). Without
        // one, the pages past the budget are read back from the db instead.
        let spill = path
            .parent()
            .and_then(|dir| tempfile::tempfile_in(dir).ok());
        // A pipeline of four stages, each on its own thread, passing buffers along: this thread
        // reads (decompresses, for a bundle: the reader need not be `Send`), the next writes, the
        // next hashes, the last records skeletons and hands the buffer back. Hashing and recording
        // are stages of their own so that neither waits for the other: SHA-256 without SHA
        // extensions, or the skeletons of a db of small objects, each take about as long as the
        // write. A stage that fails drops its channels, which stops the others.
        let (skeletons, written, copied) = std::thread::scope(|s| {
            let (to_writer, chunks) = mpsc::sync_channel::<Chunk>(BUFFERS);
            let (to_hasher, written) = mpsc::sync_channel::<Chunk>(BUFFERS);
            let (to_recorder, hashed) = mpsc::sync_channel::<Chunk>(BUFFERS);
            let (recycle, free) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
            for _ in 0..BUFFERS {
                recycle
                    .send(vec![0u8; CHUNK + DIRECT_ALIGN])
                    .expect("the pool has room for every buffer");
            }
            let writer = s.spawn(move || -> Result<(), Error> {
                for (buf, n, offset) in chunks {
                    out.write(&buf[aligned(&buf)][..n], offset)?;
                    to_hasher
                        .send((buf, n, offset))
                        .expect("the hasher runs until the writer stops");
                }
                Ok(())
            });
            let sha256 = &mut sha256;
            let blake3 = &mut blake3;
            s.spawn(move || {
                for (buf, n, offset) in written {
                    let data = &buf[aligned(&buf)][..n];
                    if let Some(hasher) = sha256.as_mut() {
                        hasher.update(data);
                    }
                    if let Some(hasher) = blake3.as_deref_mut() {
                        hasher.update(data);
                    }
                    // Once the recorder has stopped, nobody takes buffers on; hash what is queued.
                    let _ = to_recorder.send((buf, n, offset));
                }
            });
            let recorder = s.spawn(move || {
                let mut skeletons = match spill {
                    Some(file) => Skeletons::spilling(SKELETON_BUDGET, file),
                    None => Skeletons::new(SKELETON_BUDGET),
                };
                for (buf, n, offset) in hashed {
                    skeletons.record(offset, &buf[aligned(&buf)][..n]);
                    // Once the reader has stopped, nobody takes buffers back.
                    let _ = recycle.send(buf);
                }
                skeletons.finish_recording();
                skeletons
            });
            let mut copy = || -> Result<(), Error> {
                let mut offset = 0;
                while offset < len {
                    // No buffer comes back once the writer has failed: its error is the one to report.
                    let Ok(mut buf) = free.recv() else {
                        return Ok(());
                    };
                    let n = (len - offset).min(CHUNK as u64) as usize;
                    let block = aligned(&buf);
                    reader
                        .read_exact(&mut buf[block][..n])
                        .map_err(|e| Error::io("reading", self.source)(short(e)))?;
                    if to_writer.send((buf, n, offset)).is_err() {
                        return Ok(());
                    }
                    offset += n as u64;
                }
                Ok(())
            };
            let copied = copy();
            drop(to_writer);
            let written = writer.join().expect("writing does not panic");
            (
                recorder.join().expect("recording does not panic"),
                written,
                copied,
            )
        });
        written?;
        copied?;
        if self.has_trailer {
            let mut trailer = [0u8; TRAILER as usize];
            reader
                .read_exact(&mut trailer)
                .map_err(|e| Error::io("reading", self.source)(short(e)))?;
            if let Some(hasher) = blake3 {
                hasher.update(&trailer);
            }
            if let Some(actual) = sha256.map(ring::digest::Context::finish) {
                if actual.as_ref() != trailer {
                    return Err(Error::HashMismatch {
                        path: self.source.to_path_buf(),
                        expected: hex::encode(trailer),
                        actual: hex::encode(actual.as_ref()),
                    });
                }
            }
        }
        Ok(skeletons)
    }

    /// Renames the built dirs into place (WAL dir first: the data dir appearing is the commit).
    fn commit(&self) -> Result<(), Error> {
        if let Some((dir, tmp)) = &self.wal {
            rename_synced(tmp, dir)?;
        }
        // rename(2) atomically replaces an empty directory, which etcdutl 3.5 accepts as target.
        rename_synced(&self.tmp, &self.data_dir)
    }

    /// Leaves nothing behind after a failed restore (the old data dir, if any, was empty).
    fn clean_up(&self) {
        let mut dirs = vec![self.tmp.clone()];
        if let Some((dir, tmp)) = &self.wal {
            dirs.push(tmp.clone());
            // Renamed in place already only when the data dir's rename failed after it.
            if !self.data_dir.join("member").exists() {
                dirs.push(dir.clone());
            }
        }
        for d in dirs {
            if let Err(e) = fs::remove_dir_all(&d) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!(
                        "could not remove {} after the failed restore: {e}",
                        d.display()
                    );
                }
            }
        }
    }
}

/// The part of a copy buffer that starts at a `DIRECT_ALIGN` boundary.
fn aligned(buf: &[u8]) -> std::ops::Range<usize> {
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    start..start + CHUNK
}

/// A second handle on the db, for direct I/O; None where the filesystem has none (tmpfs).
fn open_direct(path: &Path) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Writes the db's chunks at their offsets: whole blocks through the direct handle while it works,
/// the rest (and everything once the filesystem refuses a direct write) through the page cache.
struct DbWriter<'a> {
    buffered: &'a File,
    direct: Option<File>,
    path: &'a Path,
}

impl DbWriter<'_> {
    fn write(&mut self, data: &[u8], offset: u64) -> Result<(), Error> {
        if data.len() % DIRECT_ALIGN == 0 {
            if let Some(direct) = &self.direct {
                match direct.write_all_at(data, offset) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => self.direct = None,
                    Err(e) => return Err(Error::io("writing", self.path)(e)),
                }
            }
        }
        self.buffered
            .write_all_at(data, offset)
            .map_err(Error::io("writing", self.path))
    }
}

fn create(path: &Path, mode: u32) -> Result<File, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(Error::io("creating", path))?;
    // The umask must not decide the modes etcd expects.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(Error::io("setting the mode of", path))?;
    Ok(file)
}

fn write_synced(path: &Path, mode: u32, data: &[u8]) -> Result<(), Error> {
    let file = create(path, mode)?;
    file.write_all_at(data, 0)
        .map_err(Error::io("writing", path))?;
    file.sync_all().map_err(Error::io("syncing", path))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    crate::fsutil::sync_dir(dir).map_err(Error::io("syncing directory", dir))
}

fn rename_synced(from: &Path, to: &Path) -> Result<(), Error> {
    crate::fsutil::rename_durable(from, to).map_err(Error::io("renaming into place", to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Hands out an odd number of bytes at a time, as a decompressing reader does.
    struct Trickle<R>(R);

    impl<R: Read> Read for Trickle<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(100_003);
            self.0.read(&mut buf[..n])
        }
    }

    /// Bytes that differ from chunk to chunk, so a chunk written twice or skipped shows.
    fn bytes(len: usize) -> Vec<u8> {
        (0u64..)
            .flat_map(|block| Sha256::digest(block.to_le_bytes()))
            .take(len)
            .collect()
    }

    /// Streams `input` through `copy_db` into a fresh file; returns the result and the file's bytes.
    /// Not `writable`: the file is opened read-only and the direct handle cannot be opened.
    fn copy(input: &[u8], opts: &RestoreOptions, writable: bool) -> (Result<(), Error>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(
            input.len() as u64,
            Path::new("test.db"),
            &dir.path().join("data"),
            opts,
        )
        .unwrap();
        let path = dir.path().join("db");
        let file = create(&path, 0o600).unwrap();
        let (file, named) = if writable {
            (file, path.clone())
        } else {
            (File::open(&path).unwrap(), dir.path().join("absent"))
        };
        let result = plan.copy_db(Trickle(input), None, &file, &named).map(drop);
        (result, fs::read(&path).unwrap())
    }

    #[test]
    fn every_chunk_reaches_the_file_and_the_hash() {
        let db = bytes(5 * CHUNK + 3 * DIRECT_ALIGN);
        let mut snapshot = db.clone();
        snapshot.extend_from_slice(&Sha256::digest(&db));
        let (result, written) = copy(&snapshot, &RestoreOptions::default(), true);
        result.unwrap();
        assert!(written == db);
        let last = snapshot.len() - 1;
        snapshot[last] ^= 1;
        let (result, _) = copy(&snapshot, &RestoreOptions::default(), true);
        assert!(
            matches!(result, Err(Error::HashMismatch { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_tail_of_partial_blocks_goes_through_the_page_cache() {
        let db = bytes(2 * CHUNK + 777);
        let opts = RestoreOptions {
            skip_hash_check: true,
            ..RestoreOptions::default()
        };
        let (result, written) = copy(&db, &opts, true);
        result.unwrap();
        assert!(written == db);
    }

    #[test]
    fn a_failed_write_stops_the_pipeline_with_its_error() {
        let mut snapshot = bytes(4 * CHUNK);
        snapshot.extend_from_slice(&Sha256::digest(&snapshot));
        let (result, written) = copy(&snapshot, &RestoreOptions::default(), false);
        assert!(
            matches!(&result, Err(Error::Io { step, .. }) if *step == "writing"),
            "{result:?}"
        );
        assert!(written.is_empty());
    }

    #[test]
    fn a_db_at_the_last_transaction_id_is_refused_not_a_panic() {
        // A real etcd 3.4 db (the fuzz seed), both meta pages rewritten to the largest txids.
        let mut db = include_bytes!("../../fuzz/corpus/bbolt/seed-etcd-3.4").to_vec();
        let page_size = super::super::bbolt::Meta::parse(0, &db).unwrap().page_size as usize;
        for (id, txid) in [(0, u64::MAX - 1), (1, u64::MAX)] {
            let at = id * page_size;
            let meta = super::super::bbolt::Meta::parse(id as u64, &db[at..]).unwrap();
            let page = super::super::bbolt::Meta { txid, ..meta }.page_bytes();
            db[at..at + page_size].copy_from_slice(&page);
        }
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("snapshot.db");
        fs::write(&snapshot, &db).unwrap();
        let opts = RestoreOptions {
            skip_hash_check: true,
            ..RestoreOptions::default()
        };
        let data_dir = dir.path().join("data");
        let error = restore_from_file(&snapshot, &data_dir, &opts).unwrap_err();
        assert!(
            error.to_string().contains(
                "transaction id 18446744073709551615 is the largest there is, so no transaction can follow it). Take a new snapshot or use another backup"
            ),
            "{error}"
        );
        assert!(!data_dir.exists());
    }
}
