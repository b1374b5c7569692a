//! Streaming bundle writer: manifest, files, then the etcd snapshot, through zstd into any `Write`;
//! after the tar's end, inside the zstd stream, b3sum's line for the snapshot (format 1.2).

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

use super::manifest::{Manifest, MANIFEST_PATH};
use super::trailer::TrailerReader;
use super::Error;
use crate::hashing::HashingReader;

const ZSTD_JOB_BYTES: u32 = 2 << 20;

#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    pub zstd_level: i32,
    /// zstd worker threads; 0 compresses on the calling thread.
    pub zstd_threads: u32,
    /// Seconds since the epoch, stamped on every tar entry.
    pub mtime: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Uncompressed bytes: the tar and what follows its end (format 1.2's BLAKE3 line).
    pub tar_bytes: u64,
}

/// Writes a whole bundle. `files[i]` holds the bytes of `manifest.files[i]`; `snapshot` must yield
/// exactly `manifest.snapshot.size` bytes ending in a valid sha256 trailer. On any error the output is
/// incomplete and the caller must discard it.
pub fn write_bundle<W: Write>(
    out: W,
    manifest: &Manifest,
    files: &[Vec<u8>],
    snapshot: &mut dyn Read,
    options: &WriteOptions,
    bundle: &str,
) -> Result<(W, WriteStats), Error> {
    let write_err = |path: &str| {
        let (bundle, path) = (bundle.to_string(), path.to_string());
        move |source| Error::Write {
            bundle: bundle.clone(),
            path: path.clone(),
            source,
        }
    };
    manifest.validate(bundle)?;
    check_files_match(manifest, files, bundle)?;

    let mut encoder =
        zstd::Encoder::new(out, options.zstd_level).map_err(write_err("zstd encoder"))?;
    encoder
        .include_checksum(true)
        .map_err(write_err("zstd encoder"))?;
    if options.zstd_threads > 0 {
        encoder
            .multithread(options.zstd_threads)
            .map_err(write_err("zstd encoder"))?;
        // zstd's default job (4 windows) keeps several 8 MiB buffers per worker alive; 2 MiB jobs
        // keep a backup's memory well under 64 MiB at a negligible cost in ratio.
        encoder
            .set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_BYTES))
            .map_err(write_err("zstd encoder"))?;
    }
    let mut tar = tar::Builder::new(CountingWriter::new(encoder));

    let manifest_json = manifest.to_json();
    let meta = |path: &str, mode, size| EntryMeta {
        path: path.to_string(),
        mode,
        uid: 0,
        gid: 0,
        size,
        mtime: options.mtime,
    };
    append(
        &mut tar,
        &meta(MANIFEST_PATH, 0o644, manifest_json.len() as u64),
        &manifest_json[..],
    )
    .map_err(write_err(MANIFEST_PATH))?;
    for (entry, data) in manifest.files.iter().zip(files) {
        let file = EntryMeta {
            uid: entry.uid,
            gid: entry.gid,
            ..meta(&entry.path, entry.mode, entry.size)
        };
        append(&mut tar, &file, &data[..]).map_err(write_err(&entry.path))?;
    }

    let expected = manifest.snapshot.size;
    // etcd's trailer is checked here, once, as the snapshot streams out of etcd; restores check
    // the BLAKE3 digest, fast without SHA hardware.
    let mut digested = HashingReader::blake3(TrailerReader::new(snapshot.take(expected)));
    append(
        &mut tar,
        &meta(&manifest.snapshot.path, 0o600, expected),
        &mut digested,
    )
    .map_err(write_err(&manifest.snapshot.path))?;
    let (checked, digest) = digested.finish();
    if checked.count() != expected {
        return Err(Error::SnapshotShort {
            bundle: bundle.to_string(),
            got: checked.count(),
            expected,
        });
    }
    if !checked.matches() {
        return Err(Error::SnapshotTrailer {
            bundle: bundle.to_string(),
        });
    }
    let mut tar_counter = tar.into_inner().map_err(write_err("tar end"))?;
    if manifest.snapshot.blake3.is_some() {
        tar_counter
            .write_all(manifest.snapshot.blake3_line(&digest).as_bytes())
            .map_err(write_err(
                "the snapshot's BLAKE3 line after the end of the archive",
            ))?;
    }
    let tar_bytes = tar_counter.count;
    let out = tar_counter.inner.finish().map_err(write_err("zstd end"))?;
    Ok((out, WriteStats { tar_bytes }))
}

fn check_files_match(manifest: &Manifest, files: &[Vec<u8>], bundle: &str) -> Result<(), Error> {
    if manifest.files.len() != files.len() {
        return Err(Error::ManifestInvalid {
            bundle: bundle.to_string(),
            message: format!(
                "{} files listed but {} given",
                manifest.files.len(),
                files.len()
            ),
        });
    }
    for (entry, data) in manifest.files.iter().zip(files) {
        let actual = hex::encode(Sha256::digest(data));
        if entry.size != data.len() as u64 || entry.sha256 != actual {
            return Err(Error::DigestMismatch {
                bundle: bundle.to_string(),
                path: entry.path.clone(),
                expected: entry.sha256.clone(),
                actual,
            });
        }
    }
    Ok(())
}

struct EntryMeta {
    path: String,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
}

/// The header carries the size up front; the tar crate pads by what it copied, so a short source
/// leaves a malformed archive that `write_bundle` then refuses to finish.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    meta: &EntryMeta,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(meta.mode);
    header.set_uid(meta.uid.into());
    header.set_gid(meta.gid.into());
    header.set_mtime(meta.mtime);
    header.set_size(meta.size);
    tar.append_data(&mut header, &meta.path, data)
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
