//! Durable file-system changes: temp file → fsync → rename → fsync the directory.
//!
//! Every module that must survive a crash mid-write uses these (`write_atomic` and `commit_file` for
//! files, `rename_durable` and `sync_tree` for staged trees), so the discipline lives in one place.
//! Each error says which step failed on which path; callers add what they were doing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `error` with the failed step and path in front, its kind kept.
fn context(step: &str, path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{step} {}: {error}", path.display()))
}

/// The directory holding `path` ("." for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory, making the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `<path><suffix>`, beside `path`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// `path`, else `<path>.1`, `<path>.2`, …: the first name nothing holds, so a file moved there
/// replaces nothing kept aside earlier.
pub fn untaken(path: PathBuf) -> PathBuf {
    let mut candidate = path.clone();
    let mut n = 0;
    while candidate.symlink_metadata().is_ok() {
        n += 1;
        candidate = sibling(&path, &format!(".{n}"));
    }
    candidate
}

/// Makes `file`, written at `tmp`, the content of `path`: fsync, rename, fsync the directory. A
/// crash at any point leaves the old `path` or the new one, never a torn file.
pub fn commit_file(file: &File, tmp: &Path, path: &Path) -> io::Result<()> {
    file.sync_all().map_err(|e| context("fsync of", tmp, e))?;
    rename_durable(tmp, path)
}

/// `commit_file` that never replaces: fails with `AlreadyExists` when `path` exists, so two writers
/// that picked the same name cannot overwrite each other's object (`host::rename_no_replace`).
pub fn commit_file_new(file: &File, tmp: &Path, path: &Path) -> io::Result<()> {
    file.sync_all().map_err(|e| context("fsync of", tmp, e))?;
    crate::host::rename_no_replace(tmp, path)
        .map_err(|e| context(&format!("renaming {} to", tmp.display()), path, e))?;
    sync_dir(parent(path)).map_err(|e| context("fsync of directory", parent(path), e))
}

/// Writes `bytes` to `tmp` (a new file, or one replaced whole) with `mode`.
fn write_tmp(tmp: &Path, bytes: &[u8], mode: u32, new: bool) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .create_new(new)
        .truncate(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| context("creating", tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| context("writing", tmp, e))?;
    Ok(file)
}

/// Replaces `path` with `bytes` atomically: readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = sibling(path, ".tmp");
    let result =
        write_tmp(&tmp, bytes, mode, false).and_then(|file| commit_file(&file, &tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` with `bytes` unless it exists, atomically and durably: the content is written and
/// fsynced under a name of this call's own, then hard-linked to `path`, which fails rather than
/// replace what another writer linked first. Returns whether this call created it.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = sibling(path, &format!(".{}-{n}.new", std::process::id()));
    let result = (|| {
        let file = write_tmp(&tmp, bytes, mode, true)?;
        file.sync_all().map_err(|e| context("fsync of", &tmp, e))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(context(&format!("linking {} to", tmp.display()), path, e)),
        }
        sync_dir(parent(path)).map_err(|e| context("fsync of directory", parent(path), e))?;
        Ok(true)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Renames and makes the rename durable in both directories.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to).map_err(|e| context(&format!("renaming {} to", from.display()), to, e))?;
    let sync = |dir: &Path| sync_dir(dir).map_err(|e| context("fsync of directory", dir, e));
    sync(parent(to))?;
    if parent(from) != parent(to) {
        sync(parent(from))?;
    }
    Ok(())
}

/// Creates `dir` and its missing ancestors, fsyncing the parent of each one made, so that a power
/// cut cannot take back a directory that later writes (made durable themselves) depend on.
pub fn create_dirs_durable(dir: &Path) -> io::Result<()> {
    create_dirs_durable_mode(dir, 0o777)
}

/// `create_dirs_durable` making each missing directory with `mode` (less the umask); directories
/// that exist keep theirs.
pub fn create_dirs_durable_mode(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    create_dirs_durable_mode(parent(dir), mode)?;
    match fs::DirBuilder::new().mode(mode).create(dir) {
        // `AlreadyExists` is fine when another writer made the directory meanwhile. Anything else
        // there (a file, a dangling link) would fail every later write below it with a bare
        // ENOTDIR, so it is refused here, by name.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !dir.is_dir() => {
            let in_the_way = io::Error::new(
                io::ErrorKind::NotADirectory,
                "it exists and is not a directory: move it aside, or choose another path",
            );
            return Err(context("creating directory", dir, in_the_way));
        }
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(context("creating directory", dir, e))
        }
        _ => {}
    }
    sync_dir(parent(dir)).map_err(|e| context("fsync of directory", parent(dir), e))
}

/// Points the symbolic link `link` at `target`, replacing what `link` was, atomically and durably:
/// made under a temporary name, then renamed over `link`.
pub fn symlink_durable(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = sibling(link, ".tmp");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(context("removing", &tmp, e)),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| context("creating link", &tmp, e))?;
    rename_durable(&tmp, link)
}

/// fsyncs every file and directory below `root` (a freshly staged tree), then `root` itself.
pub fn sync_tree(root: &Path) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(root)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_untaken_name_skips_every_file_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("admin.conf.cpr-old-20260101T000000Z");
        assert_eq!(untaken(kept.clone()), kept);
        fs::write(&kept, "first").unwrap();
        fs::write(sibling(&kept, ".1"), "second").unwrap();
        assert_eq!(untaken(kept.clone()), sibling(&kept, ".2"));
    }

    use super::*;

    #[test]
    fn a_bare_file_name_is_synced_in_the_current_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(parent(Path::new("state.json")), Path::new("."));
        assert_eq!(parent(Path::new("/")), Path::new("."));
        assert_eq!(parent(Path::new("a/b")), Path::new("a"));
        let path = dir.path().join("state.json");
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!sibling(&path, ".tmp").exists());
    }

    #[test]
    fn a_failed_write_names_the_step_and_the_path_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing/state.json");
        let error = write_atomic(&missing, b"x", 0o600).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(
            error
                .to_string()
                .starts_with(&format!("creating {}.tmp: ", missing.display())),
            "{error}"
        );
        // The rename's target is a directory that is not empty: the temp file goes away again.
        let occupied = dir.path().join("occupied");
        fs::create_dir_all(occupied.join("x")).unwrap();
        let error = write_atomic(&occupied, b"x", 0o600).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "renaming {}.tmp to {}: ",
                occupied.display(),
                occupied.display()
            )),
            "{error}"
        );
        assert!(!sibling(&occupied, ".tmp").exists());
    }

    #[test]
    fn durable_dirs_and_links_are_made_once_and_replace_a_stale_link() {
        let dir = tempfile::tempdir().unwrap();
        let wants = dir
            .path()
            .join("etc/systemd/system/multi-user.target.wants");
        create_dirs_durable(&wants).unwrap();
        create_dirs_durable(&wants).unwrap();
        assert!(wants.is_dir());
        let link = wants.join("cpr-finish.service");
        symlink_durable(Path::new("/elsewhere"), &link).unwrap();
        symlink_durable(Path::new("/etc/systemd/system/cpr-finish.service"), &link).unwrap();
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("/etc/systemd/system/cpr-finish.service")
        );
        assert!(!sibling(&link, ".tmp").exists());
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let error = create_dirs_durable(&file.join("sub")).unwrap_err();
        assert!(
            error.to_string().starts_with("creating directory "),
            "{error}"
        );
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_refused_by_name_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("c1/node-a");
        fs::create_dir(dir.path().join("c1")).unwrap();
        fs::write(&node, "not a directory").unwrap();
        let error = create_dirs_durable(&node).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotADirectory);
        assert_eq!(
            error.to_string(),
            format!(
                "creating directory {}: it exists and is not a directory: move it aside, or choose \
                 another path",
                node.display()
            )
        );
        assert_eq!(fs::read(&node).unwrap(), b"not a directory");
        // A symbolic link to a directory is one.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("c1/node-b")).unwrap();
        create_dirs_durable(&dir.path().join("c1/node-b/sub")).unwrap();
        assert!(elsewhere.join("sub").is_dir());
    }

    #[test]
    fn rename_durable_syncs_both_directories_and_names_a_missing_source() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a")).unwrap();
        fs::create_dir_all(dir.path().join("b")).unwrap();
        fs::write(dir.path().join("a/f"), b"x").unwrap();
        rename_durable(&dir.path().join("a/f"), &dir.path().join("b/f")).unwrap();
        assert_eq!(fs::read(dir.path().join("b/f")).unwrap(), b"x");
        let error = rename_durable(&dir.path().join("a/f"), &dir.path().join("b/g")).unwrap_err();
        assert!(error.to_string().contains("a/f to "), "{error}");
    }
}
