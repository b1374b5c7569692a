//! Recovery boots under QEMU (software emulation): a blank replacement VM boots the recovery image
//! (kernel + initramfs directly, the ISO, or PXE through iPXE), fetches its bundle from a loopback
//! HTTP server through QEMU's restricted user network, restores onto its disk and hands over to the
//! disk's own init, a busybox script that reports what it finds. Failure boots must explain
//! themselves, apply `cpr.on_failure`, leave the disk clean and never panic the kernel.
//!
//! Needs the release binary (`cargo build --release`, as scripts/test does) and the packages of
//! scripts/lib/deps.sh. Boots run one at a time: the machines have two cores.

mod common;
mod store_common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use store_common::read_only_server;

/// The address QEMU's DHCP server gives the first guest; the backed-up node has it too.
const GUEST_IP: &str = "10.0.2.15";
/// Inside the guest, the store's one reachable address (a guestfwd to a loopback port).
const STORE: &str = "http://10.0.2.100/";
/// Megabytes of incompressible values put into etcd, so the bundle is about 100 MB.
const ETCD_FILL_MB: usize = 96;
const BOOT_TIMEOUT_SECS: u64 = 120;
/// UEFI firmware for QEMU, from Debian's ovmf package.
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// What `cpr restore` adds to the etcd revision by default.
const BUMP: i64 = 1_000_000_000;

static BOOTS: Mutex<()> = Mutex::new(());
static FIXTURE: OnceLock<Fixture> = OnceLock::new();

struct Fixture {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    initramfs: PathBuf,
    /// The node's bundle as its etcd was seeded, and again after ETCD_FILL_MB more, each in a
    /// directory store of its own: boots fetch the small one unless they measure.
    small: Source,
    large: Source,
    /// The replacement machine's disk before recovery: a busybox "normal OS" with etcd installed.
    disk: PathBuf,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary goes into the image: an unoptimised one is too slow under emulation. It must
/// be newer than every source file, or the boots would test old code.
fn release_cpr() -> PathBuf {
    fn newest(path: &Path) -> std::time::SystemTime {
        let own = path
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| newest(&e.path()))
                    .max()
                    .unwrap_or(own)
            })
            .unwrap_or(own)
            .max(own)
    }
    let release = repo().join("target/x86_64-unknown-linux-gnu/release/cpr");
    let built = release.metadata().and_then(|m| m.modified()).ok();
    let sources = newest(&repo().join("src")).max(newest(&repo().join("Cargo.lock")));
    assert!(
        built.is_some_and(|built| built >= sources),
        "{} is missing or older than the sources: run `cargo build --release` first (scripts/test does)",
        release.display()
    );
    release
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let initramfs = dir.path().join("initramfs.img");
        let kernel = run(Command::new(repo().join("image/build-initramfs"))
            .arg(release_cpr())
            .arg(&initramfs));
        let kernel = PathBuf::from(kernel.trim());
        let (small, large) = make_bundles(dir.path());
        let disk = dir.path().join("disk.img");
        make_disk(&disk);
        Fixture {
            dir,
            kernel,
            initramfs,
            small,
            large,
            disk,
        }
    })
}

/// A kubeadm node whose address is the guest's, its etcd (listening on loopback only) filled with
/// ETCD_FILL_MB of random values, backed up by `cpr backup` into a directory store before and after.
struct Source {
    store: PathBuf,
    bundle: String,
    revision: i64,
    keys: i64,
    ca_crt: Vec<u8>,
}

fn make_bundles(dir: &Path) -> (Source, Source) {
    let root = dir.join("node");
    let (client, peer) = (free_port(), free_port());
    run(Command::new(fixtures().join("kubeadm-node")).args([
        root.to_str().unwrap(),
        NODE_NAME,
        GUEST_IP,
        &client.to_string(),
        &peer.to_string(),
    ]));
    // etcd runs from a copy of the node whose manifest listens on loopback only: the node's own
    // address is the guest's, which this machine does not have.
    let running = dir.join("running");
    run(Command::new("cp").arg("-a").arg(&root).arg(&running));
    run(Command::new("sed")
        .arg("-i")
        .arg(format!(
            "s#--listen-client-urls=.*#--listen-client-urls=https://127.0.0.1:{client}#;s#--listen-peer-urls=.*#--listen-peer-urls=https://127.0.0.1:{peer}#"
        ))
        .arg(running.join("etc/kubernetes/manifests/etcd.yaml")));
    let node = KubeadmNode::adopt(&running, EtcdVersion::V3_5, client, peer);
    run(Command::new(fixtures().join("seed-etcd")).args([
        running.to_str().unwrap(),
        EtcdVersion::V3_5.etcdctl().to_str().unwrap(),
        &node.endpoint(),
        CLUSTER,
        GUEST_IP,
        "40",
    ]));
    let backup = |store: PathBuf| {
        let out = cpr(&[
            "backup",
            "--root",
            root.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--output",
            "json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        Source {
            store,
            bundle: report["bundle"].as_str().unwrap().to_string(),
            revision: node.revision(),
            keys: node.key_count(),
            ca_crt: std::fs::read(root.join("etc/kubernetes/pki/ca.crt")).unwrap(),
        }
    };
    let small = backup(dir.join("store-small"));
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    for i in 0..ETCD_FILL_MB {
        let mut value = vec![0u8; 1 << 20];
        std::io::Read::read_exact(&mut random, &mut value).unwrap();
        // The value on stdin: one argument may not exceed 128 KiB.
        let mut put = node.etcdctl_command();
        let mut child = put
            .args(["put", &format!("/registry/blobs/{i}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&value).unwrap();
        assert!(
            child.wait().unwrap().success(),
            "etcdctl put of 1 MiB failed"
        );
    }
    let large = backup(dir.join("store-large"));
    (small, large)
}

/// The replacement machine's disk before recovery, as the demo makes it (image/demo).
fn make_disk(disk: &Path) {
    run(Command::new(repo().join("image/demo/make-target-disk"))
        .arg(disk)
        .arg(EtcdVersion::V3_5.bin_dir()));
}

enum Medium {
    Direct,
    Iso,
    /// The same ISO on a UEFI machine (OVMF): GRUB instead of isolinux.
    UefiIso,
    /// Network boot from slirp's TFTP server: this boot file, from image/build-pxe's output.
    Pxe(&'static str),
}

struct Boot {
    medium: Medium,
    /// Words added to the kernel command line after the defaults.
    cmdline: String,
    disk: bool,
    /// The bundle the boot entry names and the recovery must produce.
    source: &'static Source,
    /// Serve this directory as the store; None: nothing listens behind the guestfwd port.
    store: Option<PathBuf>,
    /// The first address QEMU's DHCP server hands out.
    dhcp_start: Option<&'static str>,
    /// Typed on the serial console every two seconds until the VM stops.
    typing: Option<&'static str>,
}

impl Boot {
    fn new(medium: Medium) -> Boot {
        Boot {
            medium,
            cmdline: String::new(),
            disk: true,
            source: &fixture().small,
            store: Some(fixture().small.store.clone()),
            dhcp_start: None,
            typing: None,
        }
    }
}

struct Outcome {
    source: &'static Source,
    console: String,
    disk: tempfile::TempDir,
    elapsed: Duration,
}

impl Outcome {
    fn disk(&self) -> PathBuf {
        self.disk.path().join("disk.img")
    }

    fn assert_console(&self, marker: &str) {
        assert!(
            self.console.contains(marker),
            "console lacks {marker:?}:\n{}",
            self.console
        );
    }

    /// What every boot must show: QEMU stopped by itself, the kernel never panicked, the disk is clean.
    fn assert_sane(&self) {
        assert!(
            !self.console.contains("Kernel panic"),
            "the kernel panicked:\n{}",
            self.console
        );
        assert!(
            !self.console.contains("TIMED OUT"),
            "the VM did not stop by itself:\n{}",
            self.console
        );
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(self.disk())
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck -fn: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
    }

    fn debugfs(&self, request: &str) -> Vec<u8> {
        Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(self.disk())
            .output()
            .unwrap()
            .stdout
    }

    /// True when the path exists on the disk.
    fn exists(&self, path: &str) -> bool {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {path}"))
            .arg(self.disk())
            .output()
            .unwrap();
        !String::from_utf8_lossy(&out.stderr).contains("File not found")
    }
}

/// The boot entry's command line: `source`'s bundle by name unless `extra` says otherwise.
fn cmdline(source: &Source, extra: &str) -> String {
    let bundle = if extra.contains("cpr.bundle=") {
        String::new()
    } else {
        format!("cpr.bundle={}", source.bundle)
    };
    format!("console=ttyS0 quiet panic=-1 cpr.store={STORE} cpr.root=LABEL=target cpr.on_failure=poweroff {bundle} {extra}")
}

/// `image/SCRIPT KERNEL INITRAMFS OUTPUT CMDLINE`: the ISO and the PXE files of the fixture's image.
fn build_image(script: &str, output: &Path, cmdline: &str) {
    let f = fixture();
    run(Command::new(repo().join("image").join(script))
        .arg(&f.kernel)
        .arg(&f.initramfs)
        .arg(output)
        .arg(cmdline));
}

fn boot(spec: Boot) -> Outcome {
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.img");
    std::fs::copy(&f.disk, &disk).unwrap();
    // Dropped (killed) when the boot is over.
    let server = spec.store.as_deref().map(read_only_server);
    let port = server.as_ref().map_or_else(free_port, |s| s.port);
    let mut netdev = format!(
        "user,id=n0,restrict=on,hostname={NODE_NAME},guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 {port}"
    );
    if let Some(start) = spec.dhcp_start {
        netdev.push_str(&format!(",dhcpstart={start}"));
    }
    let cmdline = cmdline(spec.source, &spec.cmdline);
    let mut qemu = Command::new("timeout");
    qemu.args([
        "-k",
        "5",
        &BOOT_TIMEOUT_SECS.to_string(),
        "qemu-system-x86_64",
    ])
    .args(["-accel", "tcg", "-m", "768", "-nographic", "-no-reboot"])
    .args(["-device", "virtio-net-pci,netdev=n0"]);
    match spec.medium {
        Medium::Direct => {
            qemu.arg("-kernel")
                .arg(&f.kernel)
                .arg("-initrd")
                .arg(&f.initramfs)
                .arg("-append")
                .arg(&cmdline);
        }
        Medium::Iso | Medium::UefiIso => {
            let iso = work.path().join("recovery.iso");
            build_image("build-iso", &iso, &cmdline);
            if matches!(spec.medium, Medium::UefiIso) {
                qemu.args(["-bios", OVMF]);
            }
            qemu.arg("-cdrom").arg(&iso).args(["-boot", "d"]);
        }
        Medium::Pxe(bootfile) => {
            let tftp = work.path().join("tftp");
            build_image("build-pxe", &tftp, &cmdline);
            netdev.push_str(&format!(",tftp={},bootfile={bootfile}", tftp.display()));
            qemu.args(["-boot", "n"]);
        }
    }
    qemu.arg("-netdev").arg(&netdev);
    if spec.disk {
        qemu.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()));
    }
    let started = Instant::now();
    let out = match spec.typing {
        None => qemu.stdin(Stdio::null()).output().unwrap(),
        Some(line) => {
            let mut child = qemu
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut keyboard = child.stdin.take().unwrap();
            // Lines typed before a shell reads the console are lost: keep typing until QEMU exits.
            std::thread::spawn(move || {
                while keyboard.write_all(line.as_bytes()).is_ok() {
                    std::thread::sleep(Duration::from_secs(2));
                }
            });
            child.wait_with_output().unwrap()
        }
    };
    let elapsed = started.elapsed();
    drop(server);
    let mut console = String::from_utf8_lossy(&out.stdout).into_owned();
    console.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(124) || out.status.code() == Some(137) {
        console.push_str("\nTIMED OUT\n");
    }
    eprintln!(
        "--- console ({:.1} s) ---\n{console}",
        elapsed.as_secs_f64()
    );
    Outcome {
        source: spec.source,
        console,
        disk: work,
        elapsed,
    }
}

/// A successful recovery: restored, phase 2 installed, handed over to the disk's init, whose etcd
/// serves the source's keys at the source's revision plus the restore's bump.
fn assert_recovered(outcome: &Outcome) {
    let f = outcome.source;
    outcome.assert_sane();
    outcome.assert_console("handing over to /sbin/init");
    outcome.assert_console("TARGET: init running as pid 1, root /dev/vda / ext4");
    outcome.assert_console("TARGET: phase 2 installed");
    outcome.assert_console("TARGET: cpr-finish.service enabled");
    outcome.assert_console("TARGET: the initramfs is gone");
    outcome.assert_console(&format!(
        "TARGET: restored etcd revision {} keys {}",
        f.revision + BUMP,
        f.keys
    ));
    outcome.assert_console("TARGET: done");
    // The host reads the restored node back from the disk.
    assert_eq!(outcome.debugfs("cat /etc/kubernetes/pki/ca.crt"), f.ca_crt);
    assert!(outcome.exists("/var/lib/etcd/member/snap/db"));
    let installed = outcome.debugfs("cat /usr/local/sbin/cpr");
    assert!(
        installed == std::fs::read(release_cpr()).unwrap(),
        "phase 2 binary differs from the image's"
    );
    let unit = outcome.debugfs("cat /etc/systemd/system/cpr-finish.service");
    assert!(String::from_utf8_lossy(&unit).contains("ExecStart=/usr/local/sbin/cpr finish"));
}

/// A failed recovery: explained on the console, the policy applied, nothing restored on the disk.
fn assert_failed(outcome: &Outcome, explanation: &str, policy: &str) {
    outcome.assert_sane();
    outcome.assert_console("RECOVERY FAILED");
    outcome.assert_console(explanation);
    outcome.assert_console(&format!("cpr.on_failure={policy}"));
    assert!(
        !outcome.console.contains("TARGET:"),
        "handed over despite the failure"
    );
    for path in [
        "/etc/kubernetes",
        "/var/lib/etcd",
        "/usr/local/sbin/cpr",
        "/var/lib/cpr/staging",
    ] {
        assert!(
            !outcome.exists(path),
            "the failed recovery left {path} on the disk"
        );
    }
}

fn handoff_seconds(console: &str) -> f64 {
    console
        .lines()
        .find_map(|l| l.split("handing over to /sbin/init (").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn direct_kernel_boot_restores_a_100_mb_bundle_and_hands_over() {
    let large = &fixture().large;
    let mut spec = Boot::new(Medium::Direct);
    spec.source = large;
    spec.store = Some(large.store.clone());
    let outcome = boot(spec);
    assert_recovered(&outcome);
    let size = std::fs::metadata(large.store.join(&large.bundle))
        .unwrap()
        .len();
    eprintln!(
        "figures: bundle {} MiB, kernel start to handoff {:.1} s, whole VM run {:.1} s, initramfs {} KiB",
        size >> 20,
        handoff_seconds(&outcome.console),
        outcome.elapsed.as_secs_f64(),
        std::fs::metadata(&fixture().initramfs).unwrap().len() >> 10
    );
}

#[test]
fn iso_boot_restores_the_latest_bundle_and_hands_over() {
    let mut spec = Boot::new(Medium::Iso);
    spec.cmdline = format!("cpr.bundle=latest cpr.cluster={CLUSTER}");
    assert_recovered(&boot(spec));
}

#[test]
fn uefi_iso_boot_through_grub_restores_and_hands_over() {
    let outcome = boot(Boot::new(Medium::UefiIso));
    assert_recovered(&outcome);
    // isolinux never runs on UEFI machines: the standalone GRUB on the ISO's EFI image booted it.
    outcome.assert_console("cpr recovery (press e to edit the command line)");
}

#[test]
fn pxe_boot_with_a_static_address_restores_and_hands_over() {
    let mut spec = Boot::new(Medium::Pxe("boot.ipxe"));
    spec.cmdline = format!("cpr.ip={GUEST_IP}/24 cpr.hostname={NODE_NAME}");
    let outcome = boot(spec);
    assert_recovered(&outcome);
    outcome.assert_console(&format!("network: eth0 has {GUEST_IP}/24"));
}

#[test]
fn unreachable_store_powers_off_and_leaves_the_disk_alone() {
    let mut spec = Boot::new(Medium::Direct);
    spec.store = None;
    spec.cmdline = "cpr.retries=1".to_string();
    let outcome = boot(spec);
    assert_failed(&outcome, "cannot reach the server", "poweroff");
    outcome.assert_console("reboot: Power down");
}

#[test]
fn corrupt_bundle_is_refused_and_the_machine_reboots() {
    let f = fixture();
    let corrupt = f.dir.path().join("corrupt-store");
    let copy = corrupt.join(&f.small.bundle);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(f.small.store.join(&f.small.bundle)).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    std::fs::write(&copy, bytes).unwrap();
    let mut spec = Boot::new(Medium::Direct);
    spec.store = Some(corrupt);
    spec.cmdline = "cpr.on_failure=reboot".to_string();
    let outcome = boot(spec);
    // Which check trips depends on where the damage lands; each names the bundle as damaged.
    assert_failed(&outcome, "", "reboot");
    assert!(
        ["corrupt", "damaged"]
            .iter()
            .any(|word| outcome.console.contains(word)),
        "the console does not call the bundle damaged:\n{}",
        outcome.console
    );
    outcome.assert_console("reboot: Restarting system");
}

#[test]
fn a_failure_with_the_shell_policy_leaves_a_working_rescue_shell() {
    let mut spec = Boot::new(Medium::Direct);
    spec.store = None;
    spec.cmdline = "cpr.retries=1 cpr.on_failure=shell".to_string();
    // The UART may drop the first characters typed during firmware start-up: with `&&`, any line
    // missing its start fails as a whole instead of powering off before the echo.
    spec.typing = Some("echo RESCUE-$((6*7)) && busybox poweroff -f\n");
    let outcome = boot(spec);
    assert_failed(&outcome, "cannot reach the server", "shell");
    outcome.assert_console("starting /bin/sh on the console");
    // The echo of the typed line shows `$((6*7))`; only a shell that ran it prints 42.
    outcome.assert_console("RESCUE-42");
    outcome.assert_console("reboot: Power down");
}

#[test]
fn missing_target_disk_is_explained() {
    let mut spec = Boot::new(Medium::Direct);
    spec.disk = false;
    let outcome = boot(spec);
    assert!(
        !outcome.console.contains("Kernel panic"),
        "{}",
        outcome.console
    );
    outcome
        .assert_console("RECOVERY FAILED: no filesystem matching cpr.root=LABEL=target appeared");
    outcome.assert_console("cpr.on_failure=poweroff");
    outcome.assert_console("reboot: Power down");
}

#[test]
fn another_nodes_bundle_is_refused_after_a_pxelinux_boot() {
    let mut spec = Boot::new(Medium::Pxe("pxelinux.0"));
    spec.dhcp_start = Some("10.0.2.16");
    let outcome = boot(spec);
    assert_failed(
        &outcome,
        "this machine is not the node in the bundle",
        "poweroff",
    );
    outcome.assert_console(GUEST_IP);
    outcome.assert_console("10.0.2.16");
}
