//! The directory store, and the index on top of it.

mod store_common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use cpr::store::index;
use cpr::store::{self, Error, Store};
use store_common::{data, entry, fast_options, get, names, put};

fn dir_store(root: &Path) -> Box<dyn Store> {
    store::open(&format!("file://{}", root.display()), &fast_options()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn round_trip_with_private_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = dir_store(&root);
    let body = data(3 << 20, 1);
    let name = "c1/node-a/20240101T000000Z.tar.zst";
    let mut upload = store.create(name).unwrap();
    for piece in body.chunks(100_000) {
        upload.write_all(piece).unwrap();
    }
    assert!(!root.join(name).exists(), "visible before commit");
    let info = upload.commit().unwrap();
    assert_eq!((info.name.as_str(), info.size), (name, body.len() as u64));
    assert_eq!(get(&*store, name).unwrap(), body);
    assert_eq!(mode(&root.join(name)), 0o600);
    for dir in ["", "c1", "c1/node-a"] {
        assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
    }
    // A plain path names the same store.
    let same = store::open(root.to_str().unwrap(), &fast_options()).unwrap();
    assert_eq!(get(&*same, name).unwrap(), body);

    store.delete(name).unwrap();
    store.delete(name).unwrap(); // idempotent
    assert!(matches!(store.open(name), Err(Error::NotFound { .. })));
}

#[test]
fn listing_filters_by_prefix_and_ignores_part_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path());
    for name in ["c/a/1", "c/a/2", "c/b/1", "other"] {
        put(&*store, name, name.as_bytes());
    }
    // What a crash in the middle of an upload leaves behind.
    fs::write(tmp.path().join("c/a/3.part"), b"half").unwrap();
    assert_eq!(names(&*store, "c/a/"), ["c/a/1", "c/a/2"]);
    assert_eq!(store.list("c/").unwrap().len(), 3);
    assert_eq!(store.list("").unwrap().len(), 4);
    assert_eq!(store.list("c/a/1").unwrap()[0].size, 5);
    assert!(store.list("nothing/").unwrap().is_empty());
    assert!(matches!(
        store.create("c/a/3.part"),
        Err(Error::Name { .. })
    ));
    assert!(matches!(
        store.open("../etc/passwd"),
        Err(Error::Name { .. })
    ));
}

#[test]
fn dropped_or_failed_upload_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path());
    let name = "c/n/20240101T000000Z.tar.zst";

    let mut upload = store.create(name).unwrap();
    upload.write_all(&data(2 << 20, 2)).unwrap();
    drop(upload);
    assert!(!tmp.path().join(name).exists());
    assert!(!tmp.path().join(format!("{name}.part")).exists());

    // A complete object is not disturbed by a later upload that is abandoned.
    let mut upload = store.create(name).unwrap();
    upload.write_all(b"complete").unwrap();
    upload.commit().unwrap();
    let mut upload = store.create(name).unwrap();
    upload.write_all(b"abandoned").unwrap();
    drop(upload);
    assert_eq!(get(&*store, name).unwrap(), b"complete");

    assert!(matches!(
        store.open_limited(name, Some(3)),
        Err(Error::TooLarge { .. })
    ));
}

/// Mounts a 1 MiB tmpfs; without the privilege to mount, points the `.part` at /dev/full instead, which
/// fails every write with ENOSPC the same way.
#[test]
fn disk_full_is_a_clear_error_and_leaves_no_part() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    let _unmount = mounted.then(|| Unmount(mnt.clone()));
    let name = "c/n/20240101T000000Z.tar.zst";
    let store = dir_store(&mnt);
    if mounted {
        eprintln!("disk full: 1 MiB tmpfs at {}", mnt.display());
    } else {
        eprintln!("disk full: cannot mount a tmpfs here; using a .part symlink to /dev/full");
        fs::create_dir_all(mnt.join("c/n")).unwrap();
        symlink("/dev/full", mnt.join(format!("{name}.part"))).unwrap();
    }
    let mut upload = store.create(name).unwrap();
    let chunk = data(64 << 10, 3);
    let failure = (0..64).find_map(|_| upload.write_all(&chunk).err());
    let failure = match failure {
        Some(e) => store::Error::from_io("writing", name, e),
        None => upload
            .commit()
            .expect_err("4 MiB fit on a 1 MiB file system"),
    };
    let message = failure.to_string();
    assert!(matches!(failure, Error::DiskFull { .. }), "{failure:?}");
    assert!(message.contains("file system is full"), "{message}");
    assert!(!mnt.join(name).exists());
    assert!(
        !mnt.join(format!("{name}.part")).exists(),
        "a .part was left behind"
    );
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn index_is_reconciled_with_the_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path());
    assert!(index::list_bundles(&*store, "c", "n").unwrap().is_empty());

    let (old, mid, new) = (
        "c/n/20240101T000000Z.tar.zst",
        "c/n/20240102T000000Z.tar.zst.age",
        "c/n/20240103T000000Z.tar.zst",
    );
    put(&*store, new, b"newest");
    index::append(&*store, "c", "n", entry(new, 0, 30)).unwrap();
    put(&*store, old, b"old");
    index::append(&*store, "c", "n", entry(old, 0, 10)).unwrap();
    // Uploaded, but the index update was lost; signed.
    put(&*store, mid, b"middle");
    put(&*store, &format!("{mid}.minisig"), b"sig");
    // Indexed, but the object was removed by hand.
    index::append(
        &*store,
        "c",
        "n",
        entry("c/n/20231231T000000Z.tar.zst", 0, 5),
    )
    .unwrap();
    fs::write(tmp.path().join("c/n/20240104T000000Z.tar.zst.part"), b"x").unwrap();

    let index = index::read(&*store, "c", "n").unwrap();
    let names: Vec<_> = index.bundles.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["c/n/20231231T000000Z.tar.zst", old, new],
        "sorted, newest last"
    );

    let bundles = index::list_bundles(&*store, "c", "n").unwrap();
    let seen: Vec<_> = bundles
        .iter()
        .map(|e| (e.name.as_str(), e.revision, e.size, e.encrypted, e.signed))
        .collect();
    assert_eq!(
        seen,
        [
            (old, Some(10), 3, false, false),
            (mid, None, 6, true, true),
            (new, Some(30), 6, false, false),
        ]
    );
    assert_eq!(
        bundles[1].created.to_string(),
        "2024-01-02 0:00:00.0 +00:00:00"
    );

    index::remove(&*store, "c", "n", &[old]).unwrap();
    assert_eq!(index::read(&*store, "c", "n").unwrap().bundles.len(), 2);

    // A corrupt index is reported by `read`, and `list_bundles` falls back to the listing.
    fs::write(tmp.path().join("c/n/index.json"), b"{not json").unwrap();
    let err = index::read(&*store, "c", "n").unwrap_err();
    assert!(matches!(err, Error::Index { .. }), "{err}");
    assert_eq!(index::list_bundles(&*store, "c", "n").unwrap().len(), 3);
    assert_eq!(mode(&tmp.path().join("c/n/index.json")), 0o600);
}

/// The restore point of a lost quorum: of writers racing to create one object, exactly one creates
/// it, every other sees that one's content, and no temporary file is left.
#[test]
fn create_if_absent_has_one_winner_among_racing_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let name = "prod/restore-point-1.json";
    let won: Vec<bool> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let store = &store;
                scope.spawn(move || {
                    store
                        .create_if_absent(name, format!("writer {i}\n").as_bytes())
                        .unwrap()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let winner = won.iter().position(|w| *w).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(name)).unwrap(),
        format!("writer {winner}\n")
    );
    assert!(!store.create_if_absent(name, b"late\n").unwrap());
    assert_eq!(
        std::fs::read_dir(dir.path().join("prod")).unwrap().count(),
        1,
        "no temporary file left"
    );
}

/// Bundle names have one-second resolution: two backups of a node in one second pick one name, and
/// neither may replace or truncate the other's bundle.
#[test]
fn a_second_bundle_of_the_same_name_is_refused_and_the_first_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let name = "k/n/20261130T080000Z.tar.zst";
    let path = dir.path().join(name);

    let mut first = store.create_new(name).unwrap();
    first.write_all(b"first").unwrap();
    let refused = store
        .create_new(name)
        .err()
        .expect("a live .part of that name");
    assert!(
        matches!(
            refused,
            Error::Exists {
                unfinished: true,
                ..
            }
        ),
        "{refused}"
    );
    first.commit().unwrap();
    let refused = store.create_new(name).err().expect("a bundle of that name");
    assert!(refused.to_string().contains("same second"), "{refused}");
    assert_eq!(fs::read(&path).unwrap(), b"first");

    // A writer that checked before the other committed still cannot rename over its bundle.
    fs::remove_file(&path).unwrap();
    let mut late = store.create_new(name).unwrap();
    late.write_all(b"late").unwrap();
    fs::write(&path, b"committed meanwhile").unwrap();
    let refused = late.commit().expect_err("the name was taken meanwhile");
    assert!(
        matches!(
            refused,
            Error::Exists {
                unfinished: false,
                ..
            }
        ),
        "{refused}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"committed meanwhile");
    assert_eq!(names(store.as_ref(), "k/"), [name]);

    // The index is rewritten in place, as before.
    put(store.as_ref(), "k/n/index.json", b"one");
    put(store.as_ref(), "k/n/index.json", b"two");
    assert_eq!(get(store.as_ref(), "k/n/index.json").unwrap(), b"two");
}

/// A `.part` is removed only when no writer holds it and it has not changed for a while, and only
/// under the prefix asked for.
#[test]
fn dead_uploads_of_a_node_are_removed_and_live_or_young_ones_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let age = |name: &str| {
        let file = fs::File::options().write(true).open(dir.path().join(name));
        file.unwrap().set_modified(hour_ago).unwrap();
    };
    fs::create_dir_all(dir.path().join("k/n")).unwrap();
    fs::create_dir_all(dir.path().join("k/other")).unwrap();
    let dead = "k/n/20261130T070000Z.tar.zst.part";
    let young = "k/n/20261130T075959Z.tar.zst.part";
    let other_node = "k/other/20261130T070000Z.tar.zst.part";
    for name in [dead, young, other_node] {
        fs::write(dir.path().join(name), b"partial").unwrap();
    }
    age(dead);
    age(other_node);
    // A backup writing now whose .part has not changed for an hour (a stalled etcd stream).
    let mut live = store.create_new("k/n/20261130T080000Z.tar.zst").unwrap();
    live.write_all(b"live").unwrap();
    live.flush().unwrap();
    age("k/n/20261130T080000Z.tar.zst.part");

    let found = store.remove_dead_uploads("k/n/", true).unwrap();
    assert_eq!(found, [dead]);
    assert!(dir.path().join(dead).exists(), "a dry run removed it");

    let removed = store.remove_dead_uploads("k/n/", false).unwrap();
    assert_eq!(removed, [dead]);
    assert!(!dir.path().join(dead).exists());
    for left in [young, other_node, "k/n/20261130T080000Z.tar.zst.part"] {
        assert!(dir.path().join(left).exists(), "{left} was removed");
    }
    live.commit().unwrap();
    assert_eq!(
        get(store.as_ref(), "k/n/20261130T080000Z.tar.zst").unwrap(),
        b"live"
    );
}

/// Set in the copy of this test binary that `a_first_bundle_makes_its_directories_durable` runs
/// under strace: the directory store to write the first bundle into.
const TRACED_STORE: &str = "CPR_TEST_TRACED_STORE";

/// A node's first bundle makes `<store>/<cluster>/<node>/`; each directory made must be fsynced into
/// its parent, or a power cut after the bundle's commit (which fsyncs only the node directory) can
/// lose the whole directory and the "committed" bundle in it. Only a power cut shows a missing
/// fsync, so the test watches the system calls instead: strace runs this test binary, whose copy
/// writes the bundle.
#[test]
fn a_first_bundle_makes_its_directories_durable() {
    let name = "c1/node-a/20261130T080000Z.tar.zst";
    if let Some(root) = std::env::var_os(TRACED_STORE) {
        put(dir_store(Path::new(&root)).as_ref(), name, b"bundle");
        return;
    }
    let strace = store_common::require("strace", "the apt package strace");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let log = tmp.path().join("strace.log");
    let traced = Command::new(strace)
        .args(["-f", "-qq", "-y", "-s", "4096", "-e", "signal=none"])
        .args(["-e", "trace=mkdir,mkdirat,fsync", "-o"])
        .arg(&log)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "a_first_bundle_makes_its_directories_durable"])
        .env(TRACED_STORE, &root)
        .output()
        .unwrap();
    assert!(
        traced.status.success(),
        "the traced copy failed: {}\n{}{}",
        traced.status,
        String::from_utf8_lossy(&traced.stdout),
        String::from_utf8_lossy(&traced.stderr)
    );
    assert_eq!(get(dir_store(&root).as_ref(), name).unwrap(), b"bundle");

    // (directory made, or directory fsynced), in the order the calls returned 0.
    let calls: Vec<(bool, String)> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|line| line.ends_with("= 0"))
        .filter_map(|line| {
            let made = line.contains(" mkdir(") || line.contains(" mkdirat(");
            let (open, close) = if made { ('"', '"') } else { ('<', '>') };
            let path = line.split_once(open)?.1.split_once(close)?.0;
            Some((made, path.to_string()))
        })
        .collect();
    let made: Vec<&str> = calls
        .iter()
        .filter(|(made, _)| *made)
        .map(|(_, path)| path.as_str())
        .collect();
    let expected: Vec<String> = ["", "/c1", "/c1/node-a"]
        .iter()
        .map(|dir| format!("{}{dir}", root.display()))
        .collect();
    assert_eq!(made, expected, "{calls:?}");
    for (at, (_, dir)) in calls.iter().enumerate().filter(|(_, (made, _))| *made) {
        let parent = Path::new(dir).parent().unwrap().to_str().unwrap();
        assert!(
            calls[at..].contains(&(false, parent.to_string())),
            "{dir} was made but {parent} not fsynced after: {calls:?}"
        );
    }
    for dir in &expected {
        assert_eq!(mode(Path::new(dir)), 0o700, "{dir}");
    }
}

/// A file where a node's directory belongs fails the upload at once, naming that path and saying
/// what to do, and stays as it was.
#[test]
fn a_file_in_place_of_the_node_directory_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path());
    let node = tmp.path().join("c1/node-a");
    fs::create_dir(tmp.path().join("c1")).unwrap();
    fs::write(&node, b"in the way").unwrap();
    let Err(error) = store.create_new("c1/node-a/20261130T080000Z.tar.zst") else {
        panic!("an upload below a file was started");
    };
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "creating directory {}: it exists and is not a directory: move it aside",
            node.display()
        )),
        "{message}"
    );
    assert_eq!(fs::read(&node).unwrap(), b"in the way");
}
