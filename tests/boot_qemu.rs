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
/// Debian's systemd under software emulation, and phase 2 with it.
const SYSTEMD_BOOT_TIMEOUT_SECS: u64 = 600;
/// UEFI firmware for QEMU, from Debian's ovmf package: the Secure Boot build (it needs SMM), whose
/// variable store decides whether Secure Boot is enforced (Microsoft's keys enrolled) or off (none).
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const OVMF_VARS_MICROSOFT_KEYS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
const OVMF_VARS_NO_KEYS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
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
        // Bundles are signed, and the image carries the verify key as /etc/cpr/minisign.pub (boots
        // that name it with cpr.verify_key= check the signature).
        let keys = dir.path().join("keys");
        ok(&cpr(&["keygen", "--out", keys.to_str().unwrap()]));
        let initramfs = dir.path().join("initramfs.img");
        let kernel = run(Command::new(repo().join("image/build-initramfs"))
            .arg(release_cpr())
            .arg(&initramfs)
            .arg("--verify-key")
            .arg(keys.join("minisign.pub")));
        let kernel = PathBuf::from(kernel.trim());
        let (small, large) = make_bundles(dir.path(), &keys.join("minisign.key"));
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
    /// Keys under /registry/configmaps/default/: the cluster's own objects, which nothing on the
    /// restored machine writes.
    default_configmaps: i64,
    ca_crt: Vec<u8>,
}

fn make_bundles(dir: &Path, sign_key: &Path) -> (Source, Source) {
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
fn make_disk(disk: &Path) {
    run(Command::new(repo().join("image/demo/make-target-disk"))
        .arg(disk)
        .arg(EtcdVersion::V3_5.bin_dir()));
}

/// The real replacement-machine OS, built once by image/build-target-os and cached under target/image;
/// boots copy its disk.
struct DebianOs {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn debian() -> &'static DebianOs {
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
fn debugfs_write(disk: &Path, requests: &[String]) {
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), requests.join("\n") + "\n").unwrap();
    run(Command::new(repo().join("image/demo/debugfs-write"))
        .arg(disk)
        .stdin(std::fs::File::open(script.path()).unwrap()));
}

enum Medium {
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
enum SecureBoot {
    Enforcing,
    Off,
}

/// The signed file of the ISO in which a test changes one byte of code.
#[derive(Clone, Copy)]
enum Tampered {
    /// EFI/BOOT/grubx64.efi in the ISO's EFI image: shim must refuse it.
    Grub,
    /// /boot/vmlinuz: GRUB (through shim) must refuse it.
    Kernel,
}

/// The replacement machine's disk at power-on.
enum Disk {
    None,
    /// A busybox "normal OS" (image/demo): reports what the recovery left, then powers off.
    Busybox,
    /// The real OS (image/build-target-os): Debian with systemd, kubelet.service, the doubles, as a
    /// blank replacement machine has it, plus the observer of image/demo.
    Debian,
    /// The disk a previous boot left: the machine is powered on again.
    After(PathBuf),
}

struct Boot {
    medium: Medium,
    /// Words added to the kernel command line after the defaults.
    cmdline: String,
    disk: Disk,
    /// The bundle the boot entry names and the recovery must produce.
    source: &'static Source,
    /// Serve this directory as the store; None: nothing listens behind the guestfwd port.
    store: Option<PathBuf>,
    /// The first address QEMU's DHCP server hands out.
    dhcp_start: Option<&'static str>,
    /// Typed on the serial console every two seconds until the VM stops.
    typing: Option<&'static str>,
    /// debugfs requests applied to the disk before power-on (what the test changes on the machine).
    prepare: Vec<String>,
    /// One byte of this file's code changed in the ISO before power-on.
    tampered: Option<Tampered>,
    /// The ISO is built with --unsigned: a standalone, unsigned GRUB instead of the signed chain.
    unsigned: bool,
    /// Power the VM off once a console line holds this: firmware that refused to boot waits for a
    /// key press forever.
    stop_at: Option<&'static str>,
}

impl Boot {
    fn new(medium: Medium) -> Boot {
        Boot {
            medium,
            cmdline: String::new(),
            disk: Disk::Busybox,
            source: &fixture().small,
            store: Some(fixture().small.store.clone()),
            dhcp_start: None,
            typing: None,
            prepare: Vec::new(),
            tampered: None,
            unsigned: false,
            stop_at: None,
        }
    }
}

struct Outcome {
    source: &'static Source,
    console: String,
    /// When each console line arrived, from power-on.
    lines: Vec<(Duration, String)>,
    disk: tempfile::TempDir,
    elapsed: Duration,
}

impl Outcome {
    fn disk(&self) -> PathBuf {
        self.disk.path().join("disk.img")
    }

    /// The rest of the first console line holding `marker`, after it.
    fn after(&self, marker: &str) -> Option<&str> {
        self.console
            .lines()
            .find_map(|l| l.split_once(marker).map(|(_, rest)| rest))
    }

    /// Seconds from power-on to the first console line holding `marker`.
    fn seconds_to(&self, marker: &str) -> f64 {
        self.lines
            .iter()
            .find(|(_, line)| line.contains(marker))
            .map_or(f64::NAN, |(at, _)| at.as_secs_f64())
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

    /// `journalctl -o cat` ARGS over the journal files on the disk.
    fn journal(&self, args: &[&str]) -> String {
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

/// `image/SCRIPT OPTIONS KERNEL INITRAMFS OUTPUT CMDLINE`: the ISO and the PXE files of the fixture's
/// image.
fn build_image(script: &str, options: &[&str], output: &Path, cmdline: &str) {
    let f = fixture();
    run(Command::new(repo().join("image").join(script))
        .args(options)
        .arg(&f.kernel)
        .arg(&f.initramfs)
        .arg(output)
        .arg(cmdline));
}

/// OVMF's Secure Boot build, with a writable copy of the variable store that sets Secure Boot.
fn uefi_firmware(qemu: &mut Command, work: &Path, secure_boot: SecureBoot) {
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
fn tamper(iso: &Path, file: Tampered) {
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

fn boot(spec: Boot) -> Outcome {
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
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
                .arg("root=LABEL=target ro console=ttyS0 panic=-1");
        }
    }
    qemu.arg("-netdev").arg(&netdev);
    if !matches!(spec.disk, Disk::None) {
        qemu.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()));
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
    let mut console: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
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
        lines,
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

fn handoff_seconds(outcome: &Outcome) -> f64 {
    outcome
        .after("handing over to /sbin/init (")
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
        handoff_seconds(&outcome),
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

/// Secure Boot enforced by firmware trusting Microsoft's keys: the firmware verifies shim, shim
/// verifies Debian's GRUB, GRUB has shim verify the kernel. The kernel runs locked down and loads
/// only signed modules: Debian's virtio drivers load.
#[test]
fn secure_boot_iso_boot_restores_under_lockdown_with_signed_drivers() {
    let mut spec = Boot::new(Medium::UefiIso(SecureBoot::Enforcing));
    // What the signature chain leaves out (initramfs, command line, the store) is covered by the
    // bundle's signature, checked against the key baked into the image.
    spec.cmdline = "cpr.verify_key=/etc/cpr/minisign.pub".to_string();
    let outcome = boot(spec);
    assert_recovered(&outcome);
    assert!(
        outcome
            .after(": signature by key ")
            .is_some_and(|rest| rest.trim_end().ends_with(" verified")),
        "the bundle's signature was not checked:\n{}",
        outcome.console
    );
    // isolinux never runs on UEFI machines: the signed GRUB booted it.
    outcome.assert_console("cpr recovery (press e to edit the command line)");
    // cpr reads the SecureBoot EFI variable and /sys/kernel/security/lockdown.
    outcome.assert_console("secure boot: enabled (SecureBoot=1); kernel lockdown: integrity");
    for driver in ["virtio_pci", "virtio_blk", "virtio_net"] {
        outcome.assert_console(&format!("modules: loaded {driver}"));
    }
    assert!(
        !outcome.console.contains("was refused"),
        "a module was refused under lockdown:\n{}",
        outcome.console
    );
    eprintln!(
        "figures: Secure Boot ISO {} KiB, power-on to handoff {:.1} s, whole VM run {:.1} s",
        std::fs::metadata(outcome.disk.path().join("recovery.iso"))
            .unwrap()
            .len()
            >> 10,
        outcome.seconds_to("handing over to /sbin/init"),
        outcome.elapsed.as_secs_f64()
    );
}

/// The same firmware with no keys enrolled (Secure Boot off) boots the same ISO, written to a USB
/// stick: the signed chain is not what makes the ISO boot.
#[test]
fn secure_boot_off_the_iso_boots_from_a_usb_stick() {
    let outcome = boot(Boot::new(Medium::UefiUsbStick(SecureBoot::Off)));
    assert_recovered(&outcome);
    outcome.assert_console("secure boot: disabled (SecureBoot=0); kernel lockdown: none");
}

/// The ISO built with --unsigned (for a custom kernel) boots on the same firmware with Secure Boot
/// off: its standalone GRUB starts the kernel with the initramfs, and cpr runs. The VM stops there:
/// what follows is the same initramfs as the signed ISO's.
#[test]
fn unsigned_iso_boots_with_secure_boot_off() {
    const CPR_RUNS: &str = "secure boot: disabled (SecureBoot=0); kernel lockdown: none";
    let mut spec = Boot::new(Medium::UefiIso(SecureBoot::Off));
    spec.unsigned = true;
    spec.stop_at = Some(CPR_RUNS);
    let outcome = boot(spec);
    outcome.assert_sane();
    outcome.assert_console("cpr recovery (press e to edit the command line)");
    outcome.assert_console(CPR_RUNS);
    eprintln!(
        "figures: unsigned ISO, power-on to cpr {:.1} s, whole VM run {:.1} s",
        outcome.seconds_to(CPR_RUNS),
        outcome.elapsed.as_secs_f64()
    );
}

/// The same firmware, Secure Boot enforcing, refuses the ISO once one byte of GRUB's or the
/// kernel's signed code changed: shim refuses GRUB, GRUB (through shim) refuses the kernel.
#[test]
fn secure_boot_refuses_an_iso_whose_grub_or_kernel_changed_by_one_byte() {
    for (file, refusal) in [
        (
            Tampered::Grub,
            "Verification failed: (0x1A) Security Violation",
        ),
        (Tampered::Kernel, "bad shim signature"),
    ] {
        let mut spec = Boot::new(Medium::UefiIso(SecureBoot::Enforcing));
        spec.tampered = Some(file);
        spec.stop_at = Some(refusal);
        let outcome = boot(spec);
        outcome.assert_sane();
        outcome.assert_console(refusal);
        assert!(
            !outcome.console.contains("cpr:"),
            "the tampered ISO started the kernel:\n{}",
            outcome.console
        );
    }
}

/// UEFI network boot with Secure Boot enforcing: the firmware's PXE fetches shimx64.efi over TFTP,
/// shim fetches and verifies Debian's network GRUB, which loads the signed kernel from the server.
#[test]
fn secure_boot_network_boot_restores() {
    let outcome = boot(Boot::new(Medium::UefiPxe(SecureBoot::Enforcing)));
    assert_recovered(&outcome);
    outcome.assert_console("Fetching Netboot Image grubx64.efi");
    outcome.assert_console("secure boot: enabled (SecureBoot=1); kernel lockdown: integrity");
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
    spec.disk = Disk::None;
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

/// What the observer reports about cpr-finish.service: `ActiveState result Result enablement`.
fn observed_unit(outcome: &Outcome) -> String {
    outcome
        .after("OBSERVER: cpr-finish.service ")
        .unwrap_or_else(|| panic!("the observer never reported:\n{}", outcome.console))
        .trim()
        .to_string()
}

/// The restored etcd, served by the kubelet double (a real unit) from the restored data dir, with the
/// source's objects at the bumped revision and what kubeadm's phases wrote since.
fn assert_serves_the_restored_etcd(outcome: &Outcome) {
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

/// Seconds since the kernel started at which the observer saw `step` happen (`times` line).
fn observed_time(outcome: &Outcome, step: &str) -> f64 {
    let line = outcome.after("OBSERVER: times ").unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == step)
        .and_then(|i| words.get(i + 1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |v| v / 1e6)
}

/// A recovery boot from the ISO onto the Debian disk, with `prepare` done to the disk copy first.
fn recovery_into_debian(source: &'static Source, prepare: &[String]) -> Outcome {
    let mut spec = Boot::new(Medium::Iso);
    spec.disk = Disk::Debian;
    spec.source = source;
    spec.store = Some(source.store.clone());
    spec.prepare = prepare.to_vec();
    let outcome = boot(spec);
    outcome.assert_sane();
    outcome.assert_console("handing over to /sbin/init");
    outcome
}

/// The same machine powered on again without the ISO, after `prepare` (debugfs requests).
fn power_on_again(previous: &Outcome, prepare: &[String]) -> Outcome {
    let mut spec = Boot::new(Medium::OwnOs);
    spec.disk = Disk::After(previous.disk());
    spec.prepare = prepare.to_vec();
    let outcome = boot(spec);
    outcome.assert_sane();
    outcome
}

/// Phase 2 for real: the recovery ISO restores onto a blank Debian machine and hands over to its
/// systemd, which runs cpr-finish.service: `kubeadm init` (double), kubelet.service (double, a real
/// unit) starts etcd and the apiserver double, `/readyz`, the unit disables itself. Powered on again
/// without the ISO, the machine boots its own kernel, phase 2 does not run, etcd serves the data.
#[test]
fn iso_recovery_into_systemd_finishes_phase_2_once() {
    // The 100 MB bundle: its figures are the benchmark's (scripts/bench.d/recovery-boot).
    let first = recovery_into_debian(&fixture().large, &[]);
    first.assert_console("cpr finish: control plane restored from");
    assert_eq!(observed_unit(&first), "active result success disabled");
    first.assert_console("OBSERVER: finish-failed absent");
    assert_serves_the_restored_etcd(&first);
    assert!(!first.exists("/etc/systemd/system/multi-user.target.wants/cpr-finish.service"));
    let finish_log = first.journal(&["-u", "cpr-finish.service"]);
    assert!(
        finish_log.contains("[kubelet-start] Starting the kubelet")
            && finish_log.contains("[wait-control-plane]")
            && finish_log.contains("cpr-finish.service disabled"),
        "{finish_log}"
    );
    assert!(
        !finish_log.contains("unable to start the kubelet service"),
        "{finish_log}"
    );

    let second = power_on_again(&first, &[]);
    assert_eq!(observed_unit(&second), "inactive result success disabled");
    assert_serves_the_restored_etcd(&second);
    let normal = second.journal(&[
        "-b",
        "0",
        "-u",
        "cpr-finish.service",
        "-u",
        "kubelet.service",
    ]);
    assert!(
        normal.contains("Started container") && !normal.contains("finish:"),
        "phase 2 ran again on a normal boot, or kubelet did not:\n{normal}"
    );
    let size = std::fs::metadata(first.source.store.join(&first.source.bundle))
        .unwrap()
        .len();
    let (handoff, ready, normal) = (
        first.seconds_to("handing over to /sbin/init"),
        first.seconds_to("cpr finish: control plane restored from"),
        second.seconds_to("OBSERVER: etcd revision"),
    );
    // One line for scripts/bench.d/recovery-boot: power-on times, and where phase 2's went (seconds
    // after the kernel started, from systemd's own timestamps).
    eprintln!(
        "figures: bundle {} MiB; power-on to handoff {handoff:.1} s, to control plane ready {ready:.1} s; \
         normal boot of the restored machine to etcd served {normal:.1} s (ratio {:.2}); after the kernel \
         started: systemd {:.1} s, network-online.target {:.1} s, cpr finish {:.1} s to {:.1} s",
        size >> 20,
        ready / normal,
        observed_time(&first, "systemd"),
        observed_time(&first, "network-online"),
        observed_time(&first, "finish-start"),
        observed_time(&first, "finish-exit"),
    );
}

/// A phase 2 that never ended (cpr killed midway, as by a power cut or a reboot) leaves the unit
/// enabled; the next boot runs it again and it converges from the state file.
#[test]
fn an_interrupted_phase_2_runs_again_at_the_next_boot_and_converges() {
    let dropin = "/etc/systemd/system/cpr-finish.service.d/failpoint.conf";
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        local.path(),
        "[Service]\nEnvironment=CPR_FAILPOINT=finish:initialized\n",
    )
    .unwrap();
    let first = recovery_into_debian(
        &fixture().small,
        &[
            "mkdir /etc/systemd/system/cpr-finish.service.d".to_string(),
            format!("write {} {dropin}", local.path().display()),
        ],
    );
    assert_eq!(observed_unit(&first), "failed result signal enabled");
    first.assert_console("OBSERVER: finish-failed absent");

    let second = power_on_again(&first, &[format!("rm {dropin}")]);
    second.assert_console("cpr finish: control plane restored from");
    assert_eq!(observed_unit(&second), "active result success disabled");
    assert_serves_the_restored_etcd(&second);
    // Killed before it recorded kubeadm init as done, the re-run runs init again: under the real
    // systemd the kubelet and the static pods of the first attempt still run, and it frees kubeadm's
    // ports first.
    let rerun = second.journal(&["-b", "0", "-u", "cpr-finish.service"]);
    assert!(
        rerun.contains("kubelet of an earlier attempt still runs")
            && rerun.contains("Your Kubernetes control-plane has initialized successfully"),
        "{rerun}"
    );
}

/// A phase 2 that failed is final: the unit disables itself, the marker says why, and the next boot
/// shows the failure at the console's login prompt instead of running phase 2 again.
#[test]
fn a_failed_phase_2_is_disabled_and_shown_at_the_login_prompt() {
    // The operator's mistake of the day: kubeadm is not installed on the replacement machine.
    let first = recovery_into_debian(&fixture().small, &["rm /usr/bin/kubeadm".to_string()]);
    assert_eq!(observed_unit(&first), "failed result exit-code disabled");
    first.assert_console("OBSERVER: finish-failed present");
    first.assert_console("cpr: the control-plane recovery (phase 2) FAILED");
    let marker =
        String::from_utf8_lossy(&first.debugfs("cat /var/lib/cpr/finish-failed")).into_owned();
    assert!(
        marker.contains("kubeadm") && marker.contains("sudo cpr finish"),
        "{marker}"
    );

    let second = power_on_again(&first, &[]);
    assert_eq!(observed_unit(&second), "inactive result success disabled");
    second.assert_console("*** cpr: the control-plane recovery (phase 2) FAILED");
    second.assert_console("master0 login:");
}

/// `cpr.new_address=1` with a static `cpr.ip=` other than the bundle's node address (issue 14): the
/// console shows the plan of the restore onto the new address before the swap, the etcd member comes
/// back with its peer URL on the new address, the disk's init serves the restored etcd, and the
/// target's state file carries the plan to phase 2 (the leaf certificates kubeadm re-issues).
#[test]
fn a_recovery_boot_onto_a_new_address_restores_the_member_there() {
    let new_ip = "10.0.2.16";
    let mut spec = Boot::new(Medium::Direct);
    spec.cmdline = format!("cpr.new_address=1 cpr.ip={new_ip}/24 cpr.hostname={NODE_NAME}");
    let outcome = boot(spec);
    assert_recovered(&outcome);
    outcome.assert_console(&format!(
        "restore onto a new address: node {NODE_NAME} at {GUEST_IP} becomes {NODE_NAME} at {new_ip}"
    ));
    // The member keeps the source's peer port (a free port of the host here) on the new address.
    outcome.assert_console(&format!(
        "rebuilding the etcd data dir for member {NODE_NAME} (peer URLs https://{new_ip}:"
    ));
    let state: serde_json::Value =
        serde_json::from_slice(&outcome.debugfs("cat /var/lib/cpr/state.json")).unwrap();
    let plan = &state["newAddress"];
    assert_eq!(plan["newAddress"], new_ip, "{state}");
    assert!(plan["etcdPeerUrl"]
        .as_str()
        .unwrap()
        .starts_with(&format!("https://{new_ip}:")));
    assert_eq!(
        plan["reissuedCertificates"],
        serde_json::json!(["apiserver", "etcd/server", "etcd/peer"])
    );
}
