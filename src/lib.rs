//! cpr — control-plane recovery for kubeadm clusters.
//!
//! The module map and the rules between modules are in docs/ARCHITECTURE.md: lower modules (`bundle`, `store`,
//! `etcd`, `host`) know nothing of kubeadm or boot; `ops` composes them; `cli` parses arguments.
//!
//! `unsafe` is denied everywhere but `src/host/linux.rs` (the syscalls without a safe wrapper), where
//! every block carries a `// SAFETY:` comment (clippy's `undocumented_unsafe_blocks`).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod batch;
pub mod boot;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod error;
pub mod etcd;
pub mod fsutil;
pub mod hashing;
pub mod host;
pub mod k8s;
pub mod logger;
pub mod node;
pub mod ops;
pub mod rt;
pub mod store;

pub use error::Error;
