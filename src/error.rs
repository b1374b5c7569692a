//! The crate-wide error: one variant per module, each mapped to a documented exit code.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Etcd(#[from] crate::etcd::Error),
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// Exit codes are part of the CLI contract (README, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Etcd(_) => 5,
        }
    }
}
