//! `Host` on the running Linux kernel. The only place in cpr with `unsafe`: the interface and route
//! ioctls have no safe wrapper in nix or rustix.

use nix::libc;
use nix::mount::{MntFlags, MsFlags};
use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Access, Host, Power};

pub struct Linux;

fn errno(error: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(error as i32)
}

impl Host for Linux {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        data: &str,
        access: Access,
    ) -> io::Result<()> {
        let data = (!data.is_empty()).then_some(data);
        let flags = match access {
            Access::ReadWrite => MsFlags::empty(),
            Access::ReadOnly => MsFlags::MS_RDONLY,
        };
        nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(errno)
    }

    fn move_mount(&self, from: &Path, to: &Path) -> io::Result<()> {
        nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(errno)
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, MntFlags::empty()).map_err(errno)
    }

    fn is_mountpoint(&self, path: &Path) -> io::Result<bool> {
        let here = std::fs::metadata(path)?;
        let parent = std::fs::metadata(path.join(".."))?;
        // The root directory is its own parent and always a mount point.
        Ok(here.dev() != parent.dev() || here.ino() == parent.ino())
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        let file = std::fs::File::open(path)?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
            Err(error) => Err(errno(error)),
        }
    }

    fn link_up(&self, interface: &str) -> io::Result<()> {
        set_link_up(&inet_socket()?, interface, true)
    }

    fn link_down(&self, interface: &str) -> io::Result<()> {
        let socket = inet_socket()?;
        let mut request = ifreq(interface)?;
        // 0.0.0.0 deletes the address: net/ipv4/devinet.c (inet_set_ifa) frees an address whose
        // local part is zero instead of inserting it.
        request.ifr_ifru.ifru_addr = sockaddr(Ipv4Addr::UNSPECIFIED);
        interface_ioctl(&socket, IfRequest::SetAddress, &mut request)?;
        set_link_up(&socket, interface, false)
    }

    fn configure_ipv4(
        &self,
        interface: &str,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let socket = inet_socket()?;
        let mut request = ifreq(interface)?;
        request.ifr_ifru.ifru_addr = sockaddr(address);
        interface_ioctl(&socket, IfRequest::SetAddress, &mut request)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        request.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
        interface_ioctl(&socket, IfRequest::SetNetmask, &mut request)?;
        let Some(gateway) = gateway else {
            return Ok(());
        };
        let mut route = RtEntry {
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gateway),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            ..RtEntry::default()
        };
        add_route(&socket, &mut route)
    }

    fn dhcp_socket(&self, interface: &str) -> io::Result<UdpSocket> {
        use nix::sys::socket::{setsockopt, sockopt};
        let socket = UdpSocket::bind("0.0.0.0:68")?;
        socket.set_broadcast(true)?;
        // Bound to the NIC, a broadcast leaves through it even though no address or route exists yet.
        setsockopt(&socket, sockopt::BindToDevice, &interface.into()).map_err(errno)?;
        Ok(socket)
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(errno)
    }

    fn is_initramfs(&self, path: &Path) -> io::Result<bool> {
        use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
        // linux/magic.h; nix names TMPFS_MAGIC but not this one.
        const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
        let kind = statfs(path).map_err(errno)?.filesystem_type();
        Ok(kind == RAMFS_MAGIC || kind == TMPFS_MAGIC)
    }

    fn switch_root(&self, new_root: &Path) -> io::Result<()> {
        // The working directory keeps the new root reachable once its mount covers the old `/`.
        nix::unistd::chdir(new_root).map_err(errno)?;
        self.move_mount(Path::new("."), Path::new("/"))?;
        nix::unistd::chroot(".").map_err(errno)?;
        nix::unistd::chdir("/").map_err(errno)
    }

    fn reap(&self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }

    fn exec(&self, program: &Path, args: &[CString]) -> io::Error {
        let program = match CString::new(program.as_os_str().as_encoded_bytes()) {
            Ok(program) => program,
            Err(error) => return io::Error::new(io::ErrorKind::InvalidInput, error),
        };
        match nix::unistd::execv(&program, args) {
            Err(error) => errno(error),
        }
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn power(&self, action: Power) -> io::Error {
        let mode = match action {
            Power::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
            Power::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        };
        match nix::sys::reboot::reboot(mode) {
            Err(error) => errno(error),
        }
    }
}

/// `struct rtentry` of <net/route.h> (x86_64), which the libc crate has for musl only.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_tos: libc::c_uchar,
    rt_class: libc::c_uchar,
    rt_pad4: [libc::c_short; 3],
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

impl Default for RtEntry {
    fn default() -> Self {
        // SAFETY: every field is an integer, an integer array, a plain C struct or a raw pointer,
        // for all of which all-zero bytes are a valid value (the kernel reads NULL rt_dev as "any").
        unsafe { std::mem::zeroed() }
    }
}

fn inet_socket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(errno)
}

fn ifreq(interface: &str) -> io::Result<libc::ifreq> {
    let name = CString::new(interface)
        .ok()
        .filter(|name| name.as_bytes().len() < libc::IFNAMSIZ)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{interface:?} is not a valid interface name"),
            )
        })?;
    // SAFETY: ifreq is a C struct of a char array and a union of plain C types; zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes; the kernel reads the family to interpret it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

/// Sets or clears IFF_UP, keeping the interface's other flags.
fn set_link_up(socket: &OwnedFd, interface: &str, up: bool) -> io::Result<()> {
    let mut request = ifreq(interface)?;
    interface_ioctl(socket, IfRequest::GetFlags, &mut request)?;
    // SAFETY: SIOCGIFFLAGS above initialised the flags member of the union.
    let flags = unsafe { &mut request.ifr_ifru.ifru_flags };
    if up {
        *flags |= libc::IFF_UP as libc::c_short;
    } else {
        *flags &= !(libc::IFF_UP as libc::c_short);
    }
    interface_ioctl(socket, IfRequest::SetFlags, &mut request)
}

/// The interface ioctls cpr issues; each takes a `struct ifreq`.
#[derive(Debug, Clone, Copy)]
enum IfRequest {
    GetFlags,
    SetFlags,
    SetAddress,
    SetNetmask,
}

/// `request` on the interface `argument` names. Safe: every `IfRequest` takes an `ifreq`.
fn interface_ioctl(
    socket: &OwnedFd,
    request: IfRequest,
    argument: &mut libc::ifreq,
) -> io::Result<()> {
    let code = match request {
        IfRequest::GetFlags => libc::SIOCGIFFLAGS,
        IfRequest::SetFlags => libc::SIOCSIFFLAGS,
        IfRequest::SetAddress => libc::SIOCSIFADDR,
        IfRequest::SetNetmask => libc::SIOCSIFNETMASK,
    };
    // SAFETY: each of these four requests reads (and SIOCGIFFLAGS writes) a `struct ifreq`, which
    // `argument` is: live, initialised, exclusively borrowed for the call.
    unsafe { ioctl(socket, code, argument) }
}

/// SIOCADDRT: adds the route `route` describes.
fn add_route(socket: &OwnedFd, route: &mut RtEntry) -> io::Result<()> {
    // SAFETY: SIOCADDRT reads a `struct rtentry`; RtEntry is its #[repr(C)] layout, live and
    // exclusively borrowed for the call, and its pointer field rt_dev is NULL or valid.
    unsafe { ioctl(socket, libc::SIOCADDRT, route) }
}

/// An ioctl on `socket` whose argument is a pointer to `argument`.
///
/// # Safety
///
/// `request` must be an ioctl that reads and writes at most a `T` through its argument, with `T`
/// the C layout the kernel expects for it, and any pointers inside `argument` valid for the call.
unsafe fn ioctl<T>(socket: &OwnedFd, request: libc::c_ulong, argument: &mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees that `request` takes a `T`; `argument` is an exclusive reference
    // to a live one, and the socket stays open for the duration of the call.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), request, argument as *mut T) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// linux/ioprio.h: the idle class, served only when no other class wants the disk.
const IOPRIO_CLASS_IDLE: libc::c_int = 3;
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// Puts every thread of this process in the idle I/O class, so a restore drill on a control-plane
/// node yields the disk to the live etcd. An I/O priority belongs to a thread (`IOPRIO_WHO_PROCESS`
/// takes a thread id), and a thread or child inherits its creator's: setting each thread that runs
/// now (a store client may have started some) covers the ones started later too. Only the BFQ
/// scheduler and mq-deadline (Linux 5.14 on, which still serves idle requests waiting 10 s) honour
/// the class; `none` (NVMe's default) and kyber ignore it, and writes that the kernel's flusher
/// threads write back are theirs, not ours.
pub fn idle_io_priority() -> io::Result<()> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        // SAFETY: ioprio_set takes three integers and touches no memory of ours. glibc has no
        // wrapper, hence the raw syscall.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                tid,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            )
        };
        // A thread that ended since the listing has no priority to set.
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(errno)?;
    Ok(stat.blocks_available() * stat.fragment_size())
}

/// Makes the program `command` starts get SIGKILL when the thread that started it ends, cpr killed
/// with SIGKILL included, so a helper cpr waits on (the drill's `unshare` around an etcd) cannot
/// outlive it. Start it from the thread that waits for it: the kernel watches that thread.
pub fn kill_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl and getppid,
    // both async-signal-safe; it allocates nothing (the error is made from an errno or a kind).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // cpr died between the fork and the prctl: the signal will never come, so stop here.
            if libc::getppid() as u32 != parent {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        });
    }
}
