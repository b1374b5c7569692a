//! A control plane of several etcd members: is its quorum alive, and when it is lost, the one restore
//! point every node restores.
//!
//! A minority lost leaves a cluster that must not be rolled back: the probe asks every member the
//! bundle lists for a linearizable read, with the bundle's own etcd client certificate, for a stated
//! time, and one answer means quorum. When none answers, every node restores the same snapshot with
//! the full member list. The nodes agree on it through a claim in the store, created only if absent:
//! the first node to verify a bundle claims it, every other node follows the claim and never picks
//! another, whatever fails on its side. The `--initial-cluster-token` comes from the restore point,
//! so members restored from different bundles get different member and cluster IDs and can never
//! form one cluster.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Error;
use crate::bundle::manifest::Manifest;
use crate::etcd::client::{EtcdClient, TlsFiles};
use crate::etcd::RestoreOptions;
use crate::node::layout;
use crate::store::Store;

/// How long a lost quorum is looked for before it is believed: longer than an etcd leader election
/// (1 s by default) plus a member's restart, so a node that reboots does not pass for dead.
pub const DEFAULT_PROBE: Duration = Duration::from_secs(30);
/// Each question to a member is bounded by this, so one black-holed address cannot eat the window.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// A restore point is a few hundred bytes; anything larger is not one.
const MAX_CLAIM_BYTES: u64 = 64 << 10;

/// What the probe of the bundle's members found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "quorum")]
pub enum Quorum {
    /// `member` answered a linearizable read at `endpoint`: a leader with a quorum behind it, in the
    /// cluster `cluster_id` (lowercase hex).
    Alive {
        member: String,
        endpoint: String,
        revision: i64,
        cluster_id: String,
    },
    /// No member answered a linearizable read for `seconds`; `survivors` answered status: they run
    /// with their data but without a quorum.
    Lost {
        seconds: u64,
        rounds: u32,
        survivors: Vec<String>,
    },
}

/// The bundle's etcd client pair under `root`, the tree staged from it: kubeadm's health-check
/// client, signed by the etcd CA every member trusts.
pub fn client_tls(root: &Path) -> TlsFiles {
    let (cert, key) = layout::ETCD_CLIENT_PAIRS[0];
    TlsFiles {
        ca: root.join(layout::ETCD_CA_CERT),
        cert: root.join(cert),
        key: root.join(key),
    }
}

/// Asks every member listed in `manifest`, round after round for `window` (at least two rounds), for a
/// linearizable read; stops at the first answer.
pub fn probe(manifest: &Manifest, tls: &TlsFiles, window: Duration) -> Quorum {
    let started = Instant::now();
    let mut rounds = 0;
    let mut survivors = Vec::new();
    loop {
        rounds += 1;
        for member in &manifest.etcd.members {
            for endpoint in &member.client_urls {
                let client =
                    EtcdClient::connect_within(endpoint, Some(tls), ASK_TIMEOUT, ASK_TIMEOUT);
                let mut client = match client {
                    Ok(client) => client,
                    Err(error) => {
                        log::debug!("quorum probe: {error}");
                        continue;
                    }
                };
                match client.quorum_read() {
                    Ok((revision, cluster_id)) => {
                        return Quorum::Alive {
                            member: member.name.clone(),
                            endpoint: endpoint.clone(),
                            revision,
                            cluster_id: format!("{cluster_id:x}"),
                        }
                    }
                    Err(error) => log::debug!("quorum probe: {error}"),
                }
                if client.status().is_ok() && !survivors.contains(&member.name) {
                    survivors.push(member.name.clone());
                }
            }
        }
        if rounds >= 2 && started.elapsed() >= window {
            return Quorum::Lost {
                seconds: started.elapsed().as_secs(),
                rounds,
                survivors,
            };
        }
        std::thread::sleep(ROUND_PAUSE);
    }
}

/// The claim every node of a lost quorum follows: which bundle's snapshot they all restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePoint {
    pub bundle: String,
    /// The etcd cluster ID its members get (lowercase hex): a node that finds this cluster alive is a
    /// late member of it, not a node of a live cluster to rejoin.
    pub cluster_id: String,
    /// The node that claimed it, and when (RFC 3339), for the operator.
    pub claimed_by: String,
    pub claimed_at: String,
    /// The claimed bundle's etcd revision (a survivor's is in `survivor`): a node whose newest
    /// bundle was taken later and is past it knows this claim is an earlier incident's. Absent in
    /// claims of survivors and of cpr before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// A member that stopped with its data claimed: no snapshot is restored anywhere; it comes
    /// back alone (`--force-new-cluster`) and the others rejoin it. Absent in claims of a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survivor: Option<Survivor>,
}

/// A member of a lost quorum whose node kept its etcd data dir (WAL and db): its writes are newer
/// than any bundle's, so its data is the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Survivor {
    pub node: String,
    pub member_name: String,
    /// Lowercase hex, as in the bundle's member list.
    pub member_id: String,
    /// Where the others wait for it to answer once it runs alone.
    pub client_urls: Vec<String>,
    /// Its db's revision when phase 1 read it; the WAL may hold a few writes more, which etcd
    /// replays on start.
    pub revision: i64,
    /// The revision of this node's newest bundle, for the report.
    pub bundle_revision: i64,
}

/// How long a node following a survivor claim waits for the survivor's member to answer: its
/// phase 1 and 2 (a reboot into the installed OS, kubelet starting etcd) take minutes.
pub const SURVIVOR_WAIT: Duration = Duration::from_secs(15 * 60);

/// This node's member, as its own bundle `manifest` lists it, stopped with its data in `data_dir`:
/// a WAL and a db whose member list holds this member's ID. `Some(revision)` of its db; `None`
/// when the data dir is gone, empty or another member's.
pub fn surviving_revision(data_dir: &Path, manifest: &Manifest) -> Result<Option<i64>, Error> {
    let member = data_dir.join("member");
    let has_wal = std::fs::read_dir(member.join("wal")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".wal"))
    });
    let db = crate::etcd::db_path(data_dir);
    if !has_wal || !db.exists() {
        return Ok(None);
    }
    if !db_members(&db)?.contains(&manifest.etcd.member_id) {
        return Ok(None);
    }
    Ok(Some(crate::etcd::status::snapshot_status(&db)?.revision))
}

/// The member IDs (lowercase hex) in the `members` bucket of the etcd db at `path`, as etcd 3.5
/// stores them (`server/etcdserver/api/membership/store.go`: the key is the ID in hex).
fn db_members(path: &Path) -> Result<Vec<String>, Error> {
    use crate::etcd::bbolt::Db;
    let read_error = |e| crate::etcd::Error::from_read("reading the member list", path, e);
    let file = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let db = Db::open(&file, len).map_err(read_error)?;
    let mut in_members = false;
    let mut ids = Vec::new();
    db.walk(None, &mut |visit| {
        match visit.depth {
            0 => in_members = visit.key == b"members",
            1 if in_members => ids.push(String::from_utf8_lossy(visit.key).into_owned()),
            _ => {}
        }
        Ok(())
    })
    .map_err(read_error)?;
    Ok(ids)
}

/// Waits up to `window` for the survivor's member to answer a linearizable read: it runs alone,
/// with the quorum of itself. Returns the client URL that answered.
pub fn wait_for_survivor(
    survivor: &Survivor,
    claim: &str,
    tls: &TlsFiles,
    window: Duration,
) -> Result<String, Error> {
    let started = Instant::now();
    loop {
        for endpoint in &survivor.client_urls {
            let answered =
                EtcdClient::connect_within(endpoint, Some(tls), ASK_TIMEOUT, ASK_TIMEOUT)
                    .and_then(|mut client| client.quorum_read());
            match answered {
                Ok(_) => return Ok(endpoint.clone()),
                Err(error) => log::debug!("waiting for the survivor: {error}"),
            }
        }
        if started.elapsed() >= window {
            return Err(Error::RestorePoint {
                claim: claim.to_string(),
                why: format!(
                    "it names the surviving member {} on {} as the source, and it did not answer at {} for {} s. Run cpr restore and cpr finish on {} (or start its etcd), then run this again",
                    survivor.member_name,
                    survivor.node,
                    survivor.client_urls.join(", "),
                    started.elapsed().as_secs(),
                    survivor.node
                ),
            });
        }
        std::thread::sleep(ROUND_PAUSE);
    }
}

/// The object name of the claim of the `incident`th lost quorum (from 1) of the cluster of
/// `manifest`. A restore from a bundle gives the cluster a new etcd cluster ID, so its next loss
/// claims under a new name anyway; a survivor keeps the ID (`--force-new-cluster`), so the next
/// loss of that cluster finds the earlier claim, sees it is stale and claims the next name.
fn claim_name(manifest: &Manifest, incident: u32) -> String {
    let suffix = if incident > 1 {
        format!("-{incident}")
    } else {
        String::new()
    };
    format!(
        "{}/restore-point-{}{suffix}.json",
        manifest.cluster.name, manifest.etcd.cluster_id
    )
}

/// Whether `point` was claimed in an earlier incident than the one `manifest`, this node's newest
/// bundle, is restored in: the bundle was taken after the claim, and holds writes past the revision
/// the claim restored, so the cluster came back from it and ran on. A bundle of this incident was
/// taken before it started (before any claim), so a node of it never takes a live claim for stale;
/// a lagging survivor (its data older than another node's bundle) keeps its claim for the same
/// reason. A claim whose revision or time is unknown is never stale.
fn is_stale(point: &RestorePoint, manifest: &Manifest) -> bool {
    use time::format_description::well_known::Rfc3339;
    let Some(revision) = point
        .survivor
        .as_ref()
        .map(|s| s.revision)
        .or(point.revision)
    else {
        return false;
    };
    let parse = |text: &str| time::OffsetDateTime::parse(text, &Rfc3339).ok();
    let taken_after = match (parse(&manifest.created_at), parse(&point.claimed_at)) {
        (Some(taken), Some(claimed)) => taken > claimed,
        _ => false,
    };
    taken_after && manifest.etcd.revision > revision
}

/// The claim of this incident of the cluster of `manifest`: its name, and the restore point when
/// one is claimed. Earlier incidents' claims are left where they are, for the record.
fn current_claim(
    store: &dyn Store,
    manifest: &Manifest,
) -> Result<(String, Option<RestorePoint>), Error> {
    let mut incident = 1;
    loop {
        let name = claim_name(manifest, incident);
        match read_claim(store, &name)? {
            Some(point) if is_stale(&point, manifest) => {
                log::info!(
                    "restore: {}/{name} is an earlier incident's claim ({} at {}, revision below this bundle's {}, taken {}); kept, and not followed",
                    store.location(),
                    point.claimed_by,
                    point.claimed_at,
                    manifest.etcd.revision,
                    manifest.created_at
                );
                incident += 1;
            }
            point => return Ok((name, point)),
        }
    }
}

/// Where the claim of this incident of the cluster of `manifest` is (or goes), for messages, and
/// the restore point already claimed there, if any: one walk of the store's claims for both.
pub fn claim_of_incident(
    store: &dyn Store,
    manifest: &Manifest,
) -> Result<(String, Option<RestorePoint>), Error> {
    let (name, point) = current_claim(store, manifest)?;
    Ok((format!("{}/{name}", store.location()), point))
}

/// Where the claim of this incident of the cluster of `manifest` is (or goes), for messages.
pub fn claim_location(store: &dyn Store, manifest: &Manifest) -> Result<String, Error> {
    claim_of_incident(store, manifest).map(|(location, _)| location)
}

fn read_claim(store: &dyn Store, name: &str) -> Result<Option<RestorePoint>, Error> {
    let mut reader = match store.open_limited(name, Some(MAX_CLAIM_BYTES)) {
        Ok(reader) => reader,
        Err(crate::store::Error::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let mut text = Vec::new();
    reader
        .read_to_end(&mut text)
        .map_err(|e| Error::RestorePoint {
            claim: format!("{}/{name}", store.location()),
            why: e.to_string(),
        })?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::RestorePoint {
            claim: format!("{}/{name}", store.location()),
            why: format!("not a restore point ({e})"),
        })
}

/// Claims `bundle`, whose members form the cluster `cluster_id` (lowercase hex), or this node's
/// `survivor` (then `bundle` is only the one its files come from), unless another node claimed
/// first; returns the restore point that holds. `manifest` is the claimed bundle's (a survivor's
/// own, for its cluster and node).
pub fn claim(
    store: &dyn Store,
    manifest: &Manifest,
    bundle: &str,
    cluster_id: String,
    survivor: Option<Survivor>,
) -> Result<RestorePoint, Error> {
    let point = RestorePoint {
        bundle: bundle.to_string(),
        cluster_id,
        claimed_by: manifest.node.name.clone(),
        claimed_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        revision: survivor.is_none().then_some(manifest.etcd.revision),
        survivor,
    };
    let mut text = serde_json::to_vec_pretty(&point).expect("a restore point serializes");
    text.push(b'\n');
    let (name, claimed) = current_claim(store, manifest)?;
    if let Some(claimed) = claimed {
        return Ok(claimed);
    }
    if store.create_if_absent(&name, &text)? {
        return Ok(point);
    }
    read_claim(store, &name)?.ok_or_else(|| Error::RestorePoint {
        claim: format!("{}/{name}", store.location()),
        why: "the store said it exists, then that it does not; was it deleted by hand?".into(),
    })
}

/// `--initial-cluster-token` for every member restored from `bundle` (whose manifest is `point`):
/// it names the bundle and its snapshot (revision, size), so two restore points never share it.
pub fn cluster_token(bundle: &str, point: &Manifest) -> String {
    let digest = Sha256::digest(format!(
        "{bundle}\n{}\n{}\n",
        point.etcd.revision, point.snapshot.size
    ));
    format!("cpr-{}", &hex::encode(digest)[..16])
}

/// The restore of this node's member (`own`, its own bundle) into the cluster the restore point
/// `point` lists: every voting member with its peer URLs, this one by its own name.
pub fn restore_options(
    own: &Manifest,
    bundle: &str,
    point: &Manifest,
    bump_revision: Option<u64>,
) -> Result<RestoreOptions, Error> {
    let voters: Vec<_> = point
        .etcd
        .members
        .iter()
        .filter(|m| !m.is_learner)
        .collect();
    if !voters.iter().any(|m| m.name == own.etcd.member_name) {
        return Err(Error::RestorePoint {
            claim: bundle.to_string(),
            why: format!(
                "its cluster's voting members are {}, not {}: this node was not a member when that bundle was taken. Restore it as a new member once the others are up (kubeadm join --control-plane)",
                voters.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
                own.etcd.member_name
            ),
        });
    }
    let initial_cluster = voters
        .iter()
        .flat_map(|m| {
            m.peer_urls
                .iter()
                .map(move |url| format!("{}={url}", m.name))
        })
        .collect::<Vec<_>>()
        .join(",");
    Ok(RestoreOptions {
        name: own.etcd.member_name.clone(),
        initial_cluster,
        initial_cluster_token: cluster_token(bundle, point),
        initial_advertise_peer_urls: own.etcd.peer_urls.join(","),
        bump_revision,
        // As for one member: the bundle reader checks the snapshot's trailer on these bytes.
        skip_hash_check: true,
        ..RestoreOptions::default()
    })
}

/// Every member of the cluster behind `client` answers, and all have the same `HashKV` at the
/// revision they have all reached: one cluster restored from one snapshot, or a healthy one. `Ok`
/// says so with the figures; `Err` names the member that is missing or differs.
pub fn compare_members(client: &mut EtcdClient, tls: Option<&TlsFiles>) -> Result<String, String> {
    let members = client.members().map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    let mut failed = Vec::new();
    for member in &members {
        let Some(endpoint) = member.client_urls.first() else {
            failed.push(format!(
                "{} has no client URL (a learner not yet started?)",
                member.name
            ));
            continue;
        };
        let answer = EtcdClient::connect_within(endpoint, tls, ASK_TIMEOUT, ASK_TIMEOUT)
            .and_then(|mut c| c.status().map(|s| (c, s.revision)));
        match answer {
            Ok((member_client, revision)) => {
                seen.push((member.name.clone(), member_client, revision))
            }
            Err(error) => failed.push(format!("{}: {error}", member.name)),
        }
    }
    let Some(common) = seen.iter().map(|(_, _, revision)| *revision).min() else {
        return Err(failed.join("; "));
    };
    let mut hashes = Vec::new();
    for (name, member_client, _) in &mut seen {
        match member_client.hash_kv(common) {
            Ok((hash, _, _)) => hashes.push((name.clone(), hash)),
            Err(error) => failed.push(format!("{name}: {error}")),
        }
    }
    if let Some((first, hash)) = hashes.first() {
        for (name, other) in &hashes[1..] {
            if other != hash {
                failed.push(format!(
                    "{name} has HashKV {other:08x} at revision {common}, {first} {hash:08x}: the members hold different data"
                ));
            }
        }
    }
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    Ok(format!(
        "{} members ({}), all with HashKV {:08x} at revision {common}",
        hashes.len(),
        hashes
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        hashes.first().map_or(0, |(_, h)| *h)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{Cluster, Etcd, Node, SnapshotEntry};

    /// The newest bundle of `node`, taken at `created_at` at `revision`, of etcd cluster 1a2b.
    fn bundle(node: &str, created_at: &str, revision: i64) -> Manifest {
        Manifest {
            format_version: "1.2".into(),
            cpr_version: "test".into(),
            created_at: created_at.into(),
            cluster: Cluster {
                name: "c".into(),
                ..Cluster::default()
            },
            node: Node {
                name: node.into(),
                ..Node::default()
            },
            etcd: Etcd {
                member_name: node.into(),
                cluster_id: "1a2b".into(),
                revision,
                ..Etcd::default()
            },
            files: Vec::new(),
            snapshot: SnapshotEntry::new(0),
        }
    }

    fn survivor(node: &str, revision: i64, bundle_revision: i64) -> Survivor {
        Survivor {
            node: node.into(),
            member_name: node.into(),
            member_id: "3c".into(),
            client_urls: vec!["https://10.77.0.3:2379".into()],
            revision,
            bundle_revision,
        }
    }

    /// A survivor keeps its cluster ID, so the bundles taken after it came back find its claim at
    /// the next loss: they claim afresh under the next name and leave the old claim as it was,
    /// while a node of the first incident (its bundle older than the claim) still follows it.
    #[test]
    fn the_next_lost_quorum_of_a_survivors_cluster_claims_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(
            dir.path().to_str().unwrap(),
            &crate::store::StoreOptions::default(),
        )
        .unwrap();
        let store = store.as_ref();
        // The first loss, a year ago: master3 claimed its surviving member.
        let won = RestorePoint {
            bundle: "c/master3/20000101T070000Z".into(),
            cluster_id: "1a2b".into(),
            claimed_by: "master3".into(),
            claimed_at: "2000-01-01T08:00:00Z".into(),
            revision: None,
            survivor: Some(survivor("master3", 140, 100)),
        };
        std::fs::create_dir(dir.path().join("c")).unwrap();
        let first = bundle("master3", "2000-01-01T07:00:00Z", 100);
        assert!(store
            .create_if_absent(&claim_name(&first, 1), &serde_json::to_vec(&won).unwrap())
            .unwrap());
        let old_claim = dir.path().join("c/restore-point-1a2b.json");
        let old_text = std::fs::read(&old_claim).unwrap();
        let same_incident = bundle("master1", "2000-01-01T06:59:00Z", 120);
        assert_eq!(
            claim_of_incident(store, &same_incident).unwrap().1,
            Some(won.clone())
        );

        // The cluster ran on from the survivor's data; everyone backed up; quorum was lost again.
        let later = bundle("master1", "2001-01-01T00:00:00Z", 900);
        assert_eq!(claim_of_incident(store, &later).unwrap().1, None);
        assert_eq!(
            claim_location(store, &later).unwrap(),
            format!("{}/c/restore-point-1a2b-2.json", store.location())
        );
        let second = claim(
            store,
            &later,
            "c/master1/20010101T000000Z",
            "5e6f".into(),
            None,
        )
        .unwrap();
        assert_eq!(
            (second.claimed_by.as_str(), second.revision),
            ("master1", Some(900))
        );
        let other = bundle("master2", "2001-01-01T00:00:05Z", 905);
        assert_eq!(
            claim_of_incident(store, &other).unwrap().1,
            Some(second.clone())
        );
        assert_eq!(
            claim(
                store,
                &other,
                "c/master2/20010101T000005Z",
                "7a".into(),
                None
            )
            .unwrap(),
            second
        );
        assert_eq!(
            std::fs::read(&old_claim).unwrap(),
            old_text,
            "the first claim is kept"
        );
        assert!(dir.path().join("c/restore-point-1a2b-2.json").exists());
    }

    /// A lagging survivor (its data older than another node's bundle of the same incident) is not
    /// taken for an earlier incident's: that bundle was taken before the claim.
    #[test]
    fn a_claim_is_stale_only_for_a_bundle_taken_after_it_and_past_its_revision() {
        let point = RestorePoint {
            bundle: "c/master3/20261130T070000Z".into(),
            cluster_id: "1a2b".into(),
            claimed_by: "master3".into(),
            claimed_at: "2026-11-30T08:00:00Z".into(),
            revision: None,
            survivor: Some(survivor("master3", 140, 100)),
        };
        assert!(!is_stale(
            &point,
            &bundle("master1", "2026-11-30T07:30:00Z", 200)
        ));
        assert!(!is_stale(
            &point,
            &bundle("master1", "2026-11-30T08:30:00Z", 140)
        ));
        assert!(is_stale(
            &point,
            &bundle("master1", "2026-11-30T08:30:00Z", 141)
        ));
        let unknown = RestorePoint {
            survivor: None,
            ..point
        };
        assert!(!is_stale(
            &unknown,
            &bundle("master1", "2026-11-30T08:30:00Z", 999)
        ));
    }

    #[test]
    fn claims_without_a_survivor_keep_parsing() {
        let old = r#"{"bundle":"c/master1/20261130T070000Z","clusterId":"1a2b","claimedBy":"master1","claimedAt":"2026-11-30T07:00:00Z"}"#;
        let point: RestorePoint = serde_json::from_str(old).unwrap();
        assert_eq!(point.survivor, None);
        let text = serde_json::to_string(&point).unwrap();
        assert!(!text.contains("survivor"), "{text}");
    }
}
