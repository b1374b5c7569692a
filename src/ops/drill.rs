//! `cpr drill`: a restore rehearsal. Phase 1 of the newest bundle (or a chosen one) runs into a
//! scratch root, never a live path; the restored data dir is then read with cpr's own reader, its
//! objects counted against the live cluster when it answers, and optionally served by a real etcd
//! on loopback in a network namespace of its own. The scratch root goes in every case; one left by a
//! killed drill is removed by the next.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use super::diff::{live_client, live_listing};
use super::inventory::{self, Inventory};
use super::metrics::{record_attempt, seconds, Family, Metric};
use super::restore::{restore, Members, RestoreRequest, DEFAULT_BUMP_REVISION};
use super::sealed::{self, OpenKeys, Source};
use super::Error;
use crate::bundle::read_manifest;
use crate::k8s::registry::CHURNING;
use crate::node::identity::Machine;
use crate::store::{self, Store};

/// Scratch roots are `<scratch>/cpr-drill-<stamp>-<pid>`, with the drill's pid in `drill.pid`.
const SCRATCH_PREFIX: &str = "cpr-drill-";
const PID_FILE: &str = "drill.pid";
/// Drift below this many objects of a resource never fails a drill: a few objects made or deleted
/// since the backup are a day's work, not a broken bundle.
const DRIFT_FLOOR: u64 = 10;
/// How long a drill's etcd gets to answer on its restored data dir.
const ETCD_START: Duration = Duration::from_secs(60);

pub struct DrillRequest<'a> {
    pub store: &'a dyn Store,
    /// A bundle name; `None` takes the newest bundle of `node`.
    pub bundle: Option<String>,
    pub cluster: Option<String>,
    pub node: String,
    pub identity: Option<PathBuf>,
    pub verify_key: Option<PathBuf>,
    /// The directory the scratch root is made in (and stale ones are cleaned from).
    pub scratch: PathBuf,
    /// The root of the node whose live etcd the counts are compared with; `None` skips that.
    pub live_root: Option<PathBuf>,
    /// Largest drift per resource, in percent of its count in the bundle, above `DRIFT_FLOOR`.
    pub max_drift_percent: u64,
    /// An etcd binary (etcdctl beside it) to serve the restored data dir.
    pub etcd: Option<PathBuf>,
    pub etcd_prefix: String,
}

/// One check of the drill and what it found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    pub bundle: String,
    pub objects: u64,
    pub seconds: f64,
    pub checks: Vec<Check>,
}

const LAST_SUCCESS: Metric = Metric {
    name: "cpr_drill_last_success_timestamp_seconds",
    kind: "gauge",
    help: "Unix time at which the last successful restore drill finished.",
};
const LAST_ATTEMPT: Metric = Metric {
    name: "cpr_drill_last_attempt_timestamp_seconds",
    kind: "gauge",
    help: "Unix time at which the last restore drill finished, passed or not.",
};
const LAST_ATTEMPT_OK: Metric = Metric {
    name: "cpr_drill_last_attempt_success",
    kind: "gauge",
    help: "1 if the last restore drill passed, 0 if it failed.",
};
const DURATION: Metric = Metric {
    name: "cpr_drill_duration_seconds",
    kind: "gauge",
    help: "How long the last successful restore drill took.",
};
const OBJECTS: Metric = Metric {
    name: "cpr_drill_objects",
    kind: "gauge",
    help: "Kubernetes objects in the bundle the last successful restore drill restored.",
};
const FAILURES: Metric = Metric {
    name: "cpr_drill_failures_total",
    kind: "counter",
    help: "Failed restore drills since this metrics file was created.",
};
const DRILL: Family = Family {
    metrics: &[
        &LAST_SUCCESS,
        &LAST_ATTEMPT,
        &LAST_ATTEMPT_OK,
        &DURATION,
        &OBJECTS,
        &FAILURES,
    ],
    last_success: &LAST_SUCCESS,
    last_attempt: &LAST_ATTEMPT,
    last_attempt_ok: &LAST_ATTEMPT_OK,
    failures: &FAILURES,
};

/// Writes the drill's metrics file: `report` is a passed drill, `None` a failed one.
pub fn record(path: &Path, report: Option<&DrillReport>, now: SystemTime) -> Result<(), Error> {
    let figures = report.map(|r| vec![(&DURATION, r.seconds), (&OBJECTS, r.objects as f64)]);
    record_attempt(path, &DRILL, figures.as_deref(), now)
}

/// Runs the drill. A failed check, the restore of a bad bundle included, is `Error::DrillFailed`,
/// naming every check that failed; what fails alike for every bundle (the store, a key file, the
/// scratch disk) keeps its own error and exit code.
pub fn drill(request: &DrillRequest<'_>) -> Result<DrillReport, crate::Error> {
    let started = Instant::now();
    remove_stale(&request.scratch);
    if let Err(e) = crate::host::idle_io_priority() {
        log::warn!("drill: cannot lower its I/O priority to idle ({e}); it competes with etcd for the disk");
    }
    let name = match &request.bundle {
        Some(name) => name.clone(),
        None => store::bundles(
            request.store,
            request.cluster.as_deref(),
            Some(&request.node),
        )?
        .pop()
        .map(|e| e.name)
        .ok_or_else(|| Error::NoBundle {
            store: request.store.location(),
            node: request.node.clone(),
        })?,
    };
    let dir = scratch_root(&request.scratch)?;
    let result = rehearse(request, &name, &dir);
    if let Err(e) = fs::remove_dir_all(&dir) {
        log::warn!(
            "drill: removing its scratch root {}: {e}; the next drill removes it",
            dir.display()
        );
    }
    let (objects, checks) = match result {
        Ok(found) => found,
        Err(e) if bundle_fault(&e) => (0, vec![failed("restore", crate::error::chain(&e))]),
        Err(e) => return Err(e),
    };
    let failures: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failures.is_empty() {
        return Err(Error::DrillFailed {
            bundle: name,
            failed: failures,
        }
        .into());
    }
    Ok(DrillReport {
        bundle: name,
        objects,
        seconds: seconds(started.elapsed()),
        checks,
    })
}

/// Whether a failed restore is the bundle's doing: damaged, refused by its signature, not for the
/// drill's identity, or holding an etcd db that does not restore. An unreachable store, an
/// unreadable key file or a full scratch disk says nothing about the bundle.
fn bundle_fault(error: &crate::Error) -> bool {
    use crate::bundle::Error as Bundle;
    use crate::etcd::Error as Etcd;
    match error {
        crate::Error::Bundle(e) | crate::Error::Ops(Error::Bundle(e)) => {
            !matches!(e, Bundle::Key(_) | Bundle::Write { .. })
        }
        crate::Error::Etcd(e) | crate::Error::Ops(Error::Etcd(e)) => matches!(
            e,
            Etcd::MissingHash { .. } | Etcd::HashMismatch { .. } | Etcd::Corrupt { .. }
        ),
        crate::Error::Ops(Error::Carryover(e)) => matches!(
            **e,
            super::carryover::Error::Object { .. } | super::carryover::Error::MissingData { .. }
        ),
        crate::Error::Ops(e) => matches!(
            e,
            Error::ObjectUnreadable { .. }
                | Error::NothingVerifies { .. }
                | Error::NoUsableBundle { .. }
        ),
        _ => false,
    }
}

fn failed(name: &'static str, detail: String) -> Check {
    Check {
        name,
        ok: false,
        detail,
    }
}

/// Phase 1 into `dir/root`, then the checks; an error that is the bundle's (`bundle_fault`) is a
/// failed restore.
fn rehearse(
    request: &DrillRequest<'_>,
    name: &str,
    dir: &Path,
) -> Result<(u64, Vec<Check>), crate::Error> {
    let keys = OpenKeys::load(request.identity.as_deref(), request.verify_key.as_deref())?;
    // The manifest is read from the stream's start, unsigned: a signature covers the whole
    // bundle, so checking it here would fetch all of it before the free-space check, and
    // restore() checks it anyway before it uses anything.
    let unsigned = OpenKeys {
        verify_key: None,
        ..keys
    };
    let manifest = read_manifest(
        sealed::open(Source::Store(request.store, name), &unsigned, dir)?,
        name,
    )?;
    // Staging holds the snapshot while the data dir is written: twice the db, and the files;
    // with a verify key, restore() first fetches the whole bundle into staging to check it.
    let fetched = match keys.verify_key {
        Some(_) => stored_size(request.store, name)?,
        None => 0,
    };
    let needed = manifest.etcd.db_size.saturating_mul(2) + fetched + (64 << 20);
    let available = crate::host::available_bytes(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    if available < needed {
        // As for the spool of inspect, get and diff: the operator's choice of place, no bundle's
        // fault.
        return Err(crate::Error::Usage(format!(
            "drill of {name}: {} has {} free, the drill needs {} (twice the etcd db, the files and a signed bundle itself): point --scratch at a larger filesystem. Nothing was fetched",
            request.scratch.display(),
            store::human_bytes(available),
            store::human_bytes(needed)
        )));
    }
    // The scratch root's name: this drill's own, never a real cluster's.
    let token = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let root = dir.join("root");
    fs::create_dir(&root).map_err(|source| Error::Write {
        path: root.clone(),
        source,
    })?;
    let restored = restore(&RestoreRequest {
        root: root.clone(),
        store: request.store,
        bundle: Some(name.to_string()),
        cluster: request.cluster.clone(),
        node: Some(request.node.clone()),
        machine: Machine {
            hostname: manifest.node.hostname.clone(),
            ips: Vec::new(),
        },
        force_identity: true,
        new_address: false,
        bump_revision: Some(DEFAULT_BUMP_REVISION),
        identity: request.identity.clone(),
        verify_key: request.verify_key.clone(),
        members: Members::Lone {
            cluster_token: token.clone(),
        },
        plan_only: false,
    })?;
    let db = crate::etcd::db_path(&restored.data_dir);
    let mut checks = Vec::new();
    let status = crate::etcd::snapshot_status(&db);
    let expected = restored
        .bumped_revision
        .map_or(restored.revision, |r| r as i64);
    checks.push(match status {
        Ok(s) if s.revision == expected => Check {
            name: "revision",
            ok: true,
            detail: format!(
                "restored db at revision {} (bundle {} + bump {DEFAULT_BUMP_REVISION}), {} keys",
                s.revision, restored.revision, s.total_key
            ),
        },
        Ok(s) => failed(
            "revision",
            format!(
                "restored db at revision {}, expected {expected} (bundle {} + bump {DEFAULT_BUMP_REVISION})",
                s.revision, restored.revision
            ),
        ),
        Err(e) => failed("revision", e.to_string()),
    });
    let inventory = match inventory::read(db.as_path(), &request.etcd_prefix) {
        Ok(inventory) => inventory,
        Err(e) => {
            checks.push(failed("objects", e.to_string()));
            return Ok((0, checks));
        }
    };
    checks.push(objects_check(&inventory));
    if let Some(live_root) = &request.live_root {
        checks.push(drift_check(&inventory, live_root, request));
    }
    if let Some(etcd) = &request.etcd {
        checks.push(serve_check(
            etcd,
            &restored.data_dir,
            &manifest.etcd.member_name,
            &token,
            &inventory,
        ));
    }
    Ok((inventory.objects.len() as u64, checks))
}

/// The bundle's size in the store.
fn stored_size(store: &dyn Store, name: &str) -> Result<u64, crate::Error> {
    store
        .list(name)?
        .into_iter()
        .find(|o| o.name == name)
        .map(|o| o.size)
        .ok_or_else(|| {
            crate::store::Error::NotFound {
                url: format!("{}/{name}", store.location().trim_end_matches('/')),
            }
            .into()
        })
}

fn objects_check(inventory: &Inventory) -> Check {
    let bad: Vec<String> = inventory
        .undecodable()
        .map(|(key, o)| match &o.storage {
            inventory::Storage::Undecodable(why) => {
                format!("{}: {why}", String::from_utf8_lossy(key))
            }
            _ => String::from_utf8_lossy(key).into_owned(),
        })
        .collect();
    let encrypted = inventory
        .objects
        .values()
        .filter(|o| matches!(o.storage, inventory::Storage::Encrypted(_)))
        .count();
    if bad.is_empty() {
        Check {
            name: "objects",
            ok: true,
            detail: format!(
                "{} objects under {} read and their envelopes decode ({encrypted} encrypted at rest, counted)",
                inventory.objects.len(),
                inventory.prefix
            ),
        }
    } else {
        failed(
            "objects",
            format!(
                "{} values are no Kubernetes object: {}",
                bad.len(),
                bad.join("; ")
            ),
        )
    }
}

/// Per-resource counts against the live etcd; churning resources (events, leases) are left out.
fn drift_check(inventory: &Inventory, live_root: &Path, request: &DrillRequest<'_>) -> Check {
    let live = match live_client(live_root)
        .and_then(|mut client| live_listing(&mut client, &request.etcd_prefix))
    {
        Ok(listing) => listing,
        Err(e) => {
            log::warn!("drill: the live etcd does not answer ({e}); counts not compared");
            return Check {
                name: "drift",
                ok: true,
                detail: format!("not compared: the live etcd does not answer ({e})"),
            };
        }
    };
    let mut live_counts = std::collections::BTreeMap::<String, u64>::new();
    for location in live.keys() {
        *live_counts.entry(location.resource.clone()).or_default() += 1;
    }
    let bundle_counts = inventory.counts();
    let mut resources: Vec<&String> = live_counts.keys().chain(bundle_counts.keys()).collect();
    resources.sort();
    resources.dedup();
    let drifted: Vec<String> = resources
        .into_iter()
        .filter(|r| !CHURNING.contains(&r.as_str()))
        .filter_map(|r| {
            let (bundle, live) = (
                bundle_counts.get(r).copied().unwrap_or(0),
                live_counts.get(r).copied().unwrap_or(0),
            );
            let drift = bundle.abs_diff(live);
            (drift > DRIFT_FLOOR && drift * 100 > bundle * request.max_drift_percent)
                .then(|| format!("{r}: {bundle} in the bundle, {live} live"))
        })
        .collect();
    if drifted.is_empty() {
        Check {
            name: "drift",
            ok: true,
            detail: format!(
                "object counts within {}% (or {DRIFT_FLOOR} objects) of the live cluster's",
                request.max_drift_percent
            ),
        }
    } else {
        failed(
            "drift",
            format!(
                "the live cluster has moved more than {}% (and {DRIFT_FLOOR} objects) from the bundle: {}",
                request.max_drift_percent,
                drifted.join(", ")
            ),
        )
    }
}

/// Serves the restored data dir with `etcd` as a lone member (`--force-new-cluster` on this copy),
/// on loopback in a new network namespace (`unshare --net`), so it can never reach a live member,
/// and counts its keys under the prefix with the etcdctl beside it. Nothing of it outlives the
/// drill, not even a SIGKILLed one whose scratch root the next drill removes: unshare dies with
/// cpr (`kill_with_parent`), its shell with it (`--kill-child`), and the shell is the first process
/// of a PID namespace of its own (`--pid`), whose end kills etcd and etcdctl.
fn serve_check(
    etcd: &Path,
    data_dir: &Path,
    member: &str,
    token: &str,
    inventory: &Inventory,
) -> Check {
    let etcdctl = etcd.with_file_name("etcdctl");
    let script = r#"ip link set lo up || exit 1
"$1" --name "$2" --data-dir "$3" --force-new-cluster --initial-cluster-token "$7" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$2=http://127.0.0.1:2380" > "$3.log" 2>&1 &
etcd=$!
i=0 rc=1
while [ $i -lt "$6" ]; do
  if ETCDCTL_API=3 "$4" --endpoints http://127.0.0.1:2379 endpoint health > /dev/null 2>&1; then
    ETCDCTL_API=3 "$4" --endpoints http://127.0.0.1:2379 get "$5/" --prefix --keys-only; rc=$?
    break
  fi
  i=$((i + 1)); sleep 0.5
done
[ $rc = 0 ] || tail -5 "$3.log" >&2
kill $etcd; wait $etcd
exit $rc
"#;
    let mut unshare = Command::new("unshare");
    unshare
        .args([
            "--net",
            "--pid",
            "--kill-child",
            "sh",
            "-c",
            script,
            "cpr-drill-etcd",
        ])
        .arg(etcd)
        .arg(member)
        .arg(data_dir)
        .arg(&etcdctl)
        .arg(&inventory.prefix)
        .arg((ETCD_START.as_secs() * 2).to_string())
        .arg(token);
    crate::host::kill_with_parent(&mut unshare);
    let out = unshare.output();
    match out {
        Ok(out) if out.status.success() => {
            let served = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .count();
            if served == inventory.objects.len() {
                Check {
                    name: "etcd",
                    ok: true,
                    detail: format!(
                        "{} served the restored data dir in its own network namespace: {served} keys under {}",
                        etcd.display(),
                        inventory.prefix
                    ),
                }
            } else {
                failed(
                    "etcd",
                    format!(
                        "{} serves {served} keys under {}, cpr read {}",
                        etcd.display(),
                        inventory.prefix,
                        inventory.objects.len()
                    ),
                )
            }
        }
        Ok(out) => failed(
            "etcd",
            format!(
                "{} did not serve the restored data dir ({}): {}",
                etcd.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
        Err(e) => failed(
            "etcd",
            format!(
                "cannot run unshare (util-linux) to start {}: {e}",
                etcd.display()
            ),
        ),
    }
}

/// Makes this drill's scratch root, its pid inside.
fn scratch_root(scratch: &Path) -> Result<PathBuf, Error> {
    let stamp = crate::bundle::name::stamp(time::OffsetDateTime::now_utc());
    let dir = scratch.join(format!("{SCRATCH_PREFIX}{stamp}-{}", std::process::id()));
    let write = |path: &Path, result: std::io::Result<()>| {
        result.map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&dir, fs::DirBuilder::new().mode(0o700).create(&dir))?;
    let pid = dir.join(PID_FILE);
    write(&pid, fs::write(&pid, std::process::id().to_string()))?;
    Ok(dir)
}

/// Removes the scratch roots of drills that are no longer running (killed, or the machine
/// rebooted): their pid is gone, or is another program now.
fn remove_stale(scratch: &Path) {
    let Ok(entries) = fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let pid = fs::read_to_string(dir.join(PID_FILE)).unwrap_or_default();
        let running = fs::read_to_string(format!("/proc/{}/comm", pid.trim()))
            .is_ok_and(|comm| comm.trim() == "cpr");
        if !running && pid.trim() != std::process::id().to_string() {
            log::info!("drill: removing {} left by an earlier drill", dir.display());
            if let Err(e) = fs::remove_dir_all(&dir) {
                log::warn!("drill: cannot remove {}: {e}", dir.display());
            }
        }
    }
}
