//! A network namespace per test (`ip netns`, iproute2; needs root): kubeadm's fixed ports (6443, 2379,
//! 2380, 10250, 10257, 10259) are free inside it, so the kubeadm double's port checks stay on, and tests
//! running at the same time do not collide. Processes run inside through `ip netns exec`, which `exec`s
//! the program: the child's pid is the program's own, so `Child::kill` reaches it.
//!
//! Dropping a `NetNs` kills whatever still runs inside it and deletes it. Namespaces left behind by a
//! killed test run (their owner's pid is gone) are removed when the next one is created.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const PREFIX: &str = "cpr-";
const BRIDGE: &str = "br0";
static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A fresh namespace with `lo` up (so all of 127.0.0.0/8 answers in it), named `cpr-<pid>-<n>`.
    pub fn new() -> NetNs {
        remove_orphans();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to be run inside the namespace; arguments, environment and stdio as for any `Command`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program.as_ref());
        command
    }

    /// Runs `ip ARGS` against this namespace (`ip -n NAME ARGS`), panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        ip(&[&["-n", &self.name][..], args].concat());
    }

    /// A veth pair between this namespace and `other`, each end up with its address (`10.0.0.1/24`).
    pub fn link(&self, other: &NetNs, mine: &str, theirs: &str) {
        let (a, b) = self.veth(other);
        for (ns, dev, addr) in [(self, &a, mine), (other, &b, theirs)] {
            ns.ip(&["addr", "add", addr, "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
        }
    }

    /// A namespace holding the bridge `br0`, which namespaces `join` as machines join a switch.
    pub fn hub() -> NetNs {
        let hub = NetNs::new();
        hub.ip(&["link", "add", BRIDGE, "type", "bridge"]);
        hub.ip(&["link", "set", BRIDGE, "up"]);
        hub
    }

    /// Plugs this namespace into `hub`'s bridge, its end of the cable with `address` (`10.0.0.1/24`).
    pub fn join(&self, hub: &NetNs, address: &str) {
        let (mine, port) = self.veth(hub);
        self.ip(&["addr", "add", address, "dev", &mine]);
        self.ip(&["link", "set", &mine, "up"]);
        hub.ip(&["link", "set", &port, "master", BRIDGE]);
        hub.ip(&["link", "set", &port, "up"]);
    }

    /// A veth pair, one end in this namespace and one in `other`, both down and without addresses.
    fn veth(&self, other: &NetNs) -> (String, String) {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let (a, b) = (
            format!("cv{}a{n}", std::process::id()),
            format!("cv{}b{n}", std::process::id()),
        );
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &self.name]);
        ip(&["link", "set", &b, "netns", &other.name]);
        (a, b)
    }

    /// Whether something listens on TCP `port` (any address) inside the namespace.
    pub fn listening(&self, port: u16) -> bool {
        let out = self
            .command("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .expect("ss runs");
        assert!(
            out.status.success(),
            "ss: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        !out.stdout.iter().all(u8::is_ascii_whitespace)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        kill_and_delete(&self.name);
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ip (iproute2) runs; the tests need root");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_and_delete(name: &str) {
    for pid in pids(name) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Namespaces of test runs that are gone (`cpr-<pid>-<n>` whose pid no longer exists).
fn remove_orphans() {
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = owner {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                kill_and_delete(&name);
            }
        }
    }
}
