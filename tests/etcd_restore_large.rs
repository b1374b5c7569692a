//! A 2 GiB etcd snapshot of Kubernetes-like small objects (0.5–4 KiB values, about 700,000
//! revisions, rewrites, deletes and a compaction), restored by `cpr etcd snapshot restore
//! --bump-revision` and served by a real etcd 3.5.1 at the bumped revision with every key.
//!
//! The snapshot is written directly in bbolt's file format (tests/common/bbolt_snapshot.rs): a few
//! seconds, where filling a real etcd would take many minutes. The real etcd that serves the
//! restored db checks the result.
//!
//! A db this size of small objects needs more page skeletons than the restore's 16 MiB budget
//! holds; the pages past it go to the restore's spill file. The restore's time is printed.

mod common;

use common::bbolt_snapshot::{write_snapshot, Shape};
use common::etcd_cluster::{check, v35, Server, Spec};
use std::time::Instant;

const DB_BYTES: u64 = 2 << 30;
const BUMP: u64 = 1_000_000_000;

#[test]
fn a_2_gib_snapshot_of_small_objects_is_restored_and_served_by_etcd_35() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let snapshot = tmp.path().join("snapshot.db");
    let started = Instant::now();
    let made = write_snapshot(&snapshot, DB_BYTES, Shape::Small);
    let size = std::fs::metadata(&snapshot).unwrap().len();
    eprintln!(
        "snapshot: {size} bytes, revision {}, {} keys, written in {:.1} s",
        made.revision,
        made.keys,
        started.elapsed().as_secs_f64()
    );
    assert!(size >= DB_BYTES, "{size}");

    let tools = v35();
    let data = tmp.path().join("data");
    let spec = Spec::single(&tools, &data);
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cpr"))
        .args(["etcd", "snapshot", "restore"])
        .arg(&snapshot)
        .arg("--data-dir")
        .arg(&data)
        .args(["--initial-cluster", &spec.initial_cluster])
        .args(["--initial-advertise-peer-urls", &spec.peer])
        .args(["--bump-revision", &BUMP.to_string(), "--mark-compacted"])
        .output()
        .unwrap();
    check(out, "cpr etcd snapshot restore");
    eprintln!(
        "cpr etcd snapshot restore: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&snapshot).unwrap();

    let status = tools
        .util()
        .args(["snapshot", "status", "-w", "json"])
        .arg(data.join("member/snap/db"))
        .output()
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&check(status, "etcdutl snapshot status")).unwrap();
    assert_eq!(status["revision"], made.revision + BUMP as i64, "{status}");

    let mut server = Server::start(&spec);
    server.wait_healthy();
    assert_eq!(
        server.revision_and_count(),
        (made.revision + BUMP as i64, made.keys as i64)
    );
    for (key, value) in &made.samples {
        let got = server.ctl_ok(&["get", key, "--print-value-only"]);
        assert_eq!(got.trim_end().as_bytes(), &value[..], "{key}");
    }
    let deleted = made.deleted.expect("the small-object shape deletes keys");
    let got = server.ctl_ok(&["get", &deleted, "--count-only", "-w", "fields"]);
    assert!(got.contains("\"Count\" : 0"), "{deleted}: {got}");
}
