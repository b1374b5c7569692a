//! `cpr inspect`: print a bundle's manifest without reading past it, or with `--objects` the
//! Kubernetes objects in its etcd snapshot (or in a snapshot or db file).

use argh::FromArgs;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::snapshot::snapshot_of;
use super::{open_bundle, scratch_dir, KeyFlags, Output};
use crate::bundle::{read_manifest, Manifest};
use crate::ops::inventory::{self, Inventory};
use crate::ops::sealed::SignatureCheck;
use crate::store::human_bytes;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "inspect")]
/// Print a bundle's manifest (reads only the first entry), or the Kubernetes objects in its
/// snapshot (--objects).
pub struct InspectCmd {
    /// a bundle file, or a bundle name in the store, or "latest"; with --objects also an etcd
    /// snapshot or bbolt db file
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
    /// list the Kubernetes objects in the etcd snapshot (reads and checks the whole bundle)
    #[argh(switch)]
    pub objects: bool,
    /// with --objects: kube-apiserver's --etcd-prefix (default /registry)
    #[argh(option, default = "String::from(\"/registry\")")]
    pub etcd_prefix: String,
}

pub fn run(cmd: InspectCmd) -> Result<(), Error> {
    let scratch = scratch_dir("inspect", cmd.scratch.as_deref())?;
    if cmd.objects {
        let inventory = read_inventory(&cmd, scratch.path())?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let written = match cmd.output {
            Output::Json => inventory.write_json(&mut out),
            Output::Text => inventory.write_text(&mut out),
        };
        return written.and_then(|()| out.flush()).map_err(|e| {
            Error::Usage(format!(
                "writing the inventory to standard output: {e}; check where the output goes"
            ))
        });
    }
    let input = open_bundle(
        &cmd.bundle,
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
    let manifest = read_manifest(input, &name)?;
    match cmd.output {
        Output::Json => println!(
            "{}",
            String::from_utf8_lossy(&manifest.to_json()).trim_end()
        ),
        Output::Text => print!("{}", describe(&name, &manifest)),
    }
    Ok(())
}

/// The inventory of the snapshot `cmd.bundle` names (see `snapshot_of`).
fn read_inventory(cmd: &InspectCmd, scratch: &Path) -> Result<Inventory, Error> {
    let (_, snapshot) = snapshot_of(
        &cmd.bundle,
        cmd.store.clone(),
        cmd.config.as_deref(),
        (cmd.cluster.as_deref(), cmd.node.as_deref()),
        KeyFlags {
            identity: cmd.identity.clone(),
            verify_key: cmd.verify_key.clone(),
        },
        scratch,
    )?;
    inventory::read(snapshot, &cmd.etcd_prefix)
}

fn describe(name: &str, m: &Manifest) -> String {
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let _ = writeln!(out, "bundle      {name}");
    let _ = writeln!(
        out,
        "created     {} by cpr {} (format {})",
        m.created_at, m.cpr_version, m.format_version
    );
    let _ = writeln!(
        out,
        "cluster     {}  kubernetes {}  endpoint {}  pods {}  services {}  kubeadm {}",
        m.cluster.name,
        opt(&m.cluster.kubernetes_version),
        opt(&m.cluster.control_plane_endpoint),
        opt(&m.cluster.pod_subnet),
        opt(&m.cluster.service_subnet),
        opt(&m.cluster.kubeadm_api_version)
    );
    let _ = writeln!(
        out,
        "node        {}  hostname {}  ips {}  advertise {}:{}",
        m.node.name,
        m.node.hostname,
        m.node.ips.join(","),
        opt(&m.node.advertise_address),
        m.node.bind_port.map_or("-".to_string(), |p| p.to_string())
    );
    let _ = writeln!(
        out,
        "etcd        {}  member {} ({})  cluster {}  revision {}  db {}",
        m.etcd.version,
        m.etcd.member_name,
        m.etcd.member_id,
        m.etcd.cluster_id,
        m.etcd.revision,
        human_bytes(m.etcd.db_size)
    );
    for member in &m.etcd.members {
        let _ = writeln!(
            out,
            "  member    {} ({})  peers {}{}",
            member.name,
            member.id,
            member.peer_urls.join(","),
            if member.is_learner { "  learner" } else { "" }
        );
    }
    let _ = writeln!(out, "files       {}", m.files.len());
    for file in &m.files {
        let _ = writeln!(
            out,
            "  {:04o} {:>5}:{:<5} {:>10}  {}  {}",
            file.mode,
            file.uid,
            file.gid,
            human_bytes(file.size),
            &file.sha256[..12],
            file.path
        );
    }
    let _ = writeln!(
        out,
        "snapshot    {}  {}",
        m.snapshot.path,
        human_bytes(m.snapshot.size)
    );
    out
}
