//! `cpr backup`.

use argh::FromArgs;
use std::path::PathBuf;

use super::{load_config, open_store, Output};
use crate::config::RetentionSection;
use crate::etcd::client::TlsFiles;
use crate::node::layout;
use crate::ops::backup::{backup, BackupReport, BackupRequest};
use crate::ops::sealed::SealOptions;
use crate::store::Store;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "backup")]
/// Back up this control-plane node (etcd snapshot, pki, static pods, kubeadm and kubelet config) to a store.
pub struct BackupCmd {
    /// store URL: a directory, file:///dir, http(s)://host/path or s3://bucket/prefix (S3 endpoint and region from AWS_* or the config file)
    #[argh(option)]
    pub store: Option<String>,
    /// the node's filesystem root (default /)
    #[argh(option, default = "PathBuf::from(\"/\")")]
    pub root: PathBuf,
    /// config file (default <root>/etc/cpr/config.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// cluster name in the bundle name (default: the ClusterConfiguration's clusterName, else "kubernetes")
    #[argh(option)]
    pub cluster: Option<String>,
    /// etcd client URL (default: the loopback URL from the etcd static pod manifest)
    #[argh(option)]
    pub endpoint: Option<String>,
    /// the CA that signed etcd's serving certificate (default: from the etcd manifest)
    #[argh(option)]
    pub cacert: Option<PathBuf>,
    /// client certificate (default: kubeadm's etcd healthcheck-client, else apiserver-etcd-client)
    #[argh(option)]
    pub cert: Option<PathBuf>,
    /// client key, with --cert
    #[argh(option)]
    pub key: Option<PathBuf>,
    /// a ClusterConfiguration YAML file to use instead of the kubeadm-config ConfigMap in etcd
    #[argh(option)]
    pub cluster_config: Option<PathBuf>,
    /// kube-apiserver's --etcd-prefix (default /registry)
    #[argh(option, default = "layout::DEFAULT_ETCD_PREFIX.to_string()")]
    pub etcd_prefix: String,
    /// zstd level 1-19 (default 3)
    #[argh(option)]
    pub zstd_level: Option<i32>,
    /// zstd worker threads (default: the number of CPUs)
    #[argh(option)]
    pub zstd_threads: Option<u32>,
    /// encrypt the bundle to this age recipient (age1…; repeatable; default: backup.encryptTo)
    #[argh(option)]
    pub encrypt_to: Vec<String>,
    /// sign the stored bundle with this minisign secret key (default: backup.signKey)
    #[argh(option)]
    pub sign_key: Option<PathBuf>,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
    /// after a successful backup, prune this node's bundles with the config file's retention: policy
    #[argh(switch)]
    pub prune: bool,
    /// write a Prometheus textfile-collector file here (atomically), after success and failure alike
    #[argh(option)]
    pub metrics_file: Option<PathBuf>,
}

pub fn run(mut cmd: BackupCmd) -> Result<(), Error> {
    let metrics_file = cmd.metrics_file.take();
    let (output, prune) = (cmd.output, cmd.prune);
    let attempt = back_up(cmd);
    if let Some(path) = &metrics_file {
        let report = attempt.as_ref().ok().map(|(report, _, _)| report);
        let recorded = crate::ops::metrics::record(path, report, std::time::SystemTime::now());
        match (&attempt, recorded) {
            (_, Ok(())) => {}
            (Ok(_), Err(e)) => return Err(e.into()),
            // The backup's own error is the one to report.
            (Err(_), Err(e)) => log::error!("backup: {e}"),
        }
    }
    let (report, store, retention) = attempt?;
    let pruned = if prune {
        let policy = super::prune::policy(&retention);
        let name = crate::bundle::name::BundleName::parse(&report.bundle)?;
        Some(crate::ops::prune::prune(
            &crate::ops::prune::PruneRequest {
                store: store.as_ref(),
                cluster: Some(&name.cluster),
                node: Some(&name.node),
                policy,
                dry_run: false,
            },
        )?)
    } else {
        None
    };
    match output {
        Output::Text => {
            println!("{}", report.summary());
            if let Some(pruned) = &pruned {
                super::prune::print(pruned, output);
            }
        }
        Output::Json => {
            let mut value = serde_json::to_value(&report).expect("reports serialize");
            if let Some(pruned) = &pruned {
                value["prune"] = serde_json::to_value(pruned).expect("reports serialize");
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&value).expect("values serialize")
            );
        }
    }
    Ok(())
}

/// The backup proper; its result is what the metrics file records.
fn back_up(cmd: BackupCmd) -> Result<(BackupReport, Box<dyn Store>, RetentionSection), Error> {
    let (config, config_path) = load_config(cmd.config.as_deref(), &cmd.root)?;
    let store = open_store(cmd.store, &config, &config_path)?;
    let tls = match (cmd.cacert, cmd.cert, cmd.key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
        _ => {
            return Err(Error::Usage(
                "--cacert, --cert and --key go together: give all three or none".to_string(),
            ))
        }
    };
    let zstd_level = cmd.zstd_level.or(config.backup.zstd_level).unwrap_or(3);
    if !(1..=19).contains(&zstd_level) {
        return Err(Error::Usage(format!(
            "--zstd-level must be 1 to 19, not {zstd_level}"
        )));
    }
    let recipients = if cmd.encrypt_to.is_empty() {
        config.backup.encrypt_to
    } else {
        cmd.encrypt_to
    };
    let seal = SealOptions::load(
        &recipients,
        cmd.sign_key.or(config.backup.sign_key).as_deref(),
    )?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let request = BackupRequest {
        root: cmd.root,
        store: store.as_ref(),
        cluster: cmd.cluster.or(config.backup.cluster),
        endpoint: cmd.endpoint,
        tls,
        cluster_config: cmd.cluster_config,
        etcd_prefix: cmd.etcd_prefix,
        zstd_level,
        zstd_threads: cmd
            .zstd_threads
            .or(config.backup.zstd_threads)
            .unwrap_or(cpus),
        seal,
    };
    let report = backup(&request)?;
    Ok((report, store, config.retention))
}
