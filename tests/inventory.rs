//! `cpr inspect --objects`: the inventory of snapshots written by real etcd 3.4 and 3.5 holding
//! objects in kube-apiserver's encodings, made by `tests/fixtures/k8s-objects.py` (Google's protobuf
//! runtime over Kubernetes' own .proto files, independent of cpr's decoder), counted against
//! etcdctl.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::etcd_cluster::{check, v34, v35, Server, Spec, Tools};
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
}
