//! cpr — control-plane recovery for kubeadm clusters.
//!
//! The module map and the rules between modules are in DESIGN.md: lower modules (`bundle`, `store`,
//! `etcd`, `host`) know nothing of kubeadm or boot; `ops` composes them; `cli` parses arguments.

pub mod cli;
pub mod error;
pub mod etcd;
pub mod rt;

pub use error::Error;
