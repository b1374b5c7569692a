//! How stores connect: timeouts, retries, TLS roots, S3 addressing and credentials.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Settings for network stores. `Default` suits most cases; `from_env` adds the standard `AWS_*`
/// variables, which are read there and nowhere else.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// S3 endpoint URL (`http(s)://host[:port][/path]`); `None` means AWS for `s3_region`.
    pub s3_endpoint: Option<String>,
    /// S3 region used for signing; `None` means `us-east-1`.
    pub s3_region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual hosts (`bucket.endpoint/key`);
    /// `None` picks path style for a custom endpoint (MinIO, Ceph, ...) and virtual hosts for AWS.
    pub s3_path_style: Option<bool>,
    pub s3_credentials: Option<S3Credentials>,
    /// PEM file of CA certificates for https; `None` means `SSL_CERT_FILE`, then the system bundle if
    /// there is one, else no roots (plain http still works).
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Longest wait for any single read or write on a connection.
    pub io_timeout: Duration,
    /// Attempts after the first for a failed request, or for a download that stops making progress.
    pub retries: u32,
    /// Pause before the first retry; doubled for each further one, at most 30 s.
    pub retry_delay: Duration,
    /// At most one progress line per this interval during a transfer.
    pub progress_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            s3_endpoint: None,
            s3_region: None,
            s3_path_style: None,
            s3_credentials: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            retries: 5,
            retry_delay: Duration::from_secs(1),
            progress_interval: Duration::from_secs(5),
        }
    }
}

impl StoreOptions {
    /// Defaults plus `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`
    /// (else `AWS_DEFAULT_REGION`) and `AWS_ENDPOINT_URL_S3` (else `AWS_ENDPOINT_URL`). Empty
    /// variables count as unset, as in the AWS SDKs.
    pub fn from_env() -> StoreOptions {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let s3_credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            _ => None,
        };
        StoreOptions {
            s3_endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            s3_region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            s3_credentials,
            ..StoreOptions::default()
        }
    }
}

/// S3 credentials. `Debug` shows the access key id only: the secret and the session token never reach a
/// message or a log.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
