//! Control planes of several etcd members (issue 13): a lost quorum comes back from one snapshot on
//! every node, restored concurrently and unattended.
//!
//! Each node is a network namespace with its own address on one bridge (tests/common/netns.rs), its
//! root laid out by tests/fixtures/kubeadm-node with its own etcd peer and server certificates signed
//! by the shared etcd CA, running a real etcd 3.5 from its kubeadm static pod manifest. Needs root.

mod common;

use common::netns::NetNs;
use common::{cpr_bin, fixtures, ok, run, EtcdVersion, CLUSTER};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ETCD: EtcdVersion = EtcdVersion::V3_5;
/// Short in tests: the dead members refuse connections at once; the default is 30 s.
const PROBE_SECONDS: &str = "2";

struct Node {
    name: String,
    ip: String,
    ns: NetNs,
    dir: tempfile::TempDir,
    etcd: Option<Child>,
}

impl Node {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn endpoint(&self) -> String {
        format!("https://{}:2379", self.ip)
    }

    fn start_etcd(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.root().join("etcd.log"))
            .unwrap();
        let child = self
            .ns
            .command(fixtures().join("run-static-etcd"))
            .arg(self.root())
            .arg(ETCD.etcd())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.etcd = Some(child);
    }

    fn kill_etcd(&mut self) {
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// etcdctl inside this node's namespace, with its health-check client pair.
    fn etcdctl(&self, args: &[&str]) -> Output {
        let mut command = self.ns.command(ETCD.etcdctl());
        command.env("ETCDCTL_API", "3");
        common::etcdctl_tls(
            command,
            &self.endpoint(),
            &self.root().join("etc/kubernetes/pki"),
        )
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
    }

    fn etcdctl_json(&self, args: &[&str]) -> Value {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "{} etcdctl {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        assert!(out.status.success(), "get {key}: {}", common::stderr(&out));
        let value = String::from_utf8(out.stdout).unwrap();
        (!value.is_empty()).then(|| value.trim_end().to_string())
    }

    fn put(&self, key: &str, value: &str) {
        let out = self.etcdctl(&["put", key, value]);
        assert!(out.status.success(), "put {key}: {}", common::stderr(&out));
    }

    /// (revision, HashKV at that revision) of this member.
    fn revision_and_hash(&self) -> (i64, u64) {
        let status = self.etcdctl_json(&["endpoint", "status", "-w", "json"]);
        let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
        let hash = self.etcdctl_json(&[
            "endpoint",
            "hashkv",
            &format!("--rev={revision}"),
            "-w",
            "json",
        ]);
        (revision, hash[0]["HashKV"]["hash"].as_u64().unwrap())
    }

    /// The `etcd-members` check of `cpr check` on this node.
    fn members_check(&self) -> Value {
        let out = self
            .cpr(&[
                "check",
                "--root",
                self.root().to_str().unwrap(),
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("cpr check: {e}: {}", common::stderr(&out)));
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "etcd-members")
            .unwrap_or_else(|| panic!("no etcd-members check: {report}"))
            .clone()
    }

    fn cpr(&self, args: &[&str]) -> Command {
        let mut command = self.ns.command(cpr_bin());
        command
            .args(args)
            .env("CPR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// `cpr restore` phase 1 of this node from `store`, as the recovery boot runs it, started.
    fn restore(&self, store: &Path, extra: &[&str]) -> Child {
        self.restore_command(store.to_str().unwrap(), extra)
            .spawn()
            .unwrap()
    }

    /// `cpr restore` phase 1 of this node from the store at `url`.
    fn restore_command(&self, url: &str, extra: &[&str]) -> Command {
        let args = [
            &[
                "restore",
                "--store",
                url,
                "--root",
                self.root().to_str().unwrap(),
                "--node",
                &self.name,
                "--hostname",
                &self.name,
                "--ip",
                &self.ip,
                "--no-finish",
                "--quorum-probe",
                PROBE_SECONDS,
                "--output",
                "json",
            ],
            extra,
        ]
        .concat();
        self.cpr(&args)
    }

    /// Loses the node's etcd data and pki, as a replacement disk would.
    fn wipe(&mut self) {
        self.kill_etcd();
        for dir in ["var/lib/etcd", "etc/kubernetes/pki"] {
            let _ = std::fs::remove_dir_all(self.root().join(dir));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_etcd();
    }
}

struct Cluster {
    nodes: Vec<Node>,
    _hub: NetNs,
    store: tempfile::TempDir,
}

impl Cluster {
    /// `size` stacked control-plane nodes `master1..`, 10.77.0.1.., sharing one set of CAs, their
    /// etcd members one cluster; seeded by the first node.
    fn new(size: usize) -> Cluster {
        let hub = NetNs::hub();
        let names: Vec<String> = (1..=size).map(|i| format!("master{i}")).collect();
        let ips: Vec<String> = (1..=size).map(|i| format!("10.77.0.{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&ips)
            .map(|(name, ip)| format!("{name}=https://{ip}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<Node> = Vec::new();
        for (name, ip) in names.iter().zip(&ips) {
            let ns = NetNs::new();
            ns.join(&hub, &format!("{ip}/24"));
            let dir = tempfile::tempdir().unwrap();
            let mut layout = Command::new(fixtures().join("kubeadm-node"));
            layout
                .args([dir.path().to_str().unwrap(), name, ip, "2379", "2380"])
                .env("INITIAL_CLUSTER", &initial_cluster);
            if let Some(first) = nodes.first() {
                layout.env("CA_FROM", first.root().join("etc/kubernetes/pki"));
            }
            run(&mut layout);
            nodes.push(Node {
                name: name.clone(),
                ip: ip.clone(),
                ns,
                dir,
                etcd: None,
            });
        }
        let mut cluster = Cluster {
            nodes,
            _hub: hub,
            store: tempfile::tempdir().unwrap(),
        };
        cluster.start_all();
        let first = &cluster.nodes[0];
        run(first
            .ns
            .command(fixtures().join("seed-etcd"))
            .arg(first.root())
            .arg(ETCD.etcdctl())
            .arg(first.endpoint())
            .arg(CLUSTER)
            .arg(&first.ip)
            .arg("20"));
        cluster
    }

    fn start_all(&mut self) {
        self.start_etcd(&self.all());
    }

    fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Starts the etcd of the nodes `which` and waits until each answers a linearizable read.
    fn start_etcd(&mut self, which: &[usize]) {
        for &i in which {
            self.nodes[i].start_etcd();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in which.iter().map(|&i| &self.nodes[i]) {
            loop {
                let healthy = node
                    .etcdctl(&["endpoint", "health", "--command-timeout=2s"])
                    .status
                    .success();
                if healthy {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not become healthy:\n{}",
                    node.name,
                    std::fs::read_to_string(node.root().join("etcd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    fn store(&self) -> &Path {
        self.store.path()
    }

    /// `cpr list` of the store, as text.
    fn list(&self) -> String {
        ok(&common::cpr(&[
            "list",
            "--store",
            self.store().to_str().unwrap(),
        ]))
    }

    /// `cpr backup` on every node, each of its own etcd.
    fn backup_all(&self) {
        self.backup(&self.all());
    }

    /// `cpr backup` on the nodes `which`.
    fn backup(&self, which: &[usize]) {
        for node in which.iter().map(|&i| &self.nodes[i]) {
            let out = node
                .cpr(&[
                    "backup",
                    "--root",
                    node.root().to_str().unwrap(),
                    "--store",
                    self.store().to_str().unwrap(),
                    "--endpoint",
                    &node.endpoint(),
                ])
                .output()
                .unwrap();
            ok(&out);
        }
        // Bundle names carry a one-second stamp: the next backup must sort after this one.
        std::thread::sleep(Duration::from_millis(1100));
    }

    /// Phase 1 on every node at once; each run's JSON report.
    fn restore_all(&self, extra: &[&str]) -> Vec<Value> {
        self.restore(&self.all(), extra)
    }

    /// Phase 1 on the nodes `which` at once; each run's JSON report.
    fn restore(&self, which: &[usize], extra: &[&str]) -> Vec<Value> {
        let children: Vec<(Child, &Node)> = which
            .iter()
            .map(|&i| (self.nodes[i].restore(self.store(), extra), &self.nodes[i]))
            .collect();
        children
            .into_iter()
            .map(|(child, node)| {
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "restore of {} failed: {}",
                    node.name,
                    common::stderr(&out)
                );
                serde_json::from_slice::<Value>(&out.stdout).unwrap()["restore"].clone()
            })
            .collect()
    }

    /// One cluster of every node: same member list, and every member at the same revision and HashKV.
    fn assert_one_cluster(&self) -> i64 {
        let members = self.nodes[0].etcdctl_json(&["member", "list", "-w", "json"]);
        let mut names: Vec<&str> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        names.sort();
        let expected: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, expected);
        // A write through one member reaches every other before they are compared.
        self.nodes[0].put("/cpr-test/settled", "yes");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen: Vec<(i64, u64)> = self.nodes.iter().map(Node::revision_and_hash).collect();
            if seen.iter().all(|s| *s == seen[0]) {
                return seen[0].0;
            }
            assert!(
                Instant::now() < deadline,
                "members differ (revision, HashKV): {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wipe_all(&mut self) {
        for node in &mut self.nodes {
            node.wipe();
        }
    }
}

fn claim(store: &Path) -> Value {
    let claims: Vec<PathBuf> = std::fs::read_dir(store.join(CLUSTER))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("restore-point-")
        })
        .collect();
    assert_eq!(claims.len(), 1, "one restore point: {claims:?}");
    serde_json::from_slice(&std::fs::read(&claims[0]).unwrap()).unwrap()
}

/// Kill every node, wipe it, restore all at once: one cluster from one snapshot.
fn lost_quorum_comes_back_from_one_snapshot(size: usize) {
    let started = Instant::now();
    let mut cluster = Cluster::new(size);
    cluster.nodes[0].put("/cpr-test/before-backup", "kept");
    cluster.backup(&[0]);
    let listed = cluster.list();
    assert!(listed.contains("master2          NO BUNDLE"), "{listed}");
    cluster.backup_all();
    let listed = cluster.list();
    let members = (1..=size)
        .map(|i| format!("master{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        listed.contains(&format!("cluster {CLUSTER}: etcd members {members}")),
        "{listed}"
    );
    assert!(!listed.contains("NO BUNDLE"), "{listed}");
    cluster.nodes[0].put("/cpr-test/after-backup", "lost with the quorum");
    cluster.wipe_all();

    let reports = cluster.restore_all(&[]);
    let point = claim(cluster.store());
    let bundle = point["bundle"].as_str().unwrap();
    for (report, node) in reports.iter().zip(&cluster.nodes) {
        assert_eq!(
            report["quorum"]["quorum"], "lost",
            "{}: {report}",
            node.name
        );
        let snapshot_from = report["restorePoint"]
            .as_str()
            .unwrap_or(report["bundle"].as_str().unwrap());
        assert_eq!(
            snapshot_from, bundle,
            "{} restored another snapshot",
            node.name
        );
        assert!(report["bundle"]
            .as_str()
            .unwrap()
            .contains(&format!("/{}/", node.name)));
    }
    cluster.start_all();
    let revision = cluster.assert_one_cluster();
    assert!(revision > 1_000_000_000, "revision bumped: {revision}");
    for node in &cluster.nodes {
        assert_eq!(node.get("/cpr-test/before-backup").as_deref(), Some("kept"));
        assert_eq!(node.get("/cpr-test/after-backup"), None);
    }
    let members = cluster.nodes[0].members_check();
    assert_eq!(members["status"], "ok", "{members}");
    let detail = members["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("{size} members (")), "{detail}");
    eprintln!(
        "{size} nodes: backup, loss, concurrent restore and one healthy cluster in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn three_nodes_lost_all_restore_concurrently_into_one_cluster() {
    lost_quorum_comes_back_from_one_snapshot(3);
}

#[test]
fn five_nodes_lost_all_restore_concurrently_into_one_cluster() {
    lost_quorum_comes_back_from_one_snapshot(5);
}

/// The newest bundle of every node is damaged: all nodes fall back to the same older snapshot.
#[test]
fn a_corrupt_newest_bundle_leads_every_node_to_the_same_older_one() {
    let mut cluster = Cluster::new(3);
    cluster.nodes[0].put("/cpr-test/generation", "first");
    cluster.backup_all();
    cluster.nodes[0].put("/cpr-test/generation", "second");
    cluster.backup_all();
    for node in &cluster.nodes {
        let dir = cluster.store().join(CLUSTER).join(&node.name);
        let mut bundles: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
            .collect();
        bundles.sort();
        let newest = bundles.last().unwrap();
        let mut bytes = std::fs::read(newest).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(newest, bytes).unwrap();
    }
    cluster.wipe_all();
    let reports = cluster.restore_all(&[]);
    for report in &reports {
        assert_eq!(report["skipped"].as_array().unwrap().len(), 1, "{report}");
    }
    cluster.start_all();
    cluster.assert_one_cluster();
    for node in &cluster.nodes {
        assert_eq!(node.get("/cpr-test/generation").as_deref(), Some("first"));
    }
}

/// One of three lost: the quorum lives, a snapshot would roll it back, so the restore is refused.
/// Two of three lost: the survivor runs without a quorum. Restoring from a bundle would drop its
/// newer writes, so it is refused without --discard-survivors and nothing changes; with it, every
/// node restores the same snapshot.
#[test]
fn one_lost_is_refused_and_with_two_lost_a_survivor_is_never_discarded_without_the_flag() {
    let mut cluster = Cluster::new(3);
    cluster.backup_all();
    cluster.nodes[0].wipe();
    let out = cluster.nodes[0]
        .restore(cluster.store(), &[])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", common::stderr(&out));
    let why = common::stderr(&out);
    assert!(why.contains("still has a quorum"), "{why}");
    assert!(!cluster.nodes[0].root().join("var/lib/etcd").exists());

    cluster.nodes[1].wipe();
    let refused = cluster.nodes[0].restore(cluster.store(), &[]);
    let out = refused.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", common::stderr(&out));
    let why = common::stderr(&out);
    assert!(
        why.contains("master3") && why.contains("--discard-survivors"),
        "{why}"
    );
    assert!(!cluster.nodes[0].root().join("var/lib/etcd").exists());

    cluster.nodes[2].kill_etcd();
    let reports = cluster.restore_all(&["--discard-survivors"]);
    assert!(reports[2]["movedAside"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p.as_str().unwrap().contains("var/lib/etcd")));
    cluster.start_all();
    cluster.assert_one_cluster();
}

/// A node killed in the middle of writing its member's db (before any claim) and one killed after
/// staging (after its claim, before the swap) both converge when run again; the third node, restored
/// only once the other two run as the restored cluster, joins it instead of taking it for a live
/// cluster to leave alone.
#[test]
fn nodes_killed_mid_restore_converge_when_run_again() {
    let mut cluster = Cluster::new(3);
    cluster.backup_all();
    cluster.wipe_all();
    for (node, failpoint) in [(0, "restore:mid-snapshot"), (1, "restore:state-saved")] {
        let node = &cluster.nodes[node];
        let out = node
            .restore_command(cluster.store().to_str().unwrap(), &[])
            .env("CPR_FAILPOINT", failpoint)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{failpoint} kills the restore of {}",
            node.name
        );
    }
    cluster.restore(&[0, 1], &[]);
    cluster.start_etcd(&[0, 1]);
    let late = cluster.restore(&[2], &[]);
    assert_eq!(late[0]["quorum"]["quorum"], "alive", "{}", late[0]);
    cluster.start_etcd(&[2]);
    cluster.assert_one_cluster();
}

/// A read-only HTTP store cannot hold a claim, so a node that reaches the store that way follows the
/// restore point pinned with --bundle: through a flaky link (each bundle's first two downloads cut
/// off mid-body) the downloads resume and it restores the same snapshot as the others. (A store that
/// stays down fails the restore after the store's retries, exit 3, before anything is staged.)
#[test]
fn a_node_behind_a_flaky_read_only_store_restores_the_pinned_snapshot() {
    let mut cluster = Cluster::new(3);
    cluster.backup_all();
    cluster.wipe_all();
    cluster.restore(&[0, 1], &[]);
    let point = claim(cluster.store())["bundle"]
        .as_str()
        .unwrap()
        .to_string();
    let late = &cluster.nodes[2];
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let pinned = ["--bundle", point.as_str(), "--cluster", CLUSTER];
    let log = late.root().join("flaky.log");
    let mut server = late
        .ns
        .command("python3")
        .arg(fixtures().join("store-flaky-server.py"))
        .arg(port.to_string())
        .arg(cluster.store())
        .arg("store")
        .arg(&log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !late.ns.listening(port) {
        assert!(Instant::now() < deadline, "the flaky store did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = late.restore_command(&url, &pinned).output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["restore"]["restorePoint"],
        point.as_str(),
        "{report}"
    );
    let resumed = std::fs::read_to_string(&log).unwrap();
    assert!(
        resumed.lines().filter(|l| l.starts_with("bytes=")).count() >= 2,
        "{resumed}"
    );
    cluster.start_all();
    cluster.assert_one_cluster();
}
