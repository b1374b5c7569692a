//! Operating cpr (issue 7) against real parts: `cpr prune` on a directory, nginx and moto's S3,
//! killed mid-prune; `cpr backup --prune --metrics-file` against a real etcd, the file checked by
//! promtool; `cpr check` on a live kubeadm node and on bundles.

mod common;
mod store_common;

use common::certs::cert_expiring_in;
use common::*;
use cpr::store::index::{self, IndexEntry};
use cpr::store::{self as cpr_store, Store};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use store_common::{fast_options, moto, nginx, put, require};

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// One real bundle: a backup of a real etcd behind kubeadm's mTLS, as bytes.
fn real_bundle(node: &KubeadmNode) -> Vec<u8> {
    let store = tempfile::tempdir().unwrap();
    let report = json(&cpr(&[
        "backup",
        "--root",
        node.root().to_str().unwrap(),
        "--store",
        store.path().to_str().unwrap(),
        "--output",
        "json",
    ]));
    std::fs::read(store.path().join(report["bundle"].as_str().unwrap())).unwrap()
}

/// Every 6 hours from 2026-11-01 00:00 to 2026-11-04 18:00 UTC: 16 bundles over four days.
fn stamps() -> Vec<String> {
    (1..=4)
        .flat_map(|day| [0, 6, 12, 18].map(move |hour| format!("202611{day:02}T{hour:02}0000Z")))
        .collect()
}

fn bundle_name(stamp: &str) -> String {
    format!("{CLUSTER}/{NODE_NAME}/{stamp}.tar.zst")
}

/// Stores a copy of `bundle` under each stamp, with a `.minisig` beside it, and indexes them as a
/// backup does.
fn seed(store: &dyn Store, bundle: &[u8]) {
    for stamp in stamps() {
        let name = bundle_name(&stamp);
        put(store, &name, bundle);
        put(
            store,
            &format!("{name}.minisig"),
            b"untrusted comment: test\n",
        );
        let created = time::PrimitiveDateTime::parse(
            &stamp,
            time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
        )
        .unwrap()
        .assume_utc();
        index::append(
            store,
            CLUSTER,
            NODE_NAME,
            IndexEntry {
                name,
                size: bundle.len() as u64,
                created,
                node: NODE_NAME.into(),
                revision: Some(1),
                encrypted: false,
                signed: true,
                sha256: None,
                blake3: None,
                renamed_from: None,
                etcd_members: Vec::new(),
                extra: Default::default(),
            },
        )
        .unwrap();
    }
}

/// A directory store seeded with copies of `bundle` under `stamps()`.
fn seeded_dir(bundle: &[u8]) -> (tempfile::TempDir, String, Box<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let store = cpr_store::open(&url, &fast_options()).unwrap();
    seed(store.as_ref(), bundle);
    (dir, url, store)
}

/// What a store holds after the policy ran: the kept bundles, their signatures and the index.
fn expected_files() -> BTreeSet<String> {
    let mut expected: BTreeSet<String> = expected_kept()
        .into_iter()
        .flat_map(|n| [format!("{n}.minisig"), n])
        .collect();
    expected.insert(format!("{CLUSTER}/{NODE_NAME}/index.json"));
    expected
}

/// `--keep-last 2 --keep-daily 3` over `stamps()`: the two newest, and the newest of the last three days.
fn expected_kept() -> BTreeSet<String> {
    [
        "20261104T180000Z",
        "20261104T120000Z",
        "20261103T180000Z",
        "20261102T180000Z",
    ]
    .iter()
    .map(|s| bundle_name(s))
    .collect()
}

const POLICY: [&str; 4] = ["--keep-last", "2", "--keep-daily", "3"];

fn prune(store: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["prune", "--store", store];
    args.extend(POLICY);
    args.extend(extra);
    cpr_env(&args, env)
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

fn indexed(store: &dyn Store) -> BTreeSet<String> {
    index::read(store, CLUSTER, NODE_NAME)
        .unwrap()
        .bundles
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// The invariant an interrupted prune must keep: the index names no object that is gone.
fn index_names_only_existing_objects(store: &dyn Store, dir: &Path) {
    for name in indexed(store) {
        assert!(
            dir.join(&name).is_file(),
            "the index lists {name}, which is gone"
        );
    }
}

fn flip_a_byte_in_the_middle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn prune_keeps_what_the_policy_says_and_deletes_signatures_with_their_bundles() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    let bundle = real_bundle(&node);
    let (dir, url, store) = seeded_dir(&bundle);
    let url = url.as_str();
    // A backup cut off by a power cut an hour ago, and one that has just started writing.
    let dead = format!("{}.part", bundle_name("20261101T000000Z"));
    let young = format!("{}.part", bundle_name("20261105T000000Z"));
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::write(dir.path().join(&dead), &bundle[..bundle.len() / 2]).unwrap();
    let dead_file = std::fs::File::options()
        .write(true)
        .open(dir.path().join(&dead));
    dead_file.unwrap().set_modified(hour_ago).unwrap();
    std::fs::write(dir.path().join(&young), b"partial").unwrap();
    let before = files(dir.path());

    let dry = json(&prune(url, &["--dry-run", "--output", "json"], &[]));
    assert_eq!(files(dir.path()), before, "a dry run deleted something");
    assert_eq!(
        dry["nodes"][0]["deadUploads"],
        serde_json::json!([dead]),
        "{dry}"
    );
    let kept: BTreeSet<String> = dry["nodes"][0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, expected_kept(), "{dry}");
    assert_eq!(
        dry["nodes"][0]["protected"],
        bundle_name("20261104T180000Z").as_str()
    );

    let text = ok(&prune(url, &[], &[]));
    assert!(text.contains("4 kept, 12 deleted"), "{text}");
    assert!(
        text.contains(&format!("deleted {dead}  (unfinished upload")),
        "{text}"
    );
    let mut expected = expected_files();
    expected.insert(young.clone());
    assert_eq!(files(dir.path()), expected, "the young .part must stay");
    std::fs::remove_file(dir.path().join(&young)).unwrap();
    expected.remove(&young);
    assert_eq!(indexed(store.as_ref()), expected_kept());

    // Nothing left to delete: nothing is read, nothing changes.
    let again = json(&prune(url, &["--output", "json"], &[]));
    assert_eq!(again["nodes"][0]["protected"], Value::Null, "{again}");
    assert_eq!(files(dir.path()), expected);

    let empty = cpr(&["prune", "--store", url]);
    assert_eq!(code(&empty), Some(2), "{}", stderr(&empty));
    assert!(stderr(&empty).contains("--keep-last"), "{}", stderr(&empty));
}

#[test]
fn prune_never_deletes_the_newest_bundle_that_verifies() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    let bundle = real_bundle(&node);
    let (dir, url, store) = seeded_dir(&bundle);
    let url = url.as_str();
    let newest = bundle_name("20261104T180000Z");
    let second = bundle_name("20261104T120000Z");
    flip_a_byte_in_the_middle(&dir.path().join(&newest));

    // --keep-daily 1 alone keeps only the (damaged) newest; the newest good one must stay as well.
    let report = json(&cpr(&[
        "prune",
        "--store",
        url,
        "--keep-daily",
        "1",
        "--output",
        "json",
    ]));
    let node_report = &report["nodes"][0];
    assert_eq!(node_report["protected"], second.as_str(), "{report}");
    assert_eq!(node_report["failedVerification"][0][0], newest.as_str());
    assert_eq!(
        indexed(store.as_ref()),
        BTreeSet::from([newest.clone(), second.clone()])
    );
    assert!(dir.path().join(&second).is_file());

    // With every bundle damaged, prune refuses to delete anything.
    flip_a_byte_in_the_middle(&dir.path().join(&second));
    let before = files(dir.path());
    let refused = cpr(&["prune", "--store", url, "--keep-last", "1"]);
    assert_eq!(code(&refused), Some(4), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("no bundle of this node verifies"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(files(dir.path()), before);
}

#[test]
fn a_prune_killed_at_any_step_leaves_a_consistent_index_and_converges() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    let bundle = real_bundle(&node);

    // The uninterrupted run, for comparison.
    let (clean, clean_url, _) = seeded_dir(&bundle);
    ok(&prune(&clean_url, &[], &[]));

    let (dir, url, store) = seeded_dir(&bundle);
    let url = url.as_str();

    // Killed right after the index was rewritten: every doomed object is still there, listed by the
    // store but no longer by the index.
    let killed = prune(url, &[], &[("CPR_FAILPOINT", "prune:index-written")]);
    assert_eq!(killed.status.signal(), Some(9), "{}", stderr(&killed));
    index_names_only_existing_objects(store.as_ref(), dir.path());
    assert_eq!(indexed(store.as_ref()), expected_kept());
    let listed = json(&cpr(&["list", "--store", url, "--output", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 16, "{listed}");

    // Killed between a bundle and its signature: a signature without its bundle is left.
    let killed = prune(url, &[], &[("CPR_FAILPOINT", "prune:bundle-deleted")]);
    assert_eq!(killed.status.signal(), Some(9), "{}", stderr(&killed));
    index_names_only_existing_objects(store.as_ref(), dir.path());
    let orphan = bundle_name("20261101T000000Z");
    assert!(!dir.path().join(&orphan).exists());
    assert!(dir.path().join(format!("{orphan}.minisig")).exists());

    // The next run finishes the job, orphan signature included: the same store as an uninterrupted run.
    let report = json(&prune(url, &["--output", "json"], &[]));
    assert_eq!(
        report["nodes"][0]["orphanSignatures"][0],
        format!("{orphan}.minisig").as_str(),
        "{report}"
    );
    assert_eq!(files(dir.path()), files(clean.path()));
    index_names_only_existing_objects(store.as_ref(), dir.path());
}

#[test]
fn prune_through_nginx_and_s3_deletes_bundles_signatures_and_index_entries() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    let bundle = real_bundle(&node);

    let tmp = tempfile::tempdir().unwrap();
    let nginx = nginx(tmp.path());
    let http = format!("http://127.0.0.1:{}/backups", nginx.port);
    let http_store = cpr_store::open(&http, &fast_options()).unwrap();
    seed(http_store.as_ref(), &bundle);
    // A plain HTTP server cannot list: prune finds nothing unless told which node's index to read.
    let found_nothing = ok(&prune(&http, &[], &[]));
    assert!(
        found_nothing.contains("--cluster and --node"),
        "{found_nothing}"
    );
    ok(&prune(
        &http,
        &["--cluster", CLUSTER, "--node", NODE_NAME],
        &[],
    ));
    let served = nginx.www.join("backups");
    let expected = expected_files();
    assert_eq!(files(&served), expected);
    assert_eq!(indexed(http_store.as_ref()), expected_kept());

    let moto = moto();
    let s3_store = moto.store("prune");
    seed(s3_store.as_ref(), &bundle);
    let s3 = format!("s3://{}/prune", store_common::BUCKET);
    let env = [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test-key"),
        ("AWS_SECRET_ACCESS_KEY", store_common::SECRET),
    ];
    ok(&prune(&s3, &[], &env));
    let left: BTreeSet<String> = s3_store
        .list("")
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(left, expected);
    assert_eq!(indexed(s3_store.as_ref()), expected_kept());
}

fn promtool_accepts(path: &Path) {
    let promtool = require("promtool", "the apt package prometheus");
    let out = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(path).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap()
    );
}

fn metric(path: &Path, name: &str) -> Option<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.parse().unwrap())
}

#[test]
fn scheduled_backup_prunes_by_the_config_and_writes_metrics_on_success_and_failure() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_4, 20);
    let store = tempfile::tempdir().unwrap();
    let config = node.root().join("etc/cpr/config.yaml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "version: 1\nstore:\n  url: {}\nretention:\n  keepLast: 2\n",
            store.path().display()
        ),
    )
    .unwrap();
    let metrics = tempfile::tempdir().unwrap();
    let prom = metrics.path().join("cpr.prom");
    let root = node.root().to_str().unwrap().to_string();
    let backup = || {
        cpr(&[
            "backup",
            "--root",
            &root,
            "--prune",
            "--metrics-file",
            prom.to_str().unwrap(),
            "--output",
            "json",
        ])
    };
    let mut reports = Vec::new();
    for _ in 0..3 {
        reports.push(json(&backup()));
        // Bundle names have one-second resolution.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let names: BTreeSet<String> = reports[1..]
        .iter()
        .map(|r| r["bundle"].as_str().unwrap().to_string())
        .collect();
    let left: BTreeSet<String> = files(store.path())
        .into_iter()
        .filter(|f| f.ends_with(".tar.zst"))
        .collect();
    assert_eq!(left, names, "keepLast 2 after three backups");
    let last = &reports[2];
    assert_eq!(
        last["prune"]["nodes"][0]["decisions"][2]["keep"], false,
        "{last}"
    );

    promtool_accepts(&prom);
    assert_eq!(metric(&prom, "cpr_backup_failures_total"), Some(0.0));
    assert_eq!(metric(&prom, "cpr_backup_last_attempt_success"), Some(1.0));
    assert_eq!(
        metric(&prom, "cpr_backup_etcd_revision"),
        last["revision"].as_f64()
    );
    assert_eq!(
        metric(&prom, "cpr_backup_bundle_size_bytes"),
        last["size"].as_f64()
    );
    let success = metric(&prom, "cpr_backup_last_success_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - success).abs() < 60.0, "{success} vs {now}");

    // etcd down: the backup fails with etcd's exit code and only the failure metrics move.
    node.stop_etcd();
    for failures in [1.0, 2.0] {
        let failed = backup();
        assert_eq!(code(&failed), Some(5), "{}", stderr(&failed));
        promtool_accepts(&prom);
        assert_eq!(metric(&prom, "cpr_backup_failures_total"), Some(failures));
    }
    assert_eq!(metric(&prom, "cpr_backup_last_attempt_success"), Some(0.0));
    assert_eq!(
        metric(&prom, "cpr_backup_last_success_timestamp_seconds"),
        Some(success)
    );
    assert!(metric(&prom, "cpr_backup_last_attempt_timestamp_seconds").unwrap() > success);
    assert_eq!(
        files(metrics.path()).len(),
        1,
        "a temp file was left behind"
    );
}

fn check(args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["check"];
    all.extend(args);
    all.extend(["--output", "json"]);
    let out = cpr(&all);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (code(&out), report)
}

fn status<'a>(report: &'a Value, check: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == check)
        .unwrap_or_else(|| panic!("no {check} check in {report}"))["status"]
        .as_str()
        .unwrap()
}

#[test]
fn check_on_a_live_node_reaches_etcd_probes_the_store_and_lists_every_certificate() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    let root = node.root().to_str().unwrap().to_string();
    let store = tempfile::tempdir().unwrap();
    let url = store.path().to_str().unwrap();
    let (code_ok, report) = check(&["--root", &root, "--store", url]);
    assert_eq!(code_ok, Some(0), "{report}");
    for name in ["etcd", "store", "certificates"] {
        assert_eq!(status(&report, name), "ok", "{report}");
    }
    let paths: Vec<&str> = report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    for expected in [
        "etc/kubernetes/pki/ca.crt",
        "etc/kubernetes/pki/etcd/server.crt",
        "etc/kubernetes/pki/front-proxy-client.crt",
        "etc/kubernetes/admin.conf#client",
    ] {
        assert!(
            paths.iter().any(|p| p.ends_with(expected)),
            "{expected} missing from {paths:?}"
        );
    }
    assert!(
        files(store.path()).is_empty(),
        "the probe object was left behind"
    );

    // etcd down and a store nobody can write to (/proc refuses new directories, even to root).
    node.stop_etcd();
    let out = cpr(&[
        "check",
        "--root",
        &root,
        "--store",
        "file:///proc/cpr-check",
    ]);
    assert_eq!(code(&out), Some(9), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[FAIL]   etcd"), "{text}");
    assert!(text.contains("[FAIL]   store"), "{text}");
    assert!(
        stderr(&out).contains("2 of 4 checks failed: etcd, store"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn certificates_near_or_past_expiry_warn_fail_and_say_how_to_renew() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    let root = node.root().to_str().unwrap().to_string();
    std::fs::write(
        node.pki("apiserver.crt"),
        cert_expiring_in(10, "kube-apiserver"),
    )
    .unwrap();

    let (exit, report) = check(&["--root", &root]);
    assert_eq!(exit, Some(0), "a warning is not a failure: {report}");
    assert_eq!(status(&report, "certificates"), "warn");
    assert_eq!(status(&report, "store"), "skipped");
    let detail = report["checks"][2]["detail"].as_str().unwrap();
    assert!(detail.contains("pki/apiserver.crt (9 days)"), "{detail}");
    assert!(detail.contains("kubeadm certs renew all"), "{detail}");
    assert!(
        detail.contains("kubeadm certs check-expiration"),
        "{detail}"
    );
    let (exit, report) = check(&["--root", &root, "--warn-days", "5"]);
    assert_eq!((exit, status(&report, "certificates")), (Some(0), "ok"));

    std::fs::write(
        node.pki("front-proxy-ca.crt"),
        cert_expiring_in(-1, "front-proxy-ca"),
    )
    .unwrap();
    let (exit, report) = check(&["--root", &root]);
    assert_eq!(exit, Some(9), "{report}");
    let detail = report["checks"][2]["detail"].as_str().unwrap();
    assert!(
        detail.contains("expired: ") && detail.contains("front-proxy-ca.crt"),
        "{detail}"
    );
    assert!(detail.contains("kubeadm cannot renew a CA"), "{detail}");
}

#[test]
fn bundle_certificates_are_checked_without_reading_the_snapshot() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    std::fs::write(
        node.pki("apiserver.crt"),
        cert_expiring_in(10, "kube-apiserver"),
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let url = store.path().to_str().unwrap();
    ok(&cpr(&[
        "backup",
        "--root",
        node.root().to_str().unwrap(),
        "--store",
        url,
    ]));

    let (exit, report) = check(&["--bundle", "latest", "--store", url, "--node", NODE_NAME]);
    assert_eq!(exit, Some(0), "{report}");
    assert!(report["target"]
        .as_str()
        .unwrap()
        .starts_with("bundle prod/master0/"));
    let detail = report["checks"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("etc/kubernetes/pki/apiserver.crt (9 days)"),
        "{detail}"
    );
    assert!(detail.contains("take a new backup"), "{detail}");
    assert!(report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["path"] == "etc/kubernetes/admin.conf#client"));

    // The same bundle with its snapshot overwritten: verify refuses it, check never reads that far.
    let name = files(store.path())
        .into_iter()
        .find(|f| f.ends_with(".tar.zst"))
        .unwrap();
    let damaged = store.path().join("damaged.tar.zst");
    damage_snapshot(&store.path().join(name), &damaged);
    let verify = cpr(&["verify", damaged.to_str().unwrap()]);
    assert_eq!(code(&verify), Some(4), "{}", stderr(&verify));
    let (exit, report) = check(&["--bundle", damaged.to_str().unwrap()]);
    assert_eq!(exit, Some(0), "{report}");
    assert_eq!(status(&report, "certificates"), "warn");
}

/// Rewrites a bundle with the snapshot's bytes zeroed (the tar layout intact), using zstd and
/// Python's tarfile, not cpr.
fn damage_snapshot(bundle: &Path, out: &Path) {
    let script = r#"
import io, subprocess, sys, tarfile
raw = subprocess.run(["zstd", "-dc", sys.argv[1]], check=True, capture_output=True).stdout
buf = bytearray(raw)
for member in tarfile.open(fileobj=io.BytesIO(raw)):
    if member.name == "etcd/snapshot.db":
        buf[member.offset_data:member.offset_data + member.size] = bytes(member.size)
out = subprocess.run(["zstd", "-q", "-c"], input=bytes(buf), check=True, capture_output=True).stdout
open(sys.argv[2], "wb").write(out)
"#;
    run(Command::new("python3")
        .args(["-c", script])
        .arg(bundle)
        .arg(out));
}
