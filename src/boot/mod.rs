//! PID 1 of the recovery image: early mounts, `cpr.*` keys, drivers, the target root, the network,
//! phase 1 of the restore, phase 2 installed, and `switch_root` into the target's own init. On
//! failure it says what failed and what to do, then follows `cpr.on_failure`; it never exits, so the
//! kernel never panics.

pub mod cmdline;
pub mod dhcp;
mod modules;
mod net;
pub mod phase1;
mod root;
mod secure_boot;

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use cmdline::{BootArgs, IpConfig, Policy, RootSpec};

use crate::host::{Access, Host, Power};
use modules::Modules;

/// Where the target's root filesystem is mounted, below the initramfs root.
pub const SYSROOT: &str = "sysroot";
/// How long block devices and NICs may take to appear after their drivers load.
const ROOT_WAIT: Duration = Duration::from_secs(10);
const NIC_WAIT: Duration = Duration::from_secs(10);
/// The API filesystems every later step needs: (type, directory, options).
const EARLY_MOUNTS: [(&str, &str, &str); 4] = [
    ("proc", "proc", ""),
    ("sysfs", "sys", ""),
    ("devtmpfs", "dev", "mode=0755"),
    ("tmpfs", "run", "mode=0755"),
];

/// The failure policy, once the command line is read; a panic reads it from here.
static POLICY: OnceLock<Policy> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mounting {fstype} on {path}: {source}. The image or the kernel is broken; rebuild the image (image/build)")]
    EarlyMount {
        fstype: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel command line: {key}={value:?} is invalid: {why}. Correct it in the boot entry (PXE script, isolinux.cfg, boot loader) and boot again")]
    Cmdline {
        key: String,
        value: String,
        why: String,
    },
    #[error("the kernel command line has no {key}=: add {key}={example} to the boot entry and boot again")]
    Missing {
        key: &'static str,
        example: &'static str,
    },
    #[error("no filesystem matching cpr.root={spec} appeared within {waited} s; block devices seen: {seen}. Attach the target disk, check that its driver is in the image, or correct cpr.root=")]
    NoRoot {
        spec: String,
        waited: u64,
        seen: String,
    },
    #[error("mounting the target {device} ({fstype}) on {path}: {source}. Check the filesystem from a rescue system (e2fsck -f / xfs_repair) or correct cpr.root=")]
    MountRoot {
        device: PathBuf,
        fstype: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no network interface appeared within {waited} s. The network card's driver is not in the image: add its module to image/build-initramfs and rebuild")]
    NoInterface { waited: u64 },
    #[error("cpr.ip.{interface}= names an interface that did not appear within {waited} s; Ethernet interfaces seen: {seen}. Correct the name (the recovery kernel names NICs eth0, eth1, … in bus order), or add the card's driver to image/build-initramfs and rebuild")]
    MissingInterface {
        interface: String,
        waited: u64,
        seen: String,
    },
    #[error("network on {interface}: {step} failed: {source}. Check the link and the DHCP server, or set an address with cpr.ip=ADDRESS/PREFIX:GATEWAY")]
    Network {
        interface: String,
        step: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Restore(#[from] crate::ops::Error),
    #[error("no bundle for node {node} in {store}. Check cpr.store=; if this machine's hostname is not the node's, add cpr.hostname=NODE; if the store holds several clusters, add cpr.cluster=; or name the bundle with cpr.bundle=CLUSTER/NODE/STAMP.tar.zst")]
    NoBundle { store: String, node: String },
    #[error("target {path}: {step} failed: {source}. The target filesystem may be full or damaged; check it from a rescue system")]
    Target {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the target has no {init} to hand over to. Install the normal OS on the target disk, or name its init with cpr.init=")]
    NoInit { init: PathBuf },
    #[error("handing over to the target: {step} failed: {source}. The target is restored; boot it from its own disk")]
    Handoff {
        step: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Exit codes of `cpr init` on a fake root, consistent with the other commands'.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cmdline { .. } | Error::Missing { .. } => 2,
            Error::Store(_) | Error::NoBundle { .. } => 3,
            Error::Restore(error) => error.exit_code(),
            // Writing to the target failed: like a failed restore write, running again resumes.
            Error::Target { .. } => 7,
            _ => 10,
        }
    }
}

/// The recovery image's `/init`. Never returns: it hands over to the target's init, or fails the
/// way `cpr.on_failure` says and then stays alive, reaping orphans.
pub fn main(host: &dyn Host) -> ! {
    let root = Path::new("/");
    std::panic::set_hook(Box::new(|info| {
        log::error!(
            "internal error: {info}. This is a bug in cpr; please report it with this console log"
        );
    }));
    let policy = match std::panic::catch_unwind(AssertUnwindSafe(|| boot(host, root))) {
        Ok((error, policy)) => {
            log::error!("RECOVERY FAILED: {}", crate::error::chain(&error));
            policy
        }
        Err(_) => *POLICY.get().unwrap_or(&Policy::Shell),
    };
    on_failure(host, root, policy);
    loop {
        host.reap();
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The whole boot; returns only on failure, with the policy to apply.
fn boot(host: &dyn Host, root: &Path) -> (Error, Policy) {
    if let Err(error) = early_mounts(host, root) {
        return (error, Policy::Shell);
    }
    let cmdline = std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
    let (args, parsed) = BootArgs::parse(&cmdline);
    let _ = POLICY.set(args.on_failure);
    if let Some(level) = args.log {
        log::set_max_level(level);
    }
    let error = match parsed.and_then(|()| recover(host, root, &args)) {
        Ok(init) => handoff(host, root, &init),
        Err(error) => error,
    };
    (error, args.on_failure)
}

/// Mounts what is not mounted yet, so running twice (or under a kernel that mounted /dev) is fine.
pub fn early_mounts(host: &dyn Host, root: &Path) -> Result<(), Error> {
    for (fstype, dir, options) in EARLY_MOUNTS {
        let path = root.join(dir);
        let fail = |source| Error::EarlyMount {
            fstype: fstype.to_string(),
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&path).map_err(fail)?;
        if !host.is_mountpoint(&path).map_err(fail)? {
            host.mount(fstype, &path, fstype, options, Access::ReadWrite)
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// Everything up to the handoff. Returns the target's init; the target stays mounted at
/// `<root>/sysroot` (and is unmounted again on failure by `on_failure`).
pub fn recover(host: &dyn Host, root: &Path, args: &BootArgs) -> Result<PathBuf, Error> {
    let started = Instant::now();
    let store = args.store.as_deref().ok_or(Error::Missing {
        key: "cpr.store",
        example: "http://HOST/PATH (the store holding this node's bundles)",
    })?;
    let spec = args.root.as_ref().ok_or(Error::Missing {
        key: "cpr.root",
        example: "LABEL=name, UUID=uuid or /dev/name (the disk to restore onto)",
    })?;
    let mut modules = Modules::open(root);
    secure_boot::report(host, root, &mut modules);
    let tried = modules.load_for_devices(host, root);
    log::info!(
        "modules: {tried} tried for the devices present ({} ms)",
        started.elapsed().as_millis()
    );
    let target = wait_for_root(host, root, &mut modules, spec)?;
    let sysroot = root.join(SYSROOT);
    mount_target(host, &mut modules, &target, &sysroot)?;
    let network = net::up(
        host,
        root,
        &mut modules,
        &args.ip,
        &args.interface_ips,
        NIC_WAIT,
    )?;
    // The restore checks this machine's name against the bundle's node: the boot entry's name wins
    // over the one DHCP offered, which wins over the kernel's.
    if let Some(name) = &args.hostname {
        host.set_hostname(name).map_err(|source| Error::Network {
            interface: network.interface.clone(),
            step: format!("setting the hostname {name}"),
            source,
        })?;
    }
    let hostname = args
        .hostname
        .clone()
        .or(network.hostname.clone())
        .unwrap_or_else(crate::host::hostname);
    let summary = phase1::phase1(&phase1::Phase1 {
        sysroot: &sysroot,
        store,
        bundle: args.bundle.as_deref(),
        cluster: args.cluster.as_deref(),
        retries: args.retries,
        identity: args.identity.as_deref(),
        verify_key: args.verify_key.as_deref(),
        hostname,
        ips: network.addresses().into_iter().map(IpAddr::V4).collect(),
        new_address: args.new_address,
        quorum_probe: args.quorum_probe,
        discard_survivors: args.discard_survivors,
    })?;
    log::info!("restore: {summary}");
    let exe = std::env::current_exe().map_err(|source| Error::Target {
        path: PathBuf::from("/proc/self/exe"),
        step: "finding the running cpr to install it",
        source,
    })?;
    phase1::install_phase2(&sysroot, &exe)?;
    log::info!(
        "restore: phase 2 installed (/usr/local/sbin/cpr, {} enabled)",
        phase1::FINISH_UNIT
    );
    net::release(host, &network);
    let init = sysroot.join(args.init.strip_prefix("/").unwrap_or(&args.init));
    if init.symlink_metadata().is_err() {
        return Err(Error::NoInit {
            init: args.init.clone(),
        });
    }
    Ok(args.init.clone())
}

fn wait_for_root(
    host: &dyn Host,
    root: &Path,
    modules: &mut Modules,
    spec: &RootSpec,
) -> Result<root::Filesystem, Error> {
    let deadline = Instant::now() + ROOT_WAIT;
    loop {
        if let Some(found) = root::find(root, spec) {
            log::info!(
                "target: {} ({} LABEL={} UUID={})",
                found.device.display(),
                found.fstype,
                found.label,
                found.uuid
            );
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(Error::NoRoot {
                spec: match spec {
                    RootSpec::Label(label) => format!("LABEL={label}"),
                    RootSpec::Uuid(uuid) => format!("UUID={uuid}"),
                    RootSpec::Device(path) => path.display().to_string(),
                },
                waited: ROOT_WAIT.as_secs(),
                seen: root::describe(root),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
        modules.load_for_devices(host, root);
    }
}

fn mount_target(
    host: &dyn Host,
    modules: &mut Modules,
    target: &root::Filesystem,
    sysroot: &Path,
) -> Result<(), Error> {
    // Filesystem drivers are asked for by name, not by a device: load them (and the checksum they
    // need) explicitly; on kernels that have them built in this loads nothing.
    modules.load_alias(host, "crypto-crc32c");
    modules.load_alias(host, &format!("fs-{}", target.fstype));
    let fail = |source| Error::MountRoot {
        device: target.device.clone(),
        fstype: target.fstype,
        path: sysroot.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(sysroot).map_err(fail)?;
    let device = target.device.to_string_lossy();
    host.mount(&device, sysroot, target.fstype, "", Access::ReadWrite)
        .map_err(fail)
}

/// Moves the API filesystems into the target, empties the initramfs (its memory is otherwise lost
/// to the target), makes the target `/` and executes its init.
fn handoff(host: &dyn Host, root: &Path, init: &Path) -> Error {
    let sysroot = root.join(SYSROOT);
    let fail = |step: &str| {
        let step = step.to_string();
        move |source| Error::Handoff { step, source }
    };
    match host.is_initramfs(root) {
        Ok(true) => {}
        Ok(false) => {
            return fail("checking that / is the initramfs")(io::Error::other(
                "/ is not a ramfs or tmpfs; refusing to empty it",
            ))
        }
        Err(error) => return fail("checking that / is the initramfs")(error),
    }
    for (_, dir, _) in EARLY_MOUNTS {
        let target = sysroot.join(dir);
        let moved = std::fs::create_dir_all(&target)
            .and_then(|()| host.move_mount(&root.join(dir), &target));
        if let Err(error) = moved {
            return fail(&format!("moving /{dir} into the target"))(error);
        }
    }
    empty_initramfs(root);
    if let Err(error) = host.switch_root(&sysroot) {
        return fail("switching the root to the target")(error);
    }
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    log::info!(
        "handing over to {} ({} s after the kernel started)",
        init.display(),
        uptime.split_whitespace().next().unwrap_or("?")
    );
    let argv0 = CString::new(init.as_os_str().as_encoded_bytes()).unwrap_or_default();
    fail(&format!("executing {}", init.display()))(host.exec(init, &[argv0]))
}

/// Removes the initramfs files, staying on its filesystem: never the target, never a mount.
fn empty_initramfs(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(device) = root.metadata().map(|m| m.dev()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let on_initramfs = path.symlink_metadata().is_ok_and(|m| m.dev() == device);
        if path == root.join(SYSROOT) || !on_initramfs {
            continue;
        }
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(error) = removed {
            log::debug!("initramfs: cannot remove {}: {error}", path.display());
        }
    }
}

/// Leaves the target unmounted and clean, then reboots, powers off or offers a shell.
pub fn on_failure(host: &dyn Host, root: &Path, policy: Policy) {
    release_target(host, root);
    match policy {
        Policy::Reboot | Policy::PowerOff => {
            let (action, word) = match policy {
                Policy::Reboot => (Power::Reboot, "rebooting"),
                _ => (Power::PowerOff, "powering off"),
            };
            log::error!("cpr.on_failure={policy}: {word}");
            host.sync();
            let error = host.power(action);
            log::error!("{word} failed: {error}; the machine stays here, reset it");
        }
        Policy::Shell => shell(root),
    }
}

/// Unmounts the target if it is mounted, so a powered-off disk needs no journal recovery.
pub fn release_target(host: &dyn Host, root: &Path) {
    let sysroot = root.join(SYSROOT);
    if host.is_mountpoint(&sysroot).unwrap_or(false) {
        host.sync();
        if let Err(error) = host.umount(&sysroot) {
            log::error!("unmounting the target at {}: {error}", sysroot.display());
        }
    }
}

fn shell(root: &Path) {
    let sh = root.join("bin/sh");
    if !sh.exists() {
        log::error!("cpr.on_failure=shell: this image has no shell; fix the cause above and reset the machine, or boot with cpr.on_failure=reboot");
        return;
    }
    loop {
        log::error!(
            "cpr.on_failure=shell: starting {} on the console",
            sh.display()
        );
        if let Err(error) = std::process::Command::new(&sh).status() {
            log::error!("cannot run {}: {error}", sh.display());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Recorder;

    #[test]
    fn early_mounts_skip_what_is_mounted_already() {
        let root = tempfile::tempdir().unwrap();
        let host = Recorder::default();
        early_mounts(&host, root.path()).unwrap();
        early_mounts(&host, root.path()).unwrap();
        let r = root.path().display();
        assert_eq!(
            host.calls(),
            [
                format!("mount proc {r}/proc proc "),
                format!("mount sysfs {r}/sys sysfs "),
                format!("mount devtmpfs {r}/dev devtmpfs mode=0755"),
                format!("mount tmpfs {r}/run tmpfs mode=0755"),
            ]
        );
    }

    #[test]
    fn a_failed_early_mount_names_the_filesystem() {
        let root = tempfile::tempdir().unwrap();
        let host = Recorder::failing(&["mount devtmpfs"]);
        let message = early_mounts(&host, root.path()).unwrap_err().to_string();
        assert!(
            message.contains("mounting devtmpfs on") && message.contains("/dev"),
            "{message}"
        );
    }

    #[test]
    fn missing_keys_are_named_before_anything_is_touched() {
        let root = tempfile::tempdir().unwrap();
        let host = Recorder::default();
        let (args, _) = BootArgs::parse("cpr.root=LABEL=x");
        let message = recover(&host, root.path(), &args).unwrap_err().to_string();
        assert!(message.contains("no cpr.store="), "{message}");
        let (args, _) = BootArgs::parse("cpr.store=http://s/");
        let message = recover(&host, root.path(), &args).unwrap_err().to_string();
        assert!(message.contains("no cpr.root="), "{message}");
        assert!(host.calls().is_empty());
    }

    #[test]
    fn failure_unmounts_the_target_then_powers_off() {
        let root = tempfile::tempdir().unwrap();
        let host = Recorder::default();
        let sysroot = root.path().join(SYSROOT);
        host.mount("/dev/vda", &sysroot, "ext4", "", Access::ReadWrite)
            .unwrap();
        on_failure(&host, root.path(), Policy::PowerOff);
        assert_eq!(
            host.calls()[1..],
            [
                "sync",
                &format!("umount {}", sysroot.display()),
                "sync",
                "power PowerOff"
            ]
            .map(String::from)
        );
        // Nothing mounted, no shell in the image: the policy only reports.
        let host = Recorder::default();
        on_failure(&host, root.path(), Policy::Shell);
        assert!(host.calls().is_empty());
    }

    #[test]
    fn handoff_moves_the_api_filesystems_empties_the_initramfs_and_execs_init() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in ["sysroot/sbin", "lib/modules/x", "etc"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(r.join("init"), "cpr").unwrap();
        std::fs::write(r.join("sysroot/sbin/init"), "target").unwrap();
        let host = Recorder::default();
        let error = handoff(&host, r, Path::new("/sbin/init"));
        assert!(
            error.to_string().contains("executing /sbin/init"),
            "{error}"
        );
        let d = r.display();
        assert_eq!(
            host.calls(),
            [
                format!("move {d}/proc {d}/sysroot/proc"),
                format!("move {d}/sys {d}/sysroot/sys"),
                format!("move {d}/dev {d}/sysroot/dev"),
                format!("move {d}/run {d}/sysroot/run"),
                format!("switch_root {d}/sysroot"),
                "exec /sbin/init /sbin/init".to_string(),
            ]
        );
        let left: Vec<_> = std::fs::read_dir(r)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["sysroot"]);
        assert_eq!(
            std::fs::read_to_string(r.join("sysroot/sbin/init")).unwrap(),
            "target"
        );
    }
}
