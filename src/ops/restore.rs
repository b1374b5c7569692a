//! `cpr restore`, phase 1 of a recovery: pick the newest bundle of this node that verifies, check
//! that this machine is that node, stage everything beside the live paths (the etcd data dir rebuilt
//! natively straight from the download), then swap pki and the etcd data dir in, moving the old ones
//! aside. Phase 2 (`cpr finish`) needs the normal OS and runs afterwards.

use std::fs;
use std::io::{self, Read};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

use super::ha::{self, Quorum};
use super::readdress::{self, Plan};
use super::rejoin::{self, Rejoin};
use super::sealed::{self, OpenKeys, Source};
use super::state::{self, Phase, State};
use super::Error;
use crate::bundle::manifest::{FileEntry, Manifest, SnapshotEntry};
use crate::bundle::name::BundleName;
use crate::bundle::{blake3_to_end, Extract, Sink};
use crate::etcd::restore::{ensure_not_in_use, restore_from_reader, RestoreOptions, Restored};
use crate::etcd::Error as EtcdError;
use crate::fsutil;
use crate::host::failpoint;
use crate::node::identity::{self, Expected, Machine, Mismatch};
use crate::node::layout::{self, Layout};
use crate::store::{index, Store};

/// etcd's recovery guide for Kubernetes suggests a bump far above any revision a watcher has seen,
/// so every informer and watch cache relists instead of trusting what it holds.
pub const DEFAULT_BUMP_REVISION: u64 = 1_000_000_000;
const STAGING_DIR: &str = "staging";
const STAGED_BUNDLE: &str = "bundle";
const STAGED_MANIFEST: &str = "manifest.json";
const NEW_SUFFIX: &str = ".cpr-new";

pub struct RestoreRequest<'a> {
    pub root: PathBuf,
    pub store: &'a dyn Store,
    /// A bundle name; `None` takes the newest bundle of this node that verifies.
    pub bundle: Option<String>,
    pub cluster: Option<String>,
    /// The node whose bundles to consider; `None` means the machine's hostname.
    pub node: Option<String>,
    pub machine: Machine,
    pub force_identity: bool,
    /// Restore onto this machine's own address and name (`--new-address`, `cpr.new_address=1`).
    pub new_address: bool,
    /// `None` restores the revision as it was (not recommended: watch caches would stay stale).
    pub bump_revision: Option<u64>,
    /// age identity file for encrypted bundles (`--identity`, `cpr.identity=` on a recovery boot).
    pub identity: Option<PathBuf>,
    /// minisign public key; when set, a bundle must carry its valid signature before anything of it
    /// is extracted (`--verify-key`, `cpr.verify_key=`).
    pub verify_key: Option<PathBuf>,
    /// What becomes of a bundle whose etcd had several members.
    pub members: Members,
    /// Stage and verify the bundle and plan the restore onto a new address, then clear the staging:
    /// nothing live changes (`--plan-only`).
    pub plan_only: bool,
}

/// How a restore treats the members of a several-member etcd (a one-member etcd is restored alone
/// either way).
#[derive(Debug, Clone)]
pub enum Members {
    /// A recovery of that cluster: the members are probed for `quorum_probe`; a live quorum is
    /// rejoined, survivors are refused unless `discard_survivors`, and the restore point every
    /// node restores is claimed in the store.
    Cluster {
        quorum_probe: Duration,
        discard_survivors: bool,
    },
    /// A rehearsal (`cpr drill`): the bundle's snapshot as a lone member of a cluster of its own,
    /// `cluster_token`. No member is probed and nothing is claimed, so no recovery of the real
    /// cluster follows it.
    Lone { cluster_token: String },
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub bundle: String,
    pub revision: i64,
    pub bumped_revision: Option<u64>,
    pub data_dir: PathBuf,
    pub moved_aside: Vec<PathBuf>,
    /// Newer bundles that failed verification, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Phase 1 had already completed; nothing changed.
    pub already_done: bool,
    /// What the restore onto a new address changes (`--new-address`).
    pub new_address: Option<Plan>,
    /// What the probe of a several-member cluster found.
    pub quorum: Option<Quorum>,
    /// A lost quorum restored from another node's bundle: the snapshot every member restored.
    pub restore_point: Option<String>,
    /// A minority lost: phase 2 rejoins this node to the live cluster through this.
    pub rejoin: Option<Rejoin>,
    /// A lost quorum whose member on this node kept its data: the source, started alone in phase 2.
    pub survivor: Option<ha::Survivor>,
    /// Where this node's etcd data comes from, in words.
    pub source: String,
    /// Only planned (`--plan-only`): the bundle verified, nothing changed.
    pub plan_only: bool,
}

pub fn restore(request: &RestoreRequest<'_>) -> Result<RestoreReport, Error> {
    let layout = Layout::new(&request.root);
    if let Some(state) = State::load(&layout)? {
        if state.phase >= Phase::Restored {
            log::info!(
                "restore: {} was already restored from {} ({}); nothing to do",
                request.root.display(),
                state.bundle,
                state::state_path(&layout).display()
            );
            return Ok(report(&layout, &state, Vec::new(), None, true));
        }
        log::info!(
            "restore: resuming the swap of {} staged by an earlier run",
            state.bundle
        );
        return swap_in(&layout, state, Vec::new(), None);
    }

    // A refusal or a preview leaves nothing behind: the directories staging made go again.
    let made = missing_dirs(&[
        state::state_dir(&layout),
        layout.path(layout::PKI_DIR),
        layout.path(layout::DEFAULT_ETCD_DATA_DIR),
    ]);
    let restored = stage_and_swap(request, &layout);
    if restored.is_err() || request.plan_only {
        for dir in &made {
            // Only an empty one: whatever a failed swap left in it stays.
            let _ = fs::remove_dir(dir);
        }
    }
    restored
}

/// `paths` and their ancestors that do not exist yet, deepest first.
fn missing_dirs(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = paths
        .iter()
        .flat_map(|path| path.ancestors().take_while(|dir| !dir.exists()))
        .map(Path::to_path_buf)
        .collect();
    missing.sort_by(|a, b| {
        let depth = |p: &PathBuf| p.components().count();
        depth(b).cmp(&depth(a)).then_with(|| a.cmp(b))
    });
    missing.dedup();
    missing
}

/// A restore with no earlier run: each candidate staged and verified until one is, then swapped in.
fn stage_and_swap(request: &RestoreRequest<'_>, layout: &Layout) -> Result<RestoreReport, Error> {
    // Key files are read before anything else: a wrong path fails alike for every bundle.
    let keys = OpenKeys::load(request.identity.as_deref(), request.verify_key.as_deref())?;
    let candidates = candidates(request)?;
    let stamp = crate::bundle::name::stamp(OffsetDateTime::now_utc());
    let mut skipped = Vec::new();
    let mut quorum = None;
    for name in &candidates {
        clear_staging(layout)?;
        match stage(request, &keys, layout, name, &mut quorum) {
            Ok(Staged {
                manifest,
                revision,
                bumped_revision,
                restore_point,
                rejoin,
                survivor,
            }) => {
                let new_address = match plan_new_address(request, layout, &manifest) {
                    Ok(plan) => plan,
                    Err(error) => {
                        clear_staging(layout)?;
                        return Err(error);
                    }
                };
                if request.plan_only {
                    let data_dir = data_dir(layout, &manifest);
                    let source = source(
                        name,
                        survivor.as_ref(),
                        rejoin.as_ref(),
                        restore_point.as_deref(),
                    );
                    clear_staging(layout)?;
                    return Ok(RestoreReport {
                        bundle: name.clone(),
                        revision,
                        bumped_revision,
                        data_dir,
                        moved_aside: Vec::new(),
                        skipped,
                        already_done: false,
                        new_address,
                        quorum,
                        restore_point,
                        rejoin,
                        survivor,
                        source,
                        plan_only: true,
                    });
                }
                let state = State {
                    version: state::STATE_VERSION,
                    bundle: name.clone(),
                    store: request.store.location(),
                    stamp: stamp.clone(),
                    phase: Phase::Staged,
                    revision,
                    bumped_revision,
                    moved_aside: Vec::new(),
                    new_address,
                    restore_point,
                    rejoin,
                    survivor,
                };
                log::info!(
                    "restore: {name} verified and staged (etcd revision {revision}, {} files)",
                    manifest.files.len()
                );
                state.save(layout)?;
                failpoint("restore:state-saved");
                return swap_in(layout, state, skipped, quorum);
            }
            Err(error) if falls_back(&error) && request.bundle.is_none() => {
                log::warn!("restore: skipping {name}: {error}");
                skipped.push((name.clone(), error.to_string()));
                clear_staging(layout)?;
            }
            Err(error) => {
                clear_staging(layout)?;
                return Err(error);
            }
        }
    }
    Err(Error::NoUsableBundle {
        store: request.store.location(),
        tried: skipped
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect(),
    })
}

/// A damaged bundle is worth skipping for an older one; an unreachable store, a full disk or a
/// machine that is not the node would fail the same way for every bundle.
fn falls_back(error: &Error) -> bool {
    match error {
        Error::Bundle(e) => e.is_bad_bundle(),
        Error::Etcd(e) => matches!(
            e,
            EtcdError::MissingHash { .. }
                | EtcdError::HashMismatch { .. }
                | EtcdError::Corrupt { .. }
        ),
        _ => false,
    }
}

/// The node whose bundles this machine restores.
fn node_of(request: &RestoreRequest<'_>) -> String {
    request.node.clone().unwrap_or_else(|| {
        request
            .machine
            .hostname
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// `--bundle` naming another node's bundle pins the restore point of a lost quorum (a store that
/// cannot hold a claim needs it); this node's own files still come from its own newest bundle.
fn pinned_point<'r>(request: &'r RestoreRequest<'_>) -> Option<&'r str> {
    let name = request.bundle.as_deref()?;
    let node = BundleName::parse(name).ok()?.node;
    (node != node_of(request)).then_some(name)
}

/// Bundle names to try, newest first.
fn candidates(request: &RestoreRequest<'_>) -> Result<Vec<String>, Error> {
    if let Some(name) = request
        .bundle
        .as_ref()
        .filter(|_| pinned_point(request).is_none())
    {
        return Ok(vec![name.clone()]);
    }
    let node = node_of(request);
    let clusters = match &request.cluster {
        Some(cluster) => vec![cluster.clone()],
        None => clusters_of(request.store, &node)?,
    };
    let mut names = Vec::new();
    for cluster in &clusters {
        names.extend(
            index::list_bundles(request.store, cluster, &node)?
                .into_iter()
                .map(|e| e.name),
        );
    }
    // Names end in a UTC stamp: the newest sorts last whatever the cluster.
    names.sort_by(|a, b| stamp_of(b).cmp(stamp_of(a)));
    if names.is_empty() {
        return Err(Error::NoBundle {
            store: request.store.location(),
            node,
        });
    }
    Ok(names)
}

fn stamp_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The clusters under which `node` has bundles, from the store's listing.
fn clusters_of(store: &dyn Store, node: &str) -> Result<Vec<String>, Error> {
    let mut clusters: Vec<String> = store
        .list("")?
        .into_iter()
        .filter_map(|o| BundleName::parse(&o.name).ok())
        .filter(|n| n.node == node)
        .map(|n| n.cluster)
        .collect();
    clusters.sort();
    clusters.dedup();
    Ok(clusters)
}

fn staging(layout: &Layout) -> PathBuf {
    state::state_dir(layout).join(STAGING_DIR)
}

/// The verified files of the bundle being restored, under their bundle paths.
pub fn staged_bundle_dir(layout: &Layout) -> PathBuf {
    staging(layout).join(STAGED_BUNDLE)
}

/// The manifest of the bundle being restored.
pub fn staged_manifest(layout: &Layout) -> Result<Manifest, Error> {
    let path = staging(layout).join(STAGED_MANIFEST);
    let text = fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| Error::State {
        path,
        why: e.to_string(),
    })
}

/// Removes what an earlier, unfinished attempt staged: it is cpr's own scratch, never live data.
fn clear_staging(layout: &Layout) -> Result<(), Error> {
    let mut scratch = vec![staging(layout), new_path(&layout.path(layout::PKI_DIR))];
    if let Ok(manifest) = staged_manifest(layout) {
        scratch.push(etcd_target(&data_dir(layout, &manifest)));
    }
    scratch.iter().try_for_each(|path| remove_scratch(path))
}

fn new_path(live: &Path) -> PathBuf {
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    live.with_file_name(format!(".{name}{NEW_SUFFIX}"))
}

pub(super) fn data_dir(layout: &Layout, manifest: &Manifest) -> PathBuf {
    layout.path(
        manifest
            .etcd
            .data_dir
            .as_deref()
            .unwrap_or(layout::DEFAULT_ETCD_DATA_DIR),
    )
}

/// Where the native restore builds the new data dir: beside the live one, on the same file system.
/// When the data dir is itself a mount point it cannot be renamed, so its `member` dir is swapped.
fn etcd_target(data_dir: &Path) -> PathBuf {
    if is_mount_point(data_dir) {
        data_dir.join(NEW_SUFFIX)
    } else {
        new_path(data_dir)
    }
}

fn is_mount_point(path: &Path) -> bool {
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(dir), Some(Ok(parent))) => dir.dev() != parent.dev(),
        _ => false,
    }
}

/// What one bundle staged: its manifest, the etcd revision its member holds, and where that member
/// comes from when not from its own snapshot.
struct Staged {
    manifest: Manifest,
    revision: i64,
    bumped_revision: Option<u64>,
    /// A lost quorum restored from another bundle's snapshot: that bundle.
    restore_point: Option<String>,
    /// A minority lost: no member restored; phase 2 rejoins the live cluster.
    rejoin: Option<Rejoin>,
    /// A lost quorum whose member on this node kept its data: no member restored; phase 2 starts
    /// it alone.
    survivor: Option<ha::Survivor>,
}

/// Downloads, verifies and stages one bundle (and, for a lost quorum, the restore point's snapshot
/// when it is another bundle). Nothing live changes.
fn stage(
    request: &RestoreRequest<'_>,
    keys: &OpenKeys,
    layout: &Layout,
    name: &str,
    quorum: &mut Option<Quorum>,
) -> Result<Staged, Error> {
    let staging = staging(layout);
    state::ensure_dir(&staging)?;
    log::info!("restore: fetching {name} from {}", request.store.location());
    let mut input = sealed::open(Source::Store(request.store, name), keys, &staging)?;
    let mut sink = RestoreSink {
        request,
        name,
        layout,
        files: Extract::new(&staging.join(STAGED_BUNDLE)),
        staging: staging.clone(),
        failure: None,
        restored: None,
        manifest: None,
        quorum,
        point: Point::This,
    };
    let result = input.read_bundle(&mut sink);
    if let Some(failure) = sink.failure.take() {
        return Err(failure);
    }
    let manifest = result?;
    input.finish()?;
    let point = match sink.point {
        Point::Rejoin(rejoin) => {
            log::info!(
                "restore: the live cluster keeps its data: only the shared CAs and keys are restored, and phase 2 joins this node through {}",
                rejoin.api_endpoint
            );
            materialize_pki(layout, &staging.join(STAGED_BUNDLE), Pki::Shared)?;
            return finish_staging(&staging).map(|()| Staged {
                revision: manifest.etcd.revision,
                bumped_revision: None,
                restore_point: None,
                rejoin: Some(rejoin),
                survivor: None,
                manifest,
            });
        }
        Point::Survivor(own) => {
            let claim = ha::claim_location(request.store, &manifest)?;
            let claimed = ha::claim(
                request.store,
                &manifest,
                name,
                manifest.etcd.cluster_id.clone(),
                Some(own.clone()),
            )?;
            if claimed.survivor.as_ref() != Some(&own) {
                return Err(Error::SurvivingData {
                    node: own.node,
                    data_dir: data_dir(layout, &manifest),
                    revision: own.revision,
                    bundle_revision: own.bundle_revision,
                    conflict: format!(
                        "{} claimed a restore point first, while this node verified its bundle (run cpr restore again: it follows that claim or refuses with the reason)",
                        claimed.claimed_by
                    ),
                    claim,
                });
            }
            log::info!(
                "restore: claimed this node's surviving member {} (revision {}, newer than the bundle's {}) as the source: its data dir stays, phase 2 starts it alone and the other nodes rejoin it",
                own.member_name,
                own.revision,
                own.bundle_revision
            );
            materialize_pki(layout, &staging.join(STAGED_BUNDLE), Pki::All)?;
            return finish_staging(&staging).map(|()| Staged {
                revision: own.revision,
                bumped_revision: None,
                restore_point: None,
                rejoin: None,
                survivor: Some(own),
                manifest,
            });
        }
        Point::ToClaim => {
            let cluster_id = sink
                .restored
                .as_ref()
                .expect("a verified bundle has a snapshot")
                .cluster
                .id;
            let claimed = ha::claim(
                request.store,
                &manifest,
                name,
                format!("{cluster_id:x}"),
                None,
            )?;
            log::info!(
                "restore: restore point {} (claimed by {} at {})",
                claimed.bundle,
                claimed.claimed_by,
                claimed.claimed_at
            );
            (claimed.bundle != name).then_some(claimed.bundle)
        }
        Point::Other(other) => Some(other),
        Point::This => None,
    };
    let restored = match &point {
        Some(other) => {
            let target = etcd_target(&data_dir(layout, &manifest));
            remove_scratch(&target)?;
            stage_point_snapshot(request, keys, &staging, &manifest, other, &target)?
        }
        None => sink
            .restored
            .take()
            .expect("a verified bundle has a snapshot"),
    };
    failpoint("restore:staged-files");
    materialize_pki(layout, &staging.join(STAGED_BUNDLE), Pki::All)?;
    finish_staging(&staging)?;
    Ok(Staged {
        manifest,
        revision: restored.revision,
        bumped_revision: restored.bumped_revision,
        restore_point: point,
        rejoin: None,
        survivor: None,
    })
}

fn finish_staging(staging: &Path) -> Result<(), Error> {
    fsutil::sync_tree(staging).map_err(|source| Error::Write {
        path: staging.to_path_buf(),
        source,
    })?;
    failpoint("restore:staged");
    Ok(())
}

/// Restores this node's member from the snapshot of `point`, another node's bundle, into `target`.
/// A failure here is never a reason to pick another bundle: every member must restore this one.
fn stage_point_snapshot(
    request: &RestoreRequest<'_>,
    keys: &OpenKeys,
    staging: &Path,
    own: &Manifest,
    point: &str,
    target: &Path,
) -> Result<Restored, Error> {
    log::info!(
        "restore: fetching the restore point {point} from {} for its etcd snapshot",
        request.store.location()
    );
    let fail = |error: Error| {
        Error::RestorePoint {
        claim: point.to_string(),
        why: format!("{error}. Every member restores this bundle's snapshot, so no other is tried: fix the cause and run again on this node"),
    }
    };
    let scratch = staging.join("restore-point");
    state::ensure_dir(&scratch)?;
    let mut input =
        sealed::open(Source::Store(request.store, point), keys, &scratch).map_err(fail)?;
    let mut sink = PointSink {
        own,
        point,
        target,
        bump_revision: request.bump_revision,
        options: None,
        failure: None,
        restored: None,
    };
    let result = input.read_bundle(&mut sink);
    if let Some(failure) = sink.failure.take() {
        return Err(fail(failure));
    }
    result.map_err(|e| fail(e.into()))?;
    input.finish().map_err(fail)?;
    Ok(sink.restored.expect("a verified bundle has a snapshot"))
}

/// The snapshot steps of a sink whose `restore_snapshot` restores the snapshot and, given a hasher,
/// feeds it the bytes from the restore's copy pipeline. The bundle reader, or `blake3_to_end`
/// hashing it, reads what `restore_snapshot` leaves of the snapshot.
macro_rules! snapshot_steps_through_restore_snapshot {
    () => {
        fn snapshot(&mut self, entry: &SnapshotEntry, data: &mut dyn Read) -> io::Result<()> {
            self.restore_snapshot(entry, data, None)
        }

        fn snapshot_blake3(
            &mut self,
            entry: &SnapshotEntry,
            data: &mut dyn Read,
        ) -> io::Result<blake3::Hash> {
            blake3_to_end(data, |data, hasher| {
                self.restore_snapshot(entry, data, Some(hasher))
            })
        }
    };
}

/// Reads the restore point's bundle for its snapshot alone; its files belong to another node.
struct PointSink<'a> {
    own: &'a Manifest,
    point: &'a str,
    target: &'a Path,
    bump_revision: Option<u64>,
    options: Option<crate::etcd::RestoreOptions>,
    failure: Option<Error>,
    restored: Option<Restored>,
}

impl PointSink<'_> {
    fn fail(&mut self, error: Error) -> io::Error {
        let message = error.to_string();
        self.failure = Some(error);
        io::Error::other(message)
    }
}

impl Sink for PointSink<'_> {
    fn manifest(&mut self, manifest: &Manifest) -> io::Result<()> {
        if (&manifest.cluster.name, &manifest.etcd.cluster_id)
            != (&self.own.cluster.name, &self.own.etcd.cluster_id)
        {
            return Err(self.fail(Error::RestorePoint {
                claim: self.point.to_string(),
                why: format!(
                    "it is a bundle of cluster {} (etcd cluster {}), this node's is {} (etcd cluster {})",
                    manifest.cluster.name,
                    manifest.etcd.cluster_id,
                    self.own.cluster.name,
                    self.own.etcd.cluster_id
                ),
            }));
        }
        match ha::restore_options(self.own, self.point, manifest, self.bump_revision) {
            Ok(options) => {
                self.options = Some(options);
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    fn file(&mut self, _entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(drop)
    }

    snapshot_steps_through_restore_snapshot!();
}

impl PointSink<'_> {
    fn restore_snapshot(
        &mut self,
        entry: &SnapshotEntry,
        data: &mut dyn Read,
        blake3: Option<&mut blake3::Hasher>,
    ) -> io::Result<()> {
        let options = self.options.clone().expect("the manifest comes first");
        log_member_restore(&options);
        let restored = restore_from_reader(
            data,
            entry.size,
            Path::new(&entry.path),
            self.target,
            &options,
            blake3,
        );
        match restored {
            Ok(restored) => {
                self.restored = Some(restored);
                Ok(())
            }
            Err(error) => Err(self.fail(error.into())),
        }
    }
}

/// Where this node's etcd member comes from, as the sink decides on reaching the snapshot.
enum Point {
    /// This bundle's snapshot: a one-member cluster, or the restore point already claimed or pinned.
    This,
    /// This bundle's snapshot, restored before the claim that makes it the restore point; another
    /// node may have claimed first, and then that bundle's snapshot replaces it.
    ToClaim,
    /// Another bundle's snapshot; this one's was only verified.
    Other(String),
    /// No snapshot: the quorum is alive and this node rejoins it; this bundle's was only verified.
    Rejoin(Rejoin),
    /// No snapshot: this node's member stopped with its data, which is claimed as the source once
    /// this bundle (its files) verifies; phase 2 starts it alone.
    Survivor(ha::Survivor),
}

fn log_member_restore(options: &crate::etcd::RestoreOptions) {
    log::info!(
        "restore: rebuilding the etcd data dir for member {} (peer URLs {}, initial cluster {}){}",
        options.name,
        options.initial_advertise_peer_urls,
        options.initial_cluster,
        match options.bump_revision {
            Some(bump) => format!(", revision bumped by {bump} and marked compacted"),
            None => String::new(),
        }
    );
}

fn remove_scratch(path: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Sees the bundle as it streams in: checks identity on the manifest (before downloading the rest),
/// extracts files to staging, and feeds the snapshot straight into the native etcd restore.
struct RestoreSink<'a> {
    request: &'a RestoreRequest<'a>,
    name: &'a str,
    layout: &'a Layout,
    files: Extract,
    staging: PathBuf,
    /// The real reason when a sink step fails; the reader only sees a generic I/O error.
    failure: Option<Error>,
    restored: Option<Restored>,
    manifest: Option<Manifest>,
    /// Probed once per run, whatever the number of bundles tried.
    quorum: &'a mut Option<Quorum>,
    point: Point,
}

impl RestoreSink<'_> {
    /// For a cluster of several members: a live quorum is rejoined; survivors are refused unless
    /// discarded; else the restore point: pinned, claimed by another node, or this bundle to claim.
    fn restore_point(
        &mut self,
        manifest: &Manifest,
        quorum_probe: Duration,
        discard_survivors: bool,
    ) -> Result<Point, Error> {
        let quorum = match self.quorum.clone() {
            Some(quorum) => quorum,
            None => {
                let staged = self.staging.join(STAGED_BUNDLE);
                log::info!(
                    "restore: etcd had {} members; probing them for a quorum for {} s with the bundle's etcd client certificate",
                    manifest.etcd.members.len(),
                    quorum_probe.as_secs()
                );
                let quorum = ha::probe(manifest, &ha::client_tls(&staged), quorum_probe);
                log::info!("restore: quorum probe: {quorum:?}");
                *self.quorum = Some(quorum.clone());
                quorum
            }
        };
        let node = manifest.node.name.clone();
        let (claim, claimed) = ha::claim_of_incident(self.request.store, manifest)?;
        match quorum {
            Quorum::Alive {
                cluster_id, member, ..
            } if claimed
                .as_ref()
                .is_some_and(|p| p.cluster_id == cluster_id && p.survivor.is_none()) =>
            {
                log::info!(
                    "restore: {member} answers for the cluster restored from the restore point (etcd cluster {cluster_id}); this member joins it, restored from the same snapshot"
                );
            }
            Quorum::Alive {
                member, endpoint, ..
            } => {
                log::info!(
                    "restore: {member} answers for the live cluster at {endpoint}: a snapshot would roll it back, so this node rejoins it"
                );
                return rejoin::plan(&manifest.cluster, &manifest.node, &endpoint)
                    .map(Point::Rejoin);
            }
            Quorum::Lost { survivors, .. } if !survivors.is_empty() => {
                if !discard_survivors {
                    return Err(Error::Survivors { node, survivors });
                }
                log::warn!(
                    "restore: discarding the data of surviving members {} (--discard-survivors): every member restores a bundle",
                    survivors.join(", ")
                );
            }
            Quorum::Lost { .. } => {}
        }
        let own = self.own_survivor(manifest, discard_survivors)?;
        if let Some(pinned) = pinned_point(self.request).or(self.request.bundle.as_deref()) {
            if let Some(own) = own {
                return Err(self.refuse(
                    own,
                    format!("the restore point is pinned to {pinned} (--bundle)"),
                    claim,
                ));
            }
        }
        match (claimed.as_ref(), own) {
            (None, Some(own)) => return Ok(Point::Survivor(own)),
            (Some(point), Some(own)) => return self.survivor_meets(point, own, manifest, claim),
            (Some(point), None) => {
                if let Some(survivor) = &point.survivor {
                    return self.follow(survivor, manifest, &claim);
                }
            }
            (None, None) => {}
        }
        if let Some(pinned) = pinned_point(self.request) {
            return Ok(Point::Other(pinned.to_string()));
        }
        if self.request.bundle.is_some() {
            return Ok(Point::This);
        }
        Ok(match claimed {
            Some(point) if point.bundle != self.name => {
                log::info!(
                    "restore: following the restore point {} claimed by {} at {}",
                    point.bundle,
                    point.claimed_by,
                    point.claimed_at
                );
                Point::Other(point.bundle)
            }
            Some(_) => Point::This,
            None => Point::ToClaim,
        })
    }

    /// A lost quorum whose member on this node stopped with its data: a db newer than the bundle
    /// holds writes no bundle has, so it is the source, never replaced without `--discard-survivors`.
    fn own_survivor(
        &self,
        manifest: &Manifest,
        discard_survivors: bool,
    ) -> Result<Option<ha::Survivor>, Error> {
        let data_dir = data_dir(self.layout, manifest);
        let Some(revision) = ha::surviving_revision(&data_dir, manifest)? else {
            return Ok(None);
        };
        if revision <= manifest.etcd.revision {
            return Ok(None);
        }
        if ["3.5.0", "3.5.1", "3.5.2"].contains(&manifest.etcd.version.as_str()) {
            log::warn!(
                "restore: etcd {} may re-apply writes on the restart after a crash and then disagree with the members that join it (etcd-io/etcd#13766, fixed in 3.5.3): compare HashKV across the members afterwards (cpr check)",
                manifest.etcd.version
            );
        }
        if discard_survivors {
            log::warn!(
                "restore: discarding this node's etcd data at revision {revision}, newer than the bundle's {} (--discard-survivors); {} is moved aside, not deleted",
                manifest.etcd.revision,
                data_dir.display()
            );
            return Ok(None);
        }
        Ok(Some(ha::Survivor {
            node: manifest.node.name.clone(),
            member_name: manifest.etcd.member_name.clone(),
            member_id: manifest.etcd.member_id.clone(),
            client_urls: manifest.etcd.client_urls.clone(),
            revision,
            bundle_revision: manifest.etcd.revision,
        }))
    }

    fn refuse(&self, own: ha::Survivor, conflict: String, claim: String) -> Error {
        Error::SurvivingData {
            node: own.node,
            data_dir: data_dir(self.layout, self.manifest.as_ref().expect("read first")),
            revision: own.revision,
            bundle_revision: own.bundle_revision,
            conflict,
            claim,
        }
    }

    /// This node holds survivor data and finds `point` claimed: its own claim again (a rerun), a
    /// bundle (the others restored it: refused), or another survivor, followed when it holds at
    /// least every write this one has (its revision is not older), else refused.
    fn survivor_meets(
        &self,
        point: &ha::RestorePoint,
        own: ha::Survivor,
        manifest: &Manifest,
        claim: String,
    ) -> Result<Point, Error> {
        match &point.survivor {
            Some(winner) if winner.node == own.node => Ok(Point::Survivor(own)),
            Some(winner) if winner.revision >= own.revision => {
                log::info!(
                    "restore: this node's data (revision {}) is not newer than the surviving member {}'s (revision {}), which {} claimed first: this node rejoins it",
                    own.revision,
                    winner.member_name,
                    winner.revision,
                    winner.node
                );
                self.follow(winner, manifest, &claim)
            }
            Some(winner) => Err(self.refuse(
                own,
                format!(
                    "{} claimed its own surviving member {} at revision {} first, older than this node's",
                    winner.node, winner.member_name, winner.revision
                ),
                claim,
            )),
            None => Err(self.refuse(
                own,
                format!(
                    "{} claimed the bundle {} as the restore point at {}: other nodes restore that snapshot",
                    point.claimed_by, point.bundle, point.claimed_at
                ),
                claim,
            )),
        }
    }

    /// A survivor claim: no snapshot here; once the survivor runs alone, this node rejoins it.
    fn follow(
        &self,
        survivor: &ha::Survivor,
        manifest: &Manifest,
        claim: &str,
    ) -> Result<Point, Error> {
        log::info!(
            "restore: {} claimed its surviving member {} (revision {}) as the source; waiting up to {} s for it to answer at {}",
            survivor.node,
            survivor.member_name,
            survivor.revision,
            ha::SURVIVOR_WAIT.as_secs(),
            survivor.client_urls.join(", ")
        );
        let staged = self.staging.join(STAGED_BUNDLE);
        let endpoint =
            ha::wait_for_survivor(survivor, claim, &ha::client_tls(&staged), ha::SURVIVOR_WAIT)?;
        rejoin::plan(&manifest.cluster, &manifest.node, &endpoint).map(Point::Rejoin)
    }

    fn fail(&mut self, error: Error) -> io::Error {
        let message = error.to_string();
        self.failure = Some(error);
        io::Error::other(message)
    }

    fn check_identity(&self, manifest: &Manifest, pki: Option<&Path>) -> Result<(), Error> {
        if self.request.new_address {
            let (address, _) = readdress::new_identity(&self.request.machine, manifest)?;
            readdress::check_members(manifest, address)?;
            return match pki {
                Some(pki) => readdress::check_authorities(manifest, pki, OffsetDateTime::now_utc()),
                None => Ok(()),
            };
        }
        let expected = Expected {
            node_name: manifest.node.name.clone(),
            hostname: manifest.node.hostname.clone(),
            advertise_address: manifest
                .node
                .advertise_address
                .as_deref()
                .and_then(|a| a.parse::<IpAddr>().ok()),
        };
        let mismatches = identity::check(&self.request.machine, &expected, pki)?;
        refuse_or_warn(mismatches, self.request.force_identity)
    }
}

/// Phase 1 writes the files static pods read at the bundle's paths: only where `cpr backup` could
/// have taken them from, never over what kubeadm, the host or the etcd restore own.
fn check_pod_inputs(manifest: &Manifest) -> Result<(), Error> {
    for entry in manifest.files.iter().filter(|f| f.source.is_some()) {
        if let Some(why) = layout::not_configuration(&format!("/{}", entry.path)) {
            return Err(crate::bundle::Error::ManifestInvalid {
                bundle: manifest.node.name.clone(),
                message: format!(
                    "file {:?} is listed as a static pod's input, but a restore does not write there ({why})",
                    entry.path
                ),
            }
            .into());
        }
    }
    Ok(())
}

fn refuse_or_warn(mismatches: Vec<Mismatch>, force: bool) -> Result<(), Error> {
    if mismatches.is_empty() {
        return Ok(());
    }
    if force {
        for mismatch in &mismatches {
            log::warn!("restore: identity differs (continuing, --force-identity): {mismatch}");
        }
        return Ok(());
    }
    Err(Error::Identity {
        differences: mismatches.iter().map(|m| m.to_string()).collect(),
    })
}

impl Sink for RestoreSink<'_> {
    fn manifest(&mut self, manifest: &Manifest) -> io::Result<()> {
        let staged = self.staging.join(STAGED_MANIFEST);
        let written = fsutil::write_atomic(&staged, &manifest.to_json(), 0o600).map_err(|source| {
            Error::Write {
                path: staged,
                source,
            }
        });
        // No certificate is staged yet: this checks names and addresses only.
        let checked = written
            .and_then(|()| check_pod_inputs(manifest))
            .and_then(|()| self.check_identity(manifest, None));
        match checked {
            Ok(()) => {
                self.manifest = Some(manifest.clone());
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    fn file(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        self.files.file(entry, data)
    }

    snapshot_steps_through_restore_snapshot!();
}

impl RestoreSink<'_> {
    fn restore_snapshot(
        &mut self,
        entry: &SnapshotEntry,
        data: &mut dyn Read,
        blake3: Option<&mut blake3::Hasher>,
    ) -> io::Result<()> {
        let manifest = self.manifest.clone().expect("the manifest comes first");
        let pki = self.staging.join(STAGED_BUNDLE).join(layout::PKI_DIR);
        let member = self.check_identity(&manifest, Some(&pki)).and_then(|()| {
            self.request
                .new_address
                .then(|| readdress::new_identity(&self.request.machine, &manifest))
                .transpose()
        });
        let member = match member {
            Ok(member) => {
                member.map(|(address, name)| readdress::etcd_member(&manifest, address, &name))
            }
            Err(error) => return Err(self.fail(error)),
        };
        let several = manifest.etcd.members.len() > 1 && !self.request.new_address;
        let options = match &self.request.members {
            Members::Cluster {
                quorum_probe,
                discard_survivors,
            } if several => {
                let point = self
                    .restore_point(&manifest, *quorum_probe, *discard_survivors)
                    .and_then(|point| {
                        ha::restore_options(
                            &manifest,
                            self.name,
                            &manifest,
                            self.request.bump_revision,
                        )
                        .map(|options| (point, options))
                    });
                match point {
                    Ok((point @ (Point::Other(_) | Point::Rejoin(_) | Point::Survivor(_)), _)) => {
                        self.point = point;
                        // Not restored from, but still read through by the caller, so that this
                        // bundle's own files are known to be intact.
                        return Ok(());
                    }
                    Ok((point, options)) => {
                        self.point = point;
                        options
                    }
                    Err(error) => return Err(self.fail(error)),
                }
            }
            Members::Cluster { .. } => etcd_options(&manifest, member, self.request.bump_revision),
            Members::Lone { cluster_token } => {
                if several {
                    log::info!(
                        "restore: etcd had {} members; restoring the snapshot as a lone member of a cluster of its own (token {cluster_token}): no member is probed, no restore point claimed",
                        manifest.etcd.members.len()
                    );
                }
                RestoreOptions {
                    initial_cluster_token: cluster_token.clone(),
                    ..etcd_options(&manifest, member, self.request.bump_revision)
                }
            }
        };
        let live = data_dir(self.layout, &manifest);
        let result = ensure_not_in_use(&live)
            .map_err(Error::from)
            .and_then(|()| {
                log_member_restore(&options);
                let mut halfway = Halfway {
                    inner: &mut *data,
                    seen: 0,
                    half: entry.size / 2,
                };
                restore_from_reader(
                    &mut halfway,
                    entry.size,
                    Path::new(&entry.path),
                    &etcd_target(&live),
                    &options,
                    blake3,
                )
                .map_err(Error::from)
            });
        match result {
            Ok(restored) => {
                self.restored = Some(restored);
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }
}

/// Passes the snapshot through, tripping the `restore:mid-snapshot` failpoint halfway, so crash tests
/// can stop a restore in the middle of writing the db.
struct Halfway<'r> {
    inner: &'r mut dyn Read,
    seen: u64,
    half: u64,
}

impl Read for Halfway<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.seen < self.half && self.seen + n as u64 >= self.half {
            failpoint("restore:mid-snapshot");
        }
        self.seen += n as u64;
        Ok(n)
    }
}

/// The member of a one-member cluster as the backed-up node knew it, or as `member` (name, peer URL)
/// on a new address (which a several-member cluster refuses before this).
fn etcd_options(
    manifest: &Manifest,
    member: Option<(String, String)>,
    bump_revision: Option<u64>,
) -> RestoreOptions {
    let (name, peer_urls) = match member {
        Some((name, url)) => (name, vec![url]),
        None => (
            manifest.etcd.member_name.clone(),
            manifest.etcd.peer_urls.clone(),
        ),
    };
    let peers = peer_urls.join(",");
    RestoreOptions {
        initial_cluster: peer_urls
            .iter()
            .map(|url| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(","),
        initial_advertise_peer_urls: peers,
        name,
        bump_revision,
        // The bundle reader checks the snapshot's sha256 trailer over these very bytes and fails the
        // whole read (so the staged data dir is discarded) on a mismatch: a second hash pass would
        // only cost time.
        skip_hash_check: true,
        ..RestoreOptions::default()
    }
}

/// Which of the bundle's pki a restore puts back.
#[derive(Clone, Copy)]
enum Pki {
    All,
    /// The CAs and keys every control-plane node shares: kubeadm join signs this node's leaves.
    Shared,
}

/// pki must be renamed into place, so it is built beside the live one from the staged copy.
fn materialize_pki(layout: &Layout, bundle_dir: &Path, which: Pki) -> Result<(), Error> {
    let from = bundle_dir.join(layout::PKI_DIR);
    let to = new_path(&layout.path(layout::PKI_DIR));
    if let Some(parent) = to.parent() {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| Error::Write {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    copy_tree(&from, &to, &from, which).map_err(|source| Error::Write {
        path: to.clone(),
        source,
    })?;
    fsutil::sync_tree(&to).map_err(|source| Error::Write { path: to, source })
}

/// Copies a staged tree below `top` (all of it, or the shared pki), keeping file modes and owners;
/// directories get kubeadm's 0755.
fn copy_tree(from: &Path, to: &Path, top: &Path, which: Pki) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new().mode(0o755).create(to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let meta = entry.metadata()?;
        if meta.is_dir() {
            copy_tree(&entry.path(), &target, top, which)?;
        } else if matches!(which, Pki::All)
            || entry.path().strip_prefix(top).is_ok_and(rejoin::is_shared)
        {
            copy_file(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Copies one staged file, keeping its mode and (when cpr runs as root) its owners.
fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(from)?;
    fs::copy(from, to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o777))?;
    if crate::host::is_root() {
        std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// One tree to put in place: `new` becomes `live`, an existing `live` becomes `old`.
struct Swap {
    live: PathBuf,
    new: PathBuf,
    old: PathBuf,
}

impl Swap {
    fn for_dir(live: PathBuf, new: PathBuf, stamp: &str) -> Swap {
        let old = fsutil::sibling(&live, &format!(".cpr-old-{stamp}"));
        Swap { live, new, old }
    }

    /// Idempotent: a run killed between the two renames is completed by the next one.
    fn apply(&self) -> Result<Option<PathBuf>, Error> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Write { path, source }
        };
        if fs::symlink_metadata(&self.new).is_err() {
            return Ok(self.old.exists().then(|| self.old.clone()));
        }
        if fs::symlink_metadata(&self.live).is_ok() {
            if self.old.exists() {
                return Err(Error::SwapConflict {
                    live: self.live.clone(),
                    old: self.old.clone(),
                });
            }
            fsutil::rename_durable(&self.live, &self.old).map_err(write_err(&self.live))?;
            failpoint("restore:moved-aside");
        }
        fsutil::rename_durable(&self.new, &self.live).map_err(write_err(&self.live))?;
        Ok(self.old.exists().then(|| self.old.clone()))
    }
}

fn swap_in(
    layout: &Layout,
    mut state: State,
    skipped: Vec<(String, String)>,
    quorum: Option<Quorum>,
) -> Result<RestoreReport, Error> {
    let manifest = staged_manifest(layout)?;
    let live_data = data_dir(layout, &manifest);
    ensure_not_in_use(&live_data)?;
    let pki = layout.path(layout::PKI_DIR);
    let target = etcd_target(&live_data);
    let etcd = if target.starts_with(&live_data) {
        Swap::for_dir(
            live_data.join("member"),
            target.join("member"),
            &state.stamp,
        )
    } else {
        Swap::for_dir(live_data.clone(), target.clone(), &state.stamp)
    };
    if let Some(parent) = pki.parent() {
        state::ensure_dir(parent)?;
    }
    // A survivor's data dir is the source: nothing was staged for it, and it stays.
    let swaps = [Swap::for_dir(pki.clone(), new_path(&pki), &state.stamp)]
        .into_iter()
        .chain(state.survivor.is_none().then_some(etcd));
    for swap in swaps {
        if let Some(old) = swap.apply()? {
            log::info!(
                "restore: moved {} aside to {}",
                swap.live.display(),
                old.display()
            );
            if !state.moved_aside.contains(&old) {
                state.moved_aside.push(old);
            }
        }
        failpoint("restore:swapped-one");
    }
    if target.starts_with(&live_data) {
        let _ = fs::remove_dir(&target);
    }
    restore_pod_inputs(layout, &manifest, &mut state)?;
    failpoint("restore:swapped");
    state.phase = Phase::Restored;
    state.save(layout)?;
    log::info!(
        "restore: pki and the etcd data dir {} are in place (revision {}{})",
        live_data.display(),
        state.revision,
        state
            .bumped_revision
            .map(|r| format!(", now {r}"))
            .unwrap_or_default()
    );
    Ok(report(layout, &state, skipped, quorum, false))
}

/// Puts back the files static pods read (the bundle's entries with a `source`) with their modes and
/// owners, each as a swap: staged beside the live path, the live file moved aside when it differs,
/// renamed in. A file already as the bundle has it is left alone, so a second run changes nothing.
fn restore_pod_inputs(
    layout: &Layout,
    manifest: &Manifest,
    state: &mut State,
) -> Result<(), Error> {
    let staged = staged_bundle_dir(layout);
    let owners = crate::host::is_root();
    for entry in manifest.files.iter().filter(|f| f.source.is_some()) {
        let live = layout.path(&entry.path);
        let swap = Swap::for_dir(live.clone(), new_path(&live), &state.stamp);
        let moved = if is_restored(&live, entry, owners) {
            swap.old.exists().then(|| swap.old.clone())
        } else {
            stage_file(&staged.join(&entry.path), &swap.new)?;
            let moved = swap.apply()?;
            log::info!(
                "restore: {} is back ({})",
                live.display(),
                entry.source.as_deref().unwrap_or_default()
            );
            failpoint("restore:input-swapped");
            moved
        };
        if let Some(old) = moved.filter(|old| !state.moved_aside.contains(old)) {
            log::info!(
                "restore: moved {} aside to {}",
                live.display(),
                old.display()
            );
            state.moved_aside.push(old);
        }
    }
    Ok(())
}

/// `live` is a regular file with the entry's content, mode and (when cpr can set them) owners.
fn is_restored(live: &Path, entry: &FileEntry, owners: bool) -> bool {
    use sha2::{Digest, Sha256};
    let Ok(meta) = fs::symlink_metadata(live) else {
        return false;
    };
    meta.is_file()
        && meta.mode() & 0o777 == entry.mode
        && (!owners || (meta.uid(), meta.gid()) == (entry.uid, entry.gid))
        && fs::read(live).is_ok_and(|data| hex::encode(Sha256::digest(data)) == entry.sha256)
}

/// Writes the staged copy to `new`, beside the live path, with the entry's mode and owners: the
/// bundle reader gave the staged copy those, and `copy_file` keeps them.
fn stage_file(from: &Path, new: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    let write_err = |source| Error::Write {
        path: new.to_path_buf(),
        source,
    };
    if let Some(parent) = new.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(write_err)?;
    }
    // A copy left by a run killed before its swap is replaced, whatever its mode.
    match fs::remove_file(new) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_err(e)),
        _ => {}
    }
    copy_file(from, new).map_err(|source| match fs::File::open(from) {
        // An unreadable staged copy is a read error, as it always was.
        Err(source) => Error::Read {
            path: from.to_path_buf(),
            source,
        },
        Ok(_) => write_err(source),
    })?;
    // The mode and owners are durable before the rename makes the file live.
    fs::File::open(new)
        .and_then(|f| f.sync_all())
        .map_err(write_err)
}

/// Where this node's etcd data comes from, for the report.
fn source(
    bundle: &str,
    survivor: Option<&ha::Survivor>,
    rejoin: Option<&Rejoin>,
    restore_point: Option<&str>,
) -> String {
    if let Some(survivor) = survivor {
        return format!(
            "surviving member {} (revision {}, newer than bundle {} by {} revisions)",
            survivor.member_name,
            survivor.revision,
            bundle,
            survivor.revision - survivor.bundle_revision
        );
    }
    if let Some(rejoin) = rejoin {
        return format!(
            "the live cluster, rejoined through {}",
            rejoin.etcd_endpoint
        );
    }
    format!("snapshot of bundle {}", restore_point.unwrap_or(bundle))
}

fn report(
    layout: &Layout,
    state: &State,
    skipped: Vec<(String, String)>,
    quorum: Option<Quorum>,
    already_done: bool,
) -> RestoreReport {
    let manifest = staged_manifest(layout).ok();
    RestoreReport {
        bundle: state.bundle.clone(),
        revision: state.revision,
        bumped_revision: state.bumped_revision,
        data_dir: manifest
            .map(|m| data_dir(layout, &m))
            .unwrap_or_else(|| layout.path(layout::DEFAULT_ETCD_DATA_DIR)),
        moved_aside: state.moved_aside.clone(),
        skipped,
        already_done,
        new_address: state.new_address.clone(),
        quorum,
        restore_point: state.restore_point.clone(),
        rejoin: state.rejoin.clone(),
        survivor: state.survivor.clone(),
        source: source(
            &state.bundle,
            state.survivor.as_ref(),
            state.rejoin.as_ref(),
            state.restore_point.as_deref(),
        ),
        plan_only: false,
    }
}

/// The plan of a restore onto a new address, from the staged bundle and etcd db; printed before the
/// swap changes anything live.
fn plan_new_address(
    request: &RestoreRequest<'_>,
    layout: &Layout,
    manifest: &Manifest,
) -> Result<Option<Plan>, Error> {
    if !request.new_address {
        return Ok(None);
    }
    let (address, name) = readdress::new_identity(&request.machine, manifest)?;
    let bundle_dir = staged_bundle_dir(layout);
    let db = crate::etcd::db_path(&etcd_target(&data_dir(layout, manifest)));
    let prefix = super::carryover::etcd_prefix(&bundle_dir);
    let plan = readdress::plan(manifest, address, &name, &bundle_dir, &db, &prefix)?;
    for line in readdress::describe(&plan).lines() {
        log::info!("restore: {line}");
    }
    Ok(Some(plan))
}
