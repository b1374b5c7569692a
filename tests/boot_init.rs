//! `cpr init --root`: the recovery boot's dry run on a fake root. The kernel calls are only logged,
//! so it runs unprivileged and changes nothing on this machine.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// A fake initramfs root: one ext4 disk labelled "target" at dev/vdb, one Ethernet NIC, and the
/// target's init in sysroot/ (which stands in for the mounted target).
fn fake_root(root: &Path) {
    for dir in [
        "sys/class/block/vda",
        "sys/class/block/vdb",
        "dev",
        "sysroot/sbin",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::create_dir_all(root.join("sys/class/net/eth0")).unwrap();
    std::fs::write(root.join("sys/class/net/eth0/type"), "1\n").unwrap();
    std::fs::write(root.join("dev/vda"), vec![0u8; 4096]).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "target"])
        .arg(root.join("dev/vdb"))
        .arg("4M"));
    std::fs::write(root.join("sysroot/sbin/init"), "#!/bin/sh\n").unwrap();
}

#[test]
fn dry_run_finds_the_target_configures_the_network_and_reports_a_missing_bundle() {
    let root = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    fake_root(root.path());
    let cmdline = format!(
        "console=ttyS0 cpr.store={} cpr.root=LABEL=target cpr.ip=192.0.2.10/24:192.0.2.1 cpr.hostname={NODE_NAME} cpr.retries=0",
        store.path().display()
    );
    let out = cpr(&[
        "init",
        "--root",
        root.path().to_str().unwrap(),
        "--cmdline",
        &cmdline,
    ]);
    let log = stderr(&out);
    let r = root.path().display();
    for line in [
        format!("host (not done): mount proc {r}/proc proc"),
        format!("host (not done): mount {r}/dev/vdb {r}/sysroot ext4"),
        "host (not done): up eth0".to_string(),
        "host (not done): ip eth0 192.0.2.10/24 via Some(192.0.2.1)".to_string(),
        format!("host (not done): hostname {NODE_NAME}"),
        format!("no bundle for node {NODE_NAME}"),
        // Advice a booting machine can follow: kernel command line keys, not CLI flags.
        "add cpr.hostname=NODE".to_string(),
        format!("host (not done): umount {r}/sysroot"),
    ] {
        assert!(log.contains(&line), "missing {line:?} in:\n{log}");
    }
    assert_eq!(out.status.code(), Some(3), "{log}");
    // Nothing was restored or installed into the stand-in target.
    assert!(!root.path().join("sysroot/usr/local/sbin/cpr").exists());
    assert!(!root.path().join("sysroot/etc/kubernetes").exists());
}

#[test]
fn without_root_it_refuses_outside_pid_1() {
    let out = cpr(&["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("only runs as PID 1"),
        "{}",
        stderr(&out)
    );
}
