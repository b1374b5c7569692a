//! `cpr etcd snapshot restore|status`: etcdutl-compatible flags over the native restore.

use crate::etcd::{self, RestoreOptions};
use argh::FromArgs;
use std::path::PathBuf;

/// etcd snapshots: restore a data dir, inspect a snapshot.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "etcd")]
pub struct EtcdCmd {
    #[argh(subcommand)]
    cmd: EtcdSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum EtcdSub {
    Snapshot(SnapshotCmd),
}

/// etcd snapshot files (etcdutl-compatible).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "snapshot")]
struct SnapshotCmd {
    #[argh(subcommand)]
    cmd: SnapshotSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum SnapshotSub {
    Restore(RestoreCmd),
    Status(StatusCmd),
}

/// restore an etcd data dir from a snapshot, like `etcdutl snapshot restore`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restore")]
struct RestoreCmd {
    /// the snapshot file (from `etcdctl snapshot save` or a cpr bundle)
    #[argh(positional)]
    snapshot: PathBuf,
    /// the data dir to create (absent or empty)
    #[argh(option)]
    data_dir: PathBuf,
    /// the WAL dir (default: <data-dir>/member/wal); must not exist
    #[argh(option)]
    wal_dir: Option<PathBuf>,
    /// this member's name (default: default)
    #[argh(option, default = "String::from(\"default\")")]
    name: String,
    /// the cluster: name=peer-url,… (default: default=http://localhost:2380)
    #[argh(option, default = "String::from(\"default=http://localhost:2380\")")]
    initial_cluster: String,
    /// the cluster token (default: etcd-cluster)
    #[argh(option, default = "String::from(\"etcd-cluster\")")]
    initial_cluster_token: String,
    /// this member's peer URLs, comma-separated (default: http://localhost:2380)
    #[argh(option, default = "String::from(\"http://localhost:2380\")")]
    initial_advertise_peer_urls: String,
    /// accept a snapshot without sha256 trailer (a copied member/snap/db)
    #[argh(switch)]
    skip_hash_check: bool,
    /// raise the revision by this much (needs --mark-compacted)
    #[argh(option)]
    bump_revision: Option<u64>,
    /// mark all revisions before the bumped one compacted (needs --bump-revision)
    #[argh(switch)]
    mark_compacted: bool,
}

/// print a snapshot's hash, revision, total keys and total size, like `etcdutl snapshot status`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
struct StatusCmd {
    /// the snapshot file
    #[argh(positional)]
    snapshot: PathBuf,
    /// output format: simple (default) or json
    #[argh(option, short = 'w', default = "String::from(\"simple\")")]
    output: String,
}

pub fn run(cmd: EtcdCmd) -> Result<(), crate::Error> {
    let EtcdSub::Snapshot(snapshot) = cmd.cmd;
    match snapshot.cmd {
        SnapshotSub::Restore(r) => restore(r),
        SnapshotSub::Status(s) => status(s),
    }
}

fn restore(r: RestoreCmd) -> Result<(), crate::Error> {
    let bump_revision = match (r.bump_revision, r.mark_compacted) {
        (Some(b), true) => Some(b),
        (None, false) => None,
        _ => {
            return Err(crate::Error::Usage(
                "--bump-revision and --mark-compacted go together: pass both or neither".into(),
            ))
        }
    };
    let opts = RestoreOptions {
        name: r.name,
        initial_cluster: r.initial_cluster,
        initial_cluster_token: r.initial_cluster_token,
        initial_advertise_peer_urls: r.initial_advertise_peer_urls,
        wal_dir: r.wal_dir,
        skip_hash_check: r.skip_hash_check,
        bump_revision,
    };
    let done = etcd::restore_from_file(&r.snapshot, &r.data_dir, &opts)?;
    log::info!(
        "restored {} into {} (member {:x}, cluster {:x}, revision {}{})",
        r.snapshot.display(),
        r.data_dir.display(),
        done.member_id,
        done.cluster.id,
        done.revision,
        done.bumped_revision
            .map(|b| format!(", bumped to {b} and compacted"))
            .unwrap_or_default()
    );
    Ok(())
}

fn status(s: StatusCmd) -> Result<(), crate::Error> {
    let st = etcd::snapshot_status(&s.snapshot)?;
    match s.output.as_str() {
        "simple" => println!("{}", st.simple()),
        "json" => println!("{}", serde_json::to_string(&st).expect("status serialises")),
        other => {
            return Err(crate::Error::Usage(format!(
                "--output {other}: use simple or json"
            )))
        }
    }
    Ok(())
}
