//! The recovery boot of a lost quorum (issue 13, case 2): three blank VMs, powered on at once, each
//! boot the recovery image and restore their own node's bundle of one three-member etcd 3.5 cluster,
//! all from one snapshot, and the cluster forms again among them.
//!
//! The VMs boot the kernel and initramfs directly: each node's boot entry differs (its hostname, its
//! cluster address), and the ISO, proven by tests/boot_qemu.rs to start the same kernel and
//! initramfs, would add only its build and firmware time, three times over on two cores. Each VM
//! reaches the store (a directory served read-only over HTTP) through its own restricted user
//! network; the VMs reach each other on a second NIC, a QEMU multicast socket network on the host's
//! loopback, with the members' addresses. A plain HTTP store cannot hold the restore-point claim, so
//! every boot entry pins the restore point with `cpr.bundle=`: the first node's bundle.
//!
//! Needs root (the source cluster runs in a network namespace), the release binary and the packages
//! of scripts/lib/deps.sh.

mod common;
#[path = "common/qemu.rs"]
mod qemu;
mod store_common;

use common::netns::NetNs;
use common::{cpr, fixtures, ok, run, EtcdVersion, CLUSTER};
use qemu::*;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const NODES: usize = 3;
const ETCD: EtcdVersion = EtcdVersion::V3_5;
/// Every VM gives up on the dead members after this: none runs, so none answers.
const PROBE_SECONDS: u32 = 3;
/// Objects the source cluster holds besides kubeadm's: the db stays small, three VMs share two cores.
const SEED_OBJECTS: &str = "20";

fn name(node: usize) -> String {
    format!("master{}", node + 1)
}

/// A member's address, on its VM's second NIC and in the source cluster's namespace.
fn address(node: usize) -> String {
    format!("10.77.0.{}", node + 1)
}

/// The source cluster's nodes, backed up and gone.
struct Lost {
    /// The nodes' roots and the store holding their bundles.
    dir: std::path::PathBuf,
    /// Each node's bundle, one snapshot each of the same cluster, in one directory store.
    bundles: Vec<Source>,
}

impl Lost {
    /// A file of node `n`'s own PKI as it was backed up.
    fn pki(&self, n: usize, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name(n)).join("etc/kubernetes/pki").join(file)).unwrap()
    }
}

fn lost() -> &'static Lost {
    static LOST: OnceLock<Lost> = OnceLock::new();
    LOST.get_or_init(back_up_a_three_member_cluster)
}

/// Lays out three kubeadm control-plane nodes sharing one set of CAs, each with its own etcd peer
/// and server certificates and manifest; runs their etcd members as one cluster, each node a network
/// namespace with its address on one bridge; seeds it; backs each node up with `cpr backup` of its own
/// member; and stops them all, as the loss of every control-plane machine would.
fn back_up_a_three_member_cluster() -> Lost {
    let temp = common::run_dir("boot-ha-cluster");
    let dir = temp.as_path();
    let store = dir.join("store");
    let hub = NetNs::hub();
    let nss: Vec<NetNs> = (0..NODES).map(|_| NetNs::new()).collect();
    let initial_cluster = (0..NODES)
        .map(|n| format!("{}=https://{}:2380", name(n), address(n)))
        .collect::<Vec<_>>()
        .join(",");
    let roots: Vec<_> = (0..NODES).map(|n| dir.join(name(n))).collect();
    for (n, root) in roots.iter().enumerate() {
        nss[n].join(&hub, &format!("{}/24", address(n)));
        let mut layout = Command::new(fixtures().join("kubeadm-node"));
        layout
            .arg(root)
            .args([&name(n), &address(n), "2379", "2380"])
            .env("INITIAL_CLUSTER", &initial_cluster);
        if n > 0 {
            layout.env("CA_FROM", roots[0].join("etc/kubernetes/pki"));
        }
        run(&mut layout);
    }
    let mut members: Vec<Child> = roots
        .iter()
        .zip(&nss)
        .map(|(root, ns)| {
            ns.command(fixtures().join("run-static-etcd"))
                .arg(root)
                .arg(ETCD.etcd())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(root.join("etcd.log")).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let etcdctl = |n: usize, args: &[&str]| {
        let mut command = nss[n].command(ETCD.etcdctl());
        command.env("ETCDCTL_API", "3");
        common::etcdctl_tls(
            command,
            &format!("https://{}:2379", address(n)),
            &roots[n].join("etc/kubernetes/pki"),
        )
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for (n, root) in roots.iter().enumerate() {
        while !etcdctl(n, &["endpoint", "health", "--command-timeout=2s"])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "{} did not become healthy:\n{}",
                name(n),
                std::fs::read_to_string(root.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    run(nss[0]
        .command(fixtures().join("seed-etcd"))
        .arg(&roots[0])
        .arg(ETCD.etcdctl())
        .arg(format!("https://{}:2379", address(0)))
        .arg(CLUSTER)
        .arg(address(0))
        .arg(SEED_OBJECTS));
    let count = |prefix: &str| -> i64 {
        let out = ok(&etcdctl(
            0,
            &["get", prefix, "--prefix", "--count-only", "-w", "fields"],
        ));
        out.lines()
            .find_map(|l| l.strip_prefix("\"Count\" : "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("etcdctl get --count-only printed {out}"))
    };
    let status = ok(&etcdctl(0, &["endpoint", "status", "-w", "json"]));
    let revision = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]
        ["header"]["revision"]
        .as_i64()
        .unwrap();
    let (keys, default_configmaps) = (count(""), count("/registry/configmaps/default/"));
    let bundles = roots
        .iter()
        .enumerate()
        .map(|(n, root)| {
            let out = nss[n]
                .command(common::cpr_bin())
                .args(["backup", "--root"])
                .arg(root)
                .arg("--store")
                .arg(&store)
                .args(["--endpoint", &format!("https://{}:2379", address(n))])
                .args(["--output", "json", "--sign-key"])
                .arg(image().sign_key())
                .output()
                .unwrap();
            let report: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
            Source {
                store: store.clone(),
                bundle: report["bundle"].as_str().unwrap().to_string(),
                revision,
                keys,
                default_configmaps,
                ca_crt: std::fs::read(root.join("etc/kubernetes/pki/ca.crt")).unwrap(),
            }
        })
        .collect();
    for member in &mut members {
        let _ = member.kill();
        let _ = member.wait();
    }
    let listed = ok(&cpr(&["list", "--store", store.to_str().unwrap()]));
    assert!(!listed.contains("NO BUNDLE"), "{listed}");
    Lost { dir: temp, bundles }
}

/// The boot of node `n`: its own bundle, its name and cluster address, the restore point pinned to
/// the first node's bundle, a second NIC on the network `lan` (a multicast group and port).
fn boot_of(n: usize, lan: &str) -> Boot {
    let bundles = &lost().bundles;
    let mut spec = Boot::of(Medium::Direct, &bundles[n]);
    spec.cmdline = format!(
        "cpr.bundle={} cpr.cluster={CLUSTER} cpr.hostname={} cpr.ip.eth1={}/24 cpr.quorum_probe={PROBE_SECONDS}",
        bundles[0].bundle,
        name(n),
        address(n)
    );
    spec.qemu_args = [
        "-netdev",
        &format!("socket,id=c0,mcast={lan},localaddr=127.0.0.1"),
        "-device",
        &format!("virtio-net-pci,netdev=c0,mac=52:54:00:77:00:{:02x}", n + 1),
    ]
    .map(String::from)
    .to_vec();
    spec
}

/// What a member's etcd reported once the cluster formed: `members revision hashkv
/// default-configmaps`.
fn reported(outcome: &Outcome, node: &str) -> (i64, i64, String, i64) {
    let line = outcome
        .after(&format!("TARGET: etcd {node}: members "))
        .unwrap_or_else(|| panic!("{node} never reported the cluster:\n{}", outcome.console));
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| words.get(i).and_then(|w| w.parse::<i64>().ok());
    match (number(0), number(2), words.get(4), number(6)) {
        (Some(members), Some(revision), Some(hash), Some(configmaps)) if !hash.is_empty() => {
            (members, revision, hash.to_string(), configmaps)
        }
        _ => panic!("{node}: unreadable report {line:?}"),
    }
}

/// Every node lost: three blank VMs boot the recovery image at once and each restores its own
/// bundle's PKI and manifests with the first node's snapshot; their etcd members, started from the
/// restored manifests by the machines' own OS, form one three-member cluster with the snapshot's
/// data at the bumped revision, every member at the same HashKV.
#[test]
fn three_vms_booted_at_once_restore_a_three_member_cluster() {
    let lost = lost();
    let sources = &lost.bundles;
    // A group and port of this run: another run's VMs on the same loopback never join this network.
    let lan = format!(
        "239.77.{}.{}:{}",
        std::process::id() % 250,
        1,
        common::free_port()
    );
    let started = Instant::now();
    let outcomes = boot_together((0..NODES).map(|n| boot_of(n, &lan)).collect());
    let wall = started.elapsed();
    let point = &sources[0].bundle;
    let mut seen = Vec::new();
    for (n, outcome) in outcomes.iter().enumerate() {
        let node = name(n);
        outcome.assert_sane();
        outcome.assert_console(&format!("network: eth1 has {}/24", address(n)));
        outcome.assert_console("quorum probe: Lost {");
        outcome.assert_console("survivors: [] }");
        outcome.assert_console("handing over to /sbin/init");
        if n > 0 {
            outcome.assert_console(&format!("fetching the restore point {point}"));
        }
        outcome.assert_console(&format!("TARGET: etcd {node}: 3 of 3 members healthy"));
        outcome.assert_console("TARGET: done");
        // The node's own PKI and manifest, not the restore point's.
        assert_eq!(
            outcome.debugfs("cat /etc/kubernetes/pki/ca.crt"),
            sources[n].ca_crt
        );
        assert_eq!(
            outcome.debugfs("cat /etc/kubernetes/pki/etcd/peer.crt"),
            lost.pki(n, "etcd/peer.crt"),
            "{node} got another node's peer certificate"
        );
        let manifest = String::from_utf8(
            outcome.debugfs("cat /var/lib/cpr/staging/bundle/etc/kubernetes/manifests/etcd.yaml"),
        )
        .unwrap();
        assert!(manifest.contains(&format!("--name={node}\n")), "{manifest}");
        seen.push(reported(outcome, &node));
    }
    let source = &sources[0];
    for (n, (members, revision, hash, configmaps)) in seen.iter().enumerate() {
        assert_eq!(*members, NODES as i64, "{}", name(n));
        // The snapshot's revision, bumped by the restore, plus one join key written by each member.
        assert_eq!(
            *revision,
            source.revision + BUMP + NODES as i64,
            "{}",
            name(n)
        );
        assert_eq!(*configmaps, source.default_configmaps, "{}", name(n));
        assert_eq!(*hash, seen[0].2, "{} has another HashKV", name(n));
    }
    eprintln!(
        "figures: {NODES} VMs from power-on to the last one off {:.1} s; handoffs at {} s; cluster formed (every member healthy) at {} s",
        wall.as_secs_f64(),
        outcomes
            .iter()
            .map(|o| format!("{:.1}", o.seconds_to("handing over to /sbin/init")))
            .collect::<Vec<_>>()
            .join(", "),
        outcomes
            .iter()
            .enumerate()
            .map(|(n, o)| format!("{:.1}", o.seconds_to(&format!("TARGET: etcd {}: ", name(n)))))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
