//! `cpr prune`.

use argh::FromArgs;
use std::path::{Path, PathBuf};

use super::{load_config, open_store, Output};
use crate::config::RetentionSection;
use crate::ops::prune::{prune, PruneReport, PruneRequest};
use crate::store::retention::Policy;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "prune")]
/// Delete bundles a retention policy does not keep (restic's forget semantics, UTC periods); the newest bundle that verifies always stays.
pub struct PruneCmd {
    /// store URL (see cpr backup --help)
    #[argh(option)]
    pub store: Option<String>,
    /// config file (default /etc/cpr/config.yaml); its retention: section applies when no --keep-* flag is given
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// only this cluster
    #[argh(option)]
    pub cluster: Option<String>,
    /// only this node
    #[argh(option)]
    pub node: Option<String>,
    /// keep the newest N bundles
    #[argh(option)]
    pub keep_last: Option<u32>,
    /// keep the newest bundle of each of the last N hours that have one
    #[argh(option)]
    pub keep_hourly: Option<u32>,
    /// keep the newest bundle of each of the last N days that have one
    #[argh(option)]
    pub keep_daily: Option<u32>,
    /// keep the newest bundle of each of the last N ISO weeks that have one
    #[argh(option)]
    pub keep_weekly: Option<u32>,
    /// show what would be deleted, delete nothing
    #[argh(switch)]
    pub dry_run: bool,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

pub fn run(cmd: PruneCmd) -> Result<(), Error> {
    let (config, config_path) = load_config(cmd.config.as_deref(), Path::new("/"))?;
    let store = open_store(cmd.store, &config, &config_path)?;
    let flags = RetentionSection {
        keep_last: cmd.keep_last,
        keep_hourly: cmd.keep_hourly,
        keep_daily: cmd.keep_daily,
        keep_weekly: cmd.keep_weekly,
    };
    let policy = if flags == RetentionSection::default() {
        policy(&config.retention)
    } else {
        policy(&flags)
    };
    let report = prune(&PruneRequest {
        store: store.as_ref(),
        cluster: cmd.cluster.as_deref(),
        node: cmd.node.as_deref(),
        policy,
        dry_run: cmd.dry_run,
    })?;
    print(&report, cmd.output);
    Ok(())
}

/// The flags (or the config file's section) as a policy; an absent count is 0, a rule turned off.
pub fn policy(section: &RetentionSection) -> Policy {
    Policy {
        last: section.keep_last.unwrap_or(0),
        hourly: section.keep_hourly.unwrap_or(0),
        daily: section.keep_daily.unwrap_or(0),
        weekly: section.keep_weekly.unwrap_or(0),
    }
}

pub fn print(report: &PruneReport, output: Output) {
    match output {
        Output::Text => print!("{}", report.text()),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        ),
    }
}
