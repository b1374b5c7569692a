//! The crate-wide error: one variant per module, each mapped to a documented exit code.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Etcd(#[from] crate::etcd::Error),
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    #[error(transparent)]
    Ops(#[from] crate::ops::Error),
    #[error(transparent)]
    Boot(#[from] crate::boot::Error),
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// Exit codes are part of the CLI contract (README, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config(_) | Error::Bundle(crate::bundle::Error::Key(_)) => 2,
            Error::Store(_) => 3,
            Error::Bundle(_) => 4,
            Error::Etcd(_) => 5,
            Error::Node(_) => 6,
            Error::Ops(error) => error.exit_code(),
            Error::Boot(error) => error.exit_code(),
        }
    }
}

/// The error and its causes, as one line: the top message says what failed, the causes say why.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
