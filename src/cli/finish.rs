//! `cpr finish` (phase 2 of a recovery).

use argh::FromArgs;
use std::path::PathBuf;
use std::time::Duration;

use super::Output;
use crate::ops::finish::{check_versions, describe, finish, settle_unit, FinishRequest};
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "finish")]
/// Phase 2 of a recovery: kubeadm init over the restored state, kubeconfigs, custom static pods, health.
pub struct FinishCmd {
    /// the node's filesystem root (default /)
    #[argh(option, default = "PathBuf::from(\"/\")")]
    pub root: PathBuf,
    /// the kubeadm binary (default: kubeadm on PATH)
    #[argh(option, default = "PathBuf::from(\"kubeadm\")")]
    pub kubeadm: PathBuf,
    /// seconds to wait for kube-apiserver and etcd (default 300)
    #[argh(option, default = "300")]
    pub timeout: u64,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
    /// the systemd unit running this at boot (cpr-finish.service): disabled once phase 2 succeeded
    /// or failed; a failure is recorded in /var/lib/cpr/finish-failed and shown at login
    #[argh(option)]
    pub unit: Option<String>,
    /// only compare the installed kubeadm and kubelet with the restored bundle (kubernetesVersion,
    /// ClusterConfiguration apiVersion) and print the config kubeadm init would get; changes nothing
    #[argh(switch)]
    pub check_versions: bool,
}

/// What `cpr restore` passes on to phase 2.
pub struct FinishArgs {
    pub root: PathBuf,
    pub kubeadm: PathBuf,
    pub timeout: u64,
}

pub fn finish_request(args: FinishArgs) -> FinishRequest {
    FinishRequest {
        root: args.root,
        kubeadm: args.kubeadm,
        kubelet: PathBuf::from("kubelet"),
        systemctl: PathBuf::from("systemctl"),
        timeout: Duration::from_secs(args.timeout),
        sudo_user: std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()),
    }
}

pub fn run(cmd: FinishCmd) -> Result<(), Error> {
    let request = finish_request(FinishArgs {
        root: cmd.root,
        kubeadm: cmd.kubeadm,
        timeout: cmd.timeout,
    });
    if cmd.check_versions {
        let report = check_versions(&request)?;
        match cmd.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("reports serialize")
            ),
            Output::Text => print!(
                "cpr finish --check-versions: kubeadm {}, kubelet {} and the bundle's {} ({}) restore; kubeadm init gets {}{}:\n{}",
                report.kubeadm,
                report.kubelet,
                report.bundle,
                report.bundle_api_version,
                report.plan.api_version,
                if report.plan.converted { " (converted)" } else { "" },
                report.init_config
            ),
        }
        return Ok(());
    }
    let outcome = finish(&request);
    if let Some(unit) = &cmd.unit {
        let failure = outcome.as_ref().err().map(|e| crate::error::chain(e));
        if let Err(error) = settle_unit(&request, unit, failure.as_deref()) {
            // A failed phase 2 stays the error to report; not settling it comes with it.
            if outcome.is_ok() {
                return Err(error.into());
            }
            log::error!("finish: {}", crate::error::chain(&error));
        }
    }
    let report = outcome?;
    match cmd.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        Output::Text => print!("{}", describe(&report)),
    }
    Ok(())
}
