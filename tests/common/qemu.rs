//! The QEMU harness of the recovery-boot tests (software emulation): the fixture (the release
//! image, a node's bundles in directory stores, the busybox target disk), one VM's boot from a
//! medium with its console, disk and store, and the checks every recovery boot makes.
//!
//! Not a module of tests/common/mod.rs: it serves stores with store_common's HTTP server, which
//! only some test binaries include. Boot tests declare it with `#[path = "common/qemu.rs"] mod qemu;`
//! next to `mod common;` and `mod store_common;`.
#![allow(dead_code)]

use crate::common::*;
use crate::store_common::read_only_server;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// The address QEMU's DHCP server gives the first guest; the backed-up node has it too.
pub const GUEST_IP: &str = "10.0.2.15";
/// Inside the guest, the store's one reachable address (a guestfwd to a loopback port).
pub const STORE: &str = "http://10.0.2.100/";
/// Megabytes of incompressible values put into etcd, so the bundle is about 100 MB.
pub const ETCD_FILL_MB: usize = 96;
pub const BOOT_TIMEOUT_SECS: u64 = 120;
/// Debian's systemd under software emulation, and phase 2 with it.
pub const SYSTEMD_BOOT_TIMEOUT_SECS: u64 = 600;
/// UEFI firmware for QEMU, from Debian's ovmf package: the Secure Boot build (it needs SMM), whose
/// variable store decides whether Secure Boot is enforced (Microsoft's keys enrolled) or off (none).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_MICROSOFT_KEYS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
pub const OVMF_VARS_NO_KEYS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// What `cpr restore` adds to the etcd revision by default.
pub const BUMP: i64 = 1_000_000_000;

/// Single boots run side by side, as many as the test harness's threads (by default one per core:
/// each QEMU under TCG keeps one core busy); a cluster's VMs (`boot_together`) run with no other boot.
static BOOTS: RwLock<()> = RwLock::new(());
static FIXTURE: OnceLock<Fixture> = OnceLock::new();

pub struct Fixture {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The node's bundle as its etcd was seeded, and again after ETCD_FILL_MB more, each in a
    /// directory store of its own: boots fetch the small one unless they measure.
    pub small: Source,
    pub large: Source,
    /// The replacement machine's disk before recovery: a busybox "normal OS" with etcd installed.
    pub disk: PathBuf,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary goes into the image: an unoptimised one is too slow under emulation. It must
/// be newer than every source file, or the boots would test old code.
pub fn release_cpr() -> PathBuf {
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

/// The recovery image and the blank target disk every boot starts from, built once.
pub struct Image {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The replacement machine's disk before recovery: a busybox "normal OS" with etcd installed.
    pub disk: PathBuf,
}

impl Image {
    /// The key that signs bundles; the image carries its public half as /etc/cpr/minisign.pub.
    pub fn sign_key(&self) -> PathBuf {
        self.dir.join("keys/minisign.key")
    }
}

pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = run_dir("boot-image");
        // Bundles are signed, and the image carries the verify key as /etc/cpr/minisign.pub (boots
        // that name it with cpr.verify_key= check the signature).
        let keys = dir.join("keys");
        ok(&cpr(&["keygen", "--out", keys.to_str().unwrap()]));
        let initramfs = dir.join("initramfs.img");
        let kernel = run(Command::new(repo().join("image/build-initramfs"))
            .arg(release_cpr())
            .arg(&initramfs)
            .arg("--verify-key")
            .arg(keys.join("minisign.pub")));
        let kernel = PathBuf::from(kernel.trim());
        let disk = dir.join("disk.img");
        make_disk(&disk);
        Image {
            dir,
            kernel,
            initramfs,
            disk,
        }
    })
}

pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let image = image();
        let dir = run_dir("boot-fixture");
        let (small, large) = make_bundles(&dir, &image.sign_key());
        Fixture {
            dir,
            kernel: image.kernel.clone(),
            initramfs: image.initramfs.clone(),
            small,
            large,
            disk: image.disk.clone(),
        }
    })
}

/// A kubeadm node whose address is the guest's, its etcd (listening on loopback only) filled with
/// ETCD_FILL_MB of random values, backed up by `cpr backup` into a directory store before and after.
pub struct Source {
    pub store: PathBuf,
    pub bundle: String,
    pub revision: i64,
    pub keys: i64,
    /// Keys under /registry/configmaps/default/: the cluster's own objects, which nothing on the
    /// restored machine writes.
    pub default_configmaps: i64,
    pub ca_crt: Vec<u8>,
}

pub fn make_bundles(dir: &Path, sign_key: &Path) -> (Source, Source) {
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
        let out = cpr_backup(
            &root,
            &store,
            &["--output", "json", "--sign-key", sign_key.to_str().unwrap()],
        );
        let report: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        Source {
            store,
            bundle: report["bundle"].as_str().unwrap().to_string(),
            revision: node.revision(),
            keys: node.key_count(),
            default_configmaps: node.key_count_under("/registry/configmaps/default/"),
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
pub fn make_disk(disk: &Path) {
    run(Command::new(repo().join("image/demo/make-target-disk"))
        .arg(disk)
        .arg(EtcdVersion::V3_5.bin_dir()));
}

/// The real replacement-machine OS, built once by image/build-target-os and cached under target/image;
/// boots copy its disk.
pub struct DebianOs {
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub fn debian() -> &'static DebianOs {
    static OS: OnceLock<DebianOs> = OnceLock::new();
    OS.get_or_init(|| {
        let out = run(Command::new(repo().join("image/build-target-os"))
            .arg("-")
            .arg(EtcdVersion::V3_5.bin_dir()));
        let paths: Vec<PathBuf> = out.lines().map(PathBuf::from).collect();
        assert_eq!(paths.len(), 3, "image/build-target-os printed {out:?}");
        DebianOs {
            disk: paths[0].clone(),
            kernel: paths[1].clone(),
            initrd: paths[2].clone(),
        }
    })
}

/// Runs debugfs requests that write to an ext4 image; any complaint fails the test.
pub fn debugfs_write(disk: &Path, requests: &[String]) {
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), requests.join("\n") + "\n").unwrap();
    run(Command::new(repo().join("image/demo/debugfs-write"))
        .arg(disk)
        .stdin(std::fs::File::open(script.path()).unwrap()));
}

pub enum Medium {
    Direct,
    Iso,
    /// The same ISO on a UEFI machine (OVMF): shim, Debian's signed GRUB and kernel instead of
    /// isolinux.
    UefiIso(SecureBoot),
    /// The ISO written to a USB stick (isohybrid: the firmware boots the GPT's EFI partition).
    UefiUsbStick(SecureBoot),
    /// UEFI network boot from slirp's TFTP server: the firmware's own PXE fetches shimx64.efi from
    /// image/build-pxe's output.
    UefiPxe(SecureBoot),
    /// Network boot from slirp's TFTP server: this boot file, from image/build-pxe's output.
    Pxe(&'static str),
    /// No recovery medium: the machine boots the OS on its disk (Debian's own kernel and initrd, as
    /// a firmware loading them from the disk would).
    OwnOs,
}

/// The UEFI machine's Secure Boot setting: the same firmware either way.
#[derive(Clone, Copy)]
pub enum SecureBoot {
    Enforcing,
    Off,
}

/// The signed file of the ISO in which a test changes one byte of code.
#[derive(Clone, Copy)]
pub enum Tampered {
    /// EFI/BOOT/grubx64.efi in the ISO's EFI image: shim must refuse it.
    Grub,
    /// /boot/vmlinuz: GRUB (through shim) must refuse it.
    Kernel,
}

/// The replacement machine's disk at power-on.
pub enum Disk {
    None,
    /// A busybox "normal OS" (image/demo): reports what the recovery left, then powers off.
    Busybox,
    /// The real OS (image/build-target-os): Debian with systemd, kubelet.service, the doubles, as a
    /// blank replacement machine has it, plus the observer of image/demo.
    Debian,
    /// The disk a previous boot left: the machine is powered on again.
    After(PathBuf),
}

pub struct Boot {
    pub medium: Medium,
    /// Words added to the kernel command line after the defaults.
    pub cmdline: String,
    pub disk: Disk,
    /// The bundle the boot entry names and the recovery must produce.
    pub source: &'static Source,
    /// Serve this directory as the store; None: nothing listens behind the guestfwd port.
    pub store: Option<PathBuf>,
    /// More QEMU arguments: a second NIC on a network between VMs.
    pub qemu_args: Vec<String>,
    /// The first address QEMU's DHCP server hands out.
    pub dhcp_start: Option<&'static str>,
    /// Typed on the serial console every two seconds until the VM stops.
    pub typing: Option<&'static str>,
    /// debugfs requests applied to the disk before power-on (what the test changes on the machine).
    pub prepare: Vec<String>,
    /// One byte of this file's code changed in the ISO before power-on.
    pub tampered: Option<Tampered>,
    /// The ISO is built with --unsigned: a standalone, unsigned GRUB instead of the signed chain.
    pub unsigned: bool,
    /// Power the VM off once a console line holds this: firmware that refused to boot waits for a
    /// key press forever.
    pub stop_at: Option<&'static str>,
    /// How the disks are attached.
    pub write_cache: WriteCache,
    /// A second disk (vdb), attached in place rather than copied: what it holds outlives the boot.
    pub second_disk: Option<PathBuf>,
    /// Pull the plug: SIGKILL the VM at this moment.
    pub cut: Option<Cut>,
}

/// How a boot's disks reach their image files.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WriteCache {
    /// QEMU opens the file itself (its default cache mode): everything the guest wrote reaches the
    /// file, flushed or not, even when QEMU is killed.
    Host,
    /// Through nbdkit's cache filter in writeback mode (tests/power_loss.rs says why): a disk with a
    /// volatile write cache, whose writes reach the file only when the guest flushes them, so a cut
    /// loses everything the guest did not flush.
    Volatile,
}

/// A power cut: `delay` after the first console line holding `after`, the disks' servers and then
/// QEMU get SIGKILL.
#[derive(Clone, Debug)]
pub struct Cut {
    pub after: String,
    pub delay: Duration,
}

impl Boot {
    /// A boot that restores the fixture's small bundle.
    pub fn new(medium: Medium) -> Boot {
        Boot::of(medium, &fixture().small)
    }

    /// A boot that restores `source`'s bundle from its store.
    pub fn of(medium: Medium, source: &'static Source) -> Boot {
        Boot {
            medium,
            cmdline: String::new(),
            disk: Disk::Busybox,
            source,
            store: Some(source.store.clone()),
            qemu_args: Vec::new(),
            dhcp_start: None,
            typing: None,
            prepare: Vec::new(),
            tampered: None,
            unsigned: false,
            stop_at: None,
            write_cache: WriteCache::Host,
            second_disk: None,
            cut: None,
        }
    }
}

pub struct Outcome {
    pub source: &'static Source,
    pub console: String,
    /// When each console line arrived, from power-on.
    pub lines: Vec<(Duration, String)>,
    pub disk: tempfile::TempDir,
    pub elapsed: Duration,
    /// When the power was cut, from power-on; None when the VM stopped by itself first.
    pub cut_at: Option<Duration>,
}

impl Outcome {
    pub fn disk(&self) -> PathBuf {
        self.disk.path().join("disk.img")
    }

    /// The rest of the first console line holding `marker`, after it.
    pub fn after(&self, marker: &str) -> Option<&str> {
        self.console
            .lines()
            .find_map(|l| l.split_once(marker).map(|(_, rest)| rest))
    }

    /// Seconds from power-on to the first console line holding `marker`.
    pub fn seconds_to(&self, marker: &str) -> f64 {
        self.lines
            .iter()
            .find(|(_, line)| line.contains(marker))
            .map_or(f64::NAN, |(at, _)| at.as_secs_f64())
    }

    pub fn assert_console(&self, marker: &str) {
        assert!(
            self.console.contains(marker),
            "console lacks {marker:?}:\n{}",
            self.console
        );
    }

    /// What every boot must show: QEMU stopped by itself, the kernel never panicked, the disk is clean.
    pub fn assert_sane(&self) {
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

    pub fn debugfs(&self, request: &str) -> Vec<u8> {
        Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(self.disk())
            .output()
            .unwrap()
            .stdout
    }

    /// `journalctl -o cat` ARGS over the journal files on the disk.
    pub fn journal(&self, args: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let listing = String::from_utf8_lossy(&self.debugfs("ls -p /var/log/journal")).into_owned();
        let machine = listing
            .lines()
            .filter_map(|l| l.split('/').nth(5))
            .find(|name| name.len() == 32)
            .unwrap_or_else(|| panic!("no journal directory on the disk: {listing}"));
        let source = format!("/var/log/journal/{machine}");
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump {source} {}", dir.path().display()))
            .arg(self.disk())
            .output()
            .unwrap();
        assert!(out.status.success(), "debugfs rdump {source}");
        let out = Command::new("journalctl")
            .arg(format!(
                "--directory={}",
                dir.path().join(machine).display()
            ))
            .args(["--no-pager", "-o", "cat"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// True when the path exists on the disk.
    pub fn exists(&self, path: &str) -> bool {
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
pub fn cmdline(source: &Source, extra: &str) -> String {
    let bundle = if extra.contains("cpr.bundle=") {
        String::new()
    } else {
        format!("cpr.bundle={}", source.bundle)
    };
    format!("console=ttyS0 quiet panic=-1 cpr.store={STORE} cpr.root=LABEL=target cpr.on_failure=poweroff {bundle} {extra}")
}

/// `image/SCRIPT OPTIONS KERNEL INITRAMFS OUTPUT CMDLINE`: the ISO and the PXE files of the fixture's
/// image.
pub fn build_image(script: &str, options: &[&str], output: &Path, cmdline: &str) {
    let f = image();
    run(Command::new(repo().join("image").join(script))
        .args(options)
        .arg(&f.kernel)
        .arg(&f.initramfs)
        .arg(output)
        .arg(cmdline));
}

/// OVMF's Secure Boot build, with a writable copy of the variable store that sets Secure Boot.
pub fn uefi_firmware(qemu: &mut Command, work: &Path, secure_boot: SecureBoot) {
    let vars = work.join("OVMF_VARS.fd");
    let template = match secure_boot {
        SecureBoot::Enforcing => OVMF_VARS_MICROSOFT_KEYS,
        SecureBoot::Off => OVMF_VARS_NO_KEYS,
    };
    std::fs::copy(template, &vars)
        .unwrap_or_else(|e| panic!("{template}: {e} (scripts/lib/deps.sh installs ovmf)"));
    qemu.args(["-machine", "q35,smm=on"])
        .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ));
}

/// Changes one byte in the middle of `file`'s .text section inside the ISO: code that the
/// Authenticode hash covers, not padding. The file is extracted from the ISO, its section found with
/// `objdump -h`, and a window of that code found again among the ISO's bytes.
pub fn tamper(iso: &Path, file: Tampered) {
    let dir = tempfile::tempdir().unwrap();
    let extracted = dir.path().join("signed.efi");
    let extract = |path: &str, to: &Path| {
        run(Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(iso)
            .arg("-extract")
            .arg(path)
            .arg(to))
    };
    match file {
        Tampered::Kernel => extract("/boot/vmlinuz", &extracted),
        Tampered::Grub => {
            let image = dir.path().join("efiboot.img");
            extract("/boot/efiboot.img", &image);
            run(Command::new("mcopy")
                .arg("-i")
                .arg(&image)
                .arg("::/EFI/BOOT/grubx64.efi")
                .arg(&extracted))
        }
    };
    let sections = run(Command::new("objdump").arg("-h").arg(&extracted));
    // Idx Name Size VMA LMA File-off Algn
    let (offset, size) = sections
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.len() == 7 && words[1] == ".text")
        .map(|words| {
            let hex = |word: &str| usize::from_str_radix(word, 16).unwrap();
            (hex(words[5]), hex(words[2]))
        })
        .unwrap_or_else(|| panic!("objdump -h shows no .text section:\n{sections}"));
    let pe = std::fs::read(&extracted).unwrap();
    let middle = offset + size / 2;
    let window = &pe[middle..middle + 64];
    assert!(
        window.iter().filter(|&&b| b != 0).count() > 16,
        "the middle of .text looks like padding: {window:02x?}"
    );
    let mut image = std::fs::read(iso).unwrap();
    let at = image
        .windows(window.len())
        .position(|w| w == window)
        .expect("the extracted file's code is not in the ISO as one piece");
    image[at + 32] ^= 0xff;
    std::fs::write(iso, image).unwrap();
}

pub fn boot(spec: Boot) -> Outcome {
    let _beside_other_single_boots = BOOTS.read().unwrap_or_else(|e| e.into_inner());
    power_on(spec)
}

/// Several VMs powered on at once (the nodes of one cluster), each as `boot` runs one; no other boot
/// runs meanwhile. Returns when every VM has stopped.
pub fn boot_together(specs: Vec<Boot>) -> Vec<Outcome> {
    let _only_these = BOOTS.write().unwrap_or_else(|e| e.into_inner());
    std::thread::scope(|scope| {
        let vms: Vec<_> = specs
            .into_iter()
            .map(|spec| scope.spawn(|| power_on(spec)))
            .collect();
        vms.into_iter().map(|vm| vm.join().unwrap()).collect()
    })
}

fn power_on(spec: Boot) -> Outcome {
    let f = image();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.img");
    let copy = |from: &Path| {
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(from)
            .arg(&disk))
    };
    match &spec.disk {
        Disk::None => {}
        Disk::Busybox => {
            std::fs::copy(&f.disk, &disk).unwrap();
        }
        Disk::Debian => {
            copy(&debian().disk);
            // The observer (image/demo) reports what the machine holds, then powers it off.
            run(Command::new(repo().join("image/demo/install-observer")).arg(&disk));
        }
        Disk::After(previous) => {
            copy(previous);
        }
    }
    if !spec.prepare.is_empty() {
        debugfs_write(&disk, &spec.prepare);
    }
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
        &if matches!(spec.disk, Disk::Busybox | Disk::None) {
            BOOT_TIMEOUT_SECS
        } else {
            SYSTEMD_BOOT_TIMEOUT_SECS
        }
        .to_string(),
        "qemu-system-x86_64",
    ])
    .args(["-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot"]);
    match spec.medium {
        Medium::UefiIso(secure_boot)
        | Medium::UefiUsbStick(secure_boot)
        | Medium::UefiPxe(secure_boot) => {
            uefi_firmware(&mut qemu, work.path(), secure_boot);
            // No iPXE option ROM: a server's firmware network-boots with its own PXE, which is
            // what shim's network boot is made for.
            qemu.args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
        }
        _ => {
            qemu.args(["-device", "virtio-net-pci,netdev=n0"]);
        }
    }
    match spec.medium {
        Medium::Direct => {
            qemu.arg("-kernel")
                .arg(&f.kernel)
                .arg("-initrd")
                .arg(&f.initramfs)
                .arg("-append")
                .arg(&cmdline);
        }
        Medium::Iso | Medium::UefiIso(_) | Medium::UefiUsbStick(_) => {
            let iso = work.path().join("recovery.iso");
            let options: &[&str] = if spec.unsigned { &["--unsigned"] } else { &[] };
            build_image("build-iso", options, &iso, &cmdline);
            if let Some(file) = spec.tampered {
                tamper(&iso, file);
            }
            if matches!(spec.medium, Medium::UefiUsbStick(_)) {
                qemu.args(["-device", "qemu-xhci"])
                    .arg("-drive")
                    .arg(format!(
                        "if=none,id=stick,format=raw,readonly=on,file={}",
                        iso.display()
                    ))
                    .args(["-device", "usb-storage,drive=stick,bootindex=0"]);
            } else {
                qemu.arg("-cdrom").arg(&iso).args(["-boot", "d"]);
            }
        }
        Medium::Pxe(bootfile) => {
            // BIOS clients never reach the Secure Boot chain: --unsigned's files, which leave it out.
            let tftp = work.path().join("tftp");
            build_image("build-pxe", &["--unsigned"], &tftp, &cmdline);
            assert!(
                !tftp.join("shimx64.efi").exists(),
                "build-pxe --unsigned laid out shim"
            );
            netdev.push_str(&format!(",tftp={},bootfile={bootfile}", tftp.display()));
            qemu.args(["-boot", "n"]);
        }
        Medium::UefiPxe(_) => {
            let tftp = work.path().join("tftp");
            build_image("build-pxe", &[], &tftp, &cmdline);
            netdev.push_str(&format!(",tftp={},bootfile=shimx64.efi", tftp.display()));
            qemu.args(["-boot", "n"]);
        }
        Medium::OwnOs => {
            let os = debian();
            qemu.arg("-kernel")
                .arg(&os.kernel)
                .arg("-initrd")
                .arg(&os.initrd)
                .arg("-append")
                .arg(format!(
                    "root=LABEL=target ro console=ttyS0 panic=-1 {}",
                    spec.cmdline
                ));
        }
    }
    qemu.arg("-netdev").arg(&netdev).args(&spec.qemu_args);
    let mut disk_servers = Vec::new();
    let disks = (!matches!(spec.disk, Disk::None))
        .then_some(disk.as_path())
        .into_iter()
        .chain(spec.second_disk.as_deref());
    for (n, image) in disks.enumerate() {
        let file = match spec.write_cache {
            WriteCache::Host => image.display().to_string(),
            WriteCache::Volatile => {
                let (server, socket) = volatile_disk(image, work.path(), n);
                disk_servers.push(server);
                format!("nbd+unix:///?socket={}", socket.display())
            }
        };
        // cache=writeback (QEMU's default, said here because it matters): the guest sees a disk
        // with a write cache and sends flushes.
        qemu.arg("-drive")
            .arg(format!("file={file},format=raw,if=virtio,cache=writeback"));
    }
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut keyboard = child.stdin.take().unwrap();
    if let Some(line) = spec.typing {
        // Lines typed before a shell reads the console are lost: keep typing until QEMU exits.
        std::thread::spawn(move || {
            while keyboard.write_all(line.as_bytes()).is_ok() {
                std::thread::sleep(Duration::from_secs(2));
            }
        });
    }
    let mut stdout = child.stdout.take().unwrap();
    let (stop_at, qemu_pid) = (spec.stop_at, child.id());
    let cut_at = std::sync::Arc::new(Mutex::new(None));
    let mut plug = spec.cut.clone().map(|cut| {
        let servers: Vec<u32> = disk_servers.iter().map(|s| s.id()).collect();
        let cut_at = cut_at.clone();
        (cut, move || {
            pull_the_plug(&servers, qemu_pid, started, &cut_at)
        })
    });
    let reader = std::thread::spawn(move || {
        let seen = |text: &str| stop_at.is_some_and(|marker| text.contains(marker));
        let mut lines: Vec<(Duration, String)> = Vec::new();
        let mut pending = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut stopped = false;
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut chunk) {
            pending.extend_from_slice(&chunk[..n]);
            let checked = lines.len();
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                lines.push((
                    started.elapsed(),
                    String::from_utf8_lossy(&line[..end]).into_owned(),
                ));
            }
            if plug.as_ref().is_some_and(|(cut, _)| {
                lines[checked..].iter().any(|(_, l)| l.contains(&cut.after))
            }) {
                let (cut, pull) = plug.take().expect("checked");
                std::thread::spawn(move || {
                    std::thread::sleep(cut.delay);
                    pull();
                });
            }
            // A firmware dialog waiting for a key ends no line: the unfinished one counts too.
            if !stopped
                && (seen(&String::from_utf8_lossy(&pending))
                    || lines[checked..].iter().any(|(_, line)| seen(line)))
            {
                // timeout(1) passes the TERM on to QEMU, which exits at once.
                let _ = Command::new("kill").arg(qemu_pid.to_string()).status();
                stopped = true;
            }
        }
        if !pending.is_empty() {
            lines.push((
                started.elapsed(),
                String::from_utf8_lossy(&pending).into_owned(),
            ));
        }
        lines
    });
    let out = child.wait_with_output().unwrap();
    let lines = reader.join().unwrap();
    let elapsed = started.elapsed();
    drop(server);
    for mut disk_server in disk_servers {
        // Whatever the guest did not flush dies with it, as in a disk's cache at power-off.
        let _ = disk_server.kill();
        let _ = disk_server.wait();
    }
    let cut_at = *cut_at.lock().unwrap();
    let mut console: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    console.push_str(&String::from_utf8_lossy(&out.stderr));
    if let Some(at) = cut_at {
        console.push_str(&format!("\nPOWER CUT at {:.3} s\n", at.as_secs_f64()));
    } else if out.status.code() == Some(124) || out.status.code() == Some(137) {
        console.push_str("\nTIMED OUT\n");
    }
    eprintln!(
        "--- console ({:.1} s) ---\n{console}",
        elapsed.as_secs_f64()
    );
    Outcome {
        source: spec.source,
        console,
        lines,
        disk: work,
        elapsed,
        cut_at,
    }
}

/// Serves `image` over NBD on a Unix socket in `work` through nbdkit's cache filter in writeback
/// mode: guest writes stay in the filter's cache (a temporary file in `work`, unlinked) until the
/// guest flushes, so killing nbdkit drops them as a power cut empties a disk's write cache.
fn volatile_disk(image: &Path, work: &Path, n: usize) -> (std::process::Child, PathBuf) {
    let socket = work.join(format!("disk{n}.sock"));
    let server = Command::new("nbdkit")
        .args(["--foreground", "--exit-with-parent", "--unix"])
        .arg(&socket)
        .args(["--filter=cache", "file"])
        .arg(format!("file={}", image.display()))
        .arg("cache=writeback")
        .env("TMPDIR", work)
        .spawn()
        .unwrap_or_else(|e| panic!("nbdkit: {e} (scripts/lib/deps.sh installs nbdkit)"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "nbdkit did not listen on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, socket)
}

/// SIGKILL to the disks' servers first (their unflushed writes are gone, nothing more reaches the
/// images: that is the cut), then to QEMU, the child of `timeout` (pid `wrapper`), found before: the
/// guest's page cache is gone too. QEMU may already have stopped when its disks vanished.
fn pull_the_plug(
    servers: &[u32],
    wrapper: u32,
    started: Instant,
    cut_at: &Mutex<Option<Duration>>,
) {
    let kill = |pid: &str| {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    };
    let qemu = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
        .unwrap_or_default();
    if qemu.trim().is_empty() {
        return;
    }
    for server in servers {
        kill(&server.to_string());
    }
    *cut_at.lock().unwrap() = Some(started.elapsed());
    for pid in qemu.split_whitespace() {
        kill(pid);
    }
}

/// A successful recovery: restored, phase 2 installed, handed over to the disk's init, whose etcd
/// serves the source's keys at the source's revision plus the restore's bump.
pub fn assert_recovered(outcome: &Outcome) {
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

/// What the observer reports about cpr-finish.service: `ActiveState result Result enablement`.
pub fn observed_unit(outcome: &Outcome) -> String {
    outcome
        .after("OBSERVER: cpr-finish.service ")
        .unwrap_or_else(|| panic!("the observer never reported:\n{}", outcome.console))
        .trim()
        .to_string()
}

/// The restored etcd, served by the kubelet double (a real unit) from the restored data dir, with the
/// source's objects at the bumped revision and what kubeadm's phases wrote since.
pub fn assert_serves_the_restored_etcd(outcome: &Outcome) {
    let f = outcome.source;
    let served = outcome.after("OBSERVER: etcd revision ").and_then(|rest| {
        let words: Vec<&str> = rest.split_whitespace().collect();
        Some((
            words.first()?.parse::<i64>().ok()?,
            words.get(2)?.parse::<i64>().ok()?,
        ))
    });
    let Some((revision, keys)) = served else {
        panic!("etcd was not served:\n{}", outcome.console)
    };
    assert!(
        revision >= f.revision + BUMP && keys >= f.keys,
        "revision {revision} keys {keys}, the source had revision {} keys {}",
        f.revision,
        f.keys
    );
    outcome.assert_console(&format!(
        "OBSERVER: etcd default-configmaps {} kubelet-config 1",
        f.default_configmaps
    ));
    outcome.assert_console("OBSERVER: kubelet active");
    // The NIC was handed over unconfigured: the target's udev renamed it and networkd configured it.
    outcome.assert_console("OBSERVER: network-online success");
}

/// A failed recovery: explained on the console, the policy applied, nothing restored on the disk.
pub fn assert_failed(outcome: &Outcome, explanation: &str, policy: &str) {
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
