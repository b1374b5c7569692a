//! `cpr prune` and `cpr backup --prune`: apply a retention policy to every matching node's bundles,
//! never deleting the newest bundle that verifies.
//!
//! "Verified" is decided on the spot, not remembered: before the first deletion in a node, its
//! bundles are read newest first through the bundle reader (every digest and the etcd snapshot's
//! sha256 trailer, streamed, nothing written to disk) until one passes, and that one is protected.
//! That is one streaming read of the newest bundle in the usual case — what a restore would read —
//! and nothing at all when the policy deletes nothing. A record in the index would be cheaper but
//! would vouch for bytes the store may have lost or damaged since. Encrypted bundles cannot be read
//! without the key, so the newest of them is protected unread (the policy keeps the newest anyway).

use serde::Serialize;

use super::Error;
use crate::bundle::name::{BundleName, ENCRYPTED_SUFFIX};
use crate::bundle::{read_bundle, Discard, FrameChecksum};
use crate::store::index::{self, IndexEntry};
use crate::store::retention::{self, Decision, Policy};
use crate::store::{self, Store};

pub struct PruneRequest<'a> {
    pub store: &'a dyn Store,
    pub cluster: Option<&'a str>,
    pub node: Option<&'a str>,
    pub policy: Policy,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub store: String,
    pub dry_run: bool,
    pub policy: Policy,
    pub nodes: Vec<NodePrune>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePrune {
    pub cluster: String,
    pub node: String,
    /// The newest bundle that verified (or the newest encrypted one, unread); `None` when the
    /// policy deleted nothing, so nothing had to be read.
    pub protected: Option<String>,
    /// Newer bundles that failed verification, with the reason.
    pub failed_verification: Vec<(String, String)>,
    /// Newest first.
    pub decisions: Vec<Decision>,
    /// Signatures whose bundle is gone (left by an interrupted prune); deleted too.
    pub orphan_signatures: Vec<String>,
    /// Unfinished uploads of this node that no writer works on any more (a backup cut off by a
    /// crash or power cut); deleted too. A live one (a backup running now) is left.
    pub dead_uploads: Vec<String>,
}

impl NodePrune {
    pub fn deleted(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep)
    }
}

pub fn prune(request: &PruneRequest<'_>) -> Result<PruneReport, Error> {
    if request.policy.is_empty() {
        return Err(Error::EmptyPolicy);
    }
    let mut nodes: Vec<((String, String), Vec<IndexEntry>)> = Vec::new();
    for entry in store::bundles(request.store, request.cluster, request.node)? {
        // Objects that only look like bundles are not cpr's to delete.
        let Ok(name) = BundleName::parse(&entry.name) else {
            continue;
        };
        let key = (name.cluster, name.node);
        match nodes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, entries)) => entries.push(entry),
            None => nodes.push((key, vec![entry])),
        }
    }
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut report = PruneReport {
        store: request.store.location(),
        dry_run: request.dry_run,
        policy: request.policy,
        nodes: Vec::new(),
    };
    for ((cluster, node), entries) in nodes {
        report
            .nodes
            .push(prune_node(request, cluster, node, &entries)?);
    }
    Ok(report)
}

fn prune_node(
    request: &PruneRequest<'_>,
    cluster: String,
    node: String,
    entries: &[IndexEntry],
) -> Result<NodePrune, Error> {
    let store = request.store;
    let mut decisions = retention::plan(&request.policy, entries, &[]);
    let mut protected = None;
    let mut failed_verification = Vec::new();
    if decisions.iter().any(|d| !d.keep) {
        for decision in &decisions {
            match verify(store, &decision.name) {
                Ok(()) => {
                    protected = Some(decision.name.clone());
                    break;
                }
                Err(Error::Bundle(e)) => {
                    log::warn!("prune: {} does not verify: {e}", decision.name);
                    failed_verification.push((decision.name.clone(), e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        let Some(newest_good) = &protected else {
            return Err(Error::NothingVerifies {
                store: store.location(),
                node: format!("{cluster}/{node}"),
                tried: failed_verification
                    .iter()
                    .map(|(name, why)| format!("{name}: {why}"))
                    .collect(),
            });
        };
        decisions = retention::plan(&request.policy, entries, &[newest_good.as_str()]);
    }
    let orphan_signatures = retention::orphan_signatures(store, &cluster, &node)?;
    let dead_uploads = store.remove_dead_uploads(&format!("{cluster}/{node}/"), request.dry_run)?;
    if !request.dry_run {
        let doomed: Vec<&str> = decisions
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.name.as_str())
            .collect();
        retention::delete(store, &cluster, &node, &doomed)?;
        for orphan in &orphan_signatures {
            store.delete(orphan)?;
        }
        // A listing that still shows a deleted bundle means the store did not delete it.
        let left = index::list_bundles(store, &cluster, &node)?;
        if let Some(still) = left.iter().find(|e| doomed.contains(&e.name.as_str())) {
            return Err(Error::Store(store::Error::Index {
                url: format!("{}/{}", store.location(), still.name),
                reason: "deleted but still listed; the store ignored the DELETE".to_string(),
            }));
        }
    }
    Ok(NodePrune {
        cluster,
        node,
        protected,
        failed_verification,
        decisions,
        orphan_signatures,
        dead_uploads,
    })
}

/// Reads the whole bundle through the verifying reader, keeping nothing.
fn verify(store: &dyn Store, name: &str) -> Result<(), Error> {
    if name.ends_with(ENCRYPTED_SUFFIX) {
        log::warn!("prune: {name} is encrypted and cannot be verified without its key; protecting it as the newest bundle");
        return Ok(());
    }
    log::info!("prune: verifying {name} before deleting anything older");
    let input = store.open(name)?;
    read_bundle(input, name, FrameChecksum::Check, &mut Discard)?;
    Ok(())
}

impl PruneReport {
    /// One line per bundle, then a total: what an operator reads in a timer's journal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.nodes.is_empty() {
            out.push_str("no bundles found; an HTTP server cannot list, so name the node there with --cluster and --node\n");
        }
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let width = verb.len();
        let (mut kept, mut deleted) = (0, 0);
        for node in &self.nodes {
            for decision in &node.decisions {
                if decision.keep {
                    kept += 1;
                    out.push_str(&format!(
                        "{:<width$} {}  ({})\n",
                        "keep",
                        decision.name,
                        decision.reasons.join(", ")
                    ));
                } else {
                    deleted += 1;
                    out.push_str(&format!("{verb:<width$} {}\n", decision.name));
                }
            }
            for orphan in &node.orphan_signatures {
                out.push_str(&format!(
                    "{verb:<width$} {orphan}  (signature without a bundle)\n"
                ));
            }
            for upload in &node.dead_uploads {
                out.push_str(&format!(
                    "{verb:<width$} {upload}  (unfinished upload left by a crash or power cut)\n"
                ));
            }
        }
        out.push_str(&format!(
            "{}: {} in {}: {kept} kept, {deleted} {verb}\n",
            if self.dry_run {
                "prune (dry run)"
            } else {
                "prune"
            },
            self.policy,
            self.store
        ));
        out
    }
}
