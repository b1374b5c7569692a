//! `cpr diff`: objects added, removed and changed between two bundles (or snapshot files), or
//! between a bundle and this node's live etcd.

use argh::FromArgs;
use std::path::{Path, PathBuf};

use super::snapshot::snapshot_of;
use super::{scratch_dir, KeyFlags, Output};
use crate::ops::diff::{describe, diff, live_client, live_listing, Listing};
use crate::ops::inventory;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "diff")]
/// Show the Kubernetes objects added, removed and changed from bundle A to bundle B (or to this
/// node's live etcd with --live), per resource and namespace; events and leases only with --all.
pub struct DiffCmd {
    /// the older side: a bundle file, a bundle name in the store, "latest", or an etcd snapshot or
    /// db file
    #[argh(positional)]
    pub a: String,
    /// the newer side, as A; omit it with --live
    #[argh(positional)]
    pub b: Option<String>,
    /// compare A with this node's live etcd (its static pod manifest and kubeadm's etcd client
    /// certificate under --root)
    #[argh(switch)]
    pub live: bool,
    /// with --live: the node's root (default /)
    #[argh(option, default = "PathBuf::from(\"/\")")]
    pub root: PathBuf,
    /// show events and leases too
    #[argh(switch)]
    pub all: bool,
    /// kube-apiserver's --etcd-prefix (default /registry)
    #[argh(option, default = "String::from(\"/registry\")")]
    pub etcd_prefix: String,
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
    /// age identity file for encrypted bundles (default: restore.identity)
    #[argh(option)]
    pub identity: Option<PathBuf>,
    /// directory for what reading a bundle's etcd snapshot spills past its memory budget, a few %
    /// of the db (default $TMPDIR, else /var/tmp: /tmp is often in memory)
    #[argh(option)]
    pub scratch: Option<PathBuf>,
    /// minisign public key: refuse a bundle it did not sign (default: restore.verifyKey)
    #[argh(option)]
    pub verify_key: Option<PathBuf>,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

impl DiffCmd {
    /// The listing of one bundle or file, read in its own scratch dir.
    fn listing(&self, bundle: &str, scratch: &Path) -> Result<(String, Listing), Error> {
        let (name, snapshot) = snapshot_of(
            bundle,
            self.store.clone(),
            self.config.as_deref(),
            (self.cluster.as_deref(), self.node.as_deref()),
            KeyFlags {
                identity: self.identity.clone(),
                verify_key: self.verify_key.clone(),
            },
            scratch,
        )?;
        let listing = inventory::read(snapshot, &self.etcd_prefix)?.listing();
        Ok((name, listing))
    }
}

pub fn run(cmd: DiffCmd) -> Result<(), Error> {
    let scratch = scratch_dir("diff", cmd.scratch.as_deref())?;
    let (a_dir, b_dir) = (scratch.path().join("a"), scratch.path().join("b"));
    for dir in [&a_dir, &b_dir] {
        std::fs::create_dir(dir).map_err(|e| {
            Error::Usage(format!(
                "cannot create {}: {e}; point --scratch (or TMPDIR) at a writable directory",
                dir.display()
            ))
        })?;
    }
    let (a_name, a) = cmd.listing(&cmd.a, &a_dir)?;
    let (b_name, b) = match (&cmd.b, cmd.live) {
        (Some(b), false) => cmd.listing(b, &b_dir)?,
        (None, true) => {
            let mut client = live_client(&cmd.root)?;
            let name = format!("live etcd at {}", client.endpoint());
            (name, live_listing(&mut client, &cmd.etcd_prefix)?)
        }
        _ => {
            return Err(Error::Usage(
                "cpr diff takes two bundles (A B), or one and --live".into(),
            ))
        }
    };
    let changes = diff(&a, &b, cmd.all);
    match cmd.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"from": a_name, "to": b_name, "changes": changes})
        ),
        Output::Text => print!("{}", describe(&a_name, &b_name, &changes)),
    }
    Ok(())
}
