//! cpr's settings: `/etc/cpr/config.yaml` (versioned, unknown fields rejected), then `CPR_*` variables,
//! then flags. Precedence: flags > environment > kernel command line > file.

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const CONFIG_VERSION: u32 = 1;
/// Config files are a few hundred bytes; anything huge is not one.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {path}: {source}. Check that it exists and is readable (run as root), or name another with --config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}. See the README, section \"Configuration\"")]
    Invalid { path: PathBuf, message: String },
    #[error("no store given: pass --store URL, set CPR_STORE, or set store.url in {path}")]
    NoStore { path: PathBuf },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    pub version: u32,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub backup: BackupSection,
    /// `cpr prune` without --keep-* flags and `cpr backup --prune` apply this.
    #[serde(default)]
    pub retention: RetentionSection,
    #[serde(default)]
    pub restore: RestoreSection,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreSection {
    pub url: Option<String>,
    /// PEM file of the CAs that sign the store's HTTPS certificate.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub s3: S3Section,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3Section {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupSection {
    /// Overrides the cluster name read from the ClusterConfiguration.
    pub cluster: Option<String>,
    pub zstd_level: Option<i32>,
    pub zstd_threads: Option<u32>,
    /// age recipients (`age1…`) the bundle is encrypted to.
    #[serde(default)]
    pub encrypt_to: Vec<String>,
    /// minisign secret key that signs each stored bundle.
    pub sign_key: Option<PathBuf>,
}

/// Keys for reading bundles: `cpr restore`, `verify` and `inspect`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreSection {
    /// age identity file that decrypts encrypted bundles.
    pub identity: Option<PathBuf>,
    /// minisign public key; when set, unsigned or badly signed bundles are refused.
    pub verify_key: Option<PathBuf>,
}

/// Retention counts (restic's `forget` semantics; see `store::retention`). Absent means 0: off.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionSection {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
}

impl ConfigFile {
    /// Loads `path`; a missing file is an empty configuration unless `required` (given with --config).
    pub fn load(path: &Path, required: bool) -> Result<ConfigFile, Error> {
        let read_err = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(ConfigFile {
                    version: CONFIG_VERSION,
                    ..ConfigFile::default()
                })
            }
            Err(e) => return Err(read_err(e)),
        };
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(Error::Invalid {
                path: path.to_path_buf(),
                message: format!("{} bytes is too large for a config file", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, Error> {
        let invalid = |message: String| Error::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let config: ConfigFile =
            serde_norway::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if config.version != CONFIG_VERSION {
            return Err(invalid(format!(
                "version {} is not supported; this cpr reads version {CONFIG_VERSION}",
                config.version
            )));
        }
        Ok(config)
    }
}

/// The first of: the flag, the environment variable, the file's value.
pub fn pick(flag: Option<String>, env: &str, file: Option<&String>) -> Option<String> {
    flag.or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
        .or_else(|| file.cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_full_config() {
        let text = "version: 1\nstore:\n  url: s3://backups/prod\n  s3:\n    endpoint: http://127.0.0.1:9000\n    region: eu-west-1\n    pathStyle: true\nbackup:\n  cluster: prod\n  zstdLevel: 5\nretention:\n  keepLast: 3\n  keepDaily: 7\n";
        let config = ConfigFile::parse(text, Path::new("c.yaml")).unwrap();
        assert_eq!(config.store.url.as_deref(), Some("s3://backups/prod"));
        assert_eq!(config.store.s3.path_style, Some(true));
        assert_eq!(config.backup.zstd_level, Some(5));
        assert_eq!(config.retention.keep_daily, Some(7));
        assert_eq!(config.retention.keep_weekly, None);
        let text = "version: 1\nbackup:\n  encryptTo: [age1a, age1b]\n  signKey: /etc/cpr/keys/minisign.key\nrestore:\n  identity: /etc/cpr/keys/age.key\n  verifyKey: /etc/cpr/keys/minisign.pub\n";
        let config = ConfigFile::parse(text, Path::new("c.yaml")).unwrap();
        assert_eq!(config.backup.encrypt_to, ["age1a", "age1b"]);
        assert_eq!(
            config.restore.verify_key.as_deref(),
            Some(Path::new("/etc/cpr/keys/minisign.pub"))
        );
    }

    #[test]
    fn rejects_unknown_fields_and_versions() {
        let err = ConfigFile::parse("version: 1\nstroe: {}\n", Path::new("/etc/cpr/config.yaml"))
            .unwrap_err();
        assert!(
            err.to_string().contains("stroe") && err.to_string().contains("/etc/cpr/config.yaml"),
            "{err}"
        );
        let err = ConfigFile::parse("version: 2\n", Path::new("c.yaml")).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn a_missing_default_file_is_empty_but_a_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/cpr/config.yaml");
        assert_eq!(ConfigFile::load(missing, false).unwrap().store.url, None);
        assert!(ConfigFile::load(missing, true).is_err());
    }
}
