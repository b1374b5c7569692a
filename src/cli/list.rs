//! `cpr list`.

use argh::FromArgs;
use std::path::{Path, PathBuf};

use super::{load_config, open_store, Output};
use crate::store;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
/// List the bundles in a store, newest first.
pub struct ListCmd {
    /// store URL (see cpr backup --help)
    #[argh(option)]
    pub store: Option<String>,
    /// config file (default /etc/cpr/config.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// only this cluster
    #[argh(option)]
    pub cluster: Option<String>,
    /// only this node
    #[argh(option)]
    pub node: Option<String>,
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

pub fn run(cmd: ListCmd) -> Result<(), Error> {
    let (config, config_path) = load_config(cmd.config.as_deref(), Path::new("/"))?;
    let store = open_store(cmd.store, &config, &config_path)?;
    let mut names = store::bundles(store.as_ref(), cmd.cluster.as_deref(), cmd.node.as_deref())?;
    names.reverse();
    match cmd.output {
        Output::Json => println!("{}", serde_json::json!(names)),
        Output::Text => names.iter().for_each(|n| println!("{n}")),
    }
    Ok(())
}
