//! The operations: `backup`, and (phase 1, phase 2 of a recovery) `restore` and `finish`.

pub mod backup;
pub mod carryover;
pub mod check;
pub mod diff;
pub mod drill;
pub mod finish;
pub mod get;
pub mod ha;
pub mod inventory;
pub mod metrics;
pub mod prune;
pub mod readdress;
pub mod rejoin;
pub mod restore;
pub mod sealed;
pub mod state;
pub mod survivor;
pub mod worker;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}. Check that the file exists and is readable by this user (cpr runs as root), or pass --root for a node mounted elsewhere")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, more than the {limit} a bundle admits per file; it does not belong in a control-plane backup")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("reading {path}, which {origin} names: {source}. The restored control plane needs it: make it readable to cpr backup (check its mode, owner and any security module), or take it out of the manifest if the component no longer reads it. Nothing was uploaded")]
    Input {
        path: PathBuf,
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is missing, but {origin} requires it (hostPath type File or Directory), so kubelet cannot start that pod. If cpr runs in a container (deploy/cronjob.yaml), mount it there; otherwise fix the manifest. Nothing was uploaded")]
    MissingInput { path: PathBuf, origin: String },
    #[error("no etcd client certificate under {pki} (looked for etcd/healthcheck-client and apiserver-etcd-client). Pass --cacert, --cert and --key")]
    NoClientCertificate { pki: PathBuf },
    #[error("writing {path}: {source}. Check free space and permissions, then run again: the restore resumes where it stopped")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "recovery state {path}: {why}. Inspect it; remove it only if no restore is in progress"
    )]
    State { path: PathBuf, why: String },
    #[error("no bundle for node {node} in {store}. Check --store, pass --node or --cluster, or list what is there with `cpr list`")]
    NoBundle { store: String, node: String },
    #[error("no bundle in {store} verified; every candidate failed:\n  {}", tried.join("\n  "))]
    NoUsableBundle { store: String, tried: Vec<String> },
    #[error("this machine is not the node in the bundle:\n  {}\nGive the machine the node's name and address, or restore onto this machine's own with --new-address (boot: cpr.new_address=1): the etcd member and the certificates that name the old address or name are re-issued for the new ones, and the report says what the workers need; it prints that plan before changing anything. --force-identity restores as is, if you know the consequences", differences.join("\n  "))]
    Identity { differences: Vec<String> },
    #[error("restoring node {node} onto a new address is refused: {why}. Nothing was changed")]
    NewAddress { node: String, why: String },
    #[error("cpr worker repoint, pointing {kubeconfig} at {server}: {why}")]
    Repoint {
        kubeconfig: PathBuf,
        server: String,
        why: String,
    },
    #[error("cannot move {live} aside: {old} already exists. An earlier restore left it; move it away and run again")]
    SwapConflict { live: PathBuf, old: PathBuf },
    #[error(
        "nothing to finish: no completed restore is recorded in {state}. Run `cpr restore` first"
    )]
    NotRestored { state: PathBuf },
    // Operating cpr (issue 7): prune and check.
    #[error("no retention policy: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly (or the config file's retention: section); an empty policy would delete every bundle")]
    EmptyPolicy,
    #[error("prune {node} in {store}: refusing to delete anything, because no bundle of this node verifies:\n  {}\nTake a new backup (cpr backup) and check it with cpr verify", tried.join("\n  "))]
    NothingVerifies {
        store: String,
        node: String,
        tried: Vec<String>,
    },
    #[error("writing the metrics file {path}: {source}. Create its directory (node_exporter's textfile directory) or fix its permissions; the backup's own outcome is unaffected")]
    Metrics {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} exited with {status}: {unit} stays enabled and runs again at the next boot. Run `systemctl disable {unit}` once the recovery is settled")]
    DisableUnit {
        command: String,
        unit: String,
        status: std::process::ExitStatus,
    },
    #[error("port {port} ({component}) is still in use by {holder}, and kubeadm init's preflight check Port-{port} needs it free: {advice}. Then run `cpr finish` again")]
    PortInUse {
        port: u16,
        component: String,
        holder: String,
        advice: String,
    },
    #[error("{} of {total} checks failed: {}. The report above says what to fix", failed.len(), failed.join(", "))]
    ChecksFailed { failed: Vec<String>, total: usize },
    #[error("backing up: etcd member {member} at {endpoint} has no leader (quorum lost?): a snapshot now could miss writes the cluster acknowledged. Restore the control plane (cpr restore) instead, or back up a member that has a leader. Nothing was written to the store")]
    NoLeader { member: String, endpoint: String },
    /// Boxed: its variants carry the key, the snapshot and the decoding error.
    #[error("restoring {node}: etcd has no quorum, but {} still run with their data, which holds writes newer than any bundle. Take a snapshot from one (cpr etcd snapshot save --endpoints its client URL) and back it up, or pass --discard-survivors (boot: cpr.discard_survivors=1) to restore from the bundle anyway; their data dirs are moved aside, not deleted. Nothing was changed", survivors.join(", "))]
    Survivors {
        node: String,
        survivors: Vec<String>,
    },
    #[error("restoring {node}: etcd has no quorum, and this node's member stopped with its data: {data_dir} holds revision {revision}, newer than the bundle's {bundle_revision}, so it has writes no bundle has; but {conflict}. Either pass --discard-survivors (boot: cpr.discard_survivors=1) to take that restore point anyway (the data dir is moved aside, not deleted), or stop cpr on the other nodes, move the claim {claim} aside and run cpr restore on this node first: its data becomes the source and the others rejoin it. Nothing was changed")]
    SurvivingData {
        node: String,
        data_dir: PathBuf,
        revision: i64,
        bundle_revision: i64,
        /// What already stands in its way: a claimed bundle, a newer survivor, a pinned bundle.
        conflict: String,
        claim: String,
    },
    #[error("rejoining the live cluster: {step}: {object}: {why}")]
    Rejoin {
        step: &'static str,
        object: String,
        why: String,
    },
    #[error("{source_name}: no {object} under {prefix}. Name it as cpr inspect --objects {source_name} lists it: the RESOURCE (with or without its group), NAMESPACE/NAME for a namespaced object, --etcd-prefix if kube-apiserver has one")]
    NoObject {
        source_name: String,
        object: String,
        prefix: String,
    },
    #[error("{source_name}: {object} names several objects ({}); give the resource with its group, as cpr inspect --objects lists it", keys.join(", "))]
    AmbiguousObject {
        source_name: String,
        object: String,
        keys: Vec<String>,
    },
    /// Boxed: the decoding error is large.
    #[error("{source_name}: {object} (etcd key {key}) cannot be given back: {source}")]
    ObjectUnreadable {
        source_name: String,
        object: String,
        key: String,
        #[source]
        source: Box<crate::k8s::Error>,
    },
    #[error("restore drill of {bundle} failed:\n  {}\nThis bundle would not bring the control plane back as it was: find the cause (above), fix it and take a new backup", failed.join("\n  "))]
    DrillFailed { bundle: String, failed: Vec<String> },
    #[error("restore point {claim}: {why}. Nothing was changed")]
    RestorePoint { claim: String, why: String },
    #[error(transparent)]
    Carryover(Box<carryover::Error>),
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    #[error(transparent)]
    Etcd(#[from] crate::etcd::Error),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl From<carryover::Error> for Error {
    fn from(e: carryover::Error) -> Self {
        Error::Carryover(Box::new(e))
    }
}

impl Error {
    /// The exit code of the step that failed underneath, so scripts see the same code either way.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Read { .. }
            | Error::TooLarge { .. }
            | Error::NoClientCertificate { .. }
            | Error::Input { .. }
            | Error::MissingInput { .. } => 6,
            Error::Write { .. }
            | Error::State { .. }
            | Error::SwapConflict { .. }
            | Error::Metrics { .. }
            | Error::DisableUnit { .. } => 7,
            Error::Identity { .. } | Error::NewAddress { .. } | Error::Repoint { .. } => 8,
            Error::Survivors { .. } | Error::SurvivingData { .. } => 11,
            Error::RestorePoint { .. } => 4,
            Error::NoObject { .. } | Error::AmbiguousObject { .. } => 2,
            Error::ObjectUnreadable { .. } => 4,
            Error::DrillFailed { .. } => 12,
            Error::NotRestored { .. } | Error::EmptyPolicy => 2,
            Error::NothingVerifies { .. } => 4,
            Error::ChecksFailed { .. } => 9,
            Error::NoBundle { .. } => 3,
            Error::NoUsableBundle { .. } => 4,
            Error::Node(_) | Error::PortInUse { .. } | Error::Rejoin { .. } => 6,
            Error::Carryover(e) => match &**e {
                carryover::Error::Etcd(e) => Error::etcd_exit_code(e),
                carryover::Error::Object { .. } | carryover::Error::MissingData { .. } => 4,
                carryover::Error::KubeletFlags { .. } | carryover::Error::Read { .. } => 6,
            },
            Error::Etcd(e) => Error::etcd_exit_code(e),
            Error::NoLeader { .. } => 5,
            Error::Bundle(_) => 4,
            Error::Store(_) => 3,
        }
    }

    fn etcd_exit_code(e: &crate::etcd::Error) -> i32 {
        match e {
            // A restore that cannot write its data dir is a local disk problem, not etcd's.
            crate::etcd::Error::Io { .. } => 7,
            _ => 5,
        }
    }
}
