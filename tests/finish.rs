//! Phase 2 (`cpr finish`) on a restored root, against the kubeadm double (tests/doubles: kubeadm's
//! preflight and config rules, read from kubeadm's source), a fake kube-apiserver serving the restored
//! certificates, and a real etcd started from the manifest kubeadm wrote, as kubelet would.
//!
//! Each replacement node runs in its own network namespace (tests/common/netns.rs): the control plane
//! listens on kubeadm's own ports (6443, 2379, 2380, 10250), the double's port checks are on, and tests
//! running at the same time do not collide.

mod common;

use common::certs::{cert_expiring_in, reissue_leaf};
use common::netns::NetNs;
use common::objects::{etcdctl_put, stored};
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// kubeadm's ports (cmd/kubeadm/app/constants/constants.go), free in each test's namespace.
const APISERVER_PORT: u16 = 6443;
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const KUBELET_PORT: u16 = 10250;

/// What kubelet does for these tests, inside the node's namespace and as the systemctl double says it
/// runs. While the kubelet unit is active and kubeadm has written its config (without
/// var/lib/kubelet/config.yaml kubelet exits at once), it listens on kubelet's port 10250 and runs the
/// static pods whose manifests are in the manifests dir: kube-apiserver (the fake apiserver on
/// 0.0.0.0:6443, as kube-apiserver binds), etcd (a real etcd from etcd.yaml) and kube-vip (the manifest's
/// VIP added to `lo`, as kube-vip in ARP mode adds it to its interface). A pod whose manifest is gone is
/// stopped, one that exited is started again. While the unit is inactive nothing else changes: the pods
/// outlive kubelet, as containers do.
struct Kubelet {
    stop: Arc<AtomicBool>,
    /// kube-apiserver crash-loops (holds no port) while this is set.
    apiserver_fails: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A static pod the stand-in runs.
enum Pod {
    Process(Child),
    Vip(String),
}

impl Kubelet {
    fn start(node: &Target) -> Kubelet {
        Self::start_with(node, false)
    }

    fn start_with(node: &Target, apiserver_fails: bool) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let fails = Arc::new(AtomicBool::new(apiserver_fails));
        let (ns, root) = (node.ns.clone(), node.root().to_path_buf());
        // systemd started kubelet at boot; it crash-loops until kubeadm writes its config.
        let units = root.join("run/systemctl-double");
        fs::create_dir_all(&units).unwrap();
        fs::write(units.join("kubelet"), "active\n").unwrap();
        let (flag, failing) = (stop.clone(), fails.clone());
        let thread = std::thread::spawn(move || {
            let mut port: Option<Child> = None;
            let mut pods: BTreeMap<&str, Pod> = BTreeMap::new();
            while !flag.load(Ordering::SeqCst) {
                let active = fs::read_to_string(units.join("kubelet"))
                    .is_ok_and(|s| s.trim() == "active")
                    && root.join("var/lib/kubelet/config.yaml").exists();
                match (active, port.take()) {
                    (true, None) => port = Some(listen(&ns, KUBELET_PORT, healthz(&root))),
                    (false, Some(child)) => end(&ns, Pod::Process(child)),
                    (_, still) => port = still,
                }
                if active {
                    let manifests = root.join("etc/kubernetes/manifests");
                    for name in ["kube-apiserver", "etcd", "kube-vip"] {
                        let manifest = manifests.join(format!("{name}.yaml"));
                        let wanted = manifest.exists()
                            && !(name == "kube-apiserver" && failing.load(Ordering::SeqCst));
                        let exited = match pods.get_mut(name) {
                            Some(Pod::Process(child)) => matches!(child.try_wait(), Ok(Some(_))),
                            _ => false,
                        };
                        if !wanted || exited {
                            if let Some(pod) = pods.remove(name) {
                                end(&ns, pod);
                            }
                        }
                        if wanted && !pods.contains_key(name) {
                            if let Some(pod) = run_pod(&ns, &root, name, &manifest) {
                                pods.insert(name, pod);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            port.into_iter()
                .map(Pod::Process)
                .chain(pods.into_values())
                .for_each(|pod| end(&ns, pod));
        });
        Kubelet {
            stop,
            apiserver_fails: fails,
            thread: Some(thread),
        }
    }
}

/// kubelet's healthz endpoint from the config kubeadm wrote: healthzBindAddress (default 127.0.0.1) and
/// healthzPort (default 10248; 0 turns it off), as pkg/kubelet/apis/config/v1beta1/defaults.go defaults them.
fn healthz(root: &Path) -> (String, u16) {
    let config: serde_norway::Value = serde_norway::from_str(
        &fs::read_to_string(root.join("var/lib/kubelet/config.yaml")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let address = config["healthzBindAddress"]
        .as_str()
        .unwrap_or("127.0.0.1")
        .to_string();
    let port = config["healthzPort"].as_u64().map_or(10248, |p| p as u16);
    (address, port)
}

/// A process listening on `port` on every address, as kubelet does on 10250, and answering `GET /healthz`
/// with 200 "ok" on `healthz` (address, port; port 0: none), as kubelet's healthz server does
/// (cmd/kubelet/app/server.go) and kubeadm's wait-control-plane polls (v1.31+ `WaitForKubelet`).
fn listen(ns: &NetNs, port: u16, (address, healthz_port): (String, u16)) -> Child {
    let script = format!(
        "import http.server, socket, threading, time\n\
         s = socket.socket()\ns.bind(('', {port}))\ns.listen()\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       ok = self.path.split('?')[0] == '/healthz'\n\
         \x20       self.send_response(200 if ok else 404)\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(b'ok' if ok else b'404 page not found')\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         if {healthz_port}:\n\
         \x20   h = http.server.HTTPServer(('{address}', {healthz_port}), H)\n\
         \x20   threading.Thread(target=h.serve_forever, daemon=True).start()\n\
         time.sleep(86400)"
    );
    ns.command("python3").args(["-c", &script]).spawn().unwrap()
}

fn run_pod(ns: &NetNs, root: &Path, name: &str, manifest: &Path) -> Option<Pod> {
    let log = || {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(format!("{name}.log")))
            .unwrap()
    };
    let mut command = match name {
        "kube-apiserver" => {
            let mut c = ns.command(doubles().join("fake-apiserver"));
            c.args(["--root", root.to_str().unwrap(), "--listen"])
                .arg(format!("0.0.0.0:{APISERVER_PORT}"));
            c
        }
        "etcd" => {
            let mut c = ns.command(fixtures().join("run-static-etcd"));
            c.arg(root).arg(EtcdVersion::V3_5.etcd());
            c
        }
        _ => {
            let vip = kube_vip_address(&fs::read_to_string(manifest).ok()?)?;
            ns.ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"]);
            return Some(Pod::Vip(vip));
        }
    };
    let child = command.stdout(log()).stderr(log()).spawn().unwrap();
    Some(Pod::Process(child))
}

fn end(ns: &NetNs, pod: Pod) {
    match pod {
        Pod::Process(mut child) => {
            let _ = child.kill();
            let _ = child.wait();
        }
        Pod::Vip(vip) => ns.ip(&["addr", "del", &format!("{vip}/32"), "dev", "lo"]),
    }
}

/// The VIP of a kube-vip manifest: its container's `vip_address` (or, in newer releases, `address`).
fn kube_vip_address(manifest: &str) -> Option<String> {
    let pod: serde_norway::Value = serde_norway::from_str(manifest).ok()?;
    pod["spec"]["containers"][0]["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == "vip_address" || e["name"] == "address")
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.take().unwrap().join();
    }
}

/// A source node whose ClusterConfiguration is `cluster` (kubeadm's ports), backed up into a directory
/// store, with `extra_manifest` beside its static pods and `apiserver_sans` (openssl items) in its
/// apiserver certificate; its etcd is stopped (the node died).
fn backed_up_node(
    keys: usize,
    extra_manifest: Option<(&str, &str)>,
    cluster: &str,
    apiserver_sans: &str,
) -> (KubeadmNode, tempfile::TempDir) {
    backed_up_node_with(keys, extra_manifest, cluster, apiserver_sans, |_| {})
}

/// As `backed_up_node`, with `prepare` run on the source node (its etcd running) before the backup.
fn backed_up_node_with(
    keys: usize,
    extra_manifest: Option<(&str, &str)>,
    cluster: &str,
    apiserver_sans: &str,
    prepare: impl FnOnce(&KubeadmNode),
) -> (KubeadmNode, tempfile::TempDir) {
    let mut source =
        KubeadmNode::start_with(EtcdVersion::V3_5, keys, APISERVER_PORT, apiserver_sans);
    prepare(&source);
    // As the kubelet package leaves the dir ("dpkg-deb doesn't keep empty directories"): not a pod.
    fs::write(
        source.root().join("etc/kubernetes/manifests/.kubelet-keep"),
        "",
    )
    .unwrap();
    if let Some((name, text)) = extra_manifest {
        fs::write(
            source.root().join("etc/kubernetes/manifests").join(name),
            text,
        )
        .unwrap();
    }
    let cluster_config = source.root().join("cluster-configuration.yaml");
    fs::write(&cluster_config, cluster).unwrap();
    // The source ran on free ports of this host; its etcd.yaml says kubeadm's, as on a real node.
    let manifest = source.root().join("etc/kubernetes/manifests/etcd.yaml");
    let text = fs::read_to_string(&manifest)
        .unwrap()
        .replace(
            &format!(":{}", source.peer_port),
            &format!(":{ETCD_PEER_PORT}"),
        )
        .replace(
            &format!(":{}", source.client_port),
            &format!(":{ETCD_CLIENT_PORT}"),
        );
    fs::write(&manifest, text).unwrap();
    // kube-apiserver reaches that etcd on kubeadm's client port too.
    let apiserver = source
        .root()
        .join("etc/kubernetes/manifests/kube-apiserver.yaml");
    let text = fs::read_to_string(&apiserver).unwrap().replace(
        &format!("127.0.0.1:{}", source.client_port),
        &format!("127.0.0.1:{ETCD_CLIENT_PORT}"),
    );
    fs::write(&apiserver, text).unwrap();
    let store = backup_into_dir(&source, &cluster_config);
    source.stop_etcd();
    (source, store)
}

/// The source cluster's ClusterConfiguration, with kubeadm's ports and `control_plane_endpoint`.
fn cluster_configuration(control_plane_endpoint: &str) -> String {
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
clusterName: {CLUSTER}
kubernetesVersion: v1.27.4
controlPlaneEndpoint: {control_plane_endpoint}:{APISERVER_PORT}
etcd:
  local:
    dataDir: /var/lib/etcd
networking:
  podSubnet: 192.168.0.0/16
  serviceSubnet: 10.96.0.0/12
"
    )
}

/// A replacement node: a root as provisioning leaves it (an operator account, IP forwarding on) and
/// a network namespace of its own, where cpr, kubeadm and the static pods run.
struct Target {
    ns: Arc<NetNs>,
    dir: tempfile::TempDir,
}

impl Target {
    fn provisioned() -> Target {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("proc/sys/net/ipv4")).unwrap();
        fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "1\n").unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("home/operator")).unwrap();
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\noperator:x:4242:4343:Operator:/home/operator:/bin/bash\n",
        )
        .unwrap();
        Target {
            ns: Arc::new(NetNs::new()),
            dir,
        }
    }

    /// Provisioned, then phase 1 from `store` (`cpr restore --no-finish`).
    fn restored(store: &Path) -> Target {
        let target = Target::provisioned();
        let args = restore_args(store, target.root(), NODE_IP);
        ok(&target.cpr(&with(&args, &["--no-finish"]), &[]));
        target
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// cpr inside the node's namespace, with the doubles first on PATH; `env` comes on top.
    fn cpr(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let root = self.root().display().to_string();
        let path = format!("{}:{}", doubles().display(), std::env::var("PATH").unwrap());
        let base = [
            ("PATH", path.as_str()),
            ("KUBEADM_DOUBLE_ROOT", root.as_str()),
            // The node IP is on loopback, which kubeadm refuses as advertiseAddress.
            ("KUBEADM_DOUBLE_ALLOW_LOOPBACK", "1"),
            // wait-control-plane dials admin.conf's server, as kubeadm does.
            ("KUBEADM_DOUBLE_APISERVER", "admin.conf"),
            ("KUBEADM_DOUBLE_WAIT_SECONDS", "60"),
            ("KUBEADM_DOUBLE_HOSTNAME", NODE_NAME),
            ("SUDO_USER", "operator"),
        ];
        run_cpr(self.ns.command(cpr_bin()), args, &[&base[..], env].concat())
    }

    /// `cpr finish --root R --timeout 60 EXTRA…`.
    fn finish(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let root = self.root().to_str().unwrap();
        let args = [&["finish", "--root", root, "--timeout", "60"][..], extra].concat();
        self.cpr(&args, env)
    }

    /// `cpr finish` as the unit's ExecStart runs it: inside the unit's start job, which the systemctl
    /// double then holds to systemd's job ordering.
    fn finish_as_unit(&self, extra: &[&str]) -> Output {
        self.finish(
            &[&["--unit", FINISH_UNIT][..], extra].concat(),
            &[("SYSTEMCTL_DOUBLE_STARTING_UNIT", FINISH_UNIT)],
        )
    }
}

const FINISH_UNIT: &str = "cpr-finish.service";

/// Phase 2 as the recovery boot leaves it: the shipped unit installed and enabled.
fn install_finish_unit(root: &Path) -> PathBuf {
    let units = root.join("etc/systemd/system");
    fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("image/systemd")
            .join(FINISH_UNIT),
        units.join(FINISH_UNIT),
    )
    .unwrap();
    let link = units.join("multi-user.target.wants").join(FINISH_UNIT);
    std::os::unix::fs::symlink(Path::new("/etc/systemd/system").join(FINISH_UNIT), &link).unwrap();
    link
}

fn deadlocks(root: &Path) -> Vec<Value> {
    log_lines(&root.join("var/log/systemctl.log"))
        .into_iter()
        .filter(|l| l.get("deadlock").is_some())
        .collect()
}

fn log_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn restore_then_finish_brings_the_control_plane_back_and_a_rerun_changes_nothing() {
    let second_scheduler = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: second-scheduler\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n    - kube-scheduler\n    - --scheduler-name=second\n    image: registry.k8s.io/kube-scheduler:v1.27.4\n    name: second-scheduler\n";
    let (source, store) = backed_up_node(
        20,
        Some(("second-scheduler.yaml", second_scheduler)),
        &cluster_configuration(NODE_IP),
        "",
    );
    let manifests = source.root().join("etc/kubernetes/manifests");

    let target = Target::provisioned();
    let root = target.root();
    let owned = restore_args(store.path(), root, NODE_IP);
    let restore_args = with(&owned, &["--timeout", "60"]);
    ok(&target.cpr(&[&restore_args[..], &["--no-finish"]].concat(), &[]));
    let kubelet = Kubelet::start(&target);
    let enabled = install_finish_unit(root);
    let out = target.finish_as_unit(&["--output", "json"]);
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();

    // Run by its unit at boot: kubeadm's and cpr's `systemctl restart kubelet` never wait for the
    // unit's own start job, and once phase 2 succeeded the unit is disabled.
    assert_eq!(deadlocks(root), Vec::<Value>::new());
    assert!(!enabled.exists() && !enabled.is_symlink());
    assert!(!root.join("var/lib/cpr/finish-failed").exists());

    // kubeadm was asked for exactly the restore's exception (its port checks ran), with the node and
    // the backed-up cluster config.
    let calls = log_lines(&root.join("var/log/kubeadm-double.log"));
    assert_eq!(calls.len(), 1, "{calls:?}");
    let argv: Vec<&str> = calls[0]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        argv.contains(&"--ignore-preflight-errors=DirAvailable--var-lib-etcd"),
        "{argv:?}"
    );
    assert!(calls[0]["env"]
        .get("KUBEADM_DOUBLE_SKIP_PORT_CHECKS")
        .is_none());
    let config = calls[0]["config"].as_str().unwrap();
    assert!(
        config.contains("kind: InitConfiguration")
            && config.contains(&format!("advertiseAddress: {NODE_IP}"))
    );
    assert!(
        config.contains("clusterName: prod") && config.contains("kubeadm.k8s.io/v1beta3"),
        "{config}"
    );

    // Health, through the restored credentials.
    assert_eq!(
        report["apiserver"],
        format!("https://{NODE_IP}:{APISERVER_PORT}")
    );
    assert!(
        report["etcdRevision"].as_i64().unwrap() > 1_000_000_000,
        "{report}"
    );
    assert!(
        report["nodes"][0].as_str().unwrap().starts_with(NODE_NAME),
        "{report}"
    );
    assert!(report["pods"].as_array().unwrap().len() >= 4, "{report}");

    // The custom static pod is back; kubelet was restarted for it.
    assert_eq!(
        fs::read_to_string(root.join("etc/kubernetes/manifests/second-scheduler.yaml")).unwrap(),
        second_scheduler
    );
    assert!(
        static_pods(&report).contains(&"second-scheduler.yaml"),
        "{report}"
    );
    assert!(
        !static_pods(&report).contains(&".kubelet-keep"),
        "a hidden file of the manifest dir is not a static pod: {report}"
    );
    let restarts = log_lines(&root.join("var/log/systemctl.log"));
    assert!(
        restarts
            .iter()
            .any(|l| l["argv"].to_string().contains("restart")),
        "{restarts:?}"
    );
    // kubeadm's own version of a manifest the backup changed is kept out of kubelet's reach.
    for kept in fs::read_dir(root.join("var/lib/cpr/kubeadm-generated")).unwrap() {
        let name = kept.unwrap().file_name();
        assert_eq!(
            fs::read(root.join("etc/kubernetes/manifests").join(&name)).unwrap(),
            fs::read(manifests.join(&name)).unwrap()
        );
    }

    // admin.conf for root and for the sudo user, owned by that user.
    let admin = fs::read(root.join("etc/kubernetes/admin.conf")).unwrap();
    assert_eq!(fs::read(root.join("root/.kube/config")).unwrap(), admin);
    let users = root.join("home/operator/.kube/config");
    assert_eq!(fs::read(&users).unwrap(), admin);
    let meta = fs::metadata(&users).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (4242, 4343, 0o600)
    );

    // Running it again changes nothing: not kubeadm, not a file.
    let before = snapshot(root);
    let again = target.cpr(&restore_args, &[]);
    assert!(
        ok(&again).contains("already"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(log_lines(&root.join("var/log/kubeadm-double.log")).len(), 1);
    assert_eq!(snapshot(root), before);
    drop(kubelet);
}

type Files = Vec<(PathBuf, Vec<u8>)>;

/// Paths and contents of what cpr and kubeadm manage (logs and etcd's live files change on their own).
fn snapshot(root: &Path) -> Files {
    let mut out = Vec::new();
    for dir in ["etc/kubernetes", "root", "home", "var/lib/cpr"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push((path.clone(), fs::read(&path).unwrap()));
                }
            }
        }
    }
    out.sort();
    out
}

/// The files of a finished recovery that must not depend on where an earlier run was killed.
fn outcome(root: &Path) -> (Files, Vec<u8>, String) {
    let manifests = root.join("etc/kubernetes/manifests");
    let mut files: Files = fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().to_path_buf(),
                fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    let state: Value =
        serde_json::from_slice(&fs::read(root.join("var/lib/cpr/state.json")).unwrap()).unwrap();
    assert_eq!(
        fs::read(root.join("root/.kube/config")).unwrap(),
        fs::read(root.join("etc/kubernetes/admin.conf")).unwrap()
    );
    (
        files,
        fs::read(root.join("etc/kubernetes/pki/ca.crt")).unwrap(),
        state["phase"].as_str().unwrap().to_string(),
    )
}

#[test]
fn a_finish_killed_at_any_step_converges_when_run_again() {
    use std::os::unix::process::ExitStatusExt;
    let (_source, store) = backed_up_node(10, None, &cluster_configuration(NODE_IP), "");

    let reference = Target::restored(store.path());
    let kubelet = Kubelet::start(&reference);
    ok(&reference.finish(&[], &[]));
    drop(kubelet);
    let expected = outcome(reference.root());
    assert_eq!(expected.2, "finished");

    for point in [
        "finish:before-init",
        "finish:initialized",
        "finish:static-pods",
        "finish:healthy",
    ] {
        let target = Target::restored(store.path());
        let kubelet = Kubelet::start(&target);
        let killed = target.finish(&[], &[("CPR_FAILPOINT", point)]);
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "{point} was never reached: {}",
            stderr(&killed)
        );
        ok(&target.finish(&[], &[]));
        drop(kubelet);
        assert_eq!(outcome(target.root()), expected, "after a kill at {point}");
    }
}

/// A failed boot-time phase 2 is final: the unit is disabled, the failure recorded where the operator
/// looks (a marker, the console's login prompt, the login banner); `cpr finish` by hand then
/// completes the recovery and takes the notices away.
#[test]
fn a_failed_boot_time_finish_disables_its_unit_and_says_what_to_do() {
    let (_source, store) = backed_up_node(5, None, &cluster_configuration(NODE_IP), "");
    let target = Target::restored(store.path());
    let root = target.root();
    let enabled = install_finish_unit(root);

    // The operator's mistake of the day: kubeadm is not installed on the replacement node.
    let failed = target.finish_as_unit(&["--kubeadm", "/usr/bin/kubeadm-not-installed"]);
    assert_eq!(failed.status.code(), Some(6), "{}", stderr(&failed));
    assert!(!enabled.exists() && !enabled.is_symlink());
    let marker = fs::read_to_string(root.join("var/lib/cpr/finish-failed")).unwrap();
    assert!(
        marker.contains("/usr/bin/kubeadm-not-installed") && marker.contains("sudo cpr finish"),
        "{marker}"
    );
    for banner in ["etc/issue.d/cpr-finish.issue", "etc/motd.d/cpr-finish"] {
        let text = fs::read_to_string(root.join(banner)).unwrap();
        assert!(
            text.contains("FAILED") && text.contains("kubeadm-not-installed"),
            "{banner}: {text}"
        );
    }
    let state: Value =
        serde_json::from_slice(&fs::read(root.join("var/lib/cpr/state.json")).unwrap()).unwrap();
    assert_eq!(state["phase"], "restored");

    let kubelet = Kubelet::start(&target);
    ok(&target.finish(&[], &[]));
    drop(kubelet);
    for notice in [
        "var/lib/cpr/finish-failed",
        "etc/issue.d/cpr-finish.issue",
        "etc/motd.d/cpr-finish",
    ] {
        assert!(
            !root.join(notice).exists(),
            "{notice} outlived the recovery"
        );
    }
}

/// kubeadm init stopped at wait-control-plane (kube-apiserver crash-looped): kubelet and the etcd it
/// started still run, on kubeadm's ports 10250, 2379 and 2380. Once the operator fixed the cause, the
/// `cpr finish` that the error recommends has to get kubeadm's port checks through: its static pods go
/// with their manifests (kubelet stops them), then kubelet goes with `systemctl stop kubelet`.
#[test]
fn a_rerun_after_a_failed_wait_control_plane_frees_kubeadms_ports() {
    let (_source, store) = backed_up_node(5, None, &cluster_configuration(NODE_IP), "");
    let target = Target::restored(store.path());
    let root = target.root();
    let kubelet = Kubelet::start_with(&target, true);

    let failed = target.finish(&[], &[("KUBEADM_DOUBLE_WAIT_SECONDS", "2")]);
    assert_eq!(failed.status.code(), Some(6), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("couldn't initialize a Kubernetes cluster"),
        "{}",
        stderr(&failed)
    );
    for port in [KUBELET_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT] {
        assert!(target.ns.listening(port), "nothing listens on {port}");
    }

    kubelet.apiserver_fails.store(false, Ordering::SeqCst);
    let out = target.finish(&["--output", "json"], &[]);
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(
        report["etcdRevision"].as_i64().unwrap() > 1_000_000_000,
        "{report}"
    );
    // Between the two kubeadm runs, cpr stopped kubelet, and kubeadm's preflight found its ports free.
    let calls = log_lines(&root.join("var/log/kubeadm-double.log"));
    assert_eq!(calls.len(), 2, "{calls:?}");
    let stops: Vec<Value> = log_lines(&root.join("var/log/systemctl.log"))
        .into_iter()
        .filter(|l| l["argv"] == serde_json::json!(["systemctl", "stop", "kubelet"]))
        .filter(|l| {
            let t = l["time"].as_str().unwrap();
            calls[0]["time"].as_str().unwrap() < t && t < calls[1]["time"].as_str().unwrap()
        })
        .collect();
    assert_eq!(stops.len(), 2, "kubeadm's own stop, then cpr's: {stops:?}");
    assert!(
        stderr(&out).contains("stopping it for kubeadm's preflight check Port-10250"),
        "{}",
        stderr(&out)
    );
    drop(kubelet);
}

/// A port kubeadm checks held by something that is no static pod of this node (an etcd started by
/// hand): cpr waits its --timeout, then names the port and the process and runs no kubeadm.
#[test]
fn a_port_held_by_another_process_is_named_and_kubeadm_never_runs() {
    let (_source, store) = backed_up_node(5, None, &cluster_configuration(NODE_IP), "");
    let target = Target::restored(store.path());
    let root = target.root();
    let mut squatter = listen(&target.ns, ETCD_CLIENT_PORT, (String::new(), 0));
    while !target.ns.listening(ETCD_CLIENT_PORT) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = tree_with_modes(root);

    let out = target.cpr(
        &["finish", "--root", root.to_str().unwrap(), "--timeout", "1"],
        &[],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains(&format!(
            "port 2379 (etcd (clients)) is still in use by python3 (pid {})",
            squatter.id()
        )) && message.contains("Port-2379")
            && message.contains("run `cpr finish` again"),
        "{message}"
    );
    assert!(!root.join("var/log/kubeadm-double.log").exists());
    assert_eq!(tree_with_modes(root), before);
    let _ = squatter.kill();
    let _ = squatter.wait();
}

/// The namespace harness itself: a veth pair links two namespaces (multi-node tests build on it), and
/// a listener in one is invisible in the other's `listening`.
#[test]
fn netns_harness_links_two_namespaces() {
    let (a, b) = (NetNs::new(), NetNs::new());
    a.link(&b, "10.77.0.1/24", "10.77.0.2/24");
    let mut server = listen(&b, APISERVER_PORT, (String::new(), 0));
    while !b.listening(APISERVER_PORT) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!a.listening(APISERVER_PORT));
    let connect = |ns: &NetNs, host: &str| {
        ns.command("python3")
            .args([
                "-c",
                &format!("import socket; socket.create_connection(('{host}', {APISERVER_PORT}), timeout=2)"),
            ])
            .status()
            .unwrap()
            .success()
    };
    assert!(connect(&a, "10.77.0.2"));
    assert!(!connect(&a, "10.78.0.2"));
    let _ = server.kill();
    let _ = server.wait();
}

/// kube-vip serves the controlPlaneEndpoint, a VIP on this node. kubeadm's wait-control-plane talks to
/// the API server through admin.conf, so through the VIP: kube-vip's manifest (kube-vip's own published
/// one) has to be in the manifests dir before `kubeadm init`, for kubelet to start it with kubeadm's
/// kubelet-start.
#[test]
fn a_control_plane_endpoint_served_by_kube_vip_is_up_for_wait_control_plane() {
    const VIP: &str = "10.0.1.100";
    let kube_vip = fs::read_to_string(fixtures().join("kube-vip/kube-vip-arp-v0.4.1.yaml"))
        .unwrap()
        .replace("value: 192.168.0.1", &format!("value: {VIP}"));
    assert_eq!(kube_vip_address(&kube_vip).as_deref(), Some(VIP));
    let (_source, store) = backed_up_node(
        5,
        Some(("kube-vip.yaml", &kube_vip)),
        &cluster_configuration(VIP),
        &format!("IP:{VIP}"),
    );
    let target = Target::restored(store.path());
    let kubelet = Kubelet::start(&target);

    let out = target.finish(
        &["--output", "json"],
        &[("KUBEADM_DOUBLE_WAIT_SECONDS", "15")],
    );
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(
        report["apiserver"],
        format!("https://{VIP}:{APISERVER_PORT}")
    );
    assert!(static_pods(&report).contains(&"kube-vip.yaml"), "{report}");
    assert_eq!(
        fs::read_to_string(target.root().join("etc/kubernetes/manifests/kube-vip.yaml")).unwrap(),
        kube_vip
    );
    drop(kubelet);
}

/// The directory a recovery moved expiring leaf certificates to (`pki.cpr-old-<stamp>-expired`).
fn expired_dir(root: &Path) -> PathBuf {
    fs::read_dir(root.join("etc/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("pki.cpr-old-") && name.ends_with("-expired")
        })
        .unwrap_or_else(|| panic!("no pki.cpr-old-*-expired under {}", root.display()))
}

/// A bundle taken a year on: kube-apiserver's serving certificate expired three days ago (kubeadm's
/// certs phase refuses it: `VerifyCertChain`), etcd's expires in ten days (within `cpr check`'s
/// 30-day window). Both go aside with their keys, kubeadm signs new ones with the restored CAs, the
/// control plane comes up with them, and the report names them.
#[test]
fn expired_and_expiring_leaf_certificates_are_regenerated_and_the_old_ones_kept() {
    let (_source, store) =
        backed_up_node_with(5, None, &cluster_configuration(NODE_IP), "", |source| {
            let pki = &source.pki("");
            let api_sans = [
                NODE_NAME,
                "kubernetes",
                "kubernetes.default",
                NODE_IP,
                "10.96.0.1",
            ];
            reissue_leaf(pki, "apiserver", "ca", "kube-apiserver", &api_sans, -3);
            let etcd_sans = ["localhost", NODE_NAME, NODE_IP, "127.0.0.1", "::1"];
            reissue_leaf(pki, "etcd/server", "etcd/ca", NODE_NAME, &etcd_sans, 10);
        });
    let target = Target::restored(store.path());
    let root = target.root();
    let pki = root.join("etc/kubernetes/pki");
    let renewed = [
        "apiserver.crt",
        "apiserver.key",
        "etcd/server.crt",
        "etcd/server.key",
    ];
    let contents = |files: &[&str]| -> Vec<Vec<u8>> {
        files
            .iter()
            .map(|f| fs::read(pki.join(f)).unwrap())
            .collect()
    };
    let restored = contents(&renewed);
    let kept = [
        "ca.crt",
        "ca.key",
        "etcd/ca.crt",
        "sa.key",
        "apiserver-kubelet-client.crt",
    ];
    let untouched = contents(&kept);

    let kubelet = Kubelet::start(&target);
    let out = target.finish(&["--output", "json"], &[]);
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    drop(kubelet);

    assert_eq!(
        report["regeneratedCertificates"],
        serde_json::json!(["apiserver", "etcd/server"]),
        "{report}"
    );
    // etcd answered over its new serving certificate, kube-apiserver over its new one.
    assert!(
        report["etcdRevision"].as_i64().unwrap() > 1_000_000_000,
        "{report}"
    );
    let aside = expired_dir(root);
    for (file, bytes) in renewed.iter().zip(&restored) {
        assert_eq!(
            &fs::read(aside.join(file)).unwrap(),
            bytes,
            "{file} kept aside"
        );
        assert_ne!(
            &fs::read(pki.join(file)).unwrap(),
            bytes,
            "{file} regenerated"
        );
    }
    for (file, bytes) in kept.iter().zip(&untouched) {
        assert_eq!(
            &fs::read(pki.join(file)).unwrap(),
            bytes,
            "{file} untouched"
        );
    }
    for (leaf, ca) in [("apiserver", "ca"), ("etcd/server", "etcd/ca")] {
        let verify = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(pki.join(format!("{ca}.crt")))
            .arg(pki.join(format!("{leaf}.crt")))
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{leaf}: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    let state: Value =
        serde_json::from_slice(&fs::read(root.join("var/lib/cpr/state.json")).unwrap()).unwrap();
    for file in renewed {
        let path = aside.join(file).display().to_string();
        assert!(
            state["movedAside"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == &path),
            "{state}"
        );
    }
    // Run again: nothing more is moved, and the report still says what was regenerated.
    let before = snapshot(root);
    let again: Value =
        serde_json::from_str(&ok(&target.finish(&["--output", "json"], &[]))).unwrap();
    assert_eq!(
        again["regeneratedCertificates"],
        report["regeneratedCertificates"]
    );
    assert_eq!(snapshot(root), before);
}

/// An expired CA cannot be renewed by kubeadm: `cpr finish` refuses before it changes a file or runs
/// kubeadm, names the CA and says what to do.
#[test]
fn an_expired_ca_is_refused_before_anything_changes() {
    let (_source, store) =
        backed_up_node_with(5, None, &cluster_configuration(NODE_IP), "", |source| {
            fs::write(
                source.pki("front-proxy-ca.crt"),
                cert_expiring_in(-1, "front-proxy-ca"),
            )
            .unwrap()
        });
    let target = Target::restored(store.path());
    let root = target.root();
    let before = tree_with_modes(root);

    let out = target.finish(&[], &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("front-proxy-ca.crt")
            && message.contains("has expired")
            && message.contains("Manual rotation of CA certificates")
            && message.contains("nothing was changed")
            && message.contains("run `cpr finish` again"),
        "{message}"
    );
    assert!(!root.join("var/log/kubeadm-double.log").exists());
    assert_eq!(tree_with_modes(root), before);
}

/// Version skew through a whole restore (the matrix in tests/version_skew.rs covers every combination
/// without one): kubeadm 1.31 restoring a v1.30 cluster whose ClusterConfiguration is v1beta3 gets it
/// as v1beta4 (extraArgs as name/value lists, the control-plane timeout moved to the
/// InitConfiguration) and brings the control plane back; kubeadm 1.29 and kubelet 1.29 are refused for
/// a v1.27 bundle before anything changes, naming the packages to install.
#[test]
fn version_skew_is_converted_or_refused_before_kubeadm_runs() {
    let cluster = cluster_configuration(NODE_IP).replace("v1.27.4", "v1.30.5").replace(
        "etcd:\n",
        "apiServer:\n  timeoutForControlPlane: 4m0s\n  extraArgs:\n    audit-log-maxage: \"30\"\n    authorization-mode: Node,RBAC\netcd:\n",
    );
    let (_source, store) = backed_up_node(5, None, &cluster, "");
    let versions = [
        ("KUBEADM_DOUBLE_VERSION", "v1.31.2"),
        ("KUBELET_DOUBLE_VERSION", "v1.30.5"),
    ];
    let target = Target::restored(store.path());
    let kubelet = Kubelet::start(&target);
    let out = target.finish(&["--output", "json"], &versions);
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    drop(kubelet);
    assert!(
        report["etcdRevision"].as_i64().unwrap() > 1_000_000_000,
        "{report}"
    );
    let calls = log_lines(&target.root().join("var/log/kubeadm-double.log"));
    let init = calls.iter().find(|c| c["argv"][1] == "init").unwrap();
    let config = init["config"].as_str().unwrap();
    let docs: Vec<serde_norway::Value> = config
        .split("---\n")
        .map(|d| serde_norway::from_str(d).unwrap())
        .collect();
    assert_eq!(docs[0]["apiVersion"], "kubeadm.k8s.io/v1beta4", "{config}");
    assert_eq!(
        docs[0]["timeouts"]["controlPlaneComponentHealthCheck"],
        "4m0s"
    );
    assert_eq!(docs[1]["apiVersion"], "kubeadm.k8s.io/v1beta4");
    assert_eq!(
        serde_json::to_value(&docs[1]["apiServer"]).unwrap(),
        serde_json::json!({"extraArgs": [
            {"name": "audit-log-maxage", "value": "30"},
            {"name": "authorization-mode", "value": "Node,RBAC"}
        ]})
    );
    assert!(!stderr(&out).contains("unknown field"), "{}", stderr(&out));

    let refused = Target::restored(store.path());
    let before = tree_with_modes(refused.root());
    let out = refused.finish(
        &[],
        &[
            ("KUBEADM_DOUBLE_VERSION", "v1.32.0"),
            ("KUBELET_DOUBLE_VERSION", "v1.31.1"),
        ],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains(
            "kubeadm v1.32.0 deploys control planes from v1.31.0 on, not the bundle's v1.30.5"
        ) && message.contains("kubelet v1.31.1 is newer than the bundle's control plane v1.30.5")
            && message.contains("apt-get install kubeadm=1.30.* kubelet=1.30.*")
            && message.contains("Nothing was changed"),
        "{message}"
    );
    assert_eq!(tree_with_modes(refused.root()), before);
    let calls = log_lines(&refused.root().join("var/log/kubeadm-double.log"));
    assert!(calls.iter().all(|c| c["argv"][1] != "init"), "{calls:?}");
}

/// kube-apiserver's storage of the source cluster: `(etcd key, value)` for each object.
type Objects = Vec<(String, Vec<u8>)>;

/// A customised cluster's objects: kubeadm v1.27's component configs as an operator edited them
/// (tests/fixtures/component-configs: kubelet cgroupfs and maxPods 250, kube-proxy ipvs with strictARP),
/// CoreDNS, kube-proxy's DaemonSet when `kube_proxy`, and the Node with `taints`.
fn cluster_objects(kube_proxy: bool, taints: &[&str]) -> Objects {
    let key = |resource: &str, name: &str| format!("/registry/{resource}/kube-system/{name}");
    let mut objects = vec![
        (
            key("configmaps", "kubelet-config"),
            stored(&[
                "kube-system",
                "kubelet-config",
                "kubelet=kubelet-config.yaml",
            ]),
        ),
        (
            key("configmaps", "kube-proxy"),
            stored(&[
                "kube-system",
                "kube-proxy",
                "config.conf=kube-proxy-config.conf",
            ]),
        ),
        (
            key("deployments", "coredns"),
            stored(&["--deployment", "kube-system", "coredns"]),
        ),
        (
            format!("/registry/minions/{NODE_NAME}"),
            stored(&[&["--node", NODE_NAME][..], taints].concat()),
        ),
    ];
    if kube_proxy {
        objects.push((
            key("daemonsets", "kube-proxy"),
            stored(&["--daemonset", "kube-system", "kube-proxy"]),
        ));
    }
    objects
}

/// A source node holding `objects` in its etcd and an operator's `--node-ip` in kubeadm-flags.env
/// (the fixture kubeadm v1.27+ writes), backed up with `cluster` as its ClusterConfiguration.
fn backed_up_cluster(objects: &Objects, cluster: &str) -> (KubeadmNode, tempfile::TempDir) {
    backed_up_node_with(5, None, cluster, "", |source| {
        for (key, value) in objects {
            etcdctl_put(source.etcdctl_command(), key, value);
        }
        fs::copy(
            fixtures().join("component-configs/kubeadm-flags.env"),
            source.root().join("var/lib/kubelet/kubeadm-flags.env"),
        )
        .unwrap();
    })
}

/// The manifest file names of the report's `staticPods`.
fn static_pods(report: &Value) -> Vec<&str> {
    report["staticPods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// The value of `key` in the restored node's running etcd (kubeadm's ports, in its namespace).
fn restored_value(target: &Target, key: &str) -> Option<Vec<u8>> {
    let out = etcdctl_tls(
        target.ns.command(EtcdVersion::V3_5.etcdctl()),
        &format!("https://127.0.0.1:{ETCD_CLIENT_PORT}"),
        &target.root().join("etc/kubernetes/pki"),
    )
    .args(["get", key, "--print-value-only"])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut value = out.stdout;
    // etcdctl ends the value with a newline.
    value.pop()?;
    Some(value)
}

fn restored_config(target: &Target, name: &str, data_key: &str) -> String {
    let key = format!("/registry/configmaps/kube-system/{name}");
    let value = restored_value(target, &key).unwrap_or_else(|| panic!("{key} is missing"));
    cpr::k8s::config_map(&value).unwrap().data[data_key].clone()
}

fn restored_taints(target: &Target) -> Vec<(String, String, String)> {
    let value = restored_value(target, &format!("/registry/minions/{NODE_NAME}")).unwrap();
    cpr::k8s::node(&value)
        .unwrap()
        .taints
        .into_iter()
        .map(|t| (t.key, t.value, t.effect))
        .collect()
}

/// A cluster whose operator customised kubelet (cgroupfs, maxPods 250) and kube-proxy (ipvs,
/// strictARP for MetalLB), removed the control-plane taint from its single node and gave kubelet
/// `--node-ip`: after the restore, the etcd the cluster runs on holds those settings, not kubeadm's
/// defaults; the node stays untainted; kubelet keeps --node-ip; the report says what was carried.
#[test]
fn a_customised_cluster_keeps_its_kubelet_and_kube_proxy_settings_taints_and_kubelet_flags() {
    let (_source, store) =
        backed_up_cluster(&cluster_objects(true, &[]), &cluster_configuration(NODE_IP));
    let target = Target::restored(store.path());
    let kubelet = Kubelet::start(&target);
    let out = target.finish(&["--output", "json"], &[]);
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();

    let kubelet_config = restored_config(&target, "kubelet-config", "kubelet");
    assert!(
        kubelet_config.contains("cgroupDriver: cgroupfs")
            && kubelet_config.contains("maxPods: 250"),
        "{kubelet_config}"
    );
    let proxy = restored_config(&target, "kube-proxy", "config.conf");
    assert!(
        proxy.contains("mode: ipvs") && proxy.contains("strictARP: true"),
        "{proxy}"
    );
    assert!(restored_value(&target, "/registry/daemonsets/kube-system/kube-proxy").is_some());
    assert_eq!(restored_taints(&target), vec![]);
    drop(kubelet);
    let flags =
        fs::read_to_string(target.root().join("var/lib/kubelet/kubeadm-flags.env")).unwrap();
    assert!(flags.contains("--node-ip=10.0.0.5"), "{flags}");
    let local = fs::read_to_string(target.root().join("var/lib/kubelet/config.yaml")).unwrap();
    assert!(local.contains("cgroupDriver: cgroupfs"), "{local}");

    let carried = &report["carriedOver"];
    assert_eq!(
        carried["kubeletConfiguration"],
        "/registry/configmaps/kube-system/kubelet-config"
    );
    assert_eq!(carried["kubeProxyConfiguration"], true);
    assert_eq!(carried["skipPhases"], serde_json::json!([]));
    assert_eq!(carried["taints"], serde_json::json!([]));
    assert_eq!(
        carried["kubeletExtraArgs"],
        serde_json::json!(["--node-ip=10.0.0.5"])
    );
    assert_eq!(report["kubeadmChanges"], serde_json::json!([]), "{report}");
    let text = ok(&target.finish(&[], &[]));
    assert!(text.contains("already finished"), "{text}");
}

/// kubeadm 1.31 restoring a v1.30 cluster without kube-proxy (a CNI replaces it) whose node carries
/// the operator's taint and not kubeadm's: the v1beta4 config kubeadm gets skips addon/kube-proxy
/// (so no DaemonSet comes back and kubeadm records proxy.disabled), lists the taint and the
/// kubeletExtraArgs as v1beta4 lists; the restored etcd shows it. The report names what kubeadm
/// changed compared with the backup: nothing of the node, kube-proxy untouched.
#[test]
fn a_cluster_without_kube_proxy_gets_none_back_and_keeps_its_taints_through_v1beta4() {
    let cluster = cluster_configuration(NODE_IP).replace("v1.27.4", "v1.30.5");
    let (_source, store) = backed_up_cluster(
        &cluster_objects(false, &["dedicated=infra:NoSchedule"]),
        &cluster,
    );
    let target = Target::restored(store.path());
    let kubelet = Kubelet::start(&target);
    let versions = [
        ("KUBEADM_DOUBLE_VERSION", "v1.31.2"),
        ("KUBELET_DOUBLE_VERSION", "v1.30.5"),
    ];
    let out = target.finish(&["--output", "json"], &versions);
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();

    assert_eq!(
        restored_value(&target, "/registry/daemonsets/kube-system/kube-proxy"),
        None
    );
    assert_eq!(
        restored_taints(&target),
        vec![("dedicated".into(), "infra".into(), "NoSchedule".into())]
    );
    let uploaded = restored_config(&target, "kubeadm-config", "ClusterConfiguration");
    let uploaded: serde_norway::Value = serde_norway::from_str(&uploaded).unwrap();
    assert_eq!(uploaded["proxy"]["disabled"], true, "{uploaded:?}");
    drop(kubelet);

    let calls = log_lines(&target.root().join("var/log/kubeadm-double.log"));
    let config = calls.iter().find(|c| c["argv"][1] == "init").unwrap()["config"]
        .as_str()
        .unwrap()
        .to_string();
    let init: serde_norway::Value =
        serde_norway::from_str(config.split("---\n").next().unwrap()).unwrap();
    assert_eq!(init["apiVersion"], "kubeadm.k8s.io/v1beta4", "{config}");
    assert_eq!(
        serde_json::to_value(&init["skipPhases"]).unwrap(),
        serde_json::json!(["addon/kube-proxy"])
    );
    assert_eq!(
        serde_json::to_value(&init["nodeRegistration"]["kubeletExtraArgs"]).unwrap(),
        serde_json::json!([{"name": "node-ip", "value": "10.0.0.5"}])
    );
    assert_eq!(
        serde_json::to_value(&init["nodeRegistration"]["taints"]).unwrap(),
        serde_json::json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}])
    );
    assert!(config.contains("kind: KubeletConfiguration"), "{config}");
    assert!(!config.contains("kind: KubeProxyConfiguration"), "{config}");
    assert_eq!(
        report["carriedOver"]["skipPhases"],
        serde_json::json!(["addon/kube-proxy"])
    );
    assert_eq!(report["kubeadmChanges"], serde_json::json!([]), "{report}");
}

/// The replacement machine's address: the lost node had `NODE_IP` (a loopback stand-in for
/// 10.0.1.10, where the source's real etcd ran on this host).
const NEW_IP: &str = "10.0.1.20";
const WORKER_IP: &str = "10.0.1.30";
const WORKERS: [&str; 2] = ["worker0", "worker1"];
/// Pods of the source cluster (name, `k8s-app` label): kube-proxy's restart on a new address.
const KUBE_SYSTEM_PODS: [(&str, &str); 2] = [
    ("kube-proxy-7xk2p", "kube-proxy"),
    ("coredns-5d78c9869d-q2x4v", "kube-dns"),
];

/// A source cluster with two worker Nodes and Cilium's ConfigMap pinning the API server to the
/// node's address (`k8s-service-host`), backed up with `cluster` as its ClusterConfiguration.
fn cluster_with_workers(
    cluster: &str,
    apiserver_sans: &str,
    kube_proxy: bool,
) -> (KubeadmNode, tempfile::TempDir) {
    let pinned = tempfile::NamedTempFile::new().unwrap();
    fs::write(pinned.path(), NODE_IP).unwrap();
    let mut objects = cluster_objects(kube_proxy, &[]);
    for worker in WORKERS {
        objects.push((
            format!("/registry/minions/{worker}"),
            stored(&["--node", worker]),
        ));
    }
    for (pod, app) in KUBE_SYSTEM_PODS {
        objects.push((
            format!("/registry/pods/kube-system/{pod}"),
            stored(&[
                "--pod",
                "kube-system",
                pod,
                &format!("k8s-app={app}"),
                &format!("@{NODE_NAME}"),
            ]),
        ));
    }
    objects.push((
        "/registry/configmaps/kube-system/cilium-config".to_string(),
        stored(&[
            "kube-system",
            "cilium-config",
            &format!("k8s-service-host={}", pinned.path().display()),
        ]),
    ));
    backed_up_node_with(5, None, cluster, apiserver_sans, |source| {
        for (key, value) in &objects {
            etcdctl_put(source.etcdctl_command(), key, value);
        }
    })
}

/// `cpr restore --new-address --no-finish --output json` as a machine named `name` at `NEW_IP`:
/// the restore's report.
fn restore_onto_new_address(target: &Target, store: &Path, name: &str) -> Output {
    let root = target.root().to_str().unwrap();
    let args = [
        "restore",
        "--store",
        store.to_str().unwrap(),
        "--root",
        root,
        "--node",
        NODE_NAME,
        "--hostname",
        name,
        "--ip",
        NEW_IP,
        "--new-address",
        "--no-finish",
        "--output",
        "json",
    ];
    target.cpr(&args, &[("KUBEADM_DOUBLE_HOSTNAME", name)])
}

/// The SAN IPs of a PEM certificate, and whether `ca` signed it (openssl verify).
fn sans_and_signer(cert: &Path, ca: &Path) -> (Vec<std::net::IpAddr>, bool) {
    let info = cpr::node::certs::read_cert(cert).unwrap();
    let verified = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap()
        .status
        .success();
    (info.ips, verified)
}

/// A GET of `path` on `server` from inside `ns` with `ca` as the only trust anchor and `kubeconfig`'s
/// client credentials: the HTTP status, or the TLS/connection error.
fn get_with(ns: &NetNs, server: &str, path: &str, ca: &Path, kubeconfig: &Path) -> String {
    let config = cpr::node::kubeconfig::Kubeconfig::load(kubeconfig).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("cert.pem"), &config.client_cert_pem).unwrap();
    fs::write(dir.path().join("key.pem"), &config.client_key_pem).unwrap();
    let script = format!(
        "import ssl, urllib.request\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         ctx.load_cert_chain({d:?} + '/cert.pem', {d:?} + '/key.pem')\n\
         try:\n\
         \x20   print(urllib.request.urlopen({url:?}, context=ctx, timeout=10).status)\n\
         except Exception as e:\n\
         \x20   print('error', e)",
        ca = ca.display().to_string(),
        d = dir.path().display().to_string(),
        url = format!("{server}{path}"),
    );
    let out = ns
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `cpr worker repoint --server SERVER --root ROOT` inside the worker's namespace (the systemctl
/// double on PATH records the kubelet restart under ROOT).
fn repoint(worker: &NetNs, root: &Path, server: &str) -> Output {
    let path = format!("{}:{}", doubles().display(), std::env::var("PATH").unwrap());
    let root = root.to_str().unwrap();
    run_cpr(
        worker.command(cpr_bin()),
        &["worker", "repoint", "--server", server, "--root", root],
        &[("PATH", path.as_str()), ("KUBEADM_DOUBLE_ROOT", root)],
    )
}

/// The lost node had NODE_IP and the name master0; the replacement gets 10.0.1.20 and keeps the name.
/// Before anything changes the plan names the re-issued certificates, the etcd member's new peer URL,
/// the workers' command and Cilium's pinned address. Afterwards real etcd serves the restored data on
/// the new address with a certificate for it signed by the restored etcd CA, the apiserver double serves
/// a regenerated certificate that a client with the restored CA and admin credentials accepts, and a
/// worker whose kubelet.conf names the old address follows with `cpr worker repoint` — refusing a
/// server whose certificate another CA signed, changing nothing.
#[test]
fn a_replacement_on_a_new_address_serves_the_restored_cluster_and_its_workers_follow() {
    let (source, store) = cluster_with_workers(&cluster_configuration(NODE_IP), "", true);
    let target = Target::provisioned();
    let worker = NetNs::new();
    target
        .ns
        .link(&worker, &format!("{NEW_IP}/24"), &format!("{WORKER_IP}/24"));
    let root = target.root();
    let new_server = format!("https://{NEW_IP}:{APISERVER_PORT}");

    // The text report of a preview (--plan-only) gives each worker its command, and changes nothing.
    let before = tree_with_modes(root);
    let preview = ok(&target.cpr(
        &[
            "restore",
            "--store",
            store.path().to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--node",
            NODE_NAME,
            "--hostname",
            NODE_NAME,
            "--ip",
            NEW_IP,
            "--new-address",
            "--plan-only",
        ],
        &[],
    ));
    for name in WORKERS {
        assert!(
            preview.contains(&format!(
                "worker {name}: run `cpr worker repoint --server {new_server}` on it"
            )),
            "{preview}"
        );
    }
    assert_eq!(tree_with_modes(root), before);

    let out = restore_onto_new_address(&target, store.path(), NODE_NAME);
    let restored: Value = serde_json::from_str(&ok(&out)).unwrap();
    let plan = &restored["restore"]["newAddress"];
    assert_eq!(plan["newAddress"], NEW_IP, "{plan}");
    assert_eq!(
        plan["etcdPeerUrl"],
        format!("https://{NEW_IP}:{ETCD_PEER_PORT}")
    );
    assert_eq!(plan["etcdMember"], NODE_NAME);
    let reissued: Vec<&str> = plan["reissuedCertificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        reissued,
        ["apiserver", "etcd/server", "etcd/peer"],
        "{plan}"
    );
    assert!(
        plan["keptCertificates"].to_string().contains("\"ca\""),
        "{plan}"
    );
    assert_eq!(
        plan["controlPlaneEndpoint"]["newServer"], new_server,
        "{plan}"
    );
    for (i, name) in WORKERS.iter().enumerate() {
        assert_eq!(plan["workers"][i]["node"], *name, "{plan}");
        assert_eq!(
            plan["workers"][i]["command"],
            format!("cpr worker repoint --server {new_server}")
        );
    }
    assert!(plan["pinnedSettings"][0]
        .as_str()
        .unwrap()
        .contains("kube-system/cilium-config key k8s-service-host"));
    assert_eq!(plan["oldNode"], Value::Null);
    // The plan is said, as the operator reads it, before the swap.
    let log = stderr(&out);
    let plan_at = log.find("restore onto a new address").unwrap();
    assert!(
        plan_at < log.find("restore: pki and the etcd data dir").unwrap(),
        "{log}"
    );
    for name in WORKERS {
        assert!(
            log[plan_at..].contains(&format!(
                "worker {name}: run `cpr worker repoint --server {new_server}` on it"
            )),
            "{log}"
        );
    }

    let kubelet = Kubelet::start(&target);
    let report: Value =
        serde_json::from_str(&ok(&target.finish(&["--output", "json"], &[]))).unwrap();
    assert_eq!(
        report["apiserver"],
        format!("https://{NEW_IP}:{APISERVER_PORT}"),
        "{report}"
    );
    let calls = log_lines(&root.join("var/log/kubeadm-double.log"));
    let config = calls[0]["config"].as_str().unwrap();
    assert!(
        config.contains(&format!("advertiseAddress: {NEW_IP}"))
            && config.contains(&format!("controlPlaneEndpoint: {NEW_IP}:{APISERVER_PORT}")),
        "{config}"
    );
    assert_eq!(
        report["readdressedCertificates"],
        serde_json::json!(["apiserver", "etcd/server", "etcd/peer"])
    );
    let steps = report["newAddressSteps"].to_string();
    // kube-proxy reads its kubeconfig at start: its pod's deletion was asked through the API,
    // nothing else's. A scheduled pod stays, terminating, until its node's kubelet confirms.
    assert!(
        steps.contains("kube-proxy pod kube-proxy-7xk2p: deletion requested"),
        "{steps}"
    );
    let deletes: Vec<String> = log_lines(&root.join("var/log/fake-apiserver.log"))
        .iter()
        .filter(|l| l["method"] == "DELETE")
        .map(|l| l["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        deletes,
        ["/api/v1/namespaces/kube-system/pods/kube-proxy-7xk2p"]
    );
    assert!(restored_value(&target, "/registry/pods/kube-system/kube-proxy-7xk2p").is_some());
    assert!(restored_value(
        &target,
        "/registry/pods/kube-system/coredns-5d78c9869d-q2x4v"
    )
    .is_some());
    for name in [
        "kube-public/cluster-info",
        "kube-system/kube-proxy",
        "kube-system/kubeadm-config",
    ] {
        assert!(
            steps.contains(&format!("ConfigMap {name}: names {new_server}")),
            "{steps}"
        );
    }
    // The old certificates are kept aside; the new ones name the new address, signed by the restored CAs.
    let aside = fs::read_dir(root.join("etc/kubernetes"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("-readdressed"))
        .unwrap()
        .path();
    assert_eq!(
        fs::read(aside.join("apiserver.crt")).unwrap(),
        fs::read(source.pki("apiserver.crt")).unwrap()
    );
    let pki = root.join("etc/kubernetes/pki");
    for (cert, ca) in [
        ("apiserver.crt", "ca.crt"),
        ("etcd/server.crt", "etcd/ca.crt"),
        ("etcd/peer.crt", "etcd/ca.crt"),
    ] {
        assert_eq!(
            fs::read(pki.join(ca)).unwrap(),
            fs::read(source.pki(ca)).unwrap()
        );
        let (ips, signed) = sans_and_signer(&pki.join(cert), &source.pki(ca));
        assert!(
            signed && ips.contains(&NEW_IP.parse().unwrap()),
            "{cert}: {ips:?}"
        );
        assert!(!ips.contains(&NODE_IP.parse().unwrap()), "{cert}: {ips:?}");
    }

    // The backed-up versions of kubeadm's manifests came back on the new address.
    let manifests = root.join("etc/kubernetes/manifests");
    let apiserver = fs::read_to_string(manifests.join("kube-apiserver.yaml")).unwrap();
    assert!(
        apiserver.contains(&format!("--advertise-address={NEW_IP}")),
        "{apiserver}"
    );
    let etcd = fs::read_to_string(manifests.join("etcd.yaml")).unwrap();
    assert!(
        etcd.contains(&format!(
            "--listen-peer-urls=https://{NEW_IP}:{ETCD_PEER_PORT}"
        )) && !etcd.contains(NODE_IP),
        "{etcd}"
    );
    // Real etcd serves the restored data on the new address, to a client trusting the source's etcd CA.
    let keys = run(etcdctl_tls(
        worker.command(EtcdVersion::V3_5.etcdctl()),
        &format!("https://{NEW_IP}:{ETCD_CLIENT_PORT}"),
        &source.root().join("etc/kubernetes/pki"),
    )
    .args(["get", "--prefix", "--keys-only", "/registry/minions/"]));
    assert!(keys.contains("/registry/minions/worker0"), "{keys}");
    // The API server answers a client with the restored CA and the admin credentials, from the worker.
    let admin = root.join("etc/kubernetes/admin.conf");
    assert_eq!(
        get_with(
            &worker,
            &new_server,
            "/api/v1/nodes",
            &source.pki("ca.crt"),
            &admin
        ),
        "200"
    );

    // A worker whose kubelet.conf names the old address: a forged server is refused, nothing changes.
    let worker_root = tempfile::tempdir().unwrap();
    let conf = worker_root.path().join("etc/kubernetes/kubelet.conf");
    fs::create_dir_all(conf.parent().unwrap()).unwrap();
    fs::copy(source.root().join("etc/kubernetes/kubelet.conf"), &conf).unwrap();
    let forged = tempfile::tempdir().unwrap();
    run(
        std::process::Command::new(fixtures().join("kubeadm-node")).args([
            forged.path().to_str().unwrap(),
            NODE_NAME,
            NEW_IP,
            "1",
            "2",
        ]),
    );
    let mut impostor = target
        .ns
        .command(doubles().join("fake-apiserver"))
        .args(["--root", forged.path().to_str().unwrap(), "--listen"])
        .arg(format!("{NEW_IP}:7443"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(impostor.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let before = tree_with_modes(worker_root.path());
    let refused = repoint(
        &worker,
        worker_root.path(),
        &format!("https://{NEW_IP}:7443"),
    );
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert_eq!(refused.status.code(), Some(8), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("did not prove to be this cluster's API server")
            && stderr(&refused).contains("Nothing was changed"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(tree_with_modes(worker_root.path()), before);

    let old = fs::read(&conf).unwrap();
    let said = ok(&repoint(&worker, worker_root.path(), &new_server));
    assert!(said.contains(&format!("now names {new_server}")), "{said}");
    let now = cpr::node::kubeconfig::Kubeconfig::load(&conf).unwrap();
    assert_eq!(now.server, new_server);
    let kept: Vec<_> = fs::read_dir(conf.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("kubelet.conf.cpr-old-")
        })
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(fs::read(kept[0].path()).unwrap(), old);
    let systemctl = log_lines(&worker_root.path().join("var/log/systemctl.log"));
    assert!(
        systemctl
            .iter()
            .any(|l| l["argv"].to_string().contains("restart")),
        "{systemctl:?}"
    );
    // A second run finds nothing to change.
    let again = ok(&repoint(&worker, worker_root.path(), &new_server));
    assert!(again.contains("nothing changed"), "{again}");
    // With the repointed kubeconfig the worker reaches the new control plane.
    assert_eq!(
        get_with(
            &worker,
            &new_server,
            "/healthz",
            &source.pki("ca.crt"),
            &conf
        ),
        "200"
    );
    drop(kubelet);
}

/// The controlPlaneEndpoint was unset (kubeadm used the advertise address and never fills it in),
/// and kubeadm's kube-proxy phase is skipped (a kube-proxy ConfigMap but no DaemonSet kubeadm
/// manages): the plan moves the server but leaves kubeadm-config out of the checks, names kube-proxy's
/// ConfigMap for the operator, and cpr deletes no pod.
#[test]
fn an_unset_endpoint_and_a_skipped_kube_proxy_phase_are_planned_as_they_are() {
    let cluster: String = cluster_configuration(NODE_IP)
        .lines()
        .filter(|l| !l.starts_with("controlPlaneEndpoint"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (_source, store) = cluster_with_workers(&cluster, "", false);
    let target = Target::provisioned();
    let worker = NetNs::new();
    target
        .ns
        .link(&worker, &format!("{NEW_IP}/24"), &format!("{WORKER_IP}/24"));
    let out = restore_onto_new_address(&target, store.path(), NODE_NAME);
    let restored: Value = serde_json::from_str(&ok(&out)).unwrap();
    let plan = &restored["restore"]["newAddress"];
    assert_eq!(plan["controlPlaneEndpoint"]["set"], false, "{plan}");
    assert_eq!(plan["kubeProxy"], "byHand", "{plan}");

    let kubelet = Kubelet::start(&target);
    let report: Value =
        serde_json::from_str(&ok(&target.finish(&["--output", "json"], &[]))).unwrap();
    let steps = report["newAddressSteps"].to_string();
    let new_server = format!("https://{NEW_IP}:{APISERVER_PORT}");
    assert!(
        steps.contains(&format!(
            "ConfigMap kube-public/cluster-info: names {new_server}"
        )) && !steps.contains("kubeadm-config")
            && !steps.contains("NOT")
            && steps.contains("kubectl -n kube-system edit configmap kube-proxy"),
        "{steps}"
    );
    assert!(
        !log_lines(&target.root().join("var/log/fake-apiserver.log"))
            .iter()
            .any(|l| l["method"] == "DELETE"),
        "no pod deleted"
    );
    drop(kubelet);
}

/// `/etc/netns/NS/hosts`, which `ip netns exec` mounts over /etc/hosts inside NS: a DNS record for
/// the namespace alone, removed again on drop.
struct NetnsHosts(PathBuf);

impl NetnsHosts {
    fn new(ns: &NetNs, lines: &str) -> NetnsHosts {
        let dir = Path::new("/etc/netns").join(ns.name());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{lines}\n")).unwrap();
        NetnsHosts(dir)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The replacement also gets another name (master0b), and the controlPlaneEndpoint is a DNS name:
/// the plan renames the etcd member, re-issues the certificates naming master0, keeps the endpoint
/// and says the workers need nothing once the name leads to the new address; once the control plane
/// is up the old Node is deleted through the API and the new one serves.
#[test]
fn a_renamed_replacement_behind_a_dns_endpoint_needs_nothing_from_the_workers() {
    const ENDPOINT: &str = "cp.prod.internal";
    const NEW_NAME: &str = "master0b";
    let (_source, store) = cluster_with_workers(
        &cluster_configuration(ENDPOINT),
        &format!("DNS:{ENDPOINT}"),
        true,
    );
    let target = Target::provisioned();
    let worker = NetNs::new();
    target
        .ns
        .link(&worker, &format!("{NEW_IP}/24"), &format!("{WORKER_IP}/24"));
    let out = restore_onto_new_address(&target, store.path(), NEW_NAME);
    let restored: Value = serde_json::from_str(&ok(&out)).unwrap();
    let plan = &restored["restore"]["newAddress"];
    assert_eq!(
        (&plan["newName"], &plan["etcdMember"], &plan["oldNode"]),
        (
            &Value::from(NEW_NAME),
            &Value::from(NEW_NAME),
            &Value::from(NODE_NAME)
        ),
        "{plan}"
    );
    assert_eq!(plan["controlPlaneEndpoint"]["change"], "kept", "{plan}");
    assert_eq!(
        plan["controlPlaneEndpoint"]["endpoint"],
        format!("{ENDPOINT}:{APISERVER_PORT}")
    );
    assert!(plan["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["command"].is_null()));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "point it (its DNS record or load balancer) at {NEW_IP}"
        )) && said.contains("workers need nothing"),
        "{said}"
    );

    // Phase 2 while the name still leads to the lost node: refused before anything changes, as
    // kubeadm init would wait for the API server through it.
    let env = [("KUBEADM_DOUBLE_HOSTNAME", NEW_NAME)];
    let stale = NetnsHosts::new(&target.ns, &format!("{NODE_IP} {ENDPOINT}"));
    let before = tree_with_modes(&target.root().join("etc/kubernetes"));
    let refused = target.finish(&[], &env);
    assert_eq!(refused.status.code(), Some(8), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!(
            "{ENDPOINT}:{APISERVER_PORT} still resolves to the lost node's address {NODE_IP}"
        )) && stderr(&refused).contains(&format!(
            "Point {ENDPOINT} (its DNS record or load balancer) at {NEW_IP}, then run `cpr finish`"
        )),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        tree_with_modes(&target.root().join("etc/kubernetes")),
        before
    );
    assert!(!target.root().join("var/log/kubeadm-double.log").exists());
    drop(stale);

    // The operator points the name at the new address, as the plan says.
    let _dns = NetnsHosts::new(&target.ns, &format!("{NEW_IP} {ENDPOINT}"));
    let kubelet = Kubelet::start(&target);
    let report: Value =
        serde_json::from_str(&ok(&target.finish(&["--output", "json"], &env))).unwrap();
    let config = log_lines(&target.root().join("var/log/kubeadm-double.log"))[0]["config"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains(&format!("name: \"{NEW_NAME}\""))
            && config.contains(&format!("advertiseAddress: {NEW_IP}"))
            && config.contains(&format!(
                "controlPlaneEndpoint: {ENDPOINT}:{APISERVER_PORT}"
            )),
        "{config}"
    );
    let steps = report["newAddressSteps"].to_string();
    assert!(
        steps.contains(&format!("Node {NODE_NAME} deleted")),
        "{steps}"
    );
    // kubeadm's changes are read from the Node it marked, the new one.
    assert!(
        !report["kubeadmChanges"]
            .to_string()
            .contains("the Node is gone"),
        "{report}"
    );
    assert_eq!(
        restored_value(&target, &format!("/registry/minions/{NODE_NAME}")),
        None
    );
    assert!(restored_value(&target, &format!("/registry/minions/{NEW_NAME}")).is_some());
    assert!(
        report["nodes"][0].as_str().unwrap().starts_with(NEW_NAME),
        "{report}"
    );
    // etcd serves the restored data as member master0b on the new address.
    let members = run(etcdctl_tls(
        worker.command(EtcdVersion::V3_5.etcdctl()),
        &format!("https://{NEW_IP}:{ETCD_CLIENT_PORT}"),
        &target.root().join("etc/kubernetes/pki"),
    )
    .args(["member", "list"]));
    assert!(
        members.contains(&format!("{NEW_NAME}, https://{NEW_IP}:{ETCD_PEER_PORT}")),
        "{members}"
    );
    // The next backup of the restored node lands under its new name, and its node's listing holds
    // the bundles of its old name too.
    let root = target.root().to_str().unwrap();
    let store = store.path().to_str().unwrap();
    ok(&target.cpr(&["backup", "--root", root, "--store", store], &[]));
    assert!(Path::new(store).join(CLUSTER).join(NEW_NAME).is_dir());
    let listed = ok(&target.cpr(&["list", "--store", store, "--node", NEW_NAME], &[]));
    assert!(
        listed.contains(&format!("{NODE_NAME} (now {NEW_NAME})"))
            && listed.contains(&format!("{CLUSTER}/{NEW_NAME}/")),
        "{listed}"
    );
    // Pruning the new node to one bundle with several of the old name's: each name keeps its
    // newest, so the new node's only bundle stays.
    let new_dir = Path::new(store).join(CLUSTER).join(NEW_NAME);
    let bundles_in = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tar.zst"))
            .collect();
        names.sort();
        names
    };
    let new_bundles = bundles_in(&new_dir);
    let old_dir = Path::new(store).join(CLUSTER).join(NODE_NAME);
    let old_bundle = bundles_in(&old_dir).pop().unwrap();
    for stamp in ["20200101T000000Z", "20200102T000000Z"] {
        fs::copy(
            old_dir.join(&old_bundle),
            old_dir.join(format!("{stamp}.tar.zst")),
        )
        .unwrap();
    }
    ok(&target.cpr(
        &[
            "prune",
            "--store",
            store,
            "--node",
            NEW_NAME,
            "--keep-last",
            "1",
        ],
        &[],
    ));
    assert_eq!(bundles_in(&new_dir), new_bundles);
    assert_eq!(bundles_in(&old_dir), [old_bundle]);
    // `cpr check --bundle latest` for the new name checks its newest bundle.
    let checked = target.cpr(
        &[
            "check", "--store", store, "--bundle", "latest", "--node", NEW_NAME,
        ],
        &[],
    );
    assert!(
        String::from_utf8_lossy(&checked.stdout)
            .contains(&format!("{CLUSTER}/{NEW_NAME}/{}", new_bundles[0])),
        "{}",
        stderr(&checked)
    );
    drop(kubelet);
}
