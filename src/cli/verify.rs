//! `cpr verify`: check every digest of a bundle and its etcd snapshot as it streams; nothing is written but the
//! streamed read's spill past its memory budget (unlinked files in --scratch).

use argh::FromArgs;
use std::path::PathBuf;

use super::snapshot::{stream_bundle, Streamed};
use super::{open_bundle, scratch_dir, KeyFlags, Output};
use crate::etcd::status::{streamed_status, Tally};
use crate::ops::sealed::SignatureCheck;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
/// Check a bundle: manifest, every file digest, the etcd snapshot's trailer and its bbolt structure.
pub struct VerifyCmd {
    /// a bundle file, or a bundle name in the store, or "latest"
    #[argh(positional)]
    pub bundle: String,
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
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

pub fn run(cmd: VerifyCmd) -> Result<(), Error> {
    let scratch = scratch_dir("verify", cmd.scratch.as_deref())?;
    let input = open_bundle(
        &cmd.bundle,
        cmd.store,
        cmd.config.as_deref(),
        (cmd.cluster.as_deref(), cmd.node.as_deref()),
        KeyFlags {
            identity: cmd.identity,
            verify_key: cmd.verify_key,
        },
        SignatureCheck::AtEnd,
        scratch.path(),
    )?;
    // The status hash covers every key and value in walk order: each leaf page is kept as its
    // tally, added where the walk meets the page live.
    let streamed = stream_bundle(input, scratch.path(), &mut Tally::of_leaf)?;
    let status = streamed.finish(streamed_status(&streamed.recorded))?;
    let Streamed { name, manifest, .. } = streamed;
    if status.revision < manifest.etcd.revision {
        log::warn!(
            "verify: {name}: the snapshot's revision {} is below the {} etcd reported when the backup began",
            status.revision,
            manifest.etcd.revision
        );
    }
    match cmd.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "bundle": name,
                "ok": true,
                "files": manifest.files.len(),
                "snapshotSize": manifest.snapshot.size,
                "revision": status.revision,
                "totalKeys": status.total_key,
                "hash": status.hash,
            })
        ),
        Output::Text => println!(
            "bundle {name}: OK — {} files and their digests, etcd snapshot {} bytes (sha256 trailer and bbolt structure checked), revision {}, {} keys, hash {:x}",
            manifest.files.len(),
            manifest.snapshot.size,
            status.revision,
            status.total_key,
            status.hash
        ),
    }
    Ok(())
}
