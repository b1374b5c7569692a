//! Recovery boots under QEMU (software emulation): a blank replacement VM boots the recovery image
//! (kernel + initramfs directly, the ISO, or PXE through iPXE), fetches its bundle from a loopback
//! HTTP server through QEMU's restricted user network, restores onto its disk and hands over to the
//! disk's own init, a busybox script that reports what it finds. Failure boots must explain
//! themselves, apply `cpr.on_failure`, leave the disk clean and never panic the kernel.
//!
//! Needs the release binary (`cargo build --release`, as scripts/test does) and the packages of
//! scripts/lib/deps.sh. Boots run side by side, one per test thread (by default one per core).

mod common;
#[path = "common/qemu.rs"]
mod qemu;
mod store_common;

use common::*;
use qemu::*;

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
    let corrupt = f.dir.join("corrupt-store");
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
