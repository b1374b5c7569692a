//! `cpr verify`: check every digest of a bundle and its etcd snapshot, writing only to a temp dir.

use argh::FromArgs;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use super::{open_bundle, Output};
use crate::bundle::{read_bundle, FileEntry, Sink, SnapshotEntry};
use crate::etcd::snapshot_status;
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
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

/// Keeps only the snapshot, in a private temp dir, for the bbolt check.
struct SnapshotToFile {
    path: PathBuf,
}

impl Sink for SnapshotToFile {
    fn file(&mut self, _: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(drop)
    }

    fn snapshot(&mut self, _: &SnapshotEntry, data: &mut dyn Read) -> io::Result<()> {
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&self.path)?);
        io::copy(data, &mut out)?;
        out.flush()
    }
}

pub fn run(cmd: VerifyCmd) -> Result<(), Error> {
    let (name, input) = open_bundle(
        &cmd.bundle,
        cmd.store,
        cmd.config.as_deref(),
        cmd.cluster.as_deref(),
        cmd.node.as_deref(),
    )?;
    let scratch = tempfile::Builder::new()
        .prefix("cpr-verify.")
        .tempdir()
        .map_err(|e| {
            Error::Usage(format!(
                "cannot create a temp dir for verification: {e}; set TMPDIR"
            ))
        })?;
    let mut sink = SnapshotToFile {
        path: scratch.path().join("snapshot.db"),
    };
    let manifest = read_bundle(input, &name, &mut sink)?;
    let status = snapshot_status(&sink.path)?;
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
