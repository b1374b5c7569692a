//! A `Host` that changes nothing: it records (and logs) every call as one line, and fails the calls
//! it is told to fail. Unit tests check the lines; `cpr init --root` shows them as its dry run.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Access, Host, Power};

#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<String>>,
    mountpoints: Mutex<Vec<PathBuf>>,
    /// Calls whose line starts with one of these fail with EIO.
    failing: Vec<String>,
}

impl Recorder {
    /// A recorder on which every call whose recorded line starts with one of `prefixes` fails.
    pub fn failing(prefixes: &[&str]) -> Self {
        Recorder {
            failing: prefixes.iter().map(|p| p.to_string()).collect(),
            ..Recorder::default()
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, line: String) -> io::Result<()> {
        let fails = self.failing.iter().any(|p| line.starts_with(p.as_str()));
        log::info!("host (not done): {line}");
        self.calls.lock().unwrap().push(line);
        if fails {
            Err(io::Error::from_raw_os_error(nix::libc::EIO))
        } else {
            Ok(())
        }
    }
}

impl Host for Recorder {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        data: &str,
        access: Access,
    ) -> io::Result<()> {
        let read_only = match access {
            Access::ReadWrite => "",
            Access::ReadOnly => " (read-only)",
        };
        self.record(format!(
            "mount {source} {} {fstype} {data}{read_only}",
            target.display()
        ))?;
        self.mountpoints.lock().unwrap().push(target.to_path_buf());
        Ok(())
    }

    fn move_mount(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(format!("move {} {}", from.display(), to.display()))
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        self.record(format!("umount {}", target.display()))?;
        self.mountpoints.lock().unwrap().retain(|m| m != target);
        Ok(())
    }

    fn is_mountpoint(&self, path: &Path) -> io::Result<bool> {
        Ok(self.mountpoints.lock().unwrap().iter().any(|m| m == path))
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        self.record(format!("module {}", path.display()))
    }

    fn link_up(&self, interface: &str) -> io::Result<()> {
        self.record(format!("up {interface}"))
    }

    fn link_down(&self, interface: &str) -> io::Result<()> {
        self.record(format!("down {interface}"))
    }

    fn configure_ipv4(
        &self,
        interface: &str,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        self.record(format!("ip {interface} {address}/{prefix} via {gateway:?}"))
    }

    fn dhcp_socket(&self, interface: &str) -> io::Result<UdpSocket> {
        self.record(format!("dhcp {interface}"))?;
        UdpSocket::bind("127.0.0.1:0")
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("hostname {name}"))
    }

    fn is_initramfs(&self, _path: &Path) -> io::Result<bool> {
        Ok(true)
    }

    fn switch_root(&self, new_root: &Path) -> io::Result<()> {
        self.record(format!("switch_root {}", new_root.display()))
    }

    fn reap(&self) {}

    fn exec(&self, program: &Path, args: &[CString]) -> io::Error {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        match self.record(format!("exec {} {}", program.display(), args.join(" "))) {
            Ok(()) => io::Error::other("the fake host does not replace the process"),
            Err(error) => error,
        }
    }

    fn sync(&self) {
        let _ = self.record("sync".to_string());
    }

    fn power(&self, action: Power) -> io::Error {
        let _ = self.record(format!("power {action:?}"));
        io::Error::other("the fake host does not stop")
    }
}
