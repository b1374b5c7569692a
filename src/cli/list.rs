//! `cpr list`.

use argh::FromArgs;
use std::path::{Path, PathBuf};

use super::{load_config, open_store, Output};
use crate::store::{self, human_bytes, index::IndexEntry};
use crate::Error;
use time::OffsetDateTime;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
/// List the bundles in a store, newest first.
pub struct ListCmd {
    /// store URL (see cpr backup --help)
    #[argh(option)]
    pub store: Option<String>,
    /// config file (default /etc/cpr/config.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// only this cluster
    #[argh(option)]
    pub cluster: Option<String>,
    /// only this node
    #[argh(option)]
    pub node: Option<String>,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

pub fn run(cmd: ListCmd) -> Result<(), Error> {
    let (config, config_path) = load_config(cmd.config.as_deref(), Path::new("/"))?;
    let store = open_store(cmd.store, &config, &config_path)?;
    let mut entries = store::bundles(store.as_ref(), cmd.cluster.as_deref(), cmd.node.as_deref())?;
    entries.reverse();
    match cmd.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("index entries serialize")
        ),
        Output::Text => {
            let now = OffsetDateTime::now_utc();
            print!("{}{}", table(&entries, now), members(&entries, now));
        }
    }
    Ok(())
}

fn table(entries: &[IndexEntry], now: OffsetDateTime) -> String {
    let mut out = format!(
        "{:<52} {:>10} {:<16} {:>12} {:>8}\n",
        "BUNDLE", "SIZE", "NODE", "REVISION", "AGE"
    );
    // A node renamed by a restore onto a new address: its old name's bundles are its own.
    let renamed: std::collections::BTreeMap<&str, &str> = entries
        .iter()
        .filter_map(|e| Some((e.renamed_from.as_deref()?, e.node.as_str())))
        .collect();
    for entry in entries {
        let node = match renamed.get(entry.node.as_str()) {
            Some(now) => format!("{} (now {now})", entry.node),
            None => entry.node.clone(),
        };
        let revision = entry.revision.map_or("-".to_string(), |r| r.to_string());
        let flags = match (entry.encrypted, entry.signed) {
            (true, true) => " (encrypted, signed)",
            (true, false) => " (encrypted)",
            (false, true) => " (signed)",
            (false, false) => "",
        };
        out.push_str(&format!(
            "{:<52} {:>10} {:<16} {:>12} {:>8}{flags}\n",
            entry.name,
            human_bytes(entry.size),
            node,
            revision,
            age(now - entry.created)
        ));
    }
    out
}

/// For each cluster whose newest bundle lists several etcd members: every member's newest bundle, so
/// that a control-plane node without a recent one of its own stands out before it is needed.
fn members(entries: &[IndexEntry], now: OffsetDateTime) -> String {
    let cluster_of = |e: &IndexEntry| e.name.split('/').next().unwrap_or_default().to_string();
    let mut out = String::new();
    let mut seen = std::collections::BTreeSet::new();
    // Newest first: the first entry of a cluster with a member list is its current one.
    for listed in entries.iter().filter(|e| !e.etcd_members.is_empty()) {
        let cluster = cluster_of(listed);
        if !seen.insert(cluster.clone()) {
            continue;
        }
        out.push_str(&format!(
            "\ncluster {cluster}: etcd members {} (from {})\n",
            listed.etcd_members.join(", "),
            listed.name
        ));
        for member in &listed.etcd_members {
            let newest = entries
                .iter()
                .find(|e| cluster_of(e) == cluster && &e.node == member);
            out.push_str(&match newest {
                Some(e) => format!(
                    "  {member:<16} newest bundle {} ago\n",
                    age(now - e.created)
                ),
                None => {
                    format!("  {member:<16} NO BUNDLE: back this node up too (cpr backup on it)\n")
                }
            });
        }
    }
    out
}

fn age(elapsed: time::Duration) -> String {
    let secs = elapsed.whole_seconds().max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}
