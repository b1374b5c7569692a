//! Key files: reading them with bounds and a permission check, creating them private and never over an
//! existing one. Errors name the file and say what to do; they never quote a key file's content.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Key files are a few hundred bytes; an age identity file may hold a handful of keys.
const MAX_KEY_FILE: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}: {source}. Check the path (--identity, --verify-key, --sign-key or the config file)")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key file {path} is not a {what}: {why}")]
    Format {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("{recipient:?} is not an age recipient ({why}); pass the age1… line of the .pub file `cpr keygen` wrote")]
    Recipient { recipient: String, why: String },
    #[error("{path} already exists; cpr keygen never overwrites a key. Choose another --out, or move the old keys away first")]
    Exists { path: PathBuf },
    #[error("writing key file {path}: {source}. Check that the --out directory is writable and has free space, then run cpr keygen again")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

/// Reads a secret key file, warning when others may read it: the key is only as private as the file.
pub fn read_secret(path: &Path) -> Result<String, KeyError> {
    let text = read_bounded(path)?;
    if let Ok(meta) = fs::metadata(path) {
        if meta.mode() & 0o077 != 0 {
            log::warn!(
                "secret key file {} has mode {:o}: others may read it; chmod 600 it",
                path.display(),
                meta.mode() & 0o777
            );
        }
    }
    Ok(text)
}

pub fn read_public(path: &Path) -> Result<String, KeyError> {
    read_bounded(path)
}

fn read_bounded(path: &Path) -> Result<String, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::Format {
            path: path.to_path_buf(),
            what: "key file",
            why: format!("it is larger than {MAX_KEY_FILE} bytes"),
        });
    }
    String::from_utf8(bytes).map_err(|_| KeyError::Format {
        path: path.to_path_buf(),
        what: "key file",
        why: "it is not UTF-8 text".to_string(),
    })
}

/// Creates `path` with `mode` (whatever the umask) and writes `text`; fails if it exists.
pub fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_path_buf(),
            },
            _ => write_err(e),
        })?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(write_err)
}

/// Creates `dir` (and its parents) 0700 when missing; an existing directory is kept as it is.
pub fn private_dir(dir: &Path) -> Result<(), KeyError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::Write {
            path: dir.to_path_buf(),
            source,
        })
}
