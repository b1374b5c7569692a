//! `cpr check`.

use argh::FromArgs;
use std::path::PathBuf;

use super::{load_config, open_bundle, open_store, scratch_dir, KeyFlags, Output};
use crate::ops::check::{check_bundle, check_node, CheckReport};
use crate::ops::sealed::SignatureCheck;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
/// Check that a backup would work on this node (etcd over kubeadm's client certificate, certificates readable, store writable, the files static pods read readable and, when they hold an EncryptionConfiguration, encrypted) and when each certificate expires, on the node or in a bundle. Exit code 9 when a check fails.
pub struct CheckCmd {
    /// the node's filesystem root (default /)
    #[argh(option, default = "PathBuf::from(\"/\")")]
    pub root: PathBuf,
    /// store URL; without one (and no CPR_STORE or config store.url) the store check is skipped
    #[argh(option)]
    pub store: Option<String>,
    /// config file (default <root>/etc/cpr/config.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// check the certificates in this bundle instead of the node: a file, a name in the store, or "latest"
    #[argh(option)]
    pub bundle: Option<String>,
    /// with --bundle latest: the cluster (default: any)
    #[argh(option)]
    pub cluster: Option<String>,
    /// with --bundle latest: the node (default: this host's name)
    #[argh(option)]
    pub node: Option<String>,
    /// age identity file, to check an encrypted bundle
    #[argh(option)]
    pub identity: Option<PathBuf>,
    /// minisign public key: refuse a bundle that is not signed by it
    #[argh(option)]
    pub verify_key: Option<PathBuf>,
    /// warn about certificates that expire within this many days (default 30)
    #[argh(option, default = "crate::ops::check::CERT_WARN_DAYS")]
    pub warn_days: u32,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

pub fn run(cmd: CheckCmd) -> Result<(), Error> {
    let now = time::OffsetDateTime::now_utc();
    let report = match &cmd.bundle {
        Some(bundle) => {
            let scratch = scratch_dir("check", None)?;
            let input = open_bundle(
                bundle,
                cmd.store,
                cmd.config.as_deref(),
                (cmd.cluster.as_deref(), cmd.node.as_deref()),
                KeyFlags {
                    identity: cmd.identity,
                    verify_key: cmd.verify_key,
                },
                SignatureCheck::BeforeReading,
                scratch.path(),
            )?;
            let name = input.name.clone();
            check_bundle(input, &name, cmd.warn_days, now)?
        }
        None => {
            let (config, config_path) = load_config(cmd.config.as_deref(), &cmd.root)?;
            let store = match (&cmd.store, &config.store.url, std::env::var_os("CPR_STORE")) {
                (None, None, None) => None,
                _ => Some(open_store(cmd.store, &config, &config_path)?),
            };
            let encrypts = !config.backup.encrypt_to.is_empty();
            check_node(&cmd.root, store.as_deref(), cmd.warn_days, now, encrypts)
        }
    };
    print(&report, cmd.output);
    Ok(report.outcome()?)
}

fn print(report: &CheckReport, output: Output) {
    match output {
        Output::Text => print!("{}", report.text()),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        ),
    }
}
