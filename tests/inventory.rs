//! `cpr inspect --objects`: the inventory of snapshots written by real etcd 3.4 and 3.5 holding
//! objects in kube-apiserver's encodings, made by `tests/fixtures/k8s-objects.py` (Google's protobuf
//! runtime over Kubernetes' own .proto files, independent of cpr's decoder), counted against
//! etcdctl.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::etcd_cluster::{check, txn, v34, v35, Server, Spec, Tools};
use common::objects::etcdctl_put;
use common::{cpr, fixtures, ok, EtcdVersion, KubeadmNode};
use serde_json::Value;
use tempfile::TempDir;

/// One object as the fixture wrote it.
struct Fixture {
    key: String,
    value: Vec<u8>,
    line: Value,
}

fn fixture_objects(prefix: &str, suffix: &str) -> Vec<Fixture> {
    let out = Command::new("python3")
        .arg(fixtures().join("k8s-objects.py"))
        .args([prefix, suffix])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "k8s-objects.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            Fixture {
                key: line["key"].as_str().unwrap().to_string(),
                value: base64::engine::general_purpose::STANDARD
                    .decode(line["value"].as_str().unwrap())
                    .unwrap(),
                line,
            }
        })
        .collect()
}

fn put(server: &Server, key: &str, value: &[u8]) {
    let mut etcdctl = Command::new(&server.tools.etcdctl);
    etcdctl
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &server.client]);
    etcdctl_put(etcdctl, key, value);
}

/// An etcd of `tools` holding the fixture objects under `/registry`, with history: an object
/// deleted (its tombstone is the last revision), one updated twice, and keys outside the prefix.
fn populated(tools: &Tools, dir: &Path) -> (Server, Vec<Fixture>) {
    let mut server = Server::start(&Spec::single(tools, &dir.join("data")));
    server.wait_healthy();
    let objects = fixture_objects("/registry", "");
    let doomed = fixture_objects("/registry", "-doomed");
    for object in doomed.iter().chain(&objects) {
        put(&server, &object.key, &object.value);
    }
    for object in &doomed {
        check(server.ctl(&["del", &object.key]), "etcdctl del");
    }
    let config = &objects[0];
    for _ in 0..2 {
        put(&server, &config.key, &config.value);
    }
    put(&server, "/registryx/not/ours", b"x");
    put(&server, "/other", b"y");
    (server, objects)
}

fn snapshot(server: &Server, dir: &Path) -> PathBuf {
    let path = dir.join("snapshot.db");
    check(
        server.ctl(&["snapshot", "save", path.to_str().unwrap()]),
        "etcdctl snapshot save",
    );
    path
}

/// `etcdctl get KEY -w json`: the key's mod revision.
fn mod_revision(server: &Server, key: &str) -> i64 {
    let out = check(server.ctl(&["get", key, "-w", "json"]), "etcdctl get");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["kvs"][0]["mod_revision"].as_i64().unwrap()
}

fn keys_under(server: &Server, prefix: &str) -> usize {
    check(
        server.ctl(&["get", prefix, "--prefix", "--keys-only"]),
        "etcdctl get --keys-only",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .count()
}

fn inventory(args: &[&str]) -> Value {
    let out = ok(&cpr(
        &[&["inspect", "--objects", "--output", "json"], args].concat()
    ));
    serde_json::from_str(&out).unwrap()
}

/// The inventory's items by resource, namespace (`""`: none) and name.
fn items_by_name(inventory: &Value) -> BTreeMap<(String, String, String), Value> {
    inventory["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let ns = item["namespace"].as_str().unwrap_or("").to_string();
            let resource = item["resource"].as_str().unwrap().to_string();
            let name = item["name"].as_str().unwrap().to_string();
            ((resource, ns, name), item.clone())
        })
        .collect()
}

/// Where each fixture object must be listed: its resource as kubectl names it.
fn expected_resource(key: &str) -> &'static str {
    let table = [
        ("/registry/configmaps/", "configmaps"),
        ("/registry/secrets/", "secrets"),
        ("/registry/pods/", "pods"),
        ("/registry/deployments/", "deployments.apps"),
        ("/registry/services/specs/", "services"),
        ("/registry/minions/", "nodes"),
        ("/registry/namespaces/", "namespaces"),
        ("/registry/leases/", "leases.coordination.k8s.io"),
        ("/registry/events/", "events"),
        (
            "/registry/apiextensions.k8s.io/customresourcedefinitions/",
            "customresourcedefinitions.apiextensions.k8s.io",
        ),
        ("/registry/example.com/widgets/", "widgets.example.com"),
        (
            "/registry/apiregistration.k8s.io/apiservices/",
            "apiservices.apiregistration.k8s.io",
        ),
    ];
    table
        .iter()
        .find(|(prefix, _)| key.starts_with(prefix))
        .unwrap_or_else(|| panic!("no resource for {key}"))
        .1
}

fn assert_inventory_matches(tools: &Tools) {
    let dir = TempDir::new().unwrap();
    let (server, objects) = populated(tools, dir.path());
    let db = snapshot(&server, dir.path());
    let json = inventory(&[db.to_str().unwrap()]);
    let version = tools.version;

    assert_eq!(
        json["objects"].as_u64().unwrap() as usize,
        keys_under(&server, "/registry/"),
        "etcd {version}: objects counted against etcdctl get /registry/ --prefix --keys-only"
    );
    assert_eq!(json["objects"].as_u64().unwrap() as usize, objects.len());
    assert_eq!(
        json["otherKeys"], 2,
        "etcd {version}: /registryx and /other"
    );
    let items = items_by_name(&json);
    for object in &objects {
        let want = &object.line;
        let ns = want["namespace"].as_str().unwrap_or("").to_string();
        let name = want["name"].as_str().unwrap().to_string();
        let resource = expected_resource(&object.key).to_string();
        let item = items
            .get(&(resource, ns, name))
            .unwrap_or_else(|| panic!("etcd {version}: {} missing from {json}", object.key));
        assert_eq!(item["storage"], want["storage"], "{}", object.key);
        assert_eq!(item["size"], object.value.len(), "{}", object.key);
        assert_eq!(
            item["modRevision"].as_i64().unwrap(),
            mod_revision(&server, &object.key),
            "{}",
            object.key
        );
        if want["storage"] == "encrypted" {
            assert!(item.get("uid").is_none(), "{item}");
            assert!(item["detail"]
                .as_str()
                .unwrap()
                .starts_with(if object.key.contains("kms") {
                    "kms:v2:vault"
                } else {
                    "aescbc:v1:key1"
                }));
        } else {
            assert_eq!(item["uid"], want["uid"], "{}", object.key);
            assert_eq!(
                item["creationTimestamp"], want["creationTimestamp"],
                "{}",
                object.key
            );
        }
    }
    let secrets = json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "secrets")
        .unwrap();
    assert_eq!(secrets["objects"], 2);
    assert_eq!(secrets["encrypted"], 1);
    assert_eq!(secrets["namespaces"][0]["namespace"], "default");

    let text = ok(&cpr(&["inspect", "--objects", db.to_str().unwrap()]));
    assert!(
        text.starts_with(&format!(
            "{} objects under /registry (2 other keys)",
            objects.len()
        )),
        "{text}"
    );
    assert!(text.contains("widgets.example.com"), "{text}");
    assert!(text.contains("encrypted (kms:v2:vault)"), "{text}");
}

#[test]
fn counts_and_metadata_of_an_etcd_3_5_snapshot() {
    assert_inventory_matches(&v35());
}

#[test]
fn counts_and_metadata_of_an_etcd_3_4_snapshot() {
    assert_inventory_matches(&v34());
}

/// A bundle in a store, by name and as a file, under a custom `--etcd-prefix`: the same counts as
/// etcdctl on the live etcd the backup was taken from.
#[test]
fn inventory_of_a_bundle_under_a_custom_prefix() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 0);
    for object in fixture_objects("/k8s", "") {
        etcdctl_put(node.etcdctl_command(), &object.key, &object.value);
    }
    let store = TempDir::new().unwrap();
    let report: Value = serde_json::from_str(&ok(&cpr(&[
        "backup",
        "--root",
        node.root().to_str().unwrap(),
        "--store",
        store.path().to_str().unwrap(),
        "--output",
        "json",
    ])))
    .unwrap();
    let name = report["bundle"].as_str().unwrap();
    let live = node.key_count_under("/k8s/");
    let by_name = inventory(&[
        name,
        "--store",
        store.path().to_str().unwrap(),
        "--etcd-prefix",
        "k8s/",
    ]);
    assert_eq!(by_name["objects"].as_i64(), Some(live), "{by_name}");
    assert_eq!(by_name["prefix"], "/k8s");
    let file = store.path().join(name);
    let by_file = inventory(&[file.to_str().unwrap(), "--etcd-prefix", "/k8s"]);
    assert_eq!(by_file, by_name);
    assert_eq!(
        by_name["otherKeys"].as_i64(),
        Some(node.key_count() - live),
        "the seeded /registry keys"
    );

    // The live etcd moves on: cpr diff --live reads its keys with the node's client certificate.
    let fresh = fixture_objects("/k8s", "-new");
    etcdctl_put(node.etcdctl_command(), &fresh[0].key, &fresh[0].value);
    let secret = fixture_objects("/k8s", "")[1].key.clone();
    let out = node.etcdctl(&["del", &secret]);
    assert!(out.status.success());
    let diff: Value = serde_json::from_str(&ok(&cpr(&[
        "diff",
        file.to_str().unwrap(),
        "--live",
        "--root",
        node.root().to_str().unwrap(),
        "--etcd-prefix",
        "/k8s",
        "--output",
        "json",
    ])))
    .unwrap();
    assert_eq!(
        diff["changes"],
        serde_json::json!([
            {"resource": "configmaps", "namespace": "default", "added": ["app-config-new"], "removed": [], "changed": []},
            {"resource": "secrets", "namespace": "default", "added": [], "removed": ["db-password"], "changed": []},
        ]),
        "{diff}"
    );
}

/// A second snapshot after creates, updates and deletes: the diff reports exactly those, events
/// and leases only when asked.
#[test]
fn diff_reports_exactly_the_creates_updates_and_deletes() {
    let dir = TempDir::new().unwrap();
    let (server, objects) = populated(&v35(), dir.path());
    let before = snapshot(&server, dir.path());
    let after = dir.path().join("after.db");
    let key = |dir: &str| {
        objects
            .iter()
            .find(|o| o.key.starts_with(&format!("/registry/{dir}/")))
            .unwrap()
    };
    let created = &fixture_objects("/registry", "-new")[0];
    put(&server, &created.key, &created.value);
    for updated in ["deployments", "leases", "events"] {
        put(&server, &key(updated).key, &key(updated).value);
    }
    check(server.ctl(&["del", &key("pods").key]), "etcdctl del");
    check(
        server.ctl(&["snapshot", "save", after.to_str().unwrap()]),
        "etcdctl snapshot save",
    );
    let diff = |extra: &[&str]| -> Value {
        let args = [
            &[
                "diff",
                before.to_str().unwrap(),
                after.to_str().unwrap(),
                "--output",
                "json",
            ],
            extra,
        ]
        .concat();
        serde_json::from_str(&ok(&cpr(&args))).unwrap()
    };
    let change = |resource: &str, ns: &str, added: &[&str], removed: &[&str], changed: &[&str]| serde_json::json!({"resource": resource, "namespace": ns, "added": added, "removed": removed, "changed": changed});
    assert_eq!(
        diff(&[])["changes"],
        serde_json::json!([
            change("configmaps", "default", &["app-config-new"], &[], &[]),
            change("deployments.apps", "default", &[], &[], &["web"]),
            change("pods", "default", &[], &["web-0"], &[]),
        ])
    );
    assert_eq!(
        diff(&["--all"])["changes"],
        serde_json::json!([
            change("configmaps", "default", &["app-config-new"], &[], &[]),
            change("deployments.apps", "default", &[], &[], &["web"]),
            change("events", "default", &[], &[], &["web-0.17a1b2c3"]),
            change(
                "leases.coordination.k8s.io",
                "kube-node-lease",
                &[],
                &[],
                &["cp0"]
            ),
            change("pods", "default", &[], &["web-0"], &[]),
        ])
    );
    let text = ok(&cpr(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
    ]));
    assert!(
        text.contains("deployments.apps in default: 0 added, 0 removed, 1 changed\n  ~ web\n"),
        "{text}"
    );
    assert!(text.contains("  - web-0\n"), "{text}");
    assert!(!text.contains("events"), "{text}");
}

/// The fixture object without what `cpr get` leaves out for `kubectl apply`.
fn for_apply(object: &Value) -> Value {
    let mut object = object.clone();
    let fields = object.as_object_mut().unwrap();
    fields.remove("status");
    let meta = fields["metadata"].as_object_mut().unwrap();
    for key in ["uid", "resourceVersion", "generation", "creationTimestamp"] {
        meta.remove(key);
    }
    object
}

/// `kubectl apply --dry-run=client` against the discovery stub (`kube-discovery-stub.py`: no
/// OpenAPI, hence --validate=false), the way an operator puts an object back.
struct Kubectl {
    stub: std::process::Child,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

impl Kubectl {
    fn start() -> Kubectl {
        let port = common::free_port();
        let mut stub = Command::new("python3")
            .arg(fixtures().join("kube-discovery-stub.py"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stub.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "listening");
        let dir = TempDir::new().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        common::stub_kubeconfig(&kubeconfig, port);
        Kubectl {
            stub,
            kubeconfig,
            _dir: dir,
        }
    }

    /// What `kubectl apply --dry-run=client -o json -f -` makes of `yaml`.
    fn apply(&self, yaml: &str) -> Value {
        let mut child = Command::new("kubectl")
            .args([
                "apply",
                "--dry-run=client",
                "--validate=false",
                "-o",
                "json",
                "-f",
                "-",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self._dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs (Debian: kubernetes-client)");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), yaml.as_bytes()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply refused:\n{yaml}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = self.stub.kill();
        let _ = self.stub.wait();
    }
}

/// Every readable fixture object comes back from the snapshot as the API would serve it, less
/// the server-set fields; kubectl apply takes the YAML and sees the same object.
#[test]
fn get_gives_each_object_back_for_kubectl_apply() {
    let dir = TempDir::new().unwrap();
    let (server, objects) = populated(&v35(), dir.path());
    let db = snapshot(&server, dir.path());
    let db = db.to_str().unwrap();
    let kubectl = Kubectl::start();
    for object in objects.iter().filter(|o| o.line.get("object").is_some()) {
        let want = for_apply(&object.line["object"]);
        let resource = expected_resource(&object.key);
        let name = match object.line["namespace"].as_str() {
            Some(ns) => format!("{ns}/{}", object.line["name"].as_str().unwrap()),
            None => object.line["name"].as_str().unwrap().to_string(),
        };
        let json: Value =
            serde_json::from_str(&ok(&cpr(&["get", db, resource, &name, "-o", "json"]))).unwrap();
        assert_eq!(json, want, "{}", object.key);
        let yaml = ok(&cpr(&["get", db, resource, &name]));
        let applied = kubectl.apply(&yaml);
        let mut expected = want.clone();
        // kubectl apply records what it applied.
        let mut annotated = applied.clone();
        if let Some(a) = annotated["metadata"]
            .as_object_mut()
            .and_then(|m| m.get_mut("annotations"))
            .and_then(Value::as_object_mut)
        {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        if annotated["metadata"]["annotations"] == serde_json::json!({}) {
            annotated["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        }
        expected["metadata"].as_object_mut().unwrap();
        assert_eq!(
            annotated, expected,
            "{}: kubectl's view of\n{yaml}",
            object.key
        );
    }
}

/// Objects that cannot come back say why, and what to do.
#[test]
fn get_names_what_is_missing_or_unreadable() {
    let dir = TempDir::new().unwrap();
    let (server, _) = populated(&v35(), dir.path());
    let db = snapshot(&server, dir.path());
    let db = db.to_str().unwrap();
    let missing = cpr(&["get", db, "configmaps", "default/nope"]);
    assert_eq!(missing.status.code(), Some(2));
    let text = common::stderr(&missing);
    assert!(
        text.contains("no configmaps default/nope under /registry"),
        "{text}"
    );
    assert!(text.contains("cpr inspect --objects"), "{text}");
    let deleted = cpr(&["get", db, "secrets", "default/db-password-doomed"]);
    assert_eq!(deleted.status.code(), Some(2), "a deleted object is gone");
    let encrypted = cpr(&["get", db, "secrets", "default/encrypted-cbc"]);
    assert_eq!(encrypted.status.code(), Some(4));
    let text = common::stderr(&encrypted);
    assert!(
        text.contains("/registry/secrets/default/encrypted-cbc"),
        "{text}"
    );
    assert!(text.contains("encrypted at rest"), "{text}");
}

/// `cpr drill` with the store, node and scratch of a test, and `extra` flags.
fn drill(
    node: &KubeadmNode,
    store: &Path,
    scratch: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let args = [
        &[
            "drill",
            "--store",
            store.to_str().unwrap(),
            "--cluster",
            common::CLUSTER,
            "--node",
            common::NODE_NAME,
            "--root",
            node.root().to_str().unwrap(),
            "--scratch",
            scratch.to_str().unwrap(),
        ][..],
        extra,
    ]
    .concat();
    common::cpr_env(&args, env)
}

fn backup_of(node: &KubeadmNode, store: &Path, extra: &[&str]) -> String {
    let args = [
        &[
            "backup",
            "--root",
            node.root().to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--output",
            "json",
        ][..],
        extra,
    ]
    .concat();
    let report: Value = serde_json::from_str(&ok(&cpr(&args))).unwrap();
    report["bundle"].as_str().unwrap().to_string()
}

/// Drills of real bundles: a good one passes (etcd 3.5 serves the restored dir in its own network
/// namespace); one that cannot be decrypted, one holding a value that is no object (its digests
/// are valid: they were taken over it), and a live cluster drifted past the threshold fail with
/// the reason; a drill killed mid-restore leaves its scratch root to the next one, which removes it.
#[test]
fn drills_pass_on_a_good_bundle_and_fail_with_the_reason() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 0);
    // The seed's stand-in Lease is plain text, no object.
    assert!(node
        .etcdctl(&["del", "/registry/leases/kube-node-lease/master0"])
        .status
        .success());
    for object in fixture_objects("/registry", "") {
        etcdctl_put(node.etcdctl_command(), &object.key, &object.value);
    }
    let work = TempDir::new().unwrap();
    let (store, scratch) = (work.path().join("store"), work.path().join("scratch"));
    std::fs::create_dir_all(&scratch).unwrap();
    let good = backup_of(&node, &store, &[]);
    let metrics = work.path().join("cpr-drill.prom");
    let etcd = EtcdVersion::V3_5.bin_dir().join("etcd");
    let out = drill(
        &node,
        &store,
        &scratch,
        &[
            "--bundle",
            &good,
            "--etcd",
            etcd.to_str().unwrap(),
            "--metrics-file",
            metrics.to_str().unwrap(),
            "--output",
            "json",
        ],
        &[],
    );
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(
        report["objects"].as_i64(),
        Some(node.key_count_under("/registry/")),
        "{report}"
    );
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["revision", "objects", "drift", "etcd"], "{report}");
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["ok"] == true));
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("\ncpr_drill_last_attempt_success 1\n"),
        "{text}"
    );
    assert!(text.contains("\ncpr_drill_objects "), "{text}");
    assert_eq!(common::files_below(&scratch), Vec::<PathBuf>::new());

    // Killed between staging and the swap: the scratch root stays, the next drill removes it.
    let killed = drill(
        &node,
        &store,
        &scratch,
        &["--bundle", &good],
        &[("CPR_FAILPOINT", "restore:staged-files")],
    );
    assert!(!killed.status.success());
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        1,
        "the killed drill's root"
    );
    ok(&drill(
        &node,
        &store,
        &scratch,
        &["--bundle", &good, "--no-live"],
        &[],
    ));
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);

    // SIGKILLed while its etcd starts on the restored data dir: no etcd is left on it. This etcd
    // listens where etcdctl does not look, so it stays in the drill's wait for it, up to a minute.
    let unanswering = work.path().join("unanswering");
    std::fs::create_dir(&unanswering).unwrap();
    std::os::unix::fs::symlink(etcd.with_file_name("etcdctl"), unanswering.join("etcdctl"))
        .unwrap();
    let wrapper = unanswering.join("etcd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} \"$@\" --listen-client-urls http://127.0.0.1:2399 --advertise-client-urls http://127.0.0.1:2399\n",
            etcd.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let etcd_on_scratch = format!("--data-dir {}/", scratch.display());
    let etcd_left = || {
        Command::new("pgrep")
            .args(["-f", "--", &etcd_on_scratch])
            .status()
            .unwrap()
            .success()
    };
    let mut killed = Command::new(common::cpr_bin())
        .args([
            "drill",
            "--store",
            store.to_str().unwrap(),
            "--bundle",
            &good,
        ])
        .args(["--cluster", common::CLUSTER, "--node", common::NODE_NAME])
        .args(["--root", node.root().to_str().unwrap()])
        .args(["--scratch", scratch.to_str().unwrap(), "--no-live"])
        .args(["--etcd", wrapper.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !etcd_left() {
        assert!(
            killed.try_wait().unwrap().is_none(),
            "the drill ended first"
        );
        assert!(started.elapsed().as_secs() < 60, "no etcd started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Every thread of the drill is in the idle I/O class.
    for task in std::fs::read_dir(format!("/proc/{}/task", killed.id())).unwrap() {
        let tid = task.unwrap().file_name();
        let class = Command::new("ionice").arg("-p").arg(&tid).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&class.stdout).trim(),
            "idle",
            "{tid:?}"
        );
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    let killed_at = std::time::Instant::now();
    while etcd_left() {
        assert!(
            killed_at.elapsed().as_secs() < 5,
            "etcd outlived the SIGKILLed drill"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // An encrypted bundle without its identity.
    let keys = work.path().join("keys");
    ok(&cpr(&["keygen", "--out", keys.to_str().unwrap()]));
    let recipient = std::fs::read_to_string(keys.join("age.pub")).unwrap();
    let sealed = backup_of(&node, &store, &["--encrypt-to", recipient.trim()]);
    let out = drill(
        &node,
        &store,
        &scratch,
        &[
            "--bundle",
            &sealed,
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(12), "{}", common::stderr(&out));
    let text = common::stderr(&out);
    assert!(
        text.contains(&format!("restore drill of {sealed} failed")),
        "{text}"
    );
    assert!(text.contains("restore:"), "{text}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("\ncpr_drill_last_attempt_success 0\n"),
        "{prom}"
    );
    assert!(prom.contains("\ncpr_drill_failures_total 1\n"), "{prom}");

    // Signed and encrypted: the manifest is read from the stream's start, and only restore()
    // fetches the whole bundle to check its signature (before, the drill fetched it once more).
    // Bundle names have one-second resolution.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let signed = backup_of(
        &node,
        &store,
        &[
            "--encrypt-to",
            recipient.trim(),
            "--sign-key",
            keys.join("minisign.key").to_str().unwrap(),
        ],
    );
    let (identity, verify_key) = (keys.join("age.key"), keys.join("minisign.pub"));
    let keyed = [
        "--bundle",
        &signed,
        "--no-live",
        "--identity",
        identity.to_str().unwrap(),
        "--verify-key",
        verify_key.to_str().unwrap(),
    ];
    let out = drill(&node, &store, &scratch, &keyed, &[]);
    let text = common::stderr(&out);
    ok(&out);
    assert_eq!(text.matches("signature by key").count(), 1, "{text}");
    // A 1 MiB scratch (a tmpfs in a mount namespace of its own) is refused before any fetch.
    let small = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m cpr-test "$1" && shift && exec "$@""#)
        .args(["sh", scratch.to_str().unwrap()])
        .arg(common::cpr_bin())
        .args(["drill", "--store", store.to_str().unwrap()])
        .args(["--scratch", scratch.to_str().unwrap()])
        .args(["--cluster", common::CLUSTER, "--node", common::NODE_NAME])
        .args(keyed)
        .output()
        .unwrap();
    let text = common::stderr(&small);
    assert_eq!(small.status.code(), Some(2), "{text}");
    assert!(
        text.contains("point --scratch at a larger filesystem. Nothing was fetched")
            && !text.contains("signature by key"),
        "{text}"
    );

    // What fails alike for every bundle keeps its exit code and message, and is a failed attempt
    // all the same: a store without the bundle (a network store that does not answer is the same
    // error, exit 3, after its retries), a missing identity file.
    let refused = |store: &Path, extra: &[&str], code: i32, names: &str| {
        let out = drill(&node, store, &scratch, extra, &[]);
        let text = common::stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{text}");
        assert!(
            text.contains(names) && !text.contains("would not bring"),
            "{text}"
        );
    };
    let metrics_arg = ["--metrics-file", metrics.to_str().unwrap()];
    let gone = work.path().join("gone");
    refused(
        &gone,
        &[&["--bundle", &good][..], &metrics_arg].concat(),
        3,
        "no such object",
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains("\ncpr_drill_failures_total 2\n"), "{prom}");
    let missing_identity = work.path().join("no-such.key");
    let identity_arg = ["--identity", missing_identity.to_str().unwrap()];
    refused(
        &store,
        &[&["--bundle", &sealed][..], &identity_arg].concat(),
        2,
        "no-such.key",
    );

    // A value that is no Kubernetes object, backed up with valid digests over it.
    etcdctl_put(
        node.etcdctl_command(),
        "/registry/configmaps/default/broken",
        b"\x00\x01 not an object",
    );
    let broken = backup_of(&node, &store, &[]);
    let out = drill(
        &node,
        &store,
        &scratch,
        &["--bundle", &broken, "--no-live"],
        &[],
    );
    assert_eq!(out.status.code(), Some(12));
    let text = common::stderr(&out);
    assert!(
        text.contains(
            "objects: 1 values are no Kubernetes object: /registry/configmaps/default/broken"
        ),
        "{text}"
    );

    // The live cluster moved on far past the good bundle.
    for i in 0..30 {
        let object = &fixture_objects("/registry", &format!("-{i}"))[0];
        etcdctl_put(node.etcdctl_command(), &object.key, &object.value);
    }
    let out = drill(&node, &store, &scratch, &["--bundle", &good], &[]);
    assert_eq!(out.status.code(), Some(12));
    let text = common::stderr(&out);
    assert!(
        text.contains("drift: the live cluster has moved more than 10%"),
        "{text}"
    );
    // kubeadm-config, app-config and encrypted-kms; then broken and 30 more.
    assert!(
        text.contains("configmaps: 3 in the bundle, 34 live"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
}

/// A bundle's parts as its reader hands them over, to be sealed again around a damaged db.
#[derive(Default)]
struct Parts {
    manifest: Option<cpr::bundle::Manifest>,
    files: Vec<Vec<u8>>,
    snapshot: Vec<u8>,
}

impl cpr::bundle::Sink for Parts {
    fn manifest(&mut self, manifest: &cpr::bundle::Manifest) -> std::io::Result<()> {
        self.manifest = Some(manifest.clone());
        Ok(())
    }

    fn file(
        &mut self,
        _: &cpr::bundle::FileEntry,
        data: &mut dyn std::io::Read,
    ) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)?;
        self.files.push(bytes);
        Ok(())
    }

    fn snapshot(
        &mut self,
        _: &cpr::bundle::SnapshotEntry,
        data: &mut dyn std::io::Read,
    ) -> std::io::Result<()> {
        data.read_to_end(&mut self.snapshot).map(drop)
    }
}

/// The pages of a bbolt db, read by hand from its layout (go.etcd.io/bbolt page.go, meta.go,
/// bucket.go), independently of cpr's reader.
struct Bbolt<'a> {
    db: &'a mut [u8],
    page_size: usize,
}

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const PAGE_HEADER: usize = 16;

impl Bbolt<'_> {
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.db[at..at + 2].try_into().unwrap())
    }

    fn u32_at(&self, at: usize) -> usize {
        u32::from_le_bytes(self.db[at..at + 4].try_into().unwrap()) as usize
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.db[at..at + 8].try_into().unwrap())
    }

    /// The meta page with the higher txid: (root bucket's page, high-water page id).
    fn meta(&self) -> (u64, u64) {
        let meta = |page: usize| {
            let at = page * self.page_size + PAGE_HEADER;
            (
                self.u64_at(at + 48),
                self.u64_at(at + 16),
                self.u64_at(at + 40),
            )
        };
        let (_, root, high_water) = meta(0).max(meta(1));
        (root, high_water)
    }

    fn flags(&self, page: u64) -> u16 {
        self.u16_at(page as usize * self.page_size + 8)
    }

    fn count(&self, page: u64) -> usize {
        self.u16_at(page as usize * self.page_size + 10) as usize
    }

    /// The root page of bucket `name`, a sub-bucket of the root bucket's leaf page.
    fn bucket(&self, name: &[u8]) -> u64 {
        let (root, _) = self.meta();
        let start = root as usize * self.page_size + PAGE_HEADER;
        assert_eq!(self.flags(root), LEAF_PAGE, "the root bucket is one leaf");
        (0..self.count(root))
            .find_map(|i| {
                let element = start + i * 16;
                let key = element + self.u32_at(element + 4);
                let ksize = self.u32_at(element + 8);
                (&self.db[key..key + ksize] == name).then(|| self.u64_at(key + ksize))
            })
            .unwrap_or_else(|| panic!("no bucket {name:?}"))
    }

    /// The address of the page id of a branch page's `index`th child.
    fn child_pgid_at(&self, branch: u64, index: usize) -> usize {
        branch as usize * self.page_size + PAGE_HEADER + index * 16 + 8
    }
}

/// A copy of `good`'s bundle whose manifest and db `edit` changes, sealed again by cpr's own writer
/// with valid digests (etcd's sha256 trailer recomputed) under a new name in the same store.
fn resealed(
    store: &Path,
    good: &str,
    seconds_later: i64,
    edit: impl FnOnce(&mut cpr::bundle::Manifest, &mut Bbolt),
) -> String {
    let opened = cpr::store::open(store.to_str().unwrap(), &Default::default()).unwrap();
    let mut parts = read_parts(opened.as_ref(), good);
    let mut manifest = parts.manifest.unwrap();
    let db_len = parts.snapshot.len() - 32;
    let (db, trailer) = parts.snapshot.split_at_mut(db_len);
    let page_size = u32::from_le_bytes(db[PAGE_HEADER + 8..PAGE_HEADER + 12].try_into().unwrap());
    edit(
        &mut manifest,
        &mut Bbolt {
            db,
            page_size: page_size as usize,
        },
    );
    use sha2::Digest as _;
    trailer.copy_from_slice(&sha2::Sha256::digest(&*db));
    let name = cpr::bundle::name::BundleName::parse(good).unwrap();
    let at = name.created() + time::Duration::seconds(seconds_later);
    let resealed = cpr::bundle::name::BundleName::new(&name.cluster, &name.node, at, false)
        .unwrap()
        .to_string();
    let options = cpr::bundle::WriteOptions {
        zstd_level: 3,
        zstd_threads: 0,
        mtime: 0,
    };
    let (bytes, _) = cpr::bundle::write_bundle(
        Vec::new(),
        &manifest,
        &parts.files,
        &mut &parts.snapshot[..],
        &options,
        &resealed,
    )
    .unwrap();
    let mut upload = opened.create_new(&resealed).unwrap();
    std::io::Write::write_all(&mut upload, &bytes).unwrap();
    upload.commit().unwrap();
    resealed
}

/// `verify`, `inspect --objects`, `get` and `diff` spill what their streamed read of a bundle's
/// snapshot does not keep in memory into unlinked files in --scratch, else TMPDIR: nothing is left
/// there, and verify needs no room for the snapshot itself: an 8 KiB tmpfs (in a mount namespace of
/// its own) does for this small one.
fn reading_a_bundle_leaves_no_temp_file(store: &Path, bundle: &str, work: &Path) {
    let tmp = work.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let tmp_env = [("TMPDIR", tmp.to_str().unwrap())];
    let store_arg = ["--store", store.to_str().unwrap()];
    for args in [
        &["inspect", "--objects", bundle][..],
        &["verify", bundle],
        &["diff", bundle, bundle],
        &["get", bundle, "configmaps", "kube-system/kubeadm-config"],
    ] {
        ok(&common::cpr_env(&[args, &store_arg].concat(), &tmp_env));
        assert_eq!(common::files_below(&tmp), Vec::<PathBuf>::new(), "{args:?}");
    }
    let elsewhere = work.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let scratch_arg = ["--scratch", elsewhere.to_str().unwrap()];
    ok(&common::cpr_env(
        &[
            &["inspect", "--objects", bundle][..],
            &store_arg,
            &scratch_arg,
        ]
        .concat(),
        &[("TMPDIR", "/nonexistent")],
    ));
    assert_eq!(common::files_below(&elsewhere), Vec::<PathBuf>::new());
    let small = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=8k cpr-test "$1" && exec "$2" verify --scratch "$1" --store "$3" "$4""#)
        .args(["sh", tmp.to_str().unwrap()])
        .arg(common::cpr_bin())
        .args([store.to_str().unwrap(), bundle])
        .output()
        .unwrap();
    assert!(small.status.success(), "{}", common::stderr(&small));
    assert!(
        String::from_utf8_lossy(&small.stdout).contains(": OK"),
        "{small:?}"
    );
}

/// Bundles re-sealed with valid digests over a db with a damaged bbolt page: the drill fails with
/// the check that caught it and leaves no scratch.
#[test]
fn drills_fail_on_a_damaged_bbolt_page_under_valid_digests() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 0);
    // Custom resources of 1.5 KiB each: the key bucket spans leaves under a branch page.
    for i in 0..6 {
        let widget = serde_json::json!({
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": format!("w{i}"), "namespace": "default"},
            "spec": {"padding": "x".repeat(1536)},
        });
        etcdctl_put(
            node.etcdctl_command(),
            &format!("/registry/example.com/widgets/default/w{i}"),
            widget.to_string().as_bytes(),
        );
    }
    let work = TempDir::new().unwrap();
    let (store, scratch) = (work.path().join("store"), work.path().join("scratch"));
    std::fs::create_dir_all(&scratch).unwrap();
    let good = backup_of(&node, &store, &[]);
    reading_a_bundle_leaves_no_temp_file(&store, &good, work.path());
    type Damage = Box<dyn FnOnce(&mut Bbolt)>;
    let cases: [(&str, &str, Damage); 2] = [
        (
            "a branch page of the key bucket pointing past the db's end",
            "page id out of range",
            Box::new(|db: &mut Bbolt| {
                let key = db.bucket(b"key");
                assert_eq!(db.flags(key), BRANCH_PAGE, "the key bucket spans pages");
                let (_, high_water) = db.meta();
                let at = db.child_pgid_at(key, db.count(key) - 1);
                db.db[at..at + 8].copy_from_slice(&(high_water + 1000).to_le_bytes());
            }),
        ),
        (
            "a leaf of the key bucket whose element count runs past its page",
            "65520 elements do not fit in the page",
            Box::new(|db: &mut Bbolt| {
                let key = db.bucket(b"key");
                let at = db.child_pgid_at(key, 0);
                let leaf = db.u64_at(at);
                assert_eq!(db.flags(leaf), LEAF_PAGE);
                let count = leaf as usize * db.page_size + 10;
                db.db[count..count + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
            }),
        ),
    ];
    for (i, (what, reason, damage)) in cases.into_iter().enumerate() {
        let bundle = resealed(&store, &good, i as i64 + 1, |_, db| damage(db));
        let out = drill(
            &node,
            &store,
            &scratch,
            &["--bundle", &bundle, "--no-live"],
            &[],
        );
        let text = common::stderr(&out);
        assert_eq!(out.status.code(), Some(12), "{what}: {text}");
        assert!(
            text.contains(&format!("restore drill of {bundle} failed")),
            "{what}: {text}"
        );
        assert!(
            text.contains(
                "restore: reading snapshot etcd/snapshot.db: the bbolt db is damaged (page "
            ) && text.contains(reason),
            "{what}: {text}"
        );
        assert_eq!(
            common::files_below(&scratch),
            Vec::<PathBuf>::new(),
            "{what}"
        );
        // The streamed inventory refuses it as the inventory of the extracted snapshot does.
        let damage = |out: &std::process::Output| {
            let text = common::stderr(out);
            assert_eq!(out.status.code(), Some(5), "{what}: {text}");
            let at = text.find("the bbolt db is damaged (page ").expect(&text);
            text[at..].lines().next().unwrap().to_string()
        };
        let streamed = cpr(&[
            "inspect",
            "--objects",
            "--store",
            store.to_str().unwrap(),
            &bundle,
        ]);
        assert!(
            common::stderr(&streamed).contains(&format!(
                "reading snapshot etcd/snapshot.db in bundle {bundle}: the bbolt db is damaged (page "
            )) && common::stderr(&streamed).contains(reason),
            "{what}: {}",
            common::stderr(&streamed)
        );
        let file = work.path().join(format!("damaged-{i}.db"));
        extract_snapshot(&store, &bundle, &file);
        let in_place = cpr(&["inspect", "--objects", file.to_str().unwrap()]);
        assert_eq!(damage(&streamed), damage(&in_place), "{what}");
    }
}

/// A drill of a bundle of a three-member etcd restores its snapshot into scratch as a lone member:
/// it never probes the members (two of them on addresses that never answer, the third the live one
/// of this node, which a probe would find and plan a rejoin to), never claims a restore point in
/// the store, and passes.
#[test]
fn a_drill_of_a_several_member_bundle_restores_a_lone_member_and_claims_nothing() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 0);
    // The seed's stand-in Lease is plain text, no object.
    assert!(node
        .etcdctl(&["del", "/registry/leases/kube-node-lease/master0"])
        .status
        .success());
    let work = TempDir::new().unwrap();
    let (store, scratch) = (work.path().join("store"), work.path().join("scratch"));
    std::fs::create_dir_all(&scratch).unwrap();
    let single = backup_of(&node, &store, &[]);
    let several = resealed(&store, &single, 1, |manifest, _| {
        // TEST-NET-1 (RFC 5737): nothing answers there.
        for n in 1..3_u64 {
            let address = format!("192.0.2.{n}");
            manifest.etcd.members.push(cpr::bundle::manifest::Member {
                id: format!("{:x}", 0xc0ff_ee00_u64 + n),
                name: format!("master{n}"),
                peer_urls: vec![format!("https://{address}:2380")],
                client_urls: vec![format!("https://{address}:2379")],
                is_learner: false,
            });
        }
    });
    let out = drill(&node, &store, &scratch, &["--bundle", &several], &[]);
    let text = common::stderr(&out);
    ok(&out);
    assert!(!text.contains("probing them for a quorum"), "{text}");
    assert!(text.contains("as a lone member"), "{text}");
    let store_files: Vec<PathBuf> = common::files_below(&store);
    assert!(
        store_files
            .iter()
            .all(|f| !f.to_string_lossy().contains("restore-point")),
        "a drill claimed a restore point: {store_files:?}"
    );
    assert_eq!(common::files_below(&scratch), Vec::<PathBuf>::new());
}

/// Puts `count` keys `PREFIX<i>` of `size` bytes each through etcdctl txn, 100 to a transaction
/// (etcd's --max-txn-ops is 128 by default).
fn put_many(node: &KubeadmNode, prefix: &str, count: usize, size: usize) {
    for first in (0..count).step_by(100) {
        let mut script = String::from("\n");
        for i in first..(first + 100).min(count) {
            script.push_str(&format!("put {prefix}{i} {}\n", "s".repeat(size)));
        }
        script.push_str("\n\n");
        txn(node.etcdctl_command(), &script);
    }
}

/// The etcd snapshot of bundle `name` in the directory store `store`, written to `path`.
fn extract_snapshot(store: &Path, name: &str, path: &Path) {
    let opened = cpr::store::open(store.to_str().unwrap(), &Default::default()).unwrap();
    std::fs::write(path, read_parts(opened.as_ref(), name).snapshot).unwrap();
}

/// Bundle `name` of `store`, read whole by cpr's bundle reader.
fn read_parts(store: &dyn cpr::store::Store, name: &str) -> Parts {
    let mut parts = Parts::default();
    cpr::bundle::read_bundle(
        store.open(name).unwrap(),
        name,
        cpr::bundle::FrameChecksum::Check,
        &mut parts,
    )
    .unwrap();
    parts
}

/// `cpr ARGS` of a bundle and of its snapshot extracted to a file (the streamed read and the read
/// in place): the same exit status and standard output.
fn same_output(bundle: &[&str], file: &[&str], tail: &[&str]) -> String {
    let (streamed, in_place) = (cpr(&[bundle, tail].concat()), cpr(&[file, tail].concat()));
    assert_eq!(
        streamed.status.code(),
        in_place.status.code(),
        "{bundle:?} {tail:?}: {} / {}",
        common::stderr(&streamed),
        common::stderr(&in_place)
    );
    let out = String::from_utf8(streamed.stdout).unwrap();
    assert!(
        out == String::from_utf8(in_place.stdout).unwrap(),
        "{bundle:?} {tail:?}: the bundle's output differs from its snapshot's"
    );
    out
}

/// A bundle of etcd 3.4 and of 3.5 reads as its snapshot extracted to a file, byte for byte: the
/// inventory (text and JSON), objects of each encoding back with get, the diff to a later bundle.
/// The etcd held hundreds of keys of 4 KiB, deleted and compacted without defrag, so its snapshot's freed pages keep
/// their leaves: none of those keys comes back. The inventory of the 3.5 bundle reads with
/// --scratch on a tmpfs far smaller than the snapshot, which it barely uses.
#[test]
fn a_bundle_reads_as_its_snapshot_file_and_stale_leaves_stay_dead() {
    let objects = fixture_objects("/registry", "");
    let doomed = fixture_objects("/registry", "-doomed");
    let created = &fixture_objects("/registry", "-new")[0];
    // 3.5's snapshot is made larger than 4 times the small scratch, with keys long enough that
    // their records pass the streamed read's 2 MiB memory budget.
    for (version, stale_keys, long_keys) in
        [(EtcdVersion::V3_4, 500, 0), (EtcdVersion::V3_5, 1500, 1500)]
    {
        let node = KubeadmNode::start(version, 0);
        for object in doomed.iter().chain(&objects) {
            etcdctl_put(node.etcdctl_command(), &object.key, &object.value);
        }
        for doomed in &doomed {
            assert!(node.etcdctl(&["del", &doomed.key]).status.success());
        }
        let stale = "/registry/configmaps/stale/cm-";
        put_many(&node, stale, stale_keys, 4096);
        assert!(node.etcdctl(&["del", stale, "--prefix"]).status.success());
        let compacted = node.etcdctl(&["compact", &node.revision().to_string()]);
        assert!(compacted.status.success(), "{compacted:?}");
        assert_eq!(node.key_count_under(stale), 0, "etcd {version:?}");
        let long = format!("/registry/leases/long/{}-", "l".repeat(2000));
        put_many(&node, &long, long_keys, 8);

        let work = TempDir::new().unwrap();
        let store = work.path().join("store");
        let first = backup_of(&node, &store, &[]);
        etcdctl_put(node.etcdctl_command(), &created.key, &created.value);
        etcdctl_put(node.etcdctl_command(), &objects[3].key, &objects[3].value);
        assert!(node.etcdctl(&["del", &objects[2].key]).status.success());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = backup_of(&node, &store, &[]);
        let (first_db, second_db) = (work.path().join("first.db"), work.path().join("second.db"));
        extract_snapshot(&store, &first, &first_db);
        extract_snapshot(&store, &second, &second_db);
        let snapshot = std::fs::read(&first_db).unwrap();
        assert!(
            snapshot.windows(stale.len()).any(|w| w == stale.as_bytes()),
            "etcd {version:?}: the freed pages keep the deleted keys' leaves"
        );

        let store_arg = ["--store", store.to_str().unwrap()];
        let by_name = [&["inspect", "--objects", &first][..], &store_arg].concat();
        let by_file = ["inspect", "--objects", first_db.to_str().unwrap()];
        let text = same_output(&by_name, &by_file, &[]);
        assert!(!text.contains("stale"), "etcd {version:?}: {text}");
        let json: Value =
            serde_json::from_str(&same_output(&by_name, &by_file, &["--output", "json"])).unwrap();
        assert_eq!(
            json["objects"].as_i64(),
            Some(node.key_count_under("/registry/")),
            "etcd {version:?}: against etcdctl, one key created and one deleted since"
        );
        // One object of each encoding and kind of resource: built-in, custom, encrypted.
        let sampled = [
            "configmaps",
            "deployments.apps",
            "widgets.example.com",
            "secrets",
        ];
        for ((resource, ns, name), _) in items_by_name(&json)
            .into_iter()
            .filter(|((resource, _, _), _)| sampled.contains(&resource.as_str()))
        {
            let object = if ns.is_empty() {
                name
            } else {
                format!("{ns}/{name}")
            };
            same_output(
                &[&["get", &first][..], &store_arg].concat(),
                &["get", first_db.to_str().unwrap()],
                &[&resource, &object, "-o", "json"],
            );
        }
        let diff = |a: &str, b: &str, extra: &[&str]| {
            let out = ok(&cpr(&[&["diff", a, b, "--all"][..], extra].concat()));
            out.lines().skip(2).collect::<Vec<_>>().join("\n")
        };
        let streamed = diff(&first, &second, &store_arg);
        assert_eq!(
            streamed,
            diff(first_db.to_str().unwrap(), second_db.to_str().unwrap(), &[]),
            "etcd {version:?}"
        );
        assert!(
            streamed.contains("  + app-config-new") && streamed.contains("  - web-0"),
            "{streamed}"
        );
        if version == EtcdVersion::V3_5 {
            inventory_in_a_small_scratch(&store, &first, snapshot.len() as u64, &json);
        }
    }
}

/// `inspect --objects` of bundle `name` with --scratch on a tmpfs (a mount namespace of its own)
/// far smaller than the `snapshot`-byte snapshot: with room for what it says it spilled, it gives
/// `expected` and its scratch use, sampled every 10 ms, stays within that spill; with too little,
/// it stops with exit 2 naming the scratch dir. Nothing is left either way.
fn inventory_in_a_small_scratch(store: &Path, name: &str, snapshot: u64, expected: &Value) {
    let roomy: u64 = 2 << 20;
    assert!(snapshot > 4 * roomy, "{snapshot}");
    let (inventory, stderr, peak) = inspect_in_tmpfs(store, name, roomy).unwrap();
    assert_eq!(&inventory, expected);
    let spilled: Vec<u64> = stderr
        .split("streamed, ")
        .nth(1)
        .expect(&stderr)
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .take(2)
        .collect();
    let (skeletons, records) = (spilled[0], spilled[1]);
    assert!(records > 0, "the long keys' records spill: {stderr}");
    assert!(
        peak <= skeletons + records + (64 << 10),
        "peak scratch use {peak} bytes, spilled {skeletons} + {records}"
    );
    let (code, stderr, _) = inspect_in_tmpfs(store, name, 64 << 10).unwrap_err();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("spills past its memory budget into --scratch")
            && stderr.contains("No space left on device")
            && stderr.contains(
                "point --scratch (or TMPDIR) at a directory on a filesystem with more free space"
            ),
        "{stderr}"
    );
}

/// `inspect --objects --output json` of bundle `name` with --scratch on a tmpfs of `size` bytes:
/// the inventory, stderr and the peak scratch use; or the exit code, stderr and peak. Asserts that
/// nothing is left in the scratch: no name in it, and, as the spill files are unlinked from the
/// start (no name to find), the tmpfs's use back to 0 once cpr has exited.
#[allow(clippy::type_complexity)]
fn inspect_in_tmpfs(
    store: &Path,
    name: &str,
    size: u64,
) -> Result<(Value, String, u64), (Option<i32>, String, u64)> {
    let work = TempDir::new().unwrap();
    let (scratch, out) = (work.path().join("scratch"), work.path().join("out"));
    std::fs::create_dir(&scratch).unwrap();
    let run = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(
            r#"mount -t tmpfs -o size=$1 cpr-test "$2" || exit 99
CPR_LOG=debug "$3" inspect --objects --output json --scratch "$2" --store "$4" "$5" > "$6" &
pid=$! peak=0
while kill -0 $pid 2> /dev/null; do
  used=$(df --output=used -B1 "$2" | tail -1); [ "$used" -gt "$peak" ] && peak=$used; sleep 0.01
done
wait $pid; rc=$?
echo "peak $peak left $(find "$2" -mindepth 1 | wc -l) used $(df --output=used -B1 "$2" | tail -1 | tr -d ' ')"
exit $rc"#,
        )
        .arg("sh")
        .arg(size.to_string())
        .arg(&scratch)
        .arg(common::cpr_bin())
        .arg(store)
        .arg(name)
        .arg(&out)
        .output()
        .unwrap();
    let stderr = common::stderr(&run);
    let report = String::from_utf8(run.stdout).unwrap();
    assert!(report.contains(" left 0 used 0"), "{report} {stderr}");
    let peak: u64 = report.split_whitespace().nth(1).unwrap().parse().unwrap();
    if !run.status.success() {
        return Err((run.status.code(), stderr, peak));
    }
    let inventory = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    Ok((inventory, stderr, peak))
}
