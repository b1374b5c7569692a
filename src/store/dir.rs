//! A store in a local directory. An object appears under its final name only when complete: data goes
//! to `<name>.part` (0600), is fsynced, renamed, and the directory fsynced.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::progress::Progress;
use super::{check_name, Error, ObjectInfo, Store, Upload};
use crate::fsutil;

pub(crate) const PART_SUFFIX: &str = ".part";
const WRITE_BUFFER: usize = 1 << 20;

pub(crate) struct DirStore {
    root: PathBuf,
    progress_interval: Duration,
}

impl DirStore {
    pub fn new(root: PathBuf, progress_interval: Duration) -> DirStore {
        DirStore {
            root,
            progress_interval,
        }
    }

    fn path(&self, name: &str) -> Result<PathBuf, Error> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    /// The path of `name` to write, its directory made (private) first.
    fn new_path(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.path(name)?;
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|e| Error::io("creating directory", parent.clone(), e))?;
        Ok(path)
    }
}

impl Store for DirStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error> {
        // A missing store is a typo, not an empty store: say so rather than list nothing.
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                let not_dir = io::Error::from(io::ErrorKind::NotADirectory);
                return Err(Error::io("listing", self.root.clone(), not_dir));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoDir {
                    path: self.root.clone(),
                })
            }
            Err(e) => return Err(Error::io("listing", self.root.clone(), e)),
        }
        // Walk only the directory the prefix names, not the whole store.
        let start = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut found = Vec::new();
        walk(&self.root, start, &mut |name, meta| {
            if name.starts_with(prefix) && !name.ends_with(PART_SUFFIX) {
                found.push(ObjectInfo {
                    name: name.to_string(),
                    size: meta.len(),
                    modified: meta.modified().ok(),
                });
            }
        })?;
        Ok(found)
    }

    fn open_limited(
        &self,
        name: &str,
        max_size: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, Error> {
        let path = self.path(name)?;
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound {
                url: path.display().to_string(),
            },
            _ => Error::io("opening", path.clone(), e),
        })?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("reading", path.clone(), e))?
            .len();
        if let Some(limit) = max_size.filter(|&limit| size > limit) {
            return Err(Error::TooLarge {
                url: path.display().to_string(),
                limit,
            });
        }
        Ok(Box::new(file))
    }

    fn create(&self, name: &str) -> Result<Box<dyn Upload>, Error> {
        let path = self.new_path(name)?;
        let part = PathBuf::from(format!("{}{PART_SUFFIX}", path.display()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .map_err(|e| Error::io("creating", part.clone(), e))?;
        // `mode` applies to new files only; a stale .part from a crash keeps whatever it had.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("creating", part.clone(), e))?;
        let progress = Progress::new(
            "writing",
            path.display().to_string(),
            self.progress_interval,
        );
        Ok(Box::new(DirUpload {
            name: name.to_string(),
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            part,
            path,
            written: 0,
            progress,
        }))
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("deleting", path, e)),
            _ => Ok(()),
        }
    }

    fn create_if_absent(&self, name: &str, data: &[u8]) -> Result<bool, Error> {
        let path = self.new_path(name)?;
        fsutil::create_new(&path, data, 0o600).map_err(|e| Error::io("creating", path, e))
    }
}

/// Calls `found` with the name (relative to `root`) and metadata of every regular file under `dir`.
/// Symbolic links to files count; links to directories are not followed, so a loop cannot trap us.
fn walk(root: &Path, dir: &str, found: &mut dyn FnMut(&str, &fs::Metadata)) -> Result<(), Error> {
    let path = root.join(dir);
    let entries = match fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(())
        }
        Err(e) => return Err(Error::io("listing", path, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", path.clone(), e))?;
        let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
            continue; // not a name any store could hold
        };
        let name = if dir.is_empty() {
            file_name
        } else {
            format!("{dir}/{file_name}")
        };
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("listing", entry.path(), e))?;
        if kind.is_dir() {
            walk(root, &name, found)?;
        } else if let Ok(meta) = fs::metadata(entry.path()) {
            if meta.is_file() {
                found(&name, &meta);
            }
        }
    }
    Ok(())
}

struct DirUpload {
    name: String,
    /// `None` once a write failed: the .part is gone and the upload can only be dropped.
    file: Option<BufWriter<File>>,
    part: PathBuf,
    path: PathBuf,
    written: u64,
    progress: Progress,
}

impl DirUpload {
    /// Removes the .part at once on any failure, so a full disk gets its space back immediately.
    fn fail(&mut self, e: io::Error) -> Error {
        self.discard();
        Error::io("writing", self.part.clone(), e)
    }

    fn discard(&mut self) {
        if let Some(writer) = self.file.take() {
            // Buffered data is thrown away, not flushed into a file about to be removed.
            drop(writer.into_parts());
            let _ = fs::remove_file(&self.part);
        }
    }

    fn failed(&self) -> Error {
        Error::Io {
            op: "writing",
            path: self.part.clone(),
            source: io::Error::other("an earlier write failed; the partial file was removed"),
        }
    }
}

impl Write for DirUpload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.failed().into_io());
        };
        match file.write(data) {
            Ok(n) => {
                self.written += n as u64;
                self.progress.add(n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => Err(self.fail(e).into_io()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.failed().into_io());
        };
        file.flush().map_err(|e| self.fail(e).into_io())
    }
}

impl Upload for DirUpload {
    fn commit(mut self: Box<Self>) -> Result<ObjectInfo, Error> {
        let Some(writer) = self.file.as_mut() else {
            return Err(self.failed());
        };
        let committed = writer
            .flush()
            .and_then(|()| fsutil::commit_file(writer.get_ref(), &self.part, &self.path));
        committed.map_err(|e| self.fail(e))?;
        self.file = None;
        Ok(ObjectInfo {
            name: std::mem::take(&mut self.name),
            size: self.written,
            modified: fs::metadata(&self.path).and_then(|m| m.modified()).ok(),
        })
    }
}

impl Drop for DirUpload {
    fn drop(&mut self) {
        self.discard();
    }
}
