//! Everything that asks the kernel for more than plain file I/O. Other modules call these functions
//! instead of reaching for syscalls themselves, so the boundary to the machine stays in one place.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;

mod files;
// The only module with `unsafe` (the crate denies it elsewhere), each use with a `// SAFETY:` note.
#[allow(unsafe_code)]
mod linux;
mod recorder;

pub use files::{preallocate, rename_no_replace, try_lock, LockKind, LockedFile};
pub use linux::{available_bytes, idle_io_priority, kill_with_parent, Linux};
pub use recorder::Recorder;

/// Whether a mount may be written through. Filesystems cpr only reads are mounted read-only, so a
/// bug cannot write to them (an efivarfs write reaches the firmware's variable store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// What the machine does after a failed recovery boot, or when asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Reboot,
    PowerOff,
}

/// The kernel operations a PID-1 boot needs beyond file I/O. `Linux` performs them; `Recorder` only
/// records them, so boot logic runs in unit tests and in `cpr init --root` without root or a VM.
pub trait Host {
    /// `mount(2)` of a filesystem: `source` on `target` with type `fstype` and `data` options,
    /// `MS_RDONLY` for `Access::ReadOnly`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        data: &str,
        access: Access,
    ) -> io::Result<()>;
    /// `mount --move`: the mount at `from` reappears at `to`, with everything below it.
    fn move_mount(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// True when `path` is the root of a mounted filesystem (another device than its parent's).
    fn is_mountpoint(&self, path: &Path) -> io::Result<bool>;
    /// `finit_module(2)`: an already loaded module is not an error.
    fn load_module(&self, path: &Path) -> io::Result<()>;
    /// Brings the interface up (IFF_UP), without an address.
    fn link_up(&self, interface: &str) -> io::Result<()>;
    /// Removes the interface's IPv4 address (and with it its routes) and takes it down.
    fn link_down(&self, interface: &str) -> io::Result<()>;
    /// Puts `address/prefix` on the interface and, with a gateway, the default route through it.
    fn configure_ipv4(
        &self,
        interface: &str,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()>;
    /// A UDP socket on port 68 of `interface`, able to send broadcasts before it has an address.
    fn dhcp_socket(&self, interface: &str) -> io::Result<UdpSocket>;
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// True when `path` is on a ramfs or tmpfs, as the initramfs is.
    fn is_initramfs(&self, path: &Path) -> io::Result<bool>;
    /// Makes the filesystem mounted at `new_root` the process's `/`: chdir into it, move the mount
    /// onto `/`, chroot there. Only PID 1 of an initramfs may call this.
    fn switch_root(&self, new_root: &Path) -> io::Result<()>;
    /// Replaces this process with `program`; returns only on failure.
    fn exec(&self, program: &Path, args: &[CString]) -> io::Error;
    /// Collects every exited child, without waiting; PID 1 inherits orphans and must reap them.
    fn reap(&self);
    /// Flushes every filesystem's dirty data to its disk.
    fn sync(&self);
    /// Reboots or powers off at once; returns only on failure.
    fn power(&self, action: Power) -> io::Error;
}

/// The kernel's hostname (`uname -n`).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// True when cpr runs with effective uid 0: only then may it give files the owners a bundle recorded.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Every address configured on an interface that is up, loopback and link-local excluded, sorted.
pub fn local_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
                .filter_map(|a| a.address)
                .filter_map(|addr| {
                    if let Some(v4) = addr.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                    }
                })
                .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips.dedup();
    ips
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Crash tests stop cpr dead at named points (`CPR_FAILPOINT=restore:state-saved`) to prove that the
/// next run converges. SIGKILL, not an error: nothing gets to clean up, as in a power cut.
pub fn failpoint(name: &str) {
    static FAILPOINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = FAILPOINT.get_or_init(|| std::env::var("CPR_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
