//! `cpr worker repoint` (on a worker, after its control plane moved to a new address).

use argh::FromArgs;
use std::path::PathBuf;

use super::Output;
use crate::ops::worker::{repoint, RepointRequest, KUBELET_CONF};
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "worker")]
/// Commands run on a worker node.
pub struct WorkerCmd {
    #[argh(subcommand)]
    pub command: WorkerCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum WorkerCommand {
    Repoint(RepointCmd),
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "repoint")]
/// Point this worker's kubelet at the control plane's new address, as `cpr restore --new-address`
/// prints it: the server must prove itself with the cluster CA the worker already trusts; the old
/// kubeconfig is kept beside it; the kubelet restarts.
pub struct RepointCmd {
    /// the restored control plane, https://ADDRESS:PORT
    #[argh(option)]
    pub server: String,
    /// the node's filesystem root (default /)
    #[argh(option, default = "PathBuf::from(\"/\")")]
    pub root: PathBuf,
    /// the kubelet's kubeconfig under the root (default /etc/kubernetes/kubelet.conf)
    #[argh(option, default = "format!(\"/{KUBELET_CONF}\")")]
    pub kubeconfig: String,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

pub fn run(cmd: WorkerCmd) -> Result<(), Error> {
    let WorkerCommand::Repoint(cmd) = cmd.command;
    let report = repoint(&RepointRequest {
        root: cmd.root,
        kubeconfig: cmd.kubeconfig.trim_start_matches('/').to_string(),
        server: cmd.server,
        systemctl: PathBuf::from("systemctl"),
    })?;
    match cmd.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        Output::Text if report.already_done => println!(
            "cpr worker repoint: {} already names {}; nothing changed",
            report.kubeconfig.display(),
            report.new_server
        ),
        Output::Text => println!(
            "cpr worker repoint: {} now names {} (was {}; kept as {}); kubelet restarted",
            report.kubeconfig.display(),
            report.new_server,
            report.old_server,
            report
                .moved_aside
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    }
    Ok(())
}
