//! What the console says about UEFI Secure Boot: an operator recovering through a BMC sees whether
//! the firmware enforced the signature chain and whether the kernel is locked down (only signed
//! modules load, so a driver outside Debian's signed set would be refused).

use std::path::{Path, PathBuf};

use super::modules::Modules;
use crate::host::{Access, Host};

/// The EFI global variable GUID (UEFI specification, "Globally Defined Variables").
const SECURE_BOOT_VARIABLE: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
const EFI: &str = "sys/firmware/efi";
const EFIVARS: &str = "sys/firmware/efi/efivars";
const SECURITYFS: &str = "sys/kernel/security";

/// Mounts efivarfs (a module in Debian's cloud kernel) and securityfs where they are missing, logs
/// the SecureBoot variable and the kernel's lockdown mode, and unmounts them again. Nothing here is
/// fatal: a machine booted by BIOS has no EFI variables, and the recovery goes on either way.
pub fn report(host: &dyn Host, root: &Path, modules: &mut Modules) {
    let efi = root.join(EFI).is_dir();
    if efi {
        modules.load_alias(host, "fs-efivarfs");
    }
    // Read-only, and only for this reading: /sys moves into the target at the handoff, and the
    // target's systemd, finding them mounted, would keep these mounts, while its AppArmor loads
    // profiles through securityfs and efibootmgr writes EFI variables.
    let mounted: Vec<PathBuf> = [(efi, EFIVARS, "efivarfs"), (true, SECURITYFS, "securityfs")]
        .into_iter()
        .filter(|(wanted, _, _)| *wanted)
        .filter_map(|(_, dir, fstype)| mount_if_missing(host, &root.join(dir), fstype))
        .collect();
    log::info!("{}", describe(root));
    for path in mounted {
        if let Err(error) = host.umount(&path) {
            log::warn!("secure boot: unmounting {}: {error}", path.display());
        }
    }
}

/// `secure boot: enabled (SecureBoot=1); kernel lockdown: integrity`, from the mounted filesystems.
fn describe(root: &Path) -> String {
    let state = if root.join(EFI).is_dir() {
        // efivarfs files start with the variable's 4-byte attributes; the value follows.
        match std::fs::read(root.join(EFIVARS).join(SECURE_BOOT_VARIABLE)).as_deref() {
            Ok([_, _, _, _, 1]) => "enabled (SecureBoot=1)",
            Ok([_, _, _, _, 0]) => "disabled (SecureBoot=0)",
            _ => "unknown (no SecureBoot EFI variable)",
        }
    } else {
        "not applicable (not booted by UEFI)"
    };
    // "none [integrity] confidentiality": the brackets mark the mode in force.
    let lockdown =
        std::fs::read_to_string(root.join(SECURITYFS).join("lockdown")).unwrap_or_default();
    let mode = lockdown
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("unknown");
    format!("secure boot: {state}; kernel lockdown: {mode}")
}

/// Mounts `fstype` read-only on `path` unless something is mounted there; returns the path it mounted.
fn mount_if_missing(host: &dyn Host, path: &Path, fstype: &str) -> Option<PathBuf> {
    if !path.is_dir() || host.is_mountpoint(path).unwrap_or(true) {
        return None;
    }
    match host.mount(fstype, path, fstype, "", Access::ReadOnly) {
        Ok(()) => Some(path.to_path_buf()),
        Err(error) => {
            log::warn!(
                "secure boot: mounting {fstype} on {}: {error}",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Recorder;

    #[test]
    fn mounts_efivarfs_and_securityfs_read_only_for_the_reading_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join(EFIVARS)).unwrap();
        std::fs::create_dir_all(r.join(SECURITYFS)).unwrap();
        let host = Recorder::default();
        report(&host, r, &mut Modules::open(r));
        let (efivars, security) = (r.join(EFIVARS), r.join(SECURITYFS));
        assert_eq!(
            host.calls(),
            [
                format!("mount efivarfs {} efivarfs  (read-only)", efivars.display()),
                format!(
                    "mount securityfs {} securityfs  (read-only)",
                    security.display()
                ),
                format!("umount {}", efivars.display()),
                format!("umount {}", security.display()),
            ]
        );
    }

    #[test]
    fn reads_the_secure_boot_variable_and_the_lockdown_mode() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(
            describe(r),
            "secure boot: not applicable (not booted by UEFI); kernel lockdown: unknown"
        );
        std::fs::create_dir_all(r.join(EFIVARS)).unwrap();
        std::fs::create_dir_all(r.join(SECURITYFS)).unwrap();
        std::fs::write(r.join(EFIVARS).join(SECURE_BOOT_VARIABLE), [6, 0, 0, 0, 1]).unwrap();
        std::fs::write(
            r.join(SECURITYFS).join("lockdown"),
            "none [integrity] confidentiality\n",
        )
        .unwrap();
        assert_eq!(
            describe(r),
            "secure boot: enabled (SecureBoot=1); kernel lockdown: integrity"
        );
    }
}
