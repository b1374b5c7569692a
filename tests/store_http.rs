//! The HTTP(S) store against real servers on loopback: nginx with WebDAV PUT/DELETE (plain and TLS),
//! python3's read-only http.server, and a misbehaving server (tests/fixtures/store-flaky-server.py).

mod store_common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use cpr::store::index;
use cpr::store::{self, Error, Store, StoreOptions};
use store_common::{
    data, entry, fast_options, flaky, free_port, get, init_logging, nginx, put, require, Server,
};

fn open(url: &str) -> Box<dyn Store> {
    store::open(url, &fast_options()).unwrap()
}

#[test]
fn put_get_delete_through_nginx() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let nginx = nginx(tmp.path());
    let store = open(&format!("http://127.0.0.1:{}/backups/", nginx.port));
    let body = data(5 << 20, 1);
    let name = "c/n/20240101T000000Z.tar.zst";
    put(&*store, name, &body);
    assert_eq!(
        fs::read(nginx.www.join("backups").join(name)).unwrap(),
        body
    );
    assert_eq!(get(&*store, name).unwrap(), body);

    store.delete(name).unwrap();
    store.delete(name).unwrap();
    assert!(!nginx.www.join("backups").join(name).exists());
    let missing = get(&*store, name).unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
}

#[test]
fn dropped_upload_never_appears_on_nginx() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = nginx(tmp.path());
    let store = open(&format!("http://127.0.0.1:{}", nginx.port));
    let name = "c/n/20240101T000000Z.tar.zst";
    let mut upload = store.create(name).unwrap();
    upload.write_all(&data(3 << 20, 2)).unwrap();
    drop(upload);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !nginx.www.join(name).exists(),
        "a cut-off upload became an object"
    );
    assert!(matches!(get(&*store, name), Err(Error::NotFound { .. })));
}

#[test]
fn index_written_to_nginx_is_served_by_a_read_only_server() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = nginx(tmp.path());
    let writable = open(&format!("http://127.0.0.1:{}/", nginx.port));
    let names = [
        "c/n/20240101T000000Z.tar.zst",
        "c/n/20240102T000000Z.tar.zst",
    ];
    for (i, name) in names.iter().enumerate() {
        let body = data(1000 + i, i as u64);
        put(&*writable, name, &body);
        index::append(&*writable, "c", "n", entry(name, body.len() as u64, 42)).unwrap();
    }

    require("python3", "the apt package python3");
    let port = free_port();
    let mut command = Command::new("python3");
    command
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&nginx.www)
        .arg(port.to_string());
    let _server = Server::start(command, port);
    let read_only = open(&format!("http://127.0.0.1:{port}"));

    let bundles = index::list_bundles(&*read_only, "c", "n").unwrap();
    let listed: Vec<_> = bundles
        .iter()
        .map(|b| (b.name.as_str(), b.size, b.revision))
        .collect();
    assert_eq!(
        listed,
        [(names[0], 1000, Some(42)), (names[1], 1001, Some(42))]
    );
    assert_eq!(get(&*read_only, names[1]).unwrap(), data(1001, 1));
    assert!(index::list_bundles(&*read_only, "c", "other")
        .unwrap()
        .is_empty());

    let mut upload = read_only.create("c/n/x").unwrap();
    let refused = upload
        .write_all(b"x")
        .map_err(|e| Error::from_io("writing", "c/n/x", e))
        .and_then(|()| upload.commit().map(drop))
        .unwrap_err();
    let message = refused.to_string();
    assert!(
        matches!(refused, Error::Status { status: 501, .. }),
        "{refused:?}"
    );
    assert!(message.contains("does not allow this method"), "{message}");
}

#[test]
fn download_resumes_with_range_after_dropped_connections() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let body = data(3 << 20, 3);
    let (server, log) = flaky(tmp.path(), "drop", &body);
    let store = open(&format!("http://127.0.0.1:{}", server.port));
    assert_eq!(get(&*store, "b").unwrap(), body);
    let ranges = fs::read_to_string(log).unwrap();
    let ranges: Vec<_> = ranges.lines().collect();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!(ranges[0], "-");
    let first = (body.len() / 3) as u64;
    let second = first + (body.len() as u64 - first) / 3;
    assert_eq!(ranges[1], format!("bytes={first}-"));
    assert_eq!(ranges[2], format!("bytes={second}-"));
}

#[test]
fn download_resumes_from_a_server_without_range_support() {
    let tmp = tempfile::tempdir().unwrap();
    let body = data(1 << 20, 4);
    let (server, _) = flaky(tmp.path(), "norange", &body);
    let store = open(&format!("http://127.0.0.1:{}", server.port));
    assert_eq!(get(&*store, "b").unwrap(), body);
}

#[test]
fn download_notices_an_object_that_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _) = flaky(tmp.path(), "changing", &data(1 << 20, 5));
    let store = open(&format!("http://127.0.0.1:{}", server.port));
    let err = get(&*store, "b").unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");
}

#[test]
fn endless_body_is_refused_beyond_the_expected_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _) = flaky(tmp.path(), "endless", b"");
    let store = open(&format!("http://127.0.0.1:{}", server.port));
    let mut reader = store.open_limited("b", Some(1 << 20)).unwrap();
    let err = std::io::copy(&mut reader, &mut std::io::sink()).unwrap_err();
    let err = Error::from_io("reading", "b", err);
    assert!(
        matches!(err, Error::TooLarge { limit: 1048576, .. }),
        "{err}"
    );
}

/// A reader dropped halfway (a restore that found the bundle bad) closes its connection at once, even
/// while the download waits on a server that has stopped sending: it is not held until the I/O
/// timeout, nor reconnected after it.
#[test]
fn a_download_dropped_halfway_closes_its_connection() {
    let tmp = tempfile::tempdir().unwrap();
    // Half of it is sent: more than one batch of the download, so the reader gets some.
    let body = data(3 << 20, 9);
    let (server, log) = flaky(tmp.path(), "stall", &body);
    let options = StoreOptions {
        io_timeout: std::time::Duration::from_secs(60),
        ..fast_options()
    };
    let store = store::open(&format!("http://127.0.0.1:{}", server.port), &options).unwrap();
    let mut reader = store.open_limited("b", None).unwrap();
    let mut first = [0; 1024];
    std::io::Read::read_exact(&mut reader, &mut first).unwrap();
    assert_eq!(first, body[..1024]);
    // Time for the download to take in what was sent and wait on the server for more.
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(reader);
    // The server waits 15 s for the close, then says what it saw on the log's second line.
    let mut said = String::new();
    for _ in 0..200 {
        let log = fs::read_to_string(&log).unwrap_or_default();
        said = log.lines().nth(1).unwrap_or_default().to_string();
        if !said.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(said.starts_with("closed after"), "the server said {said:?}");
}

#[test]
fn redirect_loop_and_unreachable_server_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = nginx(tmp.path());
    let store = open(&format!("http://127.0.0.1:{}/loop/", nginx.port));
    let err = get(&*store, "x").unwrap_err();
    assert!(matches!(err, Error::Redirects { .. }), "{err:?}");
    assert!(err.to_string().contains("redirect loop"), "{err}");

    let port = free_port();
    let store = open(&format!("http://user:hunter2@127.0.0.1:{port}/"));
    assert!(!store.location().contains("hunter2"));
    let err = get(&*store, "x").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("cannot reach the server"), "{message}");
    // fast_options: 3 retries after the first attempt.
    assert!(
        message.contains("(the retries ran out: 4 attempts over "),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn https_with_the_configured_ca_and_refused_without() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = nginx(tmp.path());
    let url = format!("https://127.0.0.1:{}/", nginx.tls_port);
    let with_ca = StoreOptions {
        ca_file: Some(tmp.path().join("ca.pem")),
        ..fast_options()
    };
    let store = store::open(&url, &with_ca).unwrap();
    put(&*store, "c/n/a", b"over tls");
    assert_eq!(get(&*store, "c/n/a").unwrap(), b"over tls");

    // The system roots (or none at all) do not know the test CA.
    let without = StoreOptions {
        ca_file: Some("/etc/ssl/certs/ca-certificates.crt".into()),
        ..fast_options()
    };
    let without = if without.ca_file.as_deref().is_some_and(Path::exists) {
        without
    } else {
        fast_options()
    };
    let err = get(&*store::open(&url, &without).unwrap(), "c/n/a").unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    let no_certs = tmp.path().join("empty.pem");
    fs::write(&no_certs, "").unwrap();
    let bad = StoreOptions {
        ca_file: Some(no_certs),
        ..fast_options()
    };
    let err = store::open(&url, &bad)
        .err()
        .expect("a CA file without certificates");
    assert!(matches!(err, Error::Tls { .. }), "{err}");
}

/// HTTP has no create-if-absent that every server honours: the claim of a lost quorum's restore point
/// is refused with the way out (pin the bundle on every node), and nothing is sent.
#[test]
fn create_if_absent_is_refused_with_the_pin_to_use_instead() {
    let store = open("http://127.0.0.1:9/backups");
    let error = store
        .create_if_absent("prod/restore-point-1.json", b"{}")
        .unwrap_err()
        .to_string();
    assert!(error.contains("http://127.0.0.1:9/backups"), "{error}");
    assert!(
        error.contains("--bundle") && error.contains("cpr.bundle="),
        "{error}"
    );
}
