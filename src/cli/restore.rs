//! `cpr restore` (phase 1, then phase 2 unless --no-finish).

use argh::FromArgs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::finish::{finish_request, FinishArgs};
use super::{load_config, open_store, Output};
use crate::node::identity::Machine;
use crate::ops::finish::{describe, finish};
use crate::ops::ha::{self, Quorum};
use crate::ops::readdress;
use crate::ops::restore::{restore, Members, RestoreRequest, DEFAULT_BUMP_REVISION};
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restore")]
/// Restore this node from the newest bundle that verifies, then run `cpr finish`.
pub struct RestoreCmd {
    /// store URL (see cpr backup --help)
    #[argh(option)]
    pub store: Option<String>,
    /// a bundle name, or "latest" (default): the newest bundle of this node that verifies
    #[argh(option)]
    pub bundle: Option<String>,
    /// the target's filesystem root (default /)
    #[argh(option, default = "PathBuf::from(\"/\")")]
    pub root: PathBuf,
    /// config file (default <root>/etc/cpr/config.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// only bundles of this cluster
    #[argh(option)]
    pub cluster: Option<String>,
    /// the node whose bundles to restore (default: this machine's hostname)
    #[argh(option)]
    pub node: Option<String>,
    /// this machine's hostname as the identity check sees it (default: the kernel's)
    #[argh(option)]
    pub hostname: Option<String>,
    /// this machine's addresses as the identity check sees them (repeatable; default: the interfaces')
    #[argh(option)]
    pub ip: Vec<IpAddr>,
    /// restore even when this machine's name or addresses differ from the bundle's node
    #[argh(switch)]
    pub force_identity: bool,
    /// restore onto this machine's own address (the first --ip, or the interfaces') and name: the etcd
    /// member and the leaf certificates naming the old ones are re-issued; prints the plan first
    #[argh(switch)]
    pub new_address: bool,
    /// with --new-address: verify the bundle and print the plan, changing nothing (staging cleared)
    #[argh(switch)]
    pub plan_only: bool,
    /// raise the etcd revision by this much and mark older revisions compacted (default 1000000000)
    #[argh(option)]
    pub bump_revision: Option<u64>,
    /// keep the etcd revision as it was (watch caches and informers may then serve stale objects)
    #[argh(switch)]
    pub no_bump_revision: bool,
    /// stop after phase 1 (the recovery boot does: phase 2 runs on the normal OS)
    #[argh(switch)]
    pub no_finish: bool,
    /// the kubeadm binary for phase 2 (default: kubeadm on PATH)
    #[argh(option, default = "PathBuf::from(\"kubeadm\")")]
    pub kubeadm: PathBuf,
    /// seconds to wait for kube-apiserver and etcd in phase 2 (default 300)
    #[argh(option, default = "300")]
    pub timeout: u64,
    /// age identity file that decrypts encrypted bundles (default: restore.identity)
    #[argh(option)]
    pub identity: Option<PathBuf>,
    /// minisign public key: refuse bundles it did not sign (default: restore.verifyKey)
    #[argh(option)]
    pub verify_key: Option<PathBuf>,
    /// seconds to probe the etcd members of a several-member cluster before its quorum counts as
    /// lost (default 30)
    #[argh(option, default = "ha::DEFAULT_PROBE.as_secs()")]
    pub quorum_probe: u64,
    /// restore a lost quorum from the bundles even though some members still run with their data
    /// (their data dirs are moved aside on their own nodes' restores, not deleted)
    #[argh(switch)]
    pub discard_survivors: bool,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

pub fn run(cmd: RestoreCmd) -> Result<(), Error> {
    if cmd.no_bump_revision && cmd.bump_revision.is_some() {
        return Err(Error::Usage(
            "--bump-revision and --no-bump-revision exclude each other".to_string(),
        ));
    }
    if cmd.new_address && cmd.force_identity {
        return Err(Error::Usage(
            "--new-address and --force-identity exclude each other: --new-address re-addresses the node, --force-identity restores it as it was".to_string(),
        ));
    }
    if cmd.plan_only && !cmd.new_address {
        return Err(Error::Usage(
            "--plan-only previews a restore onto a new address: give --new-address too".to_string(),
        ));
    }
    let (config, config_path) = load_config(cmd.config.as_deref(), &cmd.root)?;
    let store = open_store(cmd.store, &config, &config_path)?;
    let machine = Machine {
        hostname: cmd.hostname.unwrap_or_else(crate::host::hostname),
        ips: if cmd.ip.is_empty() {
            crate::host::local_ips()
        } else {
            cmd.ip
        },
    };
    let request = RestoreRequest {
        root: cmd.root.clone(),
        store: store.as_ref(),
        bundle: cmd.bundle.filter(|b| b != "latest"),
        cluster: cmd.cluster,
        node: cmd.node,
        machine,
        force_identity: cmd.force_identity,
        new_address: cmd.new_address,
        bump_revision: (!cmd.no_bump_revision)
            .then(|| cmd.bump_revision.unwrap_or(DEFAULT_BUMP_REVISION)),
        identity: cmd.identity.or(config.restore.identity),
        verify_key: cmd.verify_key.or(config.restore.verify_key),
        members: Members::Cluster {
            quorum_probe: Duration::from_secs(cmd.quorum_probe),
            discard_survivors: cmd.discard_survivors,
        },
        plan_only: cmd.plan_only,
    };
    let restored = restore(&request)?;
    let finished = if cmd.no_finish || cmd.plan_only {
        None
    } else {
        Some(finish(&finish_request(FinishArgs {
            root: cmd.root,
            kubeadm: cmd.kubeadm,
            timeout: cmd.timeout,
        }))?)
    };
    match cmd.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "restore": restored, "finish": finished })
            )
            .expect("reports serialize")
        ),
        Output::Text => {
            if restored.plan_only {
                println!(
                    "cpr restore: {} verified; the plan below changed nothing (run again without --plan-only to restore)",
                    restored.bundle
                );
            } else if restored.already_done {
                println!(
                    "cpr restore: {} was already restored; nothing changed",
                    restored.bundle
                );
            } else {
                println!(
                    "cpr restore: {} restored into {} (etcd revision {}{})",
                    restored.bundle,
                    restored.data_dir.display(),
                    restored.revision,
                    restored
                        .bumped_revision
                        .map(|r| format!(", now {r} with older revisions compacted"))
                        .unwrap_or_default()
                );
            }
            match &restored.quorum {
                Some(Quorum::Lost {
                    seconds,
                    rounds,
                    survivors,
                }) => println!(
                    "  etcd quorum lost: no member answered a linearizable read in {seconds} s ({rounds} rounds){}",
                    if survivors.is_empty() {
                        String::new()
                    } else {
                        format!("; surviving members discarded: {}", survivors.join(", "))
                    }
                ),
                Some(Quorum::Alive { .. }) | None => {}
            }
            if let Some(rejoin) = &restored.rejoin {
                println!(
                    "  etcd quorum alive: etcd not restored (a rollback); the shared CAs and keys are back and phase 2 rejoins through {}",
                    rejoin.api_endpoint
                );
            }
            if let Some(point) = &restored.restore_point {
                println!("  etcd snapshot from the cluster's restore point {point}");
            }
            println!("  source: {}", restored.source);
            for (bundle, why) in &restored.skipped {
                println!("  skipped {bundle}: {why}");
            }
            if let Some(plan) = &restored.new_address {
                print!("{}", readdress::describe(plan));
            }
            for old in &restored.moved_aside {
                println!("  moved aside (kept): {}", old.display());
            }
            if let Some(report) = &finished {
                print!("{}", describe(report));
            }
        }
    }
    Ok(())
}
