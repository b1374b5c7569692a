//! `cpr drill`: a restore rehearsal of the newest bundle (or a chosen one) into a scratch root.

use argh::FromArgs;
use std::path::PathBuf;

use super::{load_config, open_store, Output};
use crate::ops::drill::{drill, record, DrillReport, DrillRequest};
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "drill")]
/// Rehearse a restore: run phase 1 of the newest bundle of this node (or --bundle) into a scratch
/// root, never a live path; check the restored etcd data dir with cpr's reader (revision, every
/// key, every object's envelope); compare object counts with the live cluster when it answers;
/// optionally serve it with --etcd in a network namespace of its own; remove the scratch root.
/// Exit 0 when the drill passes, 12 when a check fails (a bundle that does not restore included;
/// the report says which); a store, key file or scratch disk at fault keeps its code (README).
pub struct DrillCmd {
    /// the bundle to rehearse (default: the newest of --node)
    #[argh(option)]
    pub bundle: Option<String>,
    /// store URL (see cpr backup --help)
    #[argh(option)]
    pub store: Option<String>,
    /// config file (default /etc/cpr/config.yaml under --root)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// the cluster (default: any)
    #[argh(option)]
    pub cluster: Option<String>,
    /// the node whose bundles to rehearse (default: this host's name)
    #[argh(option)]
    pub node: Option<String>,
    /// age identity file for encrypted bundles (default: restore.identity)
    #[argh(option)]
    pub identity: Option<PathBuf>,
    /// minisign public key: refuse a bundle it did not sign (default: restore.verifyKey)
    #[argh(option)]
    pub verify_key: Option<PathBuf>,
    /// directory for the scratch root, on a filesystem with twice the etcd db free (default
    /// /var/tmp); scratch roots of killed drills in it are removed first
    #[argh(option, default = "PathBuf::from(super::DEFAULT_SCRATCH)")]
    pub scratch: PathBuf,
    /// the node whose live etcd the counts are compared with (default /)
    #[argh(option, default = "PathBuf::from(\"/\")")]
    pub root: PathBuf,
    /// do not compare with the live cluster (a drill on a machine that is no control-plane node)
    #[argh(switch)]
    pub no_live: bool,
    /// largest change of a resource's object count from the bundle to the live cluster, in percent
    /// (default 10; changes of up to 10 objects always pass; events and leases are not compared)
    #[argh(option, default = "10")]
    pub max_drift: u64,
    /// an etcd binary (etcdctl beside it) to start on the restored data dir, as a lone member on
    /// loopback in its own network namespace (needs unshare and ip, as root)
    #[argh(option)]
    pub etcd: Option<PathBuf>,
    /// kube-apiserver's --etcd-prefix (default /registry)
    #[argh(option, default = "String::from(\"/registry\")")]
    pub etcd_prefix: String,
    /// write the cpr_drill_* Prometheus textfile here (atomically), after success and failure alike;
    /// put it beside cpr backup's --metrics-file
    #[argh(option)]
    pub metrics_file: Option<PathBuf>,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

pub fn run(mut cmd: DrillCmd) -> Result<(), Error> {
    let metrics_file = cmd.metrics_file.take();
    let output = cmd.output;
    let attempt = rehearse(cmd);
    if let Some(path) = &metrics_file {
        let recorded = record(path, attempt.as_ref().ok(), std::time::SystemTime::now());
        match (&attempt, recorded) {
            (_, Ok(())) => {}
            (Ok(_), Err(e)) => return Err(e.into()),
            // The drill's own error is the one to report.
            (Err(_), Err(e)) => log::error!("drill: {e}"),
        }
    }
    let report = attempt?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        Output::Text => {
            println!(
                "drill of {}: passed in {:.1} s, {} objects",
                report.bundle, report.seconds, report.objects
            );
            for check in &report.checks {
                println!("  {:<9} {}", check.name, check.detail);
            }
        }
    }
    Ok(())
}

fn rehearse(cmd: DrillCmd) -> Result<DrillReport, Error> {
    let (config, config_path) = load_config(cmd.config.as_deref(), &cmd.root)?;
    let store = open_store(cmd.store, &config, &config_path)?;
    drill(&DrillRequest {
        store: store.as_ref(),
        bundle: cmd.bundle,
        cluster: cmd.cluster,
        node: cmd.node.unwrap_or_else(crate::host::hostname),
        identity: cmd.identity.or(config.restore.identity),
        verify_key: cmd.verify_key.or(config.restore.verify_key),
        scratch: cmd.scratch,
        live_root: (!cmd.no_live).then_some(cmd.root),
        max_drift_percent: cmd.max_drift,
        etcd: cmd.etcd,
        etcd_prefix: cmd.etcd_prefix,
    })
}
