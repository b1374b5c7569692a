//! Phase 2 on the survivor of a lost quorum: its member comes back alone from its own data.
//!
//! etcd's disaster-recovery procedure for a member that kept its data is `--force-new-cluster`: etcd
//! replays its WAL (the writes its db had not yet taken in included) and commits a membership of
//! itself alone, keeping its member and cluster IDs (k3s' `--cluster-reset` does the same). The
//! flag goes into the etcd static pod manifest for one start only: once the member serves alone, the
//! manifest is put back as it was, so that a later restart does not force again. A run cut anywhere
//! converges when run again: the flag is added only while the member does not serve, and removed
//! as soon as it does, before the member is checked.

use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

use super::ha::{self, Survivor};
use super::Error;
use crate::etcd::client::{EtcdClient, TlsFiles};
use crate::fsutil;
use crate::node::layout::{self, Layout};

const FORCE_FLAG: &str = "--force-new-cluster";
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(500);

/// What phase 2 did on the survivor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AloneReport {
    /// `name (id)` of the member now serving alone.
    pub member: String,
    /// Its revision once it served: every write of its WAL replayed.
    pub revision: i64,
    /// Whether this run started it with `--force-new-cluster` (false: an earlier run had).
    pub forced: bool,
}

/// Brings the survivor's member up alone through its static pod manifest; `restart_kubelet` makes
/// kubelet start it from the changed manifest.
pub fn start_alone(
    layout: &Layout,
    survivor: &Survivor,
    timeout: Duration,
    restart_kubelet: &dyn Fn() -> Result<(), Error>,
) -> Result<AloneReport, Error> {
    let manifest = layout.path(layout::ETCD_MANIFEST);
    let text = read(&manifest)?;
    let tls = ha::client_tls(layout.path("").as_path());
    // A flag found while the member serves is an earlier run's, cut before it took the flag out:
    // forcing again would throw out the members that rejoined since.
    let forced = !serves(survivor, &tls, ASK_TIMEOUT);
    if forced {
        if !has_flag(&text) {
            write(&manifest, &with_flag(&manifest, &text)?)?;
            log::info!(
                "finish: {} gets {FORCE_FLAG} for one start: etcd replays its WAL and forms a cluster of this member alone",
                manifest.display()
            );
        }
        restart_kubelet()?;
        if !serves(survivor, &tls, timeout) {
            return Err(Error::Rejoin {
                step: "start the surviving member alone",
                object: manifest.display().to_string(),
                why: format!(
                    "etcd did not answer at {} within {} s of kubelet starting it with {FORCE_FLAG}; see its log (crictl logs, or journalctl -u kubelet), then run cpr finish again",
                    survivor.client_urls.join(", "),
                    timeout.as_secs()
                ),
            });
        }
    }
    // Out as soon as the member serves, before anything else can fail: the others rejoin it from
    // now on, and a later start with the flag would make it a cluster of one again. kubelet
    // restarts the pod from the changed manifest by itself.
    take_flag_out(&manifest)?;
    let (member, revision) = alone(survivor, &tls)?;
    Ok(AloneReport {
        member,
        revision,
        forced,
    })
}

/// Whether the survivor's member answers a linearizable read within `window`.
fn serves(survivor: &Survivor, tls: &TlsFiles, window: Duration) -> bool {
    let started = Instant::now();
    loop {
        let answered = survivor.client_urls.iter().any(|endpoint| {
            EtcdClient::connect_within(endpoint, Some(tls), ASK_TIMEOUT, ASK_TIMEOUT)
                .and_then(|mut client| client.quorum_read())
                .is_ok()
        });
        if answered || started.elapsed() >= window {
            return answered;
        }
        std::thread::sleep(POLL);
    }
}

/// The member serving, checked to be the survivor's: `name (id)` and its revision.
fn alone(survivor: &Survivor, tls: &TlsFiles) -> Result<(String, i64), Error> {
    let endpoint = survivor.client_urls.first().ok_or_else(|| Error::Rejoin {
        step: "check the surviving member",
        object: format!("{} in the restore point", survivor.member_name),
        why: "the restore point names no client URL for it (its bundle lists none), so nothing can reach it; see the member list with cpr inspect on its bundle".into(),
    })?;
    let fail = |why: String| Error::Rejoin {
        step: "check the surviving member",
        object: endpoint.clone(),
        why,
    };
    let mut client = EtcdClient::connect_within(endpoint, Some(tls), ASK_TIMEOUT, ASK_TIMEOUT)
        .map_err(|e| fail(e.to_string()))?;
    let status = client.status().map_err(|e| fail(e.to_string()))?;
    let id = format!("{:x}", status.member_id);
    if id != survivor.member_id {
        return Err(fail(format!(
            "member {id} answers, not the survivor's {}: this data dir is not the one phase 1 claimed. Run cpr restore again",
            survivor.member_id
        )));
    }
    Ok((format!("{} ({id})", survivor.member_name), status.revision))
}

/// The manifest at `path` without the flag, written only when it had it.
fn take_flag_out(path: &Path) -> Result<(), Error> {
    let text = read(path)?;
    if has_flag(&text) {
        write(path, &without_flag(&text))?;
        log::info!(
            "finish: {FORCE_FLAG} removed from {} again: a later restart starts the member as it is",
            path.display()
        );
    }
    Ok(())
}

fn has_flag(manifest: &str) -> bool {
    manifest
        .lines()
        .any(|line| line.trim() == format!("- {FORCE_FLAG}"))
}

/// The manifest with the flag right after the `- etcd` command, indented as that line.
fn with_flag(path: &Path, manifest: &str) -> Result<String, Error> {
    let mut out = String::with_capacity(manifest.len() + 32);
    let mut added = false;
    for line in manifest.split_inclusive('\n') {
        out.push_str(line);
        if !added && line.trim() == "- etcd" {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}- {FORCE_FLAG}\n"));
            added = true;
        }
    }
    if !added {
        return Err(crate::node::Error::Manifest {
            path: path.to_path_buf(),
            why: "no `- etcd` command line to add --force-new-cluster after; start the member alone by hand (etcd --force-new-cluster with the manifest's flags), then run cpr finish again".into(),
        }
        .into());
    }
    Ok(out)
}

fn without_flag(manifest: &str) -> String {
    manifest
        .split_inclusive('\n')
        .filter(|line| line.trim() != format!("- {FORCE_FLAG}"))
        .collect()
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "spec:\n  containers:\n  - command:\n    - etcd\n    - --name=master1\n    image: etcd\n";

    #[test]
    fn the_flag_goes_in_once_and_out_again() {
        let forced = with_flag(Path::new("etcd.yaml"), MANIFEST).unwrap();
        assert!(forced.contains("    - etcd\n    - --force-new-cluster\n    - --name=master1\n"));
        assert!(has_flag(&forced) && !has_flag(MANIFEST));
        assert_eq!(without_flag(&forced), MANIFEST);
    }

    #[test]
    fn a_rerun_takes_an_earlier_runs_flag_out_and_leaves_a_clean_manifest_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.yaml");
        std::fs::write(&path, with_flag(&path, MANIFEST).unwrap()).unwrap();
        take_flag_out(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), MANIFEST);
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        take_flag_out(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            written
        );
    }

    #[test]
    fn a_survivor_without_a_client_url_is_an_error_not_a_panic() {
        let survivor = Survivor {
            node: "master1".into(),
            member_name: "master1".into(),
            member_id: "1a2b".into(),
            client_urls: Vec::new(),
            revision: 7,
            bundle_revision: 5,
        };
        let tls = ha::client_tls(Path::new("/nonexistent"));
        let error = alone(&survivor, &tls).unwrap_err().to_string();
        assert!(error.contains("check the surviving member"), "{error}");
        assert!(error.contains("no client URL"), "{error}");
    }
}
