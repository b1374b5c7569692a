//! `cpr backup` into every store kind — nginx (HTTP PUT), moto (S3, checked with boto3) — and the
//! bundles read back through the stores, including a read-only HTTP server that only serves files.

mod common;
mod store_common;

use common::*;
use serde_json::Value;
use store_common::{moto, nginx, read_only_server, BUCKET, SECRET};

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn backup_to_http_then_read_back_through_a_read_only_server() {
    let node = KubeadmNode::start(EtcdVersion::V3_5, 30);
    let tmp = tempfile::tempdir().unwrap();
    let nginx = nginx(tmp.path());
    let url = format!("http://127.0.0.1:{}/backups", nginx.port);
    let report = json(&cpr(&[
        "backup",
        "--root",
        node.root().to_str().unwrap(),
        "--store",
        &url,
        "--output",
        "json",
    ]));
    let name = report["bundle"].as_str().unwrap();
    let stored = nginx.www.join("backups").join(name);
    assert_eq!(
        std::fs::metadata(&stored).unwrap().len(),
        report["size"].as_u64().unwrap()
    );
    assert!(nginx.www.join("backups/prod/master0/index.json").is_file());

    // The same files behind a server that can only serve them.
    let server = read_only_server(&nginx.www);
    let read_only = format!("http://127.0.0.1:{}/backups", server.port);
    let listed = json(&cpr(&[
        "list",
        "--store",
        &read_only,
        "--cluster",
        CLUSTER,
        "--node",
        NODE_NAME,
        "--output",
        "json",
    ]));
    assert_eq!(listed[0]["name"], name, "{listed}");
    assert_eq!(
        listed[0]["revision"].as_i64(),
        Some(node.revision()),
        "{listed}"
    );
    let verified = json(&cpr(&[
        "verify",
        "--store",
        &read_only,
        "latest",
        "--cluster",
        CLUSTER,
        "--node",
        NODE_NAME,
        "--output",
        "json",
    ]));
    assert_eq!(verified["bundle"], name);
    assert_eq!(verified["revision"].as_i64(), Some(node.revision()));
}

#[test]
fn backup_to_s3_is_the_object_boto3_sees() {
    let node = KubeadmNode::start(EtcdVersion::V3_4, 30);
    let moto = moto();
    let env = [
        ("AWS_ACCESS_KEY_ID", "test-key"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let url = format!("s3://{BUCKET}/backups");
    let out = cpr_env(
        &[
            "backup",
            "--root",
            node.root().to_str().unwrap(),
            "--store",
            &url,
            "--output",
            "json",
        ],
        &env,
    );
    assert!(
        !stderr(&out).contains(SECRET),
        "the secret leaked: {}",
        stderr(&out)
    );
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    let name = report["bundle"].as_str().unwrap();

    let seen = moto.check(&["sha256", &format!("backups/{name}")]);
    let size: u64 = seen.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(size, report["size"].as_u64().unwrap(), "boto3 sees {seen}");

    let verified: Value = serde_json::from_str(&ok(&cpr_env(
        &["verify", "--store", &url, name, "--output", "json"],
        &env,
    )))
    .unwrap();
    assert_eq!(verified["revision"].as_i64(), Some(node.revision()));
    let listed: Value = serde_json::from_str(&ok(&cpr_env(
        &["list", "--store", &url, "--output", "json"],
        &env,
    )))
    .unwrap();
    assert_eq!(listed[0]["name"], name);

    // Without credentials the store says so, and nothing is written.
    let out = cpr_env(
        &[
            "backup",
            "--root",
            node.root().to_str().unwrap(),
            "--store",
            &url,
        ],
        &[
            ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}
