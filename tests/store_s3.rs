//! The S3 store against moto's S3 server on loopback, with every stored object checked independently by
//! boto3 (tests/fixtures/store-s3-check.py).

mod store_common;

use std::io::Write;

use cpr::store::index;
use cpr::store::{self, Error, StoreOptions};
use store_common::{data, entry, get, init_logging, moto, names, put, BUCKET, SECRET};

#[test]
fn multipart_round_trip_checked_with_boto3() {
    init_logging();
    let moto = moto();
    let store = moto.store("backups/prod");
    assert_eq!(store.location(), format!("s3://{BUCKET}/backups/prod/"));
    let body = data((21 << 20) + 123, 1);
    let name = "c/n/20240101T000000Z.tar.zst";
    put(&*store, name, &body);
    let key = format!("backups/prod/{name}");
    let expected = format!("{} {}", body.len(), store_common::sha256_hex(&body));
    assert_eq!(moto.check(&["sha256", &key]), expected);
    assert!(
        moto.check(&["etag", &key]).ends_with("-3"),
        "3 parts of 8 MiB"
    );
    assert_eq!(moto.check(&["uploads"]), "0");
    assert_eq!(get(&*store, name).unwrap(), body);

    let listed = store.list("c/n/").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].size),
        (name, body.len() as u64)
    );
    assert!(listed[0].modified.is_some());

    store.delete(name).unwrap();
    store.delete(name).unwrap();
    assert_eq!(moto.check(&["sha256", &key]), "missing");
    let err = store.open(name).err().expect("deleted");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn small_object_and_index_in_a_bucket_root() {
    let moto = moto();
    let store = moto.store("");
    let name = "c/n/20240102T000000Z.tar.zst";
    put(&*store, name, b"small");
    assert_eq!(
        moto.check(&["sha256", name]),
        format!("5 {}", store_common::sha256_hex(b"small"))
    );
    index::append(&*store, "c", "n", entry(name, 5, 9)).unwrap();
    assert!(moto
        .check(&["sha256", "c/n/index.json"])
        .starts_with(char::is_numeric));
    let bundles = index::list_bundles(&*store, "c", "n").unwrap();
    assert_eq!(bundles.len(), 1);
    assert_eq!(bundles[0].revision, Some(9));
}

#[test]
fn listing_follows_pagination() {
    let moto = moto();
    moto.check(&["put-many", "pre/c/n/obj", "1005"]);
    moto.check(&["put-many", "pre/c/other/obj", "3"]);
    let store = moto.store("pre");
    let names = names(&*store, "c/n/");
    assert_eq!(names.len(), 1005);
    assert_eq!(names[0], "c/n/obj0000");
    assert_eq!(names[1004], "c/n/obj1004");
    assert_eq!(store.list("c/").unwrap().len(), 1008);
}

#[test]
fn dropped_multipart_upload_is_aborted() {
    let moto = moto();
    let store = moto.store("x");
    let mut upload = store.create("c/n/big").unwrap();
    upload.write_all(&data(17 << 20, 2)).unwrap();
    assert_eq!(moto.check(&["uploads"]), "1");
    drop(upload);
    assert_eq!(moto.check(&["uploads"]), "0");
    assert_eq!(moto.check(&["sha256", "x/c/n/big"]), "missing");
}

#[test]
fn missing_credentials_and_wrong_bucket_are_clear_and_keep_the_secret() {
    let moto = moto();
    let no_credentials = StoreOptions {
        s3_credentials: None,
        ..moto.options()
    };
    let err = store::open(&format!("s3://{BUCKET}/p"), &no_credentials)
        .err()
        .expect("no credentials");
    assert!(matches!(err, Error::Credentials { .. }), "{err}");
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");

    let options = moto.options();
    assert!(!format!("{options:?}").contains(SECRET));
    let store = store::open("s3://no-such-bucket/p", &options).unwrap();
    let err = store.list("c/n/").unwrap_err();
    let (message, debug) = (err.to_string(), format!("{err:?}"));
    eprintln!("{message}");
    assert!(message.contains("NoSuchBucket"), "{message}");
    assert!(message.contains("s3://no-such-bucket/p/c/n/"), "{message}");
    for shown in [&message, &debug] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("X-Amz-Signature"), "{shown}");
    }
    let err = store.create("c/n/x").unwrap().commit().unwrap_err();
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
}

#[test]
fn credentials_come_from_the_standard_variables() {
    let vars = [
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_SESSION_TOKEN", "token"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
        ("AWS_ENDPOINT_URL", "http://general.invalid"),
        ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9"),
    ];
    // Only this test touches these variables in this binary.
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
    let options = StoreOptions::from_env();
    for (name, _) in vars {
        std::env::remove_var(name);
    }
    assert_eq!(options.s3_endpoint.as_deref(), Some("http://127.0.0.1:9"));
    assert_eq!(options.s3_region.as_deref(), Some("eu-west-1"));
    let credentials = options.s3_credentials.as_ref().unwrap();
    assert_eq!(credentials.secret_access_key, SECRET);
    assert_eq!(credentials.session_token.as_deref(), Some("token"));
    let debug = format!("{options:?}");
    assert!(
        !debug.contains(SECRET) && !debug.contains("token\""),
        "{debug}"
    );
}

/// A conditional PUT (`If-None-Match: *`, which moto implements as S3 does): the first writer
/// creates the restore point, a second is told it exists and the object keeps the first's bytes.
#[test]
fn create_if_absent_is_a_conditional_put() {
    init_logging();
    let moto = moto();
    let store = moto.store("backups/prod");
    let name = "prod/restore-point-1.json";
    assert!(store.create_if_absent(name, b"first\n").unwrap());
    assert!(!store.create_if_absent(name, b"second\n").unwrap());
    assert_eq!(get(&*store, name).unwrap(), b"first\n");
}
