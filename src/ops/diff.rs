//! `cpr diff`: the objects added, removed and changed between two snapshots, or between a
//! snapshot and this node's live etcd, per resource and namespace.
//!
//! An object is changed when its mod revision differs: etcd gives every write of a key a new one,
//! and a snapshot, a restore (which bumps only the store's revision) and the live etcd it came from
//! agree on the revisions of the writes they share.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::backup::{client_endpoint, client_tls};
use super::inventory::Inventory;
use super::Error;
use crate::etcd::client::EtcdClient;
use crate::k8s::registry::{self, Location, CHURNING};
use crate::node::layout::{self, Layout};
use crate::node::StaticPod;

/// One side of a diff: the objects by location, with their mod revision.
pub type Listing = BTreeMap<Location, i64>;

impl Inventory {
    pub fn listing(&self) -> Listing {
        self.objects
            .values()
            .map(|o| {
                (
                    Location {
                        resource: o.resource.clone(),
                        namespace: o.namespace.clone(),
                        name: o.name.clone(),
                    },
                    o.mod_revision,
                )
            })
            .collect()
    }
}

/// A client of the etcd of the node under `root`, as its static pod manifest and kubeadm's client
/// certificate reach it.
pub fn live_client(root: &Path) -> Result<EtcdClient, Error> {
    let layout = Layout::new(root);
    let pod = StaticPod::load(&layout.path(layout::ETCD_MANIFEST))?;
    let endpoint = client_endpoint(&pod)?;
    let tls = if endpoint.starts_with("https://") {
        Some(client_tls(&layout, &pod)?)
    } else {
        None
    };
    Ok(EtcdClient::connect(&endpoint, tls.as_ref()).map_err(crate::etcd::Error::from)?)
}

/// The objects in the live etcd `client` reaches, under `prefix`: keys only, no value is read.
pub fn live_listing(client: &mut EtcdClient, prefix: &str) -> Result<Listing, Error> {
    let prefix = registry::normalise_prefix(prefix);
    let keys = client
        .keys_with_prefix(format!("{prefix}/").as_bytes())
        .map_err(crate::etcd::Error::from)?;
    Ok(keys
        .into_iter()
        .filter_map(|(key, revision)| registry::locate(&prefix, &key).map(|l| (l, revision)))
        .collect())
}

/// What changed in one resource and namespace (`""`: cluster-scoped), by object name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    pub resource: String,
    pub namespace: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// From `before` to `after`; churning resources (events, leases) only with `all`.
pub fn diff(before: &Listing, after: &Listing, all: bool) -> Vec<Changes> {
    let mut out: BTreeMap<(String, String), Changes> = BTreeMap::new();
    let shown = |l: &Location| all || !CHURNING.contains(&l.resource.as_str());
    let mut record = |l: &Location, pick: fn(&mut Changes) -> &mut Vec<String>| {
        let namespace = l.namespace.clone().unwrap_or_default();
        let changes = out
            .entry((l.resource.clone(), namespace.clone()))
            .or_insert_with(|| Changes {
                resource: l.resource.clone(),
                namespace,
                ..Changes::default()
            });
        pick(changes).push(l.name.clone());
    };
    for (location, revision) in before.iter().filter(|(l, _)| shown(l)) {
        match after.get(location) {
            None => record(location, |c| &mut c.removed),
            Some(r) if r != revision => record(location, |c| &mut c.changed),
            Some(_) => {}
        }
    }
    for location in after
        .keys()
        .filter(|l| shown(l) && !before.contains_key(*l))
    {
        record(location, |c| &mut c.added);
    }
    out.into_values().collect()
}

/// One line per added (+), removed (-) and changed (~) object, grouped by resource and namespace.
pub fn describe(before: &str, after: &str, changes: &[Changes]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "--- {before}\n+++ {after}");
    if changes.is_empty() {
        let _ = writeln!(out, "no objects added, removed or changed");
    }
    for c in changes {
        let place = if c.namespace.is_empty() {
            c.resource.clone()
        } else {
            format!("{} in {}", c.resource, c.namespace)
        };
        let _ = writeln!(
            out,
            "{place}: {} added, {} removed, {} changed",
            c.added.len(),
            c.removed.len(),
            c.changed.len()
        );
        for (mark, names) in [("+", &c.added), ("-", &c.removed), ("~", &c.changed)] {
            for name in names {
                let _ = writeln!(out, "  {mark} {name}");
            }
        }
    }
    out
}
