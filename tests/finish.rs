//! Phase 2 (`cpr finish`) on a restored root, against the kubeadm double (tests/doubles: kubeadm's
//! preflight and config rules, read from kubeadm's source), a fake kube-apiserver serving the restored
//! certificates, and a real etcd that the test starts from the manifest kubeadm wrote, as kubelet would.
//!
//! Every port is picked at run time: the ClusterConfiguration moves etcd and kube-apiserver off
//! kubeadm's defaults through `extraArgs` and `controlPlaneEndpoint`, as operators do.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn doubles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles")
}

/// kubelet's part: runs the fake apiserver and, once kubeadm wrote etcd.yaml, a real etcd from it.
struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Child>>>,
}

impl Kubelet {
    fn start(root: &Path, ports: Ports) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let (root, flag) = (root.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut children = vec![Command::new(doubles().join("fake-apiserver"))
                .args([
                    "--root",
                    root.to_str().unwrap(),
                    "--listen",
                    &format!("{NODE_IP}:{}", ports.apiserver),
                ])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()];
            let manifest = root.join("etc/kubernetes/manifests/etcd.yaml");
            while !flag.load(Ordering::SeqCst) {
                // Like kubelet, restart the static pod when it exits (it may have started while
                // finish was swapping manifests, or been stopped by a failpoint's kill).
                if matches!(children.get_mut(1).map(Child::try_wait), Some(Ok(Some(_)))) {
                    children.truncate(1);
                }
                if children.len() == 1 && manifest.exists() {
                    std::thread::sleep(Duration::from_millis(300));
                    let log = fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(root.join("etcd.log"))
                        .unwrap();
                    children.push(
                        Command::new(fixtures().join("run-static-etcd"))
                            .arg(&root)
                            .arg(EtcdVersion::V3_5.etcd())
                            .stdout(log.try_clone().unwrap())
                            .stderr(log)
                            .spawn()
                            .unwrap(),
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            children
        });
        Kubelet {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for mut child in self.thread.take().unwrap().join().unwrap_or_default() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The ports of one test's control plane.
#[derive(Clone, Copy)]
struct Ports {
    apiserver: u16,
    etcd_client: u16,
    etcd_peer: u16,
}

impl Ports {
    fn pick() -> Ports {
        Ports {
            apiserver: free_port(),
            etcd_client: free_port(),
            etcd_peer: free_port(),
        }
    }
}

/// A source node whose ClusterConfiguration puts etcd and kube-apiserver on `ports`, backed up into
/// a directory store; its etcd is stopped (the node died). Returns the store.
fn backed_up_node(
    ports: Ports,
    keys: usize,
    extra_manifest: Option<(&str, &str)>,
) -> (KubeadmNode, tempfile::TempDir) {
    let mut source =
        KubeadmNode::start_with_apiserver_port(EtcdVersion::V3_5, keys, ports.apiserver);
    if let Some((name, text)) = extra_manifest {
        fs::write(
            source.root().join("etc/kubernetes/manifests").join(name),
            text,
        )
        .unwrap();
    }
    let (client, peer) = (ports.etcd_client, ports.etcd_peer);
    let cluster_config = source.root().join("cluster-configuration.yaml");
    fs::write(
        &cluster_config,
        format!(
            "apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
clusterName: {CLUSTER}
kubernetesVersion: v1.27.4
controlPlaneEndpoint: {NODE_IP}:{api}
apiServer:
  extraArgs:
    etcd-servers: https://127.0.0.1:{client}
etcd:
  local:
    dataDir: /var/lib/etcd
    extraArgs:
      listen-client-urls: https://127.0.0.1:{client},https://{NODE_IP}:{client}
      advertise-client-urls: https://{NODE_IP}:{client}
      listen-peer-urls: https://{NODE_IP}:{peer}
      initial-advertise-peer-urls: https://{NODE_IP}:{peer}
      initial-cluster: {NODE_NAME}=https://{NODE_IP}:{peer}
      listen-metrics-urls: http://127.0.0.1:0
networking:
  podSubnet: 192.168.0.0/16
  serviceSubnet: 10.96.0.0/12
",
            api = ports.apiserver
        ),
    )
    .unwrap();
    // The source's own etcd.yaml must advertise the peer URL the restored member will carry.
    let manifest = source.root().join("etc/kubernetes/manifests/etcd.yaml");
    let text = fs::read_to_string(&manifest)
        .unwrap()
        .replace(&format!(":{}", source.peer_port), &format!(":{peer}"));
    fs::write(&manifest, text).unwrap();
    let store = tempfile::tempdir().unwrap();
    ok(&cpr(&[
        "backup",
        "--root",
        source.root().to_str().unwrap(),
        "--store",
        store.path().to_str().unwrap(),
        "--endpoint",
        &source.endpoint(),
        "--cluster-config",
        cluster_config.to_str().unwrap(),
    ]));
    source.stop_etcd();
    (source, store)
}

fn finish_env(root: &Path, ports: Ports) -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            format!("{}:{}", doubles().display(), std::env::var("PATH").unwrap()),
        ),
        ("KUBEADM_DOUBLE_ROOT".into(), root.display().to_string()),
        ("KUBEADM_DOUBLE_SKIP_PORT_CHECKS".into(), "1".into()),
        ("KUBEADM_DOUBLE_ALLOW_LOOPBACK".into(), "1".into()),
        (
            "KUBEADM_DOUBLE_APISERVER".into(),
            format!("{NODE_IP}:{}", ports.apiserver),
        ),
        ("KUBEADM_DOUBLE_WAIT_SECONDS".into(), "60".into()),
        ("KUBEADM_DOUBLE_HOSTNAME".into(), NODE_NAME.into()),
        ("SUDO_USER".into(), "operator".into()),
    ]
}

fn cpr_in(root: &Path, ports: Ports, args: &[&str]) -> std::process::Output {
    let env = finish_env(root, ports);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cpr_env(args, &env)
}

/// A replacement node as provisioning leaves it: an operator account, IP forwarding on.
fn provisioned_target() -> tempfile::TempDir {
    let target = tempfile::tempdir().unwrap();
    let root = target.path();
    fs::create_dir_all(root.join("proc/sys/net/ipv4")).unwrap();
    fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "1\n").unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("home/operator")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\noperator:x:4242:4343:Operator:/home/operator:/bin/bash\n",
    )
    .unwrap();
    target
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

/// `cpr finish` as the unit's ExecStart runs it: inside the unit's start job, which the systemctl
/// double then holds to systemd's job ordering.
fn finish_as_unit(root: &Path, ports: Ports, extra: &[&str]) -> std::process::Output {
    let mut env = finish_env(root, ports);
    env.push(("SYSTEMCTL_DOUBLE_STARTING_UNIT".into(), FINISH_UNIT.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args = [
        &[
            "finish",
            "--root",
            root.to_str().unwrap(),
            "--timeout",
            "60",
            "--unit",
            FINISH_UNIT,
        ][..],
        extra,
    ]
    .concat();
    cpr_env(&args, &env)
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
    let ports = Ports::pick();
    let second_scheduler = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: second-scheduler\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n    - kube-scheduler\n    - --scheduler-name=second\n    image: registry.k8s.io/kube-scheduler:v1.27.4\n    name: second-scheduler\n";
    let (source, store) =
        backed_up_node(ports, 20, Some(("second-scheduler.yaml", second_scheduler)));
    let manifests = source.root().join("etc/kubernetes/manifests");

    let target = provisioned_target();
    let root = target.path();
    let owned = restore_args(store.path(), root, NODE_IP);
    let restore_args = with(&owned, &["--timeout", "60"]);
    ok(&cpr_in(
        root,
        ports,
        &[&restore_args[..], &["--no-finish"]].concat(),
    ));
    let kubelet = Kubelet::start(root, ports);
    let enabled = install_finish_unit(root);
    let out = finish_as_unit(root, ports, &["--output", "json"]);
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();

    // Run by its unit at boot: kubeadm's and cpr's `systemctl restart kubelet` never wait for the
    // unit's own start job, and once phase 2 succeeded the unit is disabled.
    assert_eq!(deadlocks(root), Vec::<Value>::new());
    assert!(!enabled.exists() && !enabled.is_symlink());
    assert!(!root.join("var/lib/cpr/finish-failed").exists());

    // kubeadm was asked for exactly the restore's exception, with the node and the backed-up cluster config.
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
        format!("https://{NODE_IP}:{}", ports.apiserver)
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
        report["staticPods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "second-scheduler.yaml"),
        "{report}"
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
    let again = cpr_in(root, ports, &restore_args);
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
    let ports = Ports::pick();
    let (_source, store) = backed_up_node(ports, 10, None);
    let restored = || {
        let target = provisioned_target();
        let root = target.path();
        let args = restore_args(store.path(), root, NODE_IP);
        ok(&cpr_in(root, ports, &with(&args, &["--no-finish"])));
        target
    };
    let finish = |root: &Path, env: &[(&str, &str)]| {
        let mut all = finish_env(root, ports);
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cpr_env(
            &[
                "finish",
                "--root",
                root.to_str().unwrap(),
                "--timeout",
                "60",
            ],
            &all,
        )
    };

    let reference = restored();
    let kubelet = Kubelet::start(reference.path(), ports);
    ok(&finish(reference.path(), &[]));
    drop(kubelet);
    let expected = outcome(reference.path());
    assert_eq!(expected.2, "finished");

    for point in [
        "finish:before-init",
        "finish:initialized",
        "finish:static-pods",
        "finish:healthy",
    ] {
        let target = restored();
        let kubelet = Kubelet::start(target.path(), ports);
        let killed = finish(target.path(), &[("CPR_FAILPOINT", point)]);
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "{point} was never reached: {}",
            stderr(&killed)
        );
        ok(&finish(target.path(), &[]));
        drop(kubelet);
        assert_eq!(outcome(target.path()), expected, "after a kill at {point}");
    }
}

/// A failed boot-time phase 2 is final: the unit is disabled, the failure recorded where the operator
/// looks (a marker, the console's login prompt, the login banner); `cpr finish` by hand then
/// completes the recovery and takes the notices away.
#[test]
fn a_failed_boot_time_finish_disables_its_unit_and_says_what_to_do() {
    let ports = Ports::pick();
    let (_source, store) = backed_up_node(ports, 5, None);
    let target = provisioned_target();
    let root = target.path();
    let args = restore_args(store.path(), root, NODE_IP);
    ok(&cpr_in(root, ports, &with(&args, &["--no-finish"])));
    let enabled = install_finish_unit(root);

    // The operator's mistake of the day: kubeadm is not installed on the replacement node.
    let failed = finish_as_unit(
        root,
        ports,
        &["--kubeadm", "/usr/bin/kubeadm-not-installed"],
    );
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

    let kubelet = Kubelet::start(root, ports);
    ok(&cpr_in(
        root,
        ports,
        &[
            "finish",
            "--root",
            root.to_str().unwrap(),
            "--timeout",
            "60",
        ],
    ));
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
