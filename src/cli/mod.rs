//! Minimal top level for the etcd branch; the lead's version replaces it.

pub mod etcd;

use argh::FromArgs;

/// cpr: control-plane recovery.
#[derive(FromArgs, Debug)]
pub struct Cpr {
    #[argh(subcommand)]
    cmd: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Etcd(etcd::EtcdCmd),
}

pub fn run(cpr: Cpr) -> Result<(), crate::Error> {
    match cpr.cmd {
        Command::Etcd(c) => etcd::run(c),
    }
}
