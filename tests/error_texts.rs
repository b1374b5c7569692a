//! Errors that used to name only the failure now say what to do (issue 17). Each is built as the code
//! builds it and its text checked; the ones a command can reach cheaply are in tests/cli_input.rs.

use std::io;
use std::path::PathBuf;

fn disk_full() -> io::Error {
    io::Error::from(io::ErrorKind::StorageFull)
}

#[test]
fn an_empty_snapshot_stream_says_what_to_check() {
    let error = cpr::etcd::ClientError::EmptySnapshot {
        endpoint: "https://127.0.0.1:2379".into(),
    };
    assert_eq!(
        error.to_string(),
        "etcd at https://127.0.0.1:2379: the snapshot stream carried no data. Check that \
         https://127.0.0.1:2379 is this node's etcd client URL and etcd's log for a failed \
         snapshot, then run again"
    );
}

#[test]
fn a_failed_bundle_write_says_where_to_look() {
    let error = cpr::bundle::Error::Write {
        bundle: "prod/m0/20250101T000000Z.tar.zst".into(),
        path: "etcd/snapshot.db".into(),
        source: disk_full(),
    };
    let text = error.to_string();
    assert!(
        text.ends_with(
            "Check the free space and permissions where the bundle goes (the store, or the staging directory on restore), then run again"
        ),
        "{text}"
    );
}

#[test]
fn an_unreadable_node_file_says_what_to_check() {
    let error = cpr::ops::Error::Read {
        path: PathBuf::from("/etc/kubernetes/pki/ca.key"),
        source: io::Error::from(io::ErrorKind::PermissionDenied),
    };
    let text = error.to_string();
    assert!(
        text.starts_with("reading /etc/kubernetes/pki/ca.key: "),
        "{text}"
    );
    assert!(
        text.ends_with(
            "Check that the file exists and is readable by this user (cpr runs as root), or pass --root for a node mounted elsewhere"
        ),
        "{text}"
    );
}

#[test]
fn a_local_store_error_says_what_to_check() {
    // A directory store whose root is a file: the upload cannot create its directory.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store");
    std::fs::write(&file, b"not a directory").unwrap();
    let store =
        cpr::store::open(file.to_str().unwrap(), &cpr::store::StoreOptions::default()).unwrap();
    let text = match store.create("prod/m0/x.tar.zst") {
        Ok(_) => panic!("an upload below a file cannot start"),
        Err(error) => error.to_string(),
    };
    assert!(
        text.contains(&format!("{}/prod/m0", file.display())),
        "{text}"
    );
    assert!(
        text.ends_with("Check that the path exists, its permissions and the free space there"),
        "{text}"
    );
}

#[test]
fn a_broken_transfer_says_what_to_do() {
    let error = cpr::store::Error::Interrupted {
        op: "reading",
        url: "http://store/b/prod/m0/x.tar.zst".into(),
        reason: "connection closed after 10 of 20 bytes".into(),
    };
    assert_eq!(
        error.to_string(),
        "reading http://store/b/prod/m0/x.tar.zst: the transfer broke off: connection closed after \
         10 of 20 bytes. Check the network and the server, then run again"
    );
}
