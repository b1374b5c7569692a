//! Streaming bundle reader: every entry is checked against the manifest before a sink may keep it.
//!
//! The reader accepts exactly the entry sequence the writer produces: the manifest, its files in order,
//! the snapshot, the end of the archive and, in format 1.2, b3sum's line for the snapshot. Anything
//! else — links, devices, directories, unknown or duplicate paths, sizes that differ from the
//! manifest, other bytes after the end — is refused. Sizes are
//! bounded by the manifest, so a decompression bomb cannot grow past what the manifest admits.

use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::manifest::{FileEntry, Manifest, SnapshotEntry, MANIFEST_PATH, MAX_MANIFEST_BYTES};
use super::trailer::TrailerReader;
use super::Error;
use crate::hashing::HashingReader;

/// zstd windows above 128 MiB are refused: the writer never uses them, and they cost memory.
const MAX_WINDOW_LOG: u32 = 27;
/// tar pads its end to a 10 KiB record; anything much beyond that is not a cpr bundle.
const MAX_TRAILING_BYTES: u64 = 64 << 10;

/// Receives the verified-so-far contents. `data` yields exactly the manifest's size; its digest is
/// checked once the sink returns, so a sink must keep what it writes out of live paths.
pub trait Sink {
    /// Called once the manifest has been read and validated, before any other entry: a sink can
    /// refuse the bundle here without reading the rest.
    fn manifest(&mut self, _manifest: &Manifest) -> io::Result<()> {
        Ok(())
    }
    fn file(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()>;
    fn snapshot(&mut self, entry: &SnapshotEntry, data: &mut dyn Read) -> io::Result<()>;
    /// `snapshot` for a bundle that carries the snapshot's BLAKE3: reads `data` to its end and
    /// returns the BLAKE3 of all of it. By default each read is copied to a hashing thread; a sink
    /// that passes the bytes through buffers of its own (the restore's copy pipeline) hashes them
    /// there instead and spares the copy, a tenth of a restore's time.
    fn snapshot_blake3(
        &mut self,
        entry: &SnapshotEntry,
        data: &mut dyn Read,
    ) -> io::Result<blake3::Hash> {
        let mut digested = HashingReader::blake3(data);
        self.snapshot(entry, &mut digested)?;
        io::copy(&mut digested, &mut io::sink())?;
        Ok(digested.finish().1)
    }
}

/// `Sink::snapshot_blake3` of a sink that hashes the snapshot where it passes the bytes on:
/// `pass` reads `data`, feeding the hasher every byte it takes; what it leaves is hashed here, so
/// the digest covers all of the snapshot.
pub fn blake3_to_end(
    data: &mut dyn Read,
    pass: impl FnOnce(&mut dyn Read, &mut blake3::Hasher) -> io::Result<()>,
) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    pass(&mut *data, &mut hasher)?;
    io::copy(data, &mut hasher)?;
    Ok(hasher.finalize())
}

/// Reads and checks everything, keeping nothing.
pub struct Discard;

impl Sink for Discard {
    fn file(&mut self, _: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(drop)
    }

    fn snapshot(&mut self, _: &SnapshotEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(drop)
    }
}

/// Writes every file below `root` (a fresh staging directory) with the manifest's mode, and its owner
/// when running as root; the snapshot goes to `<root>/etcd/snapshot.db`. Files are fsynced.
pub struct Extract {
    root: PathBuf,
    chown: bool,
}

impl Extract {
    pub fn new(root: &Path) -> Self {
        Extract {
            root: root.to_path_buf(),
            chown: crate::host::is_root(),
        }
    }

    fn create(&self, relative: &str, mode: u32) -> io::Result<(PathBuf, File)> {
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        // create_new: a second entry can never replace a file the first one wrote.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)?;
        Ok((path, file))
    }
}

impl Sink for Extract {
    fn file(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        let (path, mut file) = self.create(&entry.path, entry.mode)?;
        io::copy(data, &mut file)?;
        // The umask may have narrowed the create mode; the manifest's mode is what was backed up.
        fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(entry.mode),
        )?;
        if self.chown {
            std::os::unix::fs::chown(&path, Some(entry.uid), Some(entry.gid))?;
        }
        file.sync_all()
    }

    fn snapshot(&mut self, entry: &SnapshotEntry, data: &mut dyn Read) -> io::Result<()> {
        let (_, file) = self.create(&entry.path, 0o600)?;
        let mut out = io::BufWriter::with_capacity(1 << 20, file);
        io::copy(data, &mut out)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()
    }
}

/// Whether zstd checks the frame checksum (XXH64 of every decoded byte) as it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameChecksum {
    /// For a bundle read on its own: the checksum is what covers the manifest and the tar headers
    /// (the files and the snapshot have digests of their own).
    Check,
    /// For a stored object whose every byte is checked against the store index's digest or a
    /// signature before the caller acts on what it read (`ops::sealed::Opened`). XXH64 would then
    /// check nothing more, and it costs a fifth of zstd's decoding time.
    CoveredByObjectDigest,
}

/// Reads only the manifest: `cpr inspect` never decompresses past the first entry.
pub fn read_manifest<R: Read>(input: R, bundle: &str) -> Result<Manifest, Error> {
    let mut decoder = decoder(input, bundle, FrameChecksum::Check)?;
    let mut archive = tar::Archive::new(&mut decoder);
    let mut entries = archive
        .entries()
        .map_err(read_err(bundle, "archive start"))?;
    manifest_entry(&mut entries, bundle)
}

/// Reads a whole bundle, checking every entry, every digest and the snapshot trailer, and hands the
/// contents to `sink`. Returns the manifest once everything has been checked.
pub fn read_bundle<R: Read>(
    input: R,
    bundle: &str,
    checksum: FrameChecksum,
    sink: &mut dyn Sink,
) -> Result<Manifest, Error> {
    let mut decoder = decoder(input, bundle, checksum)?;
    let mut blake3 = None;
    let manifest = {
        let mut archive = tar::Archive::new(&mut decoder);
        let mut entries = archive
            .entries()
            .map_err(read_err(bundle, "archive start"))?;
        let manifest = manifest_entry(&mut entries, bundle)?;
        sink.manifest(&manifest)
            .map_err(read_err(bundle, MANIFEST_PATH))?;
        for file in &manifest.files {
            let entry = expect_entry(&mut entries, &file.path, file.size, bundle)?;
            let mut hashing = HashingReader::new(entry, Sha256::new());
            sink.file(file, &mut hashing)
                .and_then(|()| io::copy(&mut hashing, &mut io::sink()).map(drop))
                .map_err(read_err(bundle, &file.path))?;
            let actual = hex::encode(hashing.into_parts().1.finalize());
            if actual != file.sha256 {
                return Err(Error::DigestMismatch {
                    bundle: bundle.to_string(),
                    path: file.path.clone(),
                    expected: file.sha256.clone(),
                    actual,
                });
            }
        }
        let snapshot = &manifest.snapshot;
        let entry = expect_entry(&mut entries, &snapshot.path, snapshot.size, bundle)?;
        if snapshot.blake3.is_some() {
            let mut entry = entry;
            let digest = sink
                .snapshot_blake3(snapshot, &mut entry)
                .and_then(|digest| match entry.read(&mut [0])? {
                    0 => Ok(digest),
                    // A digest of part of the snapshot would be blamed on the bundle.
                    _ => Err(io::Error::other(
                        "cpr stopped reading the snapshot before its end; report this as a bug",
                    )),
                })
                .map_err(read_err(bundle, &snapshot.path))?;
            blake3 = Some(digest);
        } else {
            // Format 1.0 and 1.1: etcd's sha256 trailer is all there is.
            let mut checked = TrailerReader::new(entry);
            pass_snapshot(sink, snapshot, &mut checked, bundle)?;
            if !checked.matches() {
                return Err(Error::SnapshotTrailer {
                    bundle: bundle.to_string(),
                });
            }
        }
        if let Some(extra) = entries.next() {
            let path = extra
                .ok()
                .and_then(|e| e.path().ok().map(|p| p.display().to_string()))
                .unwrap_or_default();
            return Err(Error::UnexpectedEntry {
                bundle: bundle.to_string(),
                path,
                why: "an entry follows the etcd snapshot, which must be last".to_string(),
            });
        }
        manifest
    };
    // Reading to the end makes zstd check its frame checksum, unless told not to.
    let mut trailing = Vec::new();
    (&mut decoder)
        .take(MAX_TRAILING_BYTES + 1)
        .read_to_end(&mut trailing)
        .map_err(read_err(bundle, "end of archive"))?;
    if trailing.len() as u64 > MAX_TRAILING_BYTES {
        return Err(Error::UnexpectedEntry {
            bundle: bundle.to_string(),
            path: String::new(),
            why: format!("more than {MAX_TRAILING_BYTES} bytes follow the end of the archive"),
        });
    }
    if let Some(digest) = blake3 {
        check_blake3_line(&trailing, &manifest.snapshot, &digest, bundle)?;
    }
    Ok(manifest)
}

/// The tar reader stops at the first of the end-of-archive marker's two zero blocks.
const END_OF_ARCHIVE_REST: [u8; 512] = [0; 512];

/// A 1.2 bundle holds, after the end-of-archive marker, b3sum's line for the snapshot and nothing
/// else.
fn check_blake3_line(
    trailing: &[u8],
    snapshot: &SnapshotEntry,
    digest: &blake3::Hash,
    bundle: &str,
) -> Result<(), Error> {
    let expected = snapshot.blake3_line(digest);
    let expected = expected.as_bytes();
    let hex_len = 2 * blake3::OUT_LEN;
    let found = match trailing.strip_prefix(&END_OF_ARCHIVE_REST[..]) {
        Some(line) if line == expected => return Ok(()),
        Some(line) if line.len() == expected.len() && line[hex_len..] == expected[hex_len..] => {
            format!(
                "b3sum's line says {}",
                String::from_utf8_lossy(&line[..hex_len])
            )
        }
        _ if trailing.iter().all(|&b| b == 0) => "there is no digest line".to_string(),
        _ => format!(
            "the {} bytes there are not the end-of-archive marker and b3sum's line for {}",
            trailing.len(),
            snapshot.path
        ),
    };
    Err(Error::SnapshotDigest {
        bundle: bundle.to_string(),
        actual: digest.to_hex().to_string(),
        found,
    })
}

/// Hands the snapshot to the sink and reads what it left, so the digest covers every byte.
fn pass_snapshot(
    sink: &mut dyn Sink,
    snapshot: &SnapshotEntry,
    data: &mut dyn Read,
    bundle: &str,
) -> Result<(), Error> {
    sink.snapshot(snapshot, data)
        .and_then(|()| io::copy(data, &mut io::sink()).map(drop))
        .map_err(read_err(bundle, &snapshot.path))
}

type Entries<'a, R> = tar::Entries<'a, R>;

fn decoder<R: Read>(input: R, bundle: &str, checksum: FrameChecksum) -> Result<Bounded<R>, Error> {
    let consumed = Rc::new(Cell::new(0));
    let counted = Counted {
        inner: input,
        consumed: consumed.clone(),
    };
    let mut decoder = zstd::Decoder::new(counted).map_err(read_err(bundle, "zstd start"))?;
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(read_err(bundle, "zstd start"))?;
    if checksum == FrameChecksum::CoveredByObjectDigest {
        decoder
            .set_parameter(zstd::stream::raw::DParameter::ForceIgnoreChecksum(true))
            .map_err(read_err(bundle, "zstd start"))?;
    }
    Ok(Bounded {
        inner: decoder,
        consumed,
        produced: 0,
    })
}

/// Decompressed bytes allowed per compressed byte, beyond `BOMB_SLACK`. Real bundles compress a few
/// times (bbolt pages, PEM text); zstd can reach ~30000:1 on zeros. Without this, a small hostile file
/// whose manifest claims a huge snapshot would be streamed to its claimed size before its trailer
/// fails: up to `MAX_SNAPSHOT_BYTES` written to a staging disk.
const MAX_RATIO: u64 = 1000;
const BOMB_SLACK: u64 = 64 << 20;

/// Counts the compressed bytes zstd has taken from the input.
struct Counted<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

/// The decompressed stream, failing once it outgrows `MAX_RATIO` times its compressed input.
struct Bounded<R> {
    inner: zstd::Decoder<'static, io::BufReader<Counted<R>>>,
    consumed: Rc<Cell<u64>>,
    produced: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced += n as u64;
        let allowed = self
            .consumed
            .get()
            .saturating_mul(MAX_RATIO)
            .saturating_add(BOMB_SLACK);
        if self.produced > allowed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} bytes decompressed from {}: more than {MAX_RATIO} times the input, a decompression bomb",
                    self.produced,
                    self.consumed.get()
                ),
            ));
        }
        Ok(n)
    }
}

fn manifest_entry<R: Read>(entries: &mut Entries<'_, R>, bundle: &str) -> Result<Manifest, Error> {
    let mut entry = match entries.next() {
        Some(entry) => entry.map_err(read_err(bundle, MANIFEST_PATH))?,
        None => {
            return Err(Error::NoManifest {
                bundle: bundle.to_string(),
                found: "an empty archive".to_string(),
            })
        }
    };
    let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if path != MANIFEST_PATH || entry.header().entry_type() != tar::EntryType::Regular {
        return Err(Error::NoManifest {
            bundle: bundle.to_string(),
            found: path,
        });
    }
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(Error::ManifestInvalid {
            bundle: bundle.to_string(),
            message: format!(
                "the manifest claims {} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
                entry.size()
            ),
        });
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(read_err(bundle, MANIFEST_PATH))?;
    Manifest::from_json(&bytes, bundle)
}

fn expect_entry<'a, R: Read>(
    entries: &mut Entries<'a, R>,
    path: &str,
    size: u64,
    bundle: &str,
) -> Result<tar::Entry<'a, R>, Error> {
    let unexpected = |found: String, why: String| Error::UnexpectedEntry {
        bundle: bundle.to_string(),
        path: found,
        why,
    };
    let entry = match entries.next() {
        Some(entry) => entry.map_err(read_err(bundle, path))?,
        None => {
            return Err(unexpected(
                path.to_string(),
                "the archive ends before this entry".to_string(),
            ))
        }
    };
    let found = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if found != path {
        return Err(unexpected(
            found,
            format!("expected {path:?} here, as the manifest lists it"),
        ));
    }
    let kind = entry.header().entry_type();
    if kind != tar::EntryType::Regular {
        return Err(unexpected(
            found,
            format!("is a {kind:?} entry; only regular files are allowed"),
        ));
    }
    if entry.size() != size {
        return Err(unexpected(
            found,
            format!("is {} bytes, the manifest says {size}", entry.size()),
        ));
    }
    Ok(entry)
}

fn read_err(bundle: &str, at: &str) -> impl FnOnce(io::Error) -> Error {
    let (bundle, at) = (bundle.to_string(), at.to_string());
    move |source| Error::Read { bundle, at, source }
}
