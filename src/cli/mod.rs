//! Argument parsing (argh): one file per subcommand, each with `run(args) -> Result`.

use argh::FromArgs;
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigFile};
use crate::node::layout;
use crate::ops::sealed::{self, OpenKeys, Opened, SignatureCheck, Source};
use crate::store::{self, Store};
use crate::Error;

pub mod backup;
pub mod check;
pub mod diff;
pub mod drill;
pub mod etcd;
pub mod finish;
pub mod get;
pub mod init;
pub mod inspect;
pub mod keygen;
pub mod list;
pub mod prune;
pub mod restore;
mod snapshot;
pub mod verify;
pub mod version;
pub mod worker;

#[derive(FromArgs, Debug)]
/// cpr backs up a kubeadm control-plane node and restores a replacement node from the backup.
pub struct Cpr {
    /// print the version, git commit, build date, target and features (as cpr version does)
    #[argh(switch)]
    pub version: bool,
    /// optional so that `cpr --version` parses without one; `run` requires it otherwise
    #[argh(subcommand)]
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Backup(backup::BackupCmd),
    Restore(restore::RestoreCmd),
    Finish(finish::FinishCmd),
    List(list::ListCmd),
    Inspect(inspect::InspectCmd),
    Get(get::GetCmd),
    Diff(diff::DiffCmd),
    Drill(drill::DrillCmd),
    Verify(verify::VerifyCmd),
    Etcd(etcd::EtcdCmd),
    Prune(prune::PruneCmd),
    Check(check::CheckCmd),
    Init(init::InitCmd),
    Keygen(keygen::KeygenCmd),
    Version(version::VersionCmd),
    Worker(worker::WorkerCmd),
}

pub fn run(cpr: Cpr) -> Result<(), Error> {
    let command = match (cpr.version, cpr.command) {
        (true, None) => Command::Version(version::VersionCmd {
            output: Output::Text,
        }),
        (true, Some(_)) => {
            return Err(Error::Usage(
                "--version takes no command; run cpr --version, or cpr version --output json"
                    .into(),
            ))
        }
        (false, Some(command)) => command,
        (false, None) => {
            return Err(Error::Usage(
                "no command given; run cpr --help for the list".into(),
            ))
        }
    };
    match command {
        Command::Backup(cmd) => backup::run(cmd),
        Command::Restore(cmd) => restore::run(cmd),
        Command::Finish(cmd) => finish::run(cmd),
        Command::List(cmd) => list::run(cmd),
        Command::Inspect(cmd) => inspect::run(cmd),
        Command::Get(cmd) => get::run(cmd),
        Command::Diff(cmd) => diff::run(cmd),
        Command::Drill(cmd) => drill::run(cmd),
        Command::Verify(cmd) => verify::run(cmd),
        Command::Etcd(cmd) => etcd::run(cmd),
        Command::Prune(cmd) => prune::run(cmd),
        Command::Check(cmd) => check::run(cmd),
        Command::Init(cmd) => init::run(cmd),
        Command::Keygen(cmd) => keygen::run(cmd),
        Command::Version(cmd) => version::run(cmd),
        Command::Worker(cmd) => worker::run(cmd),
    }
}

/// The command line as UTF-8 strings, which argh needs; an argument that is not UTF-8 (a path in
/// another encoding) is a usage error naming it, where `std::env::args` would panic.
pub fn utf8_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<Vec<String>, String> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            arg.into_string().map_err(|arg| {
                format!(
                    "argument {i} ({}) is not valid UTF-8. cpr reads its arguments as UTF-8: rename the file or directory, or pass a symlink to it whose name is UTF-8",
                    arg.to_string_lossy().escape_debug()
                )
            })
        })
        .collect()
}

/// argh only accepts `--flag value`; operators and scripts also write `--flag=value`.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut positional_only = false;
    for arg in args {
        if positional_only {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            positional_only = true;
            out.push(arg);
        } else if let Some((flag, value)) =
            arg.strip_prefix("--").and_then(|rest| rest.split_once('='))
        {
            out.push(format!("--{flag}"));
            out.push(value.to_string());
        } else {
            out.push(arg);
        }
    }
    out
}

/// `--output text|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

impl std::str::FromStr for Output {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Output::Text),
            "json" => Ok(Output::Json),
            other => Err(format!("--output takes text or json, not {other:?}")),
        }
    }
}

/// The config file: `--config` (must exist) or `<root>/etc/cpr/config.yaml` (may be absent).
pub fn load_config(flag: Option<&Path>, root: &Path) -> Result<(ConfigFile, PathBuf), Error> {
    let (path, required) = match flag {
        Some(path) => (path.to_path_buf(), true),
        None => (layout::Layout::new(root).path(layout::CPR_CONFIG), false),
    };
    Ok((ConfigFile::load(&path, required)?, path))
}

/// Opens the store named by `--store`, `CPR_STORE` or the config file, in that order.
pub fn open_store(
    flag: Option<String>,
    config: &ConfigFile,
    config_path: &Path,
) -> Result<Box<dyn Store>, Error> {
    let url = config::pick(flag, "CPR_STORE", config.store.url.as_ref()).ok_or_else(|| {
        config::Error::NoStore {
            path: config_path.to_path_buf(),
        }
    })?;
    Ok(store::open(&url, &store_options(config))?)
}

/// The key files a reading command was given; the config file's `restore` section fills the gaps.
pub struct KeyFlags {
    pub identity: Option<PathBuf>,
    pub verify_key: Option<PathBuf>,
}

/// A bundle given on the command line: a local file, or a name (or "latest") in the store, opened
/// with its signature checked (when a verify key is set) when `signature` says, and decrypted;
/// `scratch` is a private directory for the download a signature check before reading needs.
pub fn open_bundle(
    bundle: &str,
    store_flag: Option<String>,
    config_flag: Option<&Path>,
    (cluster, node): (Option<&str>, Option<&str>),
    keys: KeyFlags,
    signature: SignatureCheck,
    scratch: &Path,
) -> Result<Opened, Error> {
    let (config, config_path) = load_config(config_flag, Path::new("/"))?;
    let keys = OpenKeys {
        signature,
        ..OpenKeys::load(
            keys.identity.or(config.restore.identity.clone()).as_deref(),
            keys.verify_key
                .or(config.restore.verify_key.clone())
                .as_deref(),
        )?
    };
    if store_flag.is_none() && Path::new(bundle).is_file() {
        return Ok(sealed::open(
            Source::File(Path::new(bundle)),
            &keys,
            scratch,
        )?);
    }
    let store = open_store(store_flag, &config, &config_path)?;
    let name = if bundle == "latest" {
        let node = node.map(String::from).unwrap_or_else(crate::host::hostname);
        let mut entries = store::bundles(store.as_ref(), cluster, Some(&node))?;
        entries.pop().map(|e| e.name).ok_or_else(|| {
            Error::Usage(format!(
                "no bundle for node {node} in {}; pass --node or --cluster, or name a bundle (cpr list)",
                store.location()
            ))
        })?
    } else {
        bundle.to_string()
    };
    Ok(sealed::open(
        Source::Store(store.as_ref(), &name),
        &keys,
        scratch,
    )?)
}

/// Where commands that read a whole bundle put it by default: a bundle's etcd snapshot is as large
/// as the db, and /tmp is often a tmpfs, which would hold it in the control-plane node's memory.
pub const DEFAULT_SCRATCH: &str = "/var/tmp";

/// A private (0700) temp dir for a command's scratch files, in `scratch` (its --scratch), else in
/// TMPDIR, else in `DEFAULT_SCRATCH`.
pub fn scratch_dir(command: &str, scratch: Option<&Path>) -> Result<tempfile::TempDir, Error> {
    let base = scratch.map_or_else(
        || {
            std::env::var_os("TMPDIR")
                .filter(|dir| !dir.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_SCRATCH), PathBuf::from)
        },
        Path::to_path_buf,
    );
    tempfile::Builder::new()
        .prefix(&format!("cpr-{command}."))
        .tempdir_in(&base)
        .map_err(|e| {
            Error::Usage(format!(
                "cannot create a temp dir for {command} in {}: {e}; point --scratch (or TMPDIR) at a writable directory",
                base.display()
            ))
        })
}

/// The environment (`AWS_*`) wins over the config file, as for every setting.
fn store_options(config: &ConfigFile) -> store::StoreOptions {
    let env = store::StoreOptions::from_env();
    store::StoreOptions {
        s3_endpoint: env
            .s3_endpoint
            .clone()
            .or_else(|| config.store.s3.endpoint.clone()),
        s3_region: env
            .s3_region
            .clone()
            .or_else(|| config.store.s3.region.clone()),
        s3_path_style: config.store.s3.path_style,
        ca_file: config.store.ca_file.clone(),
        ..env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flag_equals_value_but_not_positionals() {
        let args = [
            "backup",
            "--store=s3://b/p?region=x=y",
            "--root",
            "/",
            "--",
            "--not=a-flag",
        ]
        .map(String::from);
        assert_eq!(
            normalize_args(args),
            vec![
                "backup",
                "--store",
                "s3://b/p?region=x=y",
                "--root",
                "/",
                "--",
                "--not=a-flag"
            ]
        );
    }
}
