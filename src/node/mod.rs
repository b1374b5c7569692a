//! The kubeadm NODE: where kubeadm keeps things, what its manifests say, who the node is.

pub mod certs;
pub mod identity;
pub mod kubeadm_config;
pub mod layout;
pub mod pod;

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
    #[error("kubeadm ClusterConfiguration at {key}: {why}")]
    KubeadmConfig { key: String, why: String },
}
