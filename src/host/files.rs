//! File-system calls beyond open, read, write and rename: advisory locks, preallocation and a
//! rename that never replaces. Errors are the kernel's, unwrapped; callers add the step and path.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{self, FallocateFlags, Flock, FlockArg};

/// Who else may hold a lock on the same file at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Any number of shared holders; refused while an exclusive one holds it (as bbolt's writer,
    /// a running etcd, does).
    Shared,
    /// Nobody else, shared or exclusive.
    Exclusive,
}

/// A file with an `flock(2)` held on it: released when this is dropped or the process dies, which
/// is what lets another process tell a live holder from a dead one.
#[derive(Debug)]
pub struct LockedFile(Flock<File>);

impl Deref for LockedFile {
    type Target = File;

    fn deref(&self) -> &File {
        &self.0
    }
}

/// Takes an `flock(2)` of `kind` on `file` without waiting: `None` when another open file holds a
/// conflicting lock. An error means the lock could not be asked for (a file system without locks).
pub fn try_lock(file: File, kind: LockKind) -> io::Result<Option<LockedFile>> {
    let arg = match kind {
        LockKind::Shared => FlockArg::LockSharedNonblock,
        LockKind::Exclusive => FlockArg::LockExclusiveNonblock,
    };
    match Flock::lock(file, arg) {
        Ok(lock) => Ok(Some(LockedFile(lock))),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno.into()),
    }
}

/// Gives `file` `len` bytes of allocated space from offset 0 (`fallocate(2)`, mode 0), so later
/// writes within them cannot fail for want of space. A file system without fallocate gets a sparse
/// file of the same size and content instead.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let signed = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match fcntl::fallocate(file, FallocateFlags::empty(), 0, signed) {
        Err(Errno::EOPNOTSUPP) => file.set_len(len),
        other => other.map_err(io::Error::from),
    }
}

/// Renames `from` to `to` unless `to` exists (`renameat2(2)` with RENAME_NOREPLACE), failing with
/// `AlreadyExists`, so two writers that picked the same name cannot overwrite each other. A file
/// system without RENAME_NOREPLACE (some network file systems) gets a check right before a plain
/// rename instead, which a writer racing in between can still beat.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let no_replace = fcntl::RenameFlags::RENAME_NOREPLACE;
    match fcntl::renameat2(fcntl::AT_FDCWD, from, fcntl::AT_FDCWD, to, no_replace) {
        Err(Errno::EINVAL) if to.symlink_metadata().is_err() => std::fs::rename(from, to),
        Err(Errno::EINVAL) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
        other => other.map_err(io::Error::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_lock_held_elsewhere_is_reported_as_none_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"x").unwrap();
        let open = || File::open(&path).unwrap();

        let exclusive = try_lock(open(), LockKind::Exclusive).unwrap().unwrap();
        assert!(try_lock(open(), LockKind::Shared).unwrap().is_none());
        drop(exclusive);
        let shared = try_lock(open(), LockKind::Shared).unwrap().unwrap();
        assert!(try_lock(open(), LockKind::Shared).unwrap().is_some());
        assert!(try_lock(open(), LockKind::Exclusive).unwrap().is_none());
        assert_eq!(shared.metadata().unwrap().len(), 1);
    }

    #[test]
    fn preallocate_sizes_the_file_and_allocates_its_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("wal")).unwrap();
        preallocate(&file, 1 << 20).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 1 << 20);
        assert!(meta.blocks() * 512 >= 1 << 20, "{} blocks", meta.blocks());
    }

    #[test]
    fn rename_no_replace_refuses_an_existing_target_and_keeps_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a.tmp"), dir.path().join("a"));
        std::fs::write(&from, b"new").unwrap();
        std::fs::write(&to, b"old").unwrap();

        let refused = rename_no_replace(&from, &to).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&to).unwrap(), b"old");
        assert_eq!(std::fs::read(&from).unwrap(), b"new");

        std::fs::remove_file(&to).unwrap();
        rename_no_replace(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"new");
        assert!(!from.exists());
    }
}
