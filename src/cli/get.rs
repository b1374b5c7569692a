//! `cpr get`: one object from a bundle's etcd snapshot, as `kubectl apply` takes it again.

use argh::FromArgs;
use std::path::PathBuf;

use super::snapshot::snapshot_of;
use super::{scratch_dir, KeyFlags};
use crate::ops::get::{get, Wanted};
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "get")]
/// Print one Kubernetes object from a bundle (or an etcd snapshot or db file) as kubectl apply
/// takes it: without uid, resourceVersion, generation, creationTimestamp, managedFields, selfLink
/// and status.
pub struct GetCmd {
    /// a bundle file, a bundle name in the store, "latest", or an etcd snapshot or db file
    #[argh(positional)]
    pub bundle: String,
    /// the resource as cpr inspect --objects lists it: configmaps, deployments.apps (or
    /// deployments), widgets.example.com
    #[argh(positional)]
    pub resource: String,
    /// NAMESPACE/NAME, or NAME for a cluster-scoped object
    #[argh(positional)]
    pub object: String,
    /// yaml (default) or json
    #[argh(option, short = 'o', default = "Format::Yaml")]
    pub output: Format,
    /// store URL (see cpr backup --help)
    #[argh(option)]
    pub store: Option<String>,
    /// config file (default /etc/cpr/config.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// with "latest": the cluster (default: any)
    #[argh(option)]
    pub cluster: Option<String>,
    /// with "latest": the node (default: this host's name)
    #[argh(option)]
    pub node: Option<String>,
    /// age identity file for an encrypted bundle (default: restore.identity)
    #[argh(option)]
    pub identity: Option<PathBuf>,
    /// directory for what reading a bundle's etcd snapshot spills past its memory budget, a few %
    /// of the db (default $TMPDIR, else /var/tmp: /tmp is often in memory)
    #[argh(option)]
    pub scratch: Option<PathBuf>,
    /// minisign public key: refuse a bundle it did not sign (default: restore.verifyKey)
    #[argh(option)]
    pub verify_key: Option<PathBuf>,
    /// kube-apiserver's --etcd-prefix (default /registry)
    #[argh(option, default = "String::from(\"/registry\")")]
    pub etcd_prefix: String,
}

/// `-o yaml|json`, as kubectl spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "yaml" => Ok(Format::Yaml),
            "json" => Ok(Format::Json),
            other => Err(format!("-o takes yaml or json, not {other:?}")),
        }
    }
}

pub fn run(cmd: GetCmd) -> Result<(), Error> {
    let (namespace, name) = match cmd.object.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, cmd.object.as_str()),
    };
    if name.is_empty() || name.contains('/') || namespace.is_some_and(str::is_empty) {
        return Err(Error::Usage(format!(
            "cpr get: {:?} is not NAMESPACE/NAME or NAME",
            cmd.object
        )));
    }
    let scratch = scratch_dir("get", cmd.scratch.as_deref())?;
    let (source, snapshot) = snapshot_of(
        &cmd.bundle,
        cmd.store.clone(),
        cmd.config.as_deref(),
        (cmd.cluster.as_deref(), cmd.node.as_deref()),
        KeyFlags {
            identity: cmd.identity.clone(),
            verify_key: cmd.verify_key.clone(),
        },
        scratch.path(),
    )?;
    let object = get(
        snapshot,
        &source,
        &cmd.etcd_prefix,
        &Wanted {
            resource: &cmd.resource,
            namespace,
            name,
        },
    )?;
    match cmd.output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&object).expect("JSON values serialise")
        ),
        Format::Yaml => print!(
            "{}",
            serde_norway::to_string(&object).expect("JSON values serialise as YAML")
        ),
    }
    Ok(())
}
