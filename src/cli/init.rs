//! `cpr init`: the recovery boot (PID 1 of the recovery image, where it starts by itself), or a dry
//! run of it on a fake root: the kernel calls are only logged, and it stops before the handoff.

use argh::FromArgs;
use std::path::PathBuf;

use crate::boot::{self, BootArgs};
use crate::host::{Linux, Recorder};
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "init")]
/// Recover this machine from its latest bundle and hand over to its own init (recovery image PID 1).
pub struct InitCmd {
    /// dry run: this directory is the initramfs root (its sys/, dev/, sysroot/), kernel calls are only logged, and the boot stops before the handoff
    #[argh(option)]
    root: Option<PathBuf>,
    /// kernel command line to use instead of ROOT/proc/cmdline
    #[argh(option)]
    cmdline: Option<String>,
}

pub fn run(cmd: InitCmd) -> Result<(), Error> {
    let Some(root) = cmd.root else {
        if std::process::id() == 1 {
            boot::main(&Linux);
        }
        return Err(Error::Usage(
            "cpr init is the recovery image's /init and only runs as PID 1; pass --root DIR for a dry run on a fake root"
                .to_string(),
        ));
    };
    // Nothing on this machine is mounted, loaded or reconfigured: the fake root's sysroot/ directory
    // stands in for the target filesystem, and the restore writes there.
    let host = Recorder::default();
    boot::early_mounts(&host, &root)?;
    let cmdline = match cmd.cmdline {
        Some(cmdline) => cmdline,
        None => std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default(),
    };
    let (args, parsed) = BootArgs::parse(&cmdline);
    let result = parsed.and_then(|()| boot::recover(&host, &root, &args));
    boot::release_target(&host, &root);
    let init = result?;
    println!(
        "recovered; the boot would now hand over to {}",
        init.display()
    );
    Ok(())
}
