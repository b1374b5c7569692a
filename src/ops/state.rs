//! `<root>/var/lib/cpr/state.json`: how far a recovery got, so that a run killed at any step converges
//! when run again and a run after success changes nothing.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::Error;
use crate::fsutil;
use crate::node::layout::{self, Layout};

pub const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Everything verified and staged beside the live paths; nothing live touched yet.
    Staged,
    /// pki and the etcd data dir swapped in (phase 1 done); `cpr finish` comes next.
    Restored,
    /// `kubeadm init` succeeded.
    Initialized,
    /// Static pods back, control plane healthy (phase 2 done).
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub version: u32,
    pub bundle: String,
    pub store: String,
    /// UTC `YYYYMMDDTHHMMSSZ`: the suffix of every path moved aside by this recovery.
    pub stamp: String,
    pub phase: Phase,
    pub revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bumped_revision: Option<u64>,
    /// Originals moved aside (absolute paths under the root), never deleted.
    #[serde(default)]
    pub moved_aside: Vec<PathBuf>,
    /// A restore onto a new address (`--new-address`): what phase 2 changes for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_address: Option<super::readdress::Plan>,
    /// A lost quorum: the bundle whose snapshot every member restored, when it is not `bundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// A minority lost: this node rejoins the live cluster in phase 2 instead of restoring etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin: Option<super::rejoin::Rejoin>,
    /// A lost quorum whose member on this node kept its data: phase 2 starts it alone
    /// (`--force-new-cluster`) instead of restoring etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survivor: Option<super::ha::Survivor>,
}

pub fn state_dir(layout: &Layout) -> PathBuf {
    layout.path(layout::CPR_STATE_DIR)
}

pub fn state_path(layout: &Layout) -> PathBuf {
    state_dir(layout).join(STATE_FILE)
}

impl State {
    pub fn load(layout: &Layout) -> Result<Option<State>, Error> {
        let path = state_path(layout);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Read { path, source }),
        };
        let state: State = serde_json::from_slice(&text).map_err(|e| Error::State {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(Error::State {
                path,
                why: format!("version {} is not {STATE_VERSION}", state.version),
            });
        }
        Ok(Some(state))
    }

    pub fn save(&self, layout: &Layout) -> Result<(), Error> {
        let path = state_path(layout);
        ensure_dir(&state_dir(layout))?;
        let mut bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(&path, &bytes, 0o600).map_err(|source| Error::Write { path, source })
    }
}

pub fn ensure_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })
}
