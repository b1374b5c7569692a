//! The recovery proper, seen from the boot: phase 1 of the restore (`ops::restore`, the same code as
//! `cpr restore --no-finish` on a live OS) into the mounted target, then phase 2 (`cpr finish`)
//! installed into the target so its normal OS runs it once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Error;
use crate::node::identity::Machine;
use crate::ops::ha;
use crate::ops::restore::{restore, Members, RestoreRequest, DEFAULT_BUMP_REVISION};
use crate::store::{self, StoreOptions};

pub const FINISH_UNIT: &str = "cpr-finish.service";
/// The unit as shipped in `image/systemd`, so the image and phase 1 install the same file.
const FINISH_UNIT_TEXT: &str = include_str!("../../image/systemd/cpr-finish.service");

pub struct Phase1<'a> {
    /// The target's root filesystem, mounted read-write.
    pub sysroot: &'a Path,
    pub store: &'a str,
    /// None: the newest bundle of this node that verifies.
    pub bundle: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub retries: Option<u32>,
    /// Key files inside the image (`cpr.identity=`, `cpr.verify_key=`).
    pub identity: Option<&'a Path>,
    pub verify_key: Option<&'a Path>,
    pub hostname: String,
    pub ips: Vec<IpAddr>,
    /// `cpr.new_address=1`: restore onto this machine's own address and name.
    pub new_address: bool,
    /// Seconds to probe a several-member cluster for a quorum; `None`: the default.
    pub quorum_probe: Option<u64>,
    pub discard_survivors: bool,
}

/// Phase 1 of the restore into `request.sysroot`; returns a one-line summary for the console.
pub fn phase1(request: &Phase1<'_>) -> Result<String, Error> {
    let defaults = StoreOptions::default();
    let options = StoreOptions {
        retries: request.retries.unwrap_or(defaults.retries),
        ..defaults
    };
    let store = store::open(request.store, &options)?;
    let report = restore(&RestoreRequest {
        root: request.sysroot.to_path_buf(),
        store: store.as_ref(),
        bundle: request.bundle.map(String::from),
        cluster: request.cluster.map(String::from),
        node: None,
        machine: Machine {
            hostname: request.hostname.clone(),
            ips: request.ips.clone(),
        },
        force_identity: false,
        new_address: request.new_address,
        bump_revision: Some(DEFAULT_BUMP_REVISION),
        identity: request.identity.map(Path::to_path_buf),
        verify_key: request.verify_key.map(Path::to_path_buf),
        members: Members::Cluster {
            quorum_probe: request
                .quorum_probe
                .map_or(ha::DEFAULT_PROBE, Duration::from_secs),
            discard_survivors: request.discard_survivors,
        },
        plan_only: false,
    })
    .map_err(|error| match error {
        // The live-OS advice names --node and --cluster; a booting machine is steered by cpr.* keys.
        crate::ops::Error::NoBundle { store, node } => Error::NoBundle { store, node },
        other => Error::Restore(other),
    })?;
    let skipped = match report.skipped.len() {
        0 => String::new(),
        n => format!(", {n} newer bundle(s) skipped as damaged"),
    };
    Ok(format!(
        "{} restored (etcd revision {} into {}{skipped})",
        report.bundle,
        report.bumped_revision.unwrap_or(report.revision as u64),
        report.data_dir.display()
    ))
}

/// Installs phase 2 into the target: this very binary as `/usr/local/sbin/cpr` and
/// `cpr-finish.service`, enabled for multi-user.target. Each piece is durable before the handoff:
/// the target stays mounted into its own boot, and a power cut there must not leave a machine that
/// boots from its disk without phase 2 (the next recovery boot finds phase 1 done).
pub fn install_phase2(sysroot: &Path, exe: &Path) -> Result<(), Error> {
    use crate::fsutil;
    let target = |relative: &str| sysroot.join(relative);
    let fail =
        |path: PathBuf, step: &'static str| move |source| Error::Target { path, step, source };
    let binary = target("usr/local/sbin/cpr");
    let partial = target("usr/local/sbin/.cpr.new");
    fsutil::create_dirs_durable(&target("usr/local/sbin"))
        .and_then(|()| std::fs::copy(exe, &partial))
        .and_then(|_| {
            std::fs::set_permissions(
                &partial,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
        })
        .and_then(|()| fsutil::commit_file(&std::fs::File::open(&partial)?, &partial, &binary))
        .map_err(fail(binary.clone(), "installing cpr for phase 2"))?;
    let unit = target("etc/systemd/system").join(FINISH_UNIT);
    let wants = target("etc/systemd/system/multi-user.target.wants");
    fsutil::create_dirs_durable(&wants)
        .and_then(|()| fsutil::write_atomic(&unit, FINISH_UNIT_TEXT.as_bytes(), 0o644))
        .and_then(|()| {
            fsutil::symlink_durable(
                &Path::new("/etc/systemd/system").join(FINISH_UNIT),
                &wants.join(FINISH_UNIT),
            )
        })
        .map_err(fail(unit.clone(), "enabling cpr-finish.service"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_the_binary_and_enables_the_finish_unit_twice_over() {
        let sysroot = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        for _ in 0..2 {
            install_phase2(sysroot.path(), &exe).unwrap();
        }
        let binary = sysroot.path().join("usr/local/sbin/cpr");
        assert_eq!(
            std::fs::read(&binary).unwrap(),
            std::fs::read(&exe).unwrap()
        );
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&binary.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755);
        let link = sysroot
            .path()
            .join("etc/systemd/system/multi-user.target.wants/cpr-finish.service");
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            Path::new("/etc/systemd/system/cpr-finish.service")
        );
        let unit =
            std::fs::read_to_string(sysroot.path().join("etc/systemd/system/cpr-finish.service"))
                .unwrap();
        assert!(
            unit.contains("ExecStart=/usr/local/sbin/cpr finish"),
            "{unit}"
        );
    }
}
