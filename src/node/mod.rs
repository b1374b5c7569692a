//! The kubeadm NODE: where kubeadm keeps things, what its manifests say, who the node is.

pub mod apiserver;
pub mod certs;
pub mod identity;
pub mod inputs;
pub mod kubeadm;
pub mod kubeadm_config;
pub mod kubeconfig;
pub mod layout;
pub mod pod;
pub mod ports;

use std::path::PathBuf;

pub use layout::Layout;
pub use pod::StaticPod;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "reading {path}: {source}. Is this a kubeadm control-plane node, and is --root right?"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("static pod manifest {path}: {why}. Fix the manifest or point --root at the node's filesystem")]
    Manifest { path: PathBuf, why: String },
    #[error("certificate {path}: {why}")]
    Certificate { path: PathBuf, why: String },
    #[error("kubeconfig {path}: {why}")]
    Kubeconfig { path: PathBuf, why: String },
    #[error("kube-apiserver at {server}: {why}")]
    ApiServer { server: String, why: String },
    #[error("running {command}: {source}. Is it installed and on PATH?")]
    Run {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeadm init failed with exit code {status} (config {config}). Its output above says which check or phase failed; fix that and run `cpr finish` again")]
    Kubeadm { status: i32, config: PathBuf },
    #[error("cpr finish, before kubeadm init: {found} cannot restore this bundle: {problems}. Nothing was changed. {install}, then run `cpr finish` again")]
    VersionSkew {
        found: String,
        problems: String,
        install: String,
    },
    #[error("kubeadm ClusterConfiguration at {key}: {why}")]
    KubeadmConfig { key: String, why: String },
}
