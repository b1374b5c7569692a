//! Encrypted and signed bundles end to end: `cpr keygen`, `cpr backup --encrypt-to --sign-key` into every
//! store kind, the real `age` and `minisign` tools opening what cpr wrote, restores with the keys, and
//! every refusal (wrong identity, no signature, another key, tampered bytes, an old signature) leaving
//! the target root exactly as it was.

mod common;
mod store_common;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use store_common::{moto, nginx, require, BUCKET, SECRET};

struct Keys {
    dir: tempfile::TempDir,
    recipient: String,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        ok(&cpr(&[
            "keygen",
            "--out",
            dir.path().join("k").to_str().unwrap(),
        ]));
        let recipient = fs::read_to_string(dir.path().join("k/age.pub"))
            .unwrap()
            .trim()
            .to_string();
        Keys { dir, recipient }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join("k").join(name).display().to_string()
    }

    fn backup_args(&self) -> Vec<String> {
        vec![
            "--encrypt-to".into(),
            self.recipient.clone(),
            "--sign-key".into(),
            self.path("minisign.key"),
        ]
    }

    fn restore_args(&self) -> Vec<String> {
        vec![
            "--identity".into(),
            self.path("age.key"),
            "--verify-key".into(),
            self.path("minisign.pub"),
        ]
    }
}

fn backup(node: &KubeadmNode, store: &str, keys: &Keys, env: &[(&str, &str)]) -> Value {
    let mut args = vec![
        "backup".to_string(),
        "--root".into(),
        node.root().display().to_string(),
        "--store".into(),
        store.into(),
        "--output".into(),
        "json".into(),
    ];
    args.extend(keys.backup_args());
    let out = cpr_env(&with(&args, &[]), env);
    assert!(!stderr(&out).contains(SECRET), "{}", stderr(&out));
    serde_json::from_str(&ok(&out)).unwrap()
}

fn restore(store: &str, target: &Path, extra: &[String], env: &[(&str, &str)]) -> Output {
    let host = hostname();
    let mut args = vec![
        "restore",
        "--store",
        store,
        "--root",
        target.to_str().unwrap(),
        "--node",
        NODE_NAME,
        "--hostname",
        &host,
        "--ip",
        NODE_IP,
        "--no-finish",
        "--cluster",
        CLUSTER,
        "--output",
        "json",
    ];
    args.extend(extra.iter().map(String::as_str));
    cpr_env(&args, env)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn keygen_writes_private_keys_and_never_overwrites() {
    let keys = Keys::new();
    assert_eq!(mode(&keys.dir.path().join("k")), 0o700);
    assert_eq!(mode(Path::new(&keys.path("age.key"))), 0o600);
    assert_eq!(mode(Path::new(&keys.path("minisign.key"))), 0o600);
    assert_eq!(mode(Path::new(&keys.path("minisign.pub"))), 0o644);
    assert!(keys.recipient.starts_with("age1"), "{}", keys.recipient);
    let before = fs::read(keys.path("age.key")).unwrap();
    let out = cpr(&[
        "keygen",
        "--out",
        keys.dir.path().join("k").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(fs::read(keys.path("age.key")).unwrap(), before);

    // The keys work with the reference tools: minisign signs with cpr's (unencrypted) secret key.
    let file = keys.dir.path().join("f");
    fs::write(&file, "x").unwrap();
    let minisign = require("minisign", "the apt package minisign");
    run(Command::new(&minisign)
        .args(["-S", "-s", &keys.path("minisign.key"), "-m"])
        .arg(&file)
        .stdin(Stdio::null()));
    run(Command::new(&minisign)
        .args(["-V", "-p", &keys.path("minisign.pub"), "-m"])
        .arg(&file));
}

#[test]
fn age_and_minisign_open_what_cpr_wrote_and_cpr_restores_it_with_modes_kept() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 10);
    let keys = Keys::new();
    let store = tempfile::tempdir().unwrap();
    let store_url = store.path().to_str().unwrap();
    let report = backup(&node, store_url, &keys, &[]);
    let name = report["bundle"].as_str().unwrap();
    assert!(name.ends_with(".tar.zst.age"), "{name}");
    let stored = store.path().join(name);
    assert!(fs::read(&stored)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
    let index: Value = serde_json::from_slice(
        &fs::read(
            store
                .path()
                .join(format!("{CLUSTER}/{NODE_NAME}/index.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let entry = &index["bundles"][0];
    assert_eq!(
        (entry["encrypted"].as_bool(), entry["signed"].as_bool()),
        (Some(true), Some(true))
    );
    // The index's digest of the stored object, as the README checks it by hand.
    let b3sum = run(Command::new(require("b3sum", "the apt package b3sum"))
        .arg("--no-names")
        .arg(&stored));
    assert_eq!(entry["blake3"].as_str(), Some(b3sum.trim()));

    // The reference tools: minisign verifies the stored bytes, age decrypts them to cpr's tar.zst.
    let minisign = require("minisign", "the apt package minisign");
    let verified = run(Command::new(minisign)
        .args(["-V", "-p", &keys.path("minisign.pub"), "-m"])
        .arg(&stored));
    assert!(verified.contains(&format!("file:{name}")), "{verified}");
    require("age", "the apt package age");
    let listing = run(Command::new("sh").arg("-c").arg(format!(
        "age -d -i {} {} | zstd -dc | tar tf -",
        keys.path("age.key"),
        stored.display()
    )));
    assert!(listing.starts_with("cpr/manifest.json\n"), "{listing}");
    assert!(listing.contains("etc/kubernetes/pki/ca.key\n"), "{listing}");

    // cpr itself: without the identity it says what is missing; with the keys it verifies.
    let out = cpr(&["verify", stored.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("--identity"), "{}", stderr(&out));
    let mut args = vec!["verify".to_string(), stored.display().to_string()];
    args.extend(keys.restore_args());
    assert!(ok(&cpr(&with(&args, &[]))).contains("OK"));
    args[0] = "inspect".to_string();
    assert!(ok(&cpr(&with(&args, &[]))).contains("etc/kubernetes/pki/ca.key"));

    // A restore refuses to replace a data dir in use.
    node.stop_etcd();
    {
        let target = provisioned_root();
        let out = restore(store_url, target.path(), &keys.restore_args(), &[]);
        let report: Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(report["restore"]["bundle"], name);
        assert!(
            stderr(&out).contains("signature by key"),
            "{}",
            stderr(&out)
        );
        // pki comes back with every file's mode (ca.key 0600, certificates 0644).
        let source = node.root().join("etc/kubernetes/pki");
        let restored = target.path().join("etc/kubernetes/pki");
        let files: Vec<_> = tree_with_modes(&source)
            .into_iter()
            .filter(|(_, _, d)| !d.is_empty())
            .collect();
        assert!(files.len() > 5);
        for (rel, mode, data) in files {
            let got = restored.join(&rel);
            assert_eq!(fs::read(&got).unwrap(), data, "{}", rel.display());
            assert_eq!(
                fs::metadata(&got).unwrap().permissions().mode(),
                mode,
                "{}",
                rel.display()
            );
        }
        assert_eq!(mode(&restored.join("ca.key")), 0o600);
        // What stays staged for `cpr finish` is private.
        assert_eq!(mode(&target.path().join("var/lib/cpr/staging")), 0o700);
    }
}

/// Two signed, encrypted bundles a second apart; returns (older, newer) names.
fn two_bundles(node: &KubeadmNode, store: &str, keys: &Keys) -> (String, String) {
    let older = backup(node, store, keys, &[])["bundle"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let newer = backup(node, store, keys, &[])["bundle"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(older < newer);
    (older, newer)
}

#[test]
fn refusals_leave_the_root_unchanged_and_latest_falls_back_past_a_bad_signature() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    let keys = Keys::new();
    let store = tempfile::tempdir().unwrap();
    let url = store.path().to_str().unwrap().to_string();
    let (older, newer) = two_bundles(&node, &url, &keys);
    node.stop_etcd();
    let object = |name: &str| store.path().join(name);
    let sig = |name: &str| store.path().join(format!("{name}.minisig"));
    let index = store
        .path()
        .join(format!("{CLUSTER}/{NODE_NAME}/index.json"));
    let pristine = (
        fs::read(object(&newer)).unwrap(),
        fs::read(sig(&newer)).unwrap(),
        fs::read(&index).unwrap(),
    );
    let put_back = || {
        fs::write(object(&newer), &pristine.0).unwrap();
        fs::write(sig(&newer), &pristine.1).unwrap();
        fs::write(&index, &pristine.2).unwrap();
    };
    let other = Keys::new();

    type Setup<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Setup, Vec<String>, &str)> = vec![
        (
            "wrong identity",
            Box::new(|| {}),
            vec![
                "--identity".into(),
                other.path("age.key"),
                "--verify-key".into(),
                keys.path("minisign.pub"),
            ],
            "encrypted to other recipients",
        ),
        (
            "missing signature",
            Box::new(|| fs::remove_file(sig(&newer)).unwrap()),
            keys.restore_args(),
            "has no signature",
        ),
        (
            "signature by another key",
            Box::new(|| {
                let forged = Command::new(require("minisign", "minisign"))
                    .args(["-S", "-s", &other.path("minisign.key"), "-x"])
                    .arg(sig(&newer))
                    .arg("-m")
                    .arg(object(&newer))
                    .stdin(Stdio::null())
                    .status()
                    .unwrap();
                assert!(forged.success());
            }),
            keys.restore_args(),
            "not by the verify key",
        ),
        (
            "tampered bundle with its valid old signature",
            Box::new(|| {
                let mut bytes = pristine.0.clone();
                let at = bytes.len() / 2;
                bytes[at] ^= 0x01;
                fs::write(object(&newer), bytes).unwrap();
            }),
            keys.restore_args(),
            "does not match the bundle's bytes",
        ),
        (
            "an older bundle and its signature under the newer name",
            // An attacker who can write objects can rewrite the (unsigned) index too.
            Box::new(|| {
                fs::copy(object(&older), object(&newer)).unwrap();
                fs::copy(sig(&older), sig(&newer)).unwrap();
                fs::remove_file(&index).unwrap();
            }),
            keys.restore_args(),
            "not this bundle",
        ),
    ];
    for (what, setup, args, expected) in &cases {
        put_back();
        setup();
        let target = provisioned_root();
        let before = tree_with_modes(target.path());
        let mut with_bundle = args.clone();
        with_bundle.extend(["--bundle".to_string(), newer.clone()]);
        let out = restore(&url, target.path(), &with_bundle, &[]);
        assert!(!out.status.success(), "{what}: restored");
        assert!(stderr(&out).contains(expected), "{what}: {}", stderr(&out));
        let mut after = tree_with_modes(target.path());
        // The recovery state dir (cpr's own scratch, 0700) may remain; nothing else may differ.
        after.retain(|(p, _, _)| !p.starts_with("var/lib/cpr"));
        assert_eq!(after, before, "{what}: the root changed");
        let mut verify = vec!["verify".to_string(), object(&newer).display().to_string()];
        verify.extend(args.iter().cloned());
        let out = cpr(&with(&verify, &[]));
        assert_eq!(out.status.code(), Some(4), "{what}: {}", stderr(&out));
    }

    put_back();
    signature_checked_at_the_end_of_the_stream(&url, &keys, (&older, &newer));

    // "latest": a newest bundle that fails its signature is skipped for the older, good one.
    put_back();
    let mut bytes = pristine.0.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    fs::write(object(&newer), bytes).unwrap();
    let target = provisioned_root();
    let report: Value = serde_json::from_str(&ok(&restore(
        &url,
        target.path(),
        &keys.restore_args(),
        &[],
    )))
    .unwrap();
    assert_eq!(report["restore"]["bundle"], older.as_str());
    let skipped = report["restore"]["skipped"].to_string();
    assert!(
        skipped.contains(&newer) && skipped.contains("signature"),
        "{skipped}"
    );
}

/// `cpr ARGS --scratch DIR` with DIR on an 8 KiB tmpfs (in a mount namespace of its own).
fn in_small_scratch(args: &[String]) -> Output {
    let scratch = tempfile::tempdir().unwrap();
    Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=8k cpr-test "$1" && shift && exec "$@" --scratch "$0""#)
        .arg(scratch.path())
        .arg(scratch.path())
        .arg(cpr_bin())
        .args(args)
        .output()
        .unwrap()
}

/// inspect --objects and verify of a signed bundle in the store stream it, the signature checked
/// when the stream ends: with --scratch far smaller than the bundle they print what they print
/// without the verify key; the bytes of the other bundle under the name of `bundles`' larger one
/// (its signature and index entry kept) are refused for their signature, exit 4, nothing printed.
fn signature_checked_at_the_end_of_the_stream(store: &str, keys: &Keys, bundles: (&str, &str)) {
    let object = |name: &str| Path::new(store).join(name);
    let size = |name: &str| fs::metadata(object(name)).unwrap().len();
    let (smaller, larger) = if size(bundles.0) <= size(bundles.1) {
        bundles
    } else {
        (bundles.1, bundles.0)
    };
    assert!(size(smaller) > 8 << 10, "the bundle outgrows the scratch");
    let commands = |name: &str| {
        [
            &["inspect", "--objects", "--output", "json"][..],
            &["verify"],
        ]
        .map(|command| {
            let mut args: Vec<String> = command.iter().map(|w| w.to_string()).collect();
            args.extend(["--store".into(), store.into(), name.into()]);
            args
        })
    };
    let identity = keys.path("age.key");
    for command in commands(larger) {
        let unsigned = ok(&cpr(&with(&command, &["--identity", &identity])));
        let signed = in_small_scratch(&[command.clone(), keys.restore_args()].concat());
        assert_eq!(ok(&signed), unsigned, "{command:?}");
        assert!(stderr(&signed).contains("signature by key"), "{command:?}");
    }
    let pristine = fs::read(object(larger)).unwrap();
    fs::copy(object(smaller), object(larger)).unwrap();
    for command in commands(larger) {
        let out = in_small_scratch(&[command.clone(), keys.restore_args()].concat());
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{command:?}: {text}");
        assert!(
            text.contains(&format!("bundle {larger}: signature refused"))
                && text.contains("does not match the bundle's bytes"),
            "{command:?}: {text}"
        );
        assert!(out.stdout.is_empty(), "{command:?}: {out:?}");
    }
    fs::write(object(larger), pristine).unwrap();
}

#[test]
fn encrypted_signed_round_trips_through_http_and_s3() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 5);
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    let nginx = nginx(tmp.path());
    let http = format!("http://127.0.0.1:{}/backups", nginx.port);
    let moto = moto();
    let s3_env = [
        ("AWS_ACCESS_KEY_ID", "test-key"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let s3 = format!("s3://{BUCKET}/backups");
    let http_name = backup(&node, &http, &keys, &[])["bundle"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(nginx
        .www
        .join(format!("backups/{http_name}.minisig"))
        .is_file());
    let s3_name = backup(&node, &s3, &keys, &s3_env)["bundle"]
        .as_str()
        .unwrap()
        .to_string();
    moto.check(&["sha256", &format!("backups/{s3_name}.minisig")]);
    node.stop_etcd();
    for (store, name, env) in [(&http, &http_name, &[][..]), (&s3, &s3_name, &s3_env[..])] {
        let target = provisioned_root();
        let out = restore(store, target.path(), &keys.restore_args(), env);
        assert!(!stderr(&out).contains(SECRET), "{}", stderr(&out));
        let report: Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(report["restore"]["bundle"], name.as_str(), "{store}");
        assert_eq!(
            fs::read(target.path().join("etc/kubernetes/pki/ca.key")).unwrap(),
            fs::read(node.pki("ca.key")).unwrap()
        );
        // Without the identity the store's bundle is refused with what to pass.
        let out = restore(store, provisioned_root().path(), &[], env);
        assert!(stderr(&out).contains("--identity"), "{}", stderr(&out));
        assert!(!stderr(&out).contains(SECRET), "{}", stderr(&out));
    }
}
