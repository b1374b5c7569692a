//! Who listens on a TCP port, read from /proc: `net/tcp` and `net/tcp6` (the listening sockets of the
//! network namespace cpr runs in) and `<pid>/fd` (which process holds a socket). kubeadm's
//! `PortOpenCheck` listens on `:port`, so a listener on any address fails it.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// The socket state `LISTEN` in /proc/net/tcp (include/net/tcp_states.h: TCP_LISTEN = 10).
const LISTEN: &str = "0A";

/// Inodes of the listening TCP sockets by port, any address, IPv4 or IPv6: both tables read once.
pub fn listening(proc: &Path) -> HashMap<u16, Vec<u64>> {
    let mut by_port: HashMap<u16, Vec<u64>> = HashMap::new();
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = fs::read_to_string(proc.join(table)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != LISTEN {
                continue;
            }
            let local_port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (local_port, fields[9].parse()) {
                by_port.entry(port).or_default().push(inode);
            }
        }
    }
    by_port
}

/// Inodes of the sockets listening on TCP `port`, any address, IPv4 or IPv6.
fn listeners(proc: &Path, port: u16) -> Vec<u64> {
    listening(proc).remove(&port).unwrap_or_default()
}

/// Whether anything listens on TCP `port`.
pub fn in_use(proc: &Path, port: u16) -> bool {
    !listeners(proc, port).is_empty()
}

/// `name (pid N)` of every process holding one of `inodes`, for an operator to stop.
fn holders(proc: &Path, inodes: &[u64]) -> Vec<String> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut found = Vec::new();
    for entry in fs::read_dir(proc).into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let holds = fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()));
        if holds {
            let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(format!("{} (pid {pid})", name.trim()));
        }
    }
    found.sort();
    found
}

/// Who listens on `port` through the sockets `inodes` (as `listening` read them), in words:
/// `etcd (pid 42)`, or why cpr cannot say.
pub fn describe_holder(proc: &Path, port: u16, inodes: &[u64]) -> String {
    if inodes.is_empty() {
        return "nothing any more".to_string();
    }
    let holders = holders(proc, inodes);
    if !holders.is_empty() {
        holders.join(", ")
    } else if in_use(proc, port) {
        "a process cpr cannot see (in another PID namespace?)".to_string()
    } else {
        // It stopped between the two looks.
        "nothing any more".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0A01007F:0950 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0100007F:094B 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:280A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
";

    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net")).unwrap();
        fs::write(dir.path().join("net/tcp"), TCP).unwrap();
        fs::write(dir.path().join("net/tcp6"), TCP6).unwrap();
        let fd = dir.path().join("77/fd");
        fs::create_dir_all(&fd).unwrap();
        fs::write(dir.path().join("77/comm"), "etcd\n").unwrap();
        std::os::unix::fs::symlink("socket:[4242]", fd.join("3")).unwrap();
        std::os::unix::fs::symlink("/dev/null", fd.join("0")).unwrap();
        dir
    }

    #[test]
    fn listeners_of_a_port_on_any_address_and_family() {
        let proc = fake_proc();
        // 0x094B = 2379 on 127.0.0.1; the established connection on the same port is no listener.
        assert_eq!(listeners(proc.path(), 2379), vec![4242]);
        // 0x0950 = 2384 on 127.0.1.10.
        assert_eq!(listeners(proc.path(), 2384), vec![4343]);
        // 0x280A = 10250 on [::].
        assert_eq!(listeners(proc.path(), 10250), vec![5151]);
        assert!(!in_use(proc.path(), 6443));
    }

    #[test]
    fn the_holder_is_named_by_its_process() {
        let proc = fake_proc();
        let describe = |port| describe_holder(proc.path(), port, &listeners(proc.path(), port));
        assert_eq!(describe(2379), "etcd (pid 77)");
        assert!(describe(10250).contains("cannot see"));
        assert_eq!(describe(6443), "nothing any more");
    }
}
