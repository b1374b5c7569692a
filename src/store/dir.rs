//! A store in a local directory. An object appears under its final name only when complete: data goes
//! to `<name>.part` (0600), is fsynced, renamed, and the directory fsynced.
//!
//! A writer holds an exclusive flock on its `.part` until it commits or drops it, and writes to it
//! continually; the kernel releases the lock when the process dies. So a `.part` that nobody holds
//! locked and that has not changed for `DEAD_UPLOAD_AGE` is a dead upload (a crash or power cut), and
//! `remove_dead_uploads` may remove it while a concurrent backup's live `.part` stays. The age covers
//! the instant between creating a `.part` and locking it, and file systems that do not lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::progress::Progress;
use super::{check_name, Error, ObjectInfo, Store, Upload};
use crate::fsutil;
use crate::host::{self, LockKind, LockedFile};

pub(crate) const PART_SUFFIX: &str = ".part";
const WRITE_BUFFER: usize = 1 << 20;
/// How long an unlocked `.part` must have been unchanged before it counts as dead.
pub(crate) const DEAD_UPLOAD_AGE: Duration = Duration::from_secs(15 * 60);

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

    /// The path of `name` to write, its directory made (private) first, durably: the object's own
    /// commit fsyncs only the directory holding it, so a power cut after a node's first backup
    /// would otherwise lose the new `<cluster>/<node>/` entry, and the "committed" bundle with it.
    fn new_path(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.path(name)?;
        let parent = path.parent().unwrap_or(&self.root);
        fsutil::create_dirs_durable_mode(parent, 0o700)
            .map_err(|e| Error::io("preparing the directory of", path.clone(), e))?;
        Ok(path)
    }

    /// An upload of `name`; unless `replace`, one that refuses to replace an object or another
    /// writer's `.part` of that name.
    fn upload(&self, name: &str, replace: bool) -> Result<Box<dyn Upload>, Error> {
        let path = self.new_path(name)?;
        if !replace && path.symlink_metadata().is_ok() {
            return Err(Error::Exists {
                path,
                unfinished: false,
            });
        }
        let part = PathBuf::from(format!("{}{PART_SUFFIX}", path.display()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .create_new(!replace)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Error::Exists {
                    path: part.clone(),
                    unfinished: true,
                },
                _ => Error::io("creating", part.clone(), e),
            })?;
        // `mode` applies to new files only; a stale .part from a crash keeps whatever it had.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("creating", part.clone(), e))?;
        let lock = file
            .try_clone()
            .ok()
            .and_then(|clone| host::try_lock(clone, LockKind::Exclusive).ok().flatten());
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
            replace,
            written: 0,
            progress,
            _lock: lock,
        }))
    }
}

/// The lock on the `.part` at `path` when it is a dead upload: no writer holds it locked and it has
/// not changed for `DEAD_UPLOAD_AGE`. `None` for a live one, one gone meanwhile, or one whose lock
/// cannot be asked for (a file system without locks): that is left rather than guessed at.
fn dead_upload(path: &Path) -> Result<Option<LockedFile>, Error> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::io(
                "opening the unfinished upload",
                path.to_path_buf(),
                e,
            ))
        }
    };
    let lock = match host::try_lock(file, LockKind::Exclusive) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Ok(None),
        Err(e) => {
            log::warn!(
                "leaving {}: cannot tell whether its writer is alive ({e})",
                path.display()
            );
            return Ok(None);
        }
    };
    let modified = lock
        .metadata()
        .and_then(|m| m.modified())
        .map_err(|e| Error::io("reading", path.to_path_buf(), e))?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    Ok((age >= DEAD_UPLOAD_AGE).then_some(lock))
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
        self.upload(name, true)
    }

    fn create_new(&self, name: &str) -> Result<Box<dyn Upload>, Error> {
        self.upload(name, false)
    }

    fn remove_dead_uploads(&self, prefix: &str, dry_run: bool) -> Result<Vec<String>, Error> {
        let start = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut parts = Vec::new();
        walk(&self.root, start, &mut |name, _| {
            if name.starts_with(prefix) && name.ends_with(PART_SUFFIX) {
                parts.push(name.to_string());
            }
        })?;
        let mut removed = Vec::new();
        for name in parts {
            let path = self.root.join(&name);
            let Some(_lock) = dead_upload(&path)? else {
                continue;
            };
            if !dry_run {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(Error::io("removing the dead upload", path, e))
                    }
                    _ => {}
                }
            }
            removed.push(name);
        }
        removed.sort();
        Ok(removed)
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
    /// Whether committing may replace an object of the same name.
    replace: bool,
    written: u64,
    progress: Progress,
    /// Held until the upload is committed or dropped: tells a live `.part` from a dead one.
    _lock: Option<LockedFile>,
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
        let commit = if self.replace {
            fsutil::commit_file
        } else {
            fsutil::commit_file_new
        };
        let committed = writer
            .flush()
            .and_then(|()| commit(writer.get_ref(), &self.part, &self.path));
        match committed {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.discard();
                return Err(Error::Exists {
                    path: self.path.clone(),
                    unfinished: false,
                });
            }
            committed => committed.map_err(|e| self.fail(e))?,
        }
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
