//! The etcd domain: snapshot save over mTLS, and the native data-dir restore (bbolt, WAL, .snap).

pub mod client;

pub use client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
}
