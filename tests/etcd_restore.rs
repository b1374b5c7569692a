//! The native restore against the real tools: byte-identical WAL and `.snap` to etcdutl 3.5.1 and
//! etcdctl 3.4.23, the same db content, and real etcd 3.5.1 / 3.4.23 servers serving the result.

mod common;

use common::etcd_cluster::{check, free_port, txn, v34, v35, Server, Spec, Tools};
use cpr::etcd::bbolt::{Db, Meta};
use cpr::etcd::skeleton::Skeletons;
use cpr::etcd::status::checked_revision;
use cpr::etcd::{self, Error, RestoreOptions};
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tempfile::TempDir;

/// The source snapshot, made once per test run by a real etcd 3.5.1.
struct Source {
    path: PathBuf,
    revision: i64,
    count: i64,
}

fn source() -> &'static Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let dir = common::run_dir("etcd-source");
        let tools = v35();
        let mut spec = Spec::single(&tools, &dir.join("data"));
        spec.extra = [
            "--max-txn-ops",
            "100000",
            "--max-request-bytes",
            "67108864",
            "--unsafe-no-fsync",
        ]
        .map(String::from)
        .to_vec();
        let mut server = Server::start(&spec);
        server.wait_healthy();
        // Two full rewrites of 3000 keys: a `key` bucket several levels deep, with history.
        for round in 0..2 {
            let mut script = String::from("\n");
            for i in 0..3000 {
                script.push_str(&format!(
                    "put a/{i:05} {}\n",
                    format!("{round}").repeat(200)
                ));
            }
            script.push_str("\n\n");
            let mut etcdctl = std::process::Command::new(&server.tools.etcdctl);
            etcdctl.args(["--endpoints", &server.client]);
            txn(etcdctl, &script);
        }
        let lease = server.ctl_ok(&["lease", "grant", "3600"]);
        let lease = lease.split_whitespace().nth(1).unwrap().to_string();
        server.ctl_ok(&["put", "leased", "v", "--lease", &lease]);
        // Larger than a page: overflow pages.
        server.ctl_ok(&["put", "big", &"b".repeat(20_000)]);
        server.ctl_ok(&["del", "a/0001", "--prefix"]);
        server.ctl_ok(&["compact", "3"]);
        server.ctl_ok(&["put", "after-compaction", "yes"]);
        let (revision, count) = server.revision_and_count();
        let path = dir.join("snapshot.db");
        server.ctl_ok(&["snapshot", "save", path.to_str().unwrap()]);
        drop(server);
        Source {
            path,
            revision,
            count,
        }
    })
}

/// Restore arguments as both cpr and the etcd tools take them.
struct Args {
    name: &'static str,
    cluster: String,
    token: &'static str,
    peers: String,
}

impl Args {
    fn opts(&self) -> RestoreOptions {
        RestoreOptions {
            name: self.name.into(),
            initial_cluster: self.cluster.clone(),
            initial_cluster_token: self.token.into(),
            initial_advertise_peer_urls: self.peers.clone(),
            ..RestoreOptions::default()
        }
    }

    fn run_tool(&self, tools: &Tools, snapshot: &Path, data_dir: &Path) {
        let out = tools
            .util()
            .args([
                "snapshot",
                "restore",
                snapshot.to_str().unwrap(),
                "--data-dir",
                data_dir.to_str().unwrap(),
            ])
            .args([
                "--name",
                self.name,
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-token",
                self.token,
            ])
            .args(["--initial-advertise-peer-urls", &self.peers])
            .output()
            .unwrap();
        check(out, &format!("{} snapshot restore", tools.version));
    }
}

fn one_member() -> Args {
    Args {
        name: "m1",
        cluster: "m1=http://127.0.0.1:2380".into(),
        token: "tok-1",
        peers: "http://127.0.0.1:2380".into(),
    }
}

/// Three members: `b` has two peer URLs (given in another order than in the cluster), `c` is IPv6.
fn three_members() -> Args {
    Args {
        name: "b",
        cluster: "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,b=https://10.0.0.2:2381,c=http://[fd00::3]:2380"
            .into(),
        token: "tok-3",
        peers: "https://10.0.0.2:2381,http://10.0.0.2:2380".into(),
    }
}

fn wal(dir: &Path) -> Vec<u8> {
    fs::read(dir.join("member/wal/0000000000000000-0000000000000000.wal")).unwrap()
}

fn snap_file(dir: &Path) -> (String, Vec<u8>) {
    let snap = dir.join("member/snap");
    let mut names: Vec<_> = fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names.pop().unwrap();
    let bytes = fs::read(snap.join(&name)).unwrap();
    (name, bytes)
}

/// WAL frames (record bytes without length and padding) up to the zero fill.
fn wal_frames(wal: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let field = u64::from_le_bytes(wal[off..off + 8].try_into().unwrap());
        if field == 0 {
            return out;
        }
        let len = (field & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if field >> 63 == 1 {
            ((field >> 56) & 0x7) as usize
        } else {
            0
        };
        out.push(&wal[off + 8..off + 8 + len]);
        off += 8 + len + pad;
    }
}

/// Every (bucket, key, value) of a db, in order: the logical content.
fn dump(db_path: &Path) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let file = fs::File::open(db_path).unwrap();
    let db = Db::open(&file, file.metadata().unwrap().len()).unwrap_or_else(|e| panic!("{e:?}"));
    let mut out = Vec::new();
    let mut bucket = Vec::new();
    db.walk(None, &mut |v| {
        if v.depth == 0 {
            bucket = v.key.to_vec();
        } else {
            out.push((bucket.clone(), v.key.to_vec(), v.value.to_vec()));
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:?}"));
    out
}

fn modes(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::metadata(&p).unwrap();
        out.push((
            p.strip_prefix(dir).unwrap().display().to_string(),
            md.permissions().mode(),
        ));
        if md.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

fn with_trailer(db: &Path, out: &Path) {
    let mut bytes = fs::read(db).unwrap();
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    fs::write(out, bytes).unwrap();
}

/// `etcdutl snapshot status -w json` (bbolt's own consistency check included).
fn etcdutl_status(db: &Path) -> serde_json::Value {
    let out = v35()
        .util()
        .args(["snapshot", "status", db.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    serde_json::from_str(&check(out, "etcdutl snapshot status")).unwrap()
}

fn differential(args: Args) {
    let src = source();
    let tmp = TempDir::new().unwrap();
    let (cpr, utl, ctl34) = (
        tmp.path().join("cpr"),
        tmp.path().join("etcdutl"),
        tmp.path().join("etcdctl34"),
    );
    let restored = etcd::restore_from_file(&src.path, &cpr, &args.opts()).unwrap();
    args.run_tool(&v35(), &src.path, &utl);
    args.run_tool(&v34(), &src.path, &ctl34);

    assert_eq!(wal(&cpr), wal(&utl), "WAL differs from etcdutl 3.5.1's");
    assert_eq!(
        snap_file(&cpr),
        snap_file(&utl),
        ".snap differs from etcdutl 3.5.1's"
    );
    assert_eq!(
        snap_file(&cpr),
        snap_file(&ctl34),
        ".snap differs from etcdctl 3.4.23's"
    );
    // 3.4 writes its final snapshot marker without the ConfState that 3.5 adds; all else is equal.
    let (ours, theirs) = (wal(&cpr), wal(&ctl34));
    assert_eq!(ours.len(), theirs.len());
    let (ours, theirs) = (wal_frames(&ours), wal_frames(&theirs));
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(
        ours[..ours.len() - 1],
        theirs[..theirs.len() - 1],
        "WAL differs from etcdctl 3.4.23's"
    );
    assert_eq!(modes(&cpr), modes(&utl), "file modes differ from etcdutl's");

    let (ours, theirs) = (cpr.join("member/snap/db"), utl.join("member/snap/db"));
    assert_eq!(
        dump(&ours),
        dump(&theirs),
        "db content differs from etcdutl's"
    );
    with_trailer(&ours, &tmp.path().join("cpr.db"));
    with_trailer(&theirs, &tmp.path().join("etcdutl.db"));
    let (a, b) = (
        etcdutl_status(&tmp.path().join("cpr.db")),
        etcdutl_status(&tmp.path().join("etcdutl.db")),
    );
    for field in ["hash", "revision", "totalKey"] {
        assert_eq!(a[field], b[field], "{field}");
    }
    assert_eq!(a["revision"].as_i64(), Some(src.revision));
    assert_eq!(restored.revision, src.revision);
    assert_eq!(
        restored.cluster.members.len(),
        args.cluster.matches('=').count() - usize::from(args.name == "b")
    );
}

#[test]
fn identical_to_etcdutl_and_etcdctl34_one_member() {
    differential(one_member());
}

#[test]
fn identical_to_etcdutl_and_etcdctl34_three_members() {
    differential(three_members());
}

#[test]
fn status_matches_etcdutl() {
    let src = source();
    let ours = etcd::snapshot_status(&src.path).unwrap();
    let theirs = etcdutl_status(&src.path);
    assert_eq!(serde_json::to_value(ours).unwrap(), theirs);
}

/// Restores the source for one member on a free loopback port and starts `tools`' etcd on it.
fn restore_and_serve(tools: &Tools, tmp: &Path, bump: Option<u64>) -> Server {
    let data = tmp.join(format!("data-{}", tools.version));
    let spec = Spec::single(tools, &data);
    let opts = RestoreOptions {
        initial_cluster: spec.initial_cluster.clone(),
        initial_advertise_peer_urls: spec.peer.clone(),
        bump_revision: bump,
        ..RestoreOptions::default()
    };
    etcd::restore_from_file(&source().path, &data, &opts).unwrap();
    let mut server = Server::start(&spec);
    server.wait_healthy();
    server
}

#[test]
fn etcd_35_and_34_serve_the_restored_data() {
    let src = source();
    let tmp = TempDir::new().unwrap();
    for tools in [v35(), v34()] {
        let server = restore_and_serve(&tools, tmp.path(), None);
        assert_eq!(
            server.revision_and_count(),
            (src.revision, src.count),
            "etcd {}",
            tools.version
        );
        let big = server.ctl_ok(&["get", "big", "--print-value-only"]);
        assert_eq!(big.trim_end().len(), 20_000);
        server.ctl_ok(&["put", "next", "write"]);
        assert_eq!(
            server.revision_and_count().0,
            src.revision + 1,
            "etcd {}",
            tools.version
        );
        assert_eq!(server.member_names(), ["default"]);
    }
}

/// `--wal-dir`: the WAL goes to its own dir (as etcdutl writes it, byte for byte), the data dir has
/// none, and etcd started with the same `--wal-dir` serves the snapshot; an existing WAL dir is refused.
#[test]
fn a_separate_wal_dir_matches_etcdutl_and_serves() {
    let src = source();
    let tmp = TempDir::new().unwrap();
    let spec = Spec::single(&v35(), &tmp.path().join("data"));
    let (ours, theirs) = (tmp.path().join("wal"), tmp.path().join("etcdutl-wal"));
    let opts = RestoreOptions {
        initial_cluster: spec.initial_cluster.clone(),
        initial_advertise_peer_urls: spec.peer.clone(),
        wal_dir: Some(ours.clone()),
        ..RestoreOptions::default()
    };
    etcd::restore_from_file(&src.path, &spec.data_dir, &opts).unwrap();
    let etcdutl_data = tmp.path().join("etcdutl-data");
    let out = v35()
        .util()
        .args(["snapshot", "restore", src.path.to_str().unwrap()])
        .arg("--data-dir")
        .arg(&etcdutl_data)
        .arg("--wal-dir")
        .arg(&theirs)
        .args(["--initial-cluster", &spec.initial_cluster])
        .args(["--initial-advertise-peer-urls", &spec.peer])
        .output()
        .unwrap();
    check(out, "etcdutl snapshot restore --wal-dir");
    let segment = "0000000000000000-0000000000000000.wal";
    assert_eq!(
        fs::read(ours.join(segment)).unwrap(),
        fs::read(theirs.join(segment)).unwrap(),
        "WAL differs from etcdutl 3.5.1's"
    );
    assert!(!spec.data_dir.join("member/wal").exists());
    assert!(!etcdutl_data.join("member/wal").exists());

    let again = tmp.path().join("again");
    let refused = etcd::restore_from_file(&src.path, &again, &opts).unwrap_err();
    assert!(matches!(refused, Error::WalDirExists { .. }), "{refused}");
    assert!(
        !again.exists(),
        "a refused restore left {}",
        again.display()
    );

    let mut spec = spec;
    spec.extra = vec!["--wal-dir".into(), ours.to_str().unwrap().into()];
    let mut server = Server::start(&spec);
    server.wait_healthy();
    assert_eq!(server.revision_and_count(), (src.revision, src.count));
}

#[test]
fn bump_revision_marks_old_revisions_compacted() {
    let src = source();
    let tmp = TempDir::new().unwrap();
    for tools in [v35(), v34()] {
        let server = restore_and_serve(&tools, tmp.path(), Some(1000));
        let (revision, count) = server.revision_and_count();
        assert_eq!(
            (revision, count),
            (src.revision + 1000, src.count),
            "etcd {}",
            tools.version
        );
        let old = src.revision.to_string();
        let get = server.ctl(&["get", "big", "--rev", &old]);
        assert!(
            !get.status.success() && String::from_utf8_lossy(&get.stderr).contains("compacted")
        );
        let watch = server.ctl(&["watch", "big", "--rev", &old]);
        let said = String::from_utf8_lossy(&watch.stdout) + String::from_utf8_lossy(&watch.stderr);
        assert!(said.contains("compacted"), "etcd {}: {said}", tools.version);
        server.ctl_ok(&["put", "next", "write"]);
        assert_eq!(server.revision_and_count().0, src.revision + 1001);
    }
}

#[test]
fn three_restored_members_form_one_cluster() {
    let src = source();
    let tmp = TempDir::new().unwrap();
    let tools = v35();
    let peers: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let cluster = (0..3)
        .map(|i| format!("n{i}={}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers: Vec<Server> = (0..3)
        .map(|i| {
            let data = tmp.path().join(format!("n{i}"));
            let opts = RestoreOptions {
                name: format!("n{i}"),
                initial_cluster: cluster.clone(),
                initial_advertise_peer_urls: peers[i].clone(),
                ..RestoreOptions::default()
            };
            etcd::restore_from_file(&src.path, &data, &opts).unwrap();
            let spec = Spec {
                tools: tools.clone(),
                data_dir: data,
                name: format!("n{i}"),
                peer: peers[i].clone(),
                initial_cluster: cluster.clone(),
                extra: Vec::new(),
            };
            Server::start(&spec)
        })
        .collect();
    for s in &mut servers {
        s.wait_healthy();
    }
    for s in &servers {
        assert_eq!(s.revision_and_count(), (src.revision, src.count));
        assert_eq!(s.member_names(), ["n0", "n1", "n2"]);
    }
    servers[0].ctl_ok(&["put", "replicated", "yes"]);
    let got = servers[2].ctl_ok(&[
        "get",
        "replicated",
        "--print-value-only",
        "--consistency",
        "l",
    ]);
    assert_eq!(got.trim(), "yes");
}

/// A reader that hands out odd-sized pieces, like a decompressor does.
struct Trickle<R>(R);

impl<R: std::io::Read> std::io::Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7919);
        self.0.read(&mut buf[..n])
    }
}

#[test]
fn stream_restore_equals_file_restore() {
    let src = source();
    let tmp = TempDir::new().unwrap();
    let (a, b) = (tmp.path().join("file"), tmp.path().join("stream"));
    let opts = one_member().opts();
    etcd::restore_from_file(&src.path, &a, &opts).unwrap();
    let size = fs::metadata(&src.path).unwrap().len();
    let reader = Trickle(fs::File::open(&src.path).unwrap());
    let mut blake3 = blake3::Hasher::new();
    etcd::restore_from_reader(
        reader,
        size,
        Path::new("bundle:etcd/snapshot.db"),
        &b,
        &opts,
        Some(&mut blake3),
    )
    .unwrap();
    // A bundle's digest of its snapshot entry: every byte, the sha256 trailer included.
    assert_eq!(
        blake3.finalize(),
        blake3::hash(&fs::read(&src.path).unwrap())
    );
    for f in [
        "member/snap/db",
        "member/snap/0000000000000001-0000000000000001.snap",
    ] {
        assert_eq!(
            fs::read(a.join(f)).unwrap(),
            fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(wal(&a), wal(&b));
}

/// Asserts the restore failed and left nothing behind.
fn refused(tmp: &Path, data: &Path, result: Result<etcd::Restored, Error>) -> Error {
    let err = result.expect_err("restore should fail");
    assert!(
        !data.join("member").exists(),
        "a data dir was left behind after: {err}"
    );
    let leftovers: Vec<_> = fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{leftovers:?} left behind after: {err}"
    );
    err
}

#[test]
fn refuses_bad_options_and_busy_targets() {
    let src = source();
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let base = RestoreOptions::default();
    let cases = [
        RestoreOptions {
            name: "other".into(),
            ..base.clone()
        },
        RestoreOptions {
            initial_advertise_peer_urls: "http://localhost:2381".into(),
            ..base.clone()
        },
        RestoreOptions {
            initial_cluster: "default=http://localhost:2380,x=http://localhost:2380".into(),
            ..base.clone()
        },
        RestoreOptions {
            initial_cluster: "default=ftp://localhost:2380".into(),
            ..base.clone()
        },
        RestoreOptions {
            bump_revision: Some(0),
            ..base.clone()
        },
    ];
    for opts in cases {
        let err = refused(
            tmp.path(),
            &data,
            etcd::restore_from_file(&src.path, &data, &opts),
        );
        assert!(matches!(err, Error::InvalidOption { .. }), "{err}");
    }

    // The same file without its trailer needs --skip-hash-check, like etcdutl.
    let bare = tmp.path().join("bare.db");
    let bytes = fs::read(&src.path).unwrap();
    fs::write(&bare, &bytes[..bytes.len() - 32]).unwrap();
    let err = refused(
        tmp.path(),
        &data,
        etcd::restore_from_file(&bare, &data, &base),
    );
    assert!(matches!(err, Error::MissingHash { .. }), "{err}");
    let skip = RestoreOptions {
        skip_hash_check: true,
        ..base.clone()
    };
    etcd::restore_from_file(&bare, &data, &skip).unwrap();

    // Not empty any more.
    let err = etcd::restore_from_file(&src.path, &data, &base).unwrap_err();
    assert!(matches!(err, Error::DataDirNotEmpty { .. }), "{err}");

    // A data dir a running etcd holds, and that etcd's live db as a source.
    let live = tmp.path().join("live");
    let mut server = Server::start(&Spec::single(&v35(), &live));
    server.wait_healthy();
    let err = etcd::restore_from_file(&src.path, &live, &base).unwrap_err();
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    let err = etcd::restore_from_file(
        &live.join("member/snap/db"),
        &tmp.path().join("copy"),
        &skip,
    )
    .unwrap_err();
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    assert!(!tmp.path().join("copy").exists());
}

/// The page size meta page 0 of a db records.
fn page_size(db: &[u8]) -> usize {
    u32::from_le_bytes(db[24..28].try_into().unwrap()) as usize
}

/// Page size, hwm and the root page of bucket `key` of a snapshot file.
fn key_bucket_root(bytes: &[u8]) -> (usize, u64) {
    let ps = page_size(bytes);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("probe-{}", std::process::id()));
    fs::write(&path, bytes).unwrap();
    let file = fs::File::open(&path).unwrap();
    let db = Db::open(&file, bytes.len() as u64).unwrap_or_else(|e| panic!("{e:?}"));
    let mut root = None;
    db.walk(None, &mut |v| {
        if v.depth == 0 && v.key == b"key" {
            root = Some(u64::from_le_bytes(v.value[..8].try_into().unwrap()));
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:?}"));
    fs::remove_file(&path).unwrap();
    let root = root.expect("a `key` bucket");
    // The source is meant to have a `key` bucket at least three levels deep.
    let flags = |id: u64| {
        u16::from_le_bytes(
            bytes[id as usize * ps + 8..id as usize * ps + 10]
                .try_into()
                .unwrap(),
        )
    };
    let first_child = u64::from_le_bytes(
        bytes[root as usize * ps + 24..root as usize * ps + 32]
            .try_into()
            .unwrap(),
    );
    assert_eq!(
        (flags(root), flags(first_child)),
        (1, 1),
        "`key` bucket is shallower than three levels"
    );
    (ps, root)
}

/// Rewrites the db part of a snapshot and gives it a valid trailer again, so only the bbolt
/// checks can catch the damage.
fn damaged(tmp: &Path, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = fs::read(&source().path).unwrap();
    bytes.truncate(bytes.len() - 32);
    damage(&mut bytes);
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    let path = tmp.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

type Damage = Box<dyn FnOnce(&mut Vec<u8>)>;

#[test]
fn damaged_snapshots_fail_cleanly() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let opts = RestoreOptions::default();

    let mut bytes = fs::read(&source().path).unwrap();
    bytes[5000] ^= 1;
    let flipped = tmp.path().join("flipped.db");
    fs::write(&flipped, &bytes).unwrap();
    let err = refused(
        tmp.path(),
        &data,
        etcd::restore_from_file(&flipped, &data, &opts),
    );
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");

    let cases: [(&str, &str, Damage); 3] = [
        (
            "bad-meta.db",
            "both meta pages are invalid",
            Box::new(|b: &mut Vec<u8>| {
                let ps = page_size(b);
                b[16 + 56] ^= 0xff;
                b[ps + 16 + 56] ^= 0xff;
            }),
        ),
        (
            "out-of-range.db",
            "out of range",
            Box::new(|b: &mut Vec<u8>| {
                let (ps, root) = key_bucket_root(b);
                let elem = root as usize * ps + 16;
                b[elem + 8..elem + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
            }),
        ),
        (
            "cycle.db",
            "referenced twice",
            Box::new(|b: &mut Vec<u8>| {
                let (ps, root) = key_bucket_root(b);
                // The second child of the key bucket's root points back at the root.
                let elem = root as usize * ps + 16 + 16;
                b[elem + 8..elem + 16].copy_from_slice(&root.to_le_bytes());
            }),
        ),
    ];
    for (name, says, damage) in cases {
        let path = damaged(tmp.path(), name, damage);
        let err = refused(
            tmp.path(),
            &data,
            etcd::restore_from_file(&path, &data, &opts),
        );
        assert!(
            matches!(err, Error::Corrupt { .. }) && err.to_string().contains(says),
            "{name}: {err}"
        );
        let err = etcd::snapshot_status(&path).unwrap_err();
        assert!(err.to_string().contains(says), "{name}: {err}");
    }
}

/// The restore checks the db through page skeletons recorded while it streams to disk. Over the
/// real snapshot and a thousand damaged copies of it, that check gives the verdict and the
/// revision that the walk over the pages gives, whatever the chunking; and it reads no page back.
#[test]
fn the_skeleton_check_agrees_with_the_page_walk() {
    let mut db = fs::read(&source().path).unwrap();
    db.truncate(db.len() - 32);
    let ps = page_size(&db);
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("db");
    fs::write(&path, &db).unwrap();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let check = |data: &[u8], chunk: usize, budget: usize| {
        let db = match Db::open(&file, data.len() as u64) {
            Ok(db) => db,
            Err(e) => panic!("the metas are never damaged here: {e:?}"),
        };
        let mut skeletons = Skeletons::new(budget);
        for (i, part) in data.chunks(chunk).enumerate() {
            skeletons.record((i * chunk) as u64, part);
        }
        let verdict = |s| checked_revision(&db, s).map_err(|e| format!("{e:?}"));
        (verdict(None), verdict(Some(&skeletons)))
    };

    for chunk in [ps, 64 << 10, db.len()] {
        let (pages, skeletons) = check(&db, chunk, usize::MAX);
        assert_eq!(pages, Ok(source().revision));
        assert_eq!(skeletons, pages, "chunks of {chunk} bytes");
    }
    // Budgets too small for every skeleton, or for any: the pages past it are read.
    for budget in [16 << 10, 64] {
        let (pages, skeletons) = check(&db, db.len(), budget);
        assert_eq!((&pages, &skeletons), (&Ok(source().revision), &pages));
    }

    // One byte at a time, where the structure lives: page headers and element tables, and the
    // first and last keys of leaf pages, which skeletons keep for the order between pages.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let leaf_key = |b: &[u8], page: usize, last: bool| {
        let start = page * ps;
        let count = usize::from(u16::from_le_bytes([b[start + 10], b[start + 11]]));
        if u16::from_le_bytes([b[start + 8], b[start + 9]]) != 2 || count == 0 || count > 200 {
            return None;
        }
        let elem = start + 16 + if last { count - 1 } else { 0 } * 16;
        let key = elem + u32_at(b, elem + 4) as usize;
        let len = u32_at(b, elem + 8) as usize;
        (len > 0 && key + len <= start + ps).then_some((key, len))
    };
    let (mut refused, mut accepted) = (0, 0);
    for round in 0..1000 {
        let page = 2 + next(db.len() / ps - 2);
        let at = match (round % 4, leaf_key(&db, page, round % 4 == 3)) {
            (2 | 3, Some((key, len))) => key + next(len),
            (0, _) => page * ps + next(ps),
            _ => page * ps + next(160),
        };
        let flip = 1 + next(255) as u8;
        db[at] ^= flip;
        file.write_all_at(&db[at..=at], at as u64).unwrap();
        let chunk = [ps, 64 << 10, 4 << 20][round % 3];
        let (pages, skeletons) = check(&db, chunk, usize::MAX);
        assert_eq!(
            pages.is_ok(),
            skeletons.is_ok(),
            "byte {at} ^ {flip:#x}, chunks of {chunk}: {pages:?} / {skeletons:?}"
        );
        assert_eq!(pages.as_ref().ok(), skeletons.as_ref().ok());
        if pages.is_ok() {
            accepted += 1;
        } else {
            refused += 1;
        }
        db[at] ^= flip;
        file.write_all_at(&db[at..=at], at as u64).unwrap();
    }
    assert!(
        refused > 200 && accepted > 200,
        "{refused} refused, {accepted} accepted"
    );

    // A top-level key that is no bucket, between two buckets: the one plain key a skeleton keeps.
    let meta = [0, ps]
        .map(|at| Meta::parse(0, &db[at..]).unwrap())
        .into_iter()
        .max_by_key(|m| m.txid)
        .unwrap();
    let root = meta.root as usize * ps;
    let count = usize::from(u16::from_le_bytes([db[root + 10], db[root + 11]]));
    assert!(count >= 3, "{count} top-level buckets");
    let flags = root + 16 + count / 2 * 16;
    db[flags] = 0;
    file.write_all_at(&db[flags..=flags], flags as u64).unwrap();
    for chunk in [ps, db.len()] {
        let (pages, skeletons) = check(&db, chunk, usize::MAX);
        for verdict in [pages, skeletons] {
            assert!(
                verdict
                    .as_ref()
                    .is_err_and(|e| e.contains("is not a bucket")),
                "{verdict:?}"
            );
        }
    }
    db[flags] = 1;
    file.write_all_at(&db[flags..=flags], flags as u64).unwrap();

    // Skeletons stand in for the pages: with every page but the metas wiped after the recording,
    // the check still passes.
    let mut skeletons = Skeletons::new(usize::MAX);
    skeletons.record(0, &db);
    let wiped = vec![0u8; db.len() - 2 * ps];
    file.write_all_at(&wiped, 2 * ps as u64).unwrap();
    let wiped_db = Db::open(&file, db.len() as u64).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(checked_revision(&wiped_db, None).is_err());
    assert_eq!(
        checked_revision(&wiped_db, Some(&skeletons)).map_err(|e| format!("{e:?}")),
        Ok(source().revision)
    );
}

/// A db as bbolt writes it without NoFreelistSync (etcd on other systems): a freelist page listing
/// every unused page. Made from the source by appending that page and pointing both metas at it.
#[test]
fn restores_a_db_with_a_freelist_page() {
    let tmp = TempDir::new().unwrap();
    let path = damaged(tmp.path(), "freelist.db", |b| {
        let probe = tmp.path().join("probe.db");
        fs::write(&probe, &b[..]).unwrap();
        let file = fs::File::open(&probe).unwrap();
        let db = Db::open(&file, b.len() as u64).unwrap_or_else(|e| panic!("{e:?}"));
        let used = db
            .walk(None, &mut |_| Ok(()))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let (ps, hwm) = (db.page_size, db.meta.hwm);
        let free: Vec<u64> = (2..hwm).filter(|id| !used.contains(*id)).collect();
        assert!(
            !free.is_empty() && free.len() < 0xffff,
            "{} free pages",
            free.len()
        );
        let mut page = vec![0u8; ps];
        page[0..8].copy_from_slice(&hwm.to_le_bytes());
        page[8..10].copy_from_slice(&0x10u16.to_le_bytes());
        page[10..12].copy_from_slice(&(free.len() as u16).to_le_bytes());
        for (i, id) in free.iter().enumerate() {
            page[16 + 8 * i..24 + 8 * i].copy_from_slice(&id.to_le_bytes());
        }
        b.truncate(hwm as usize * ps);
        b.extend_from_slice(&page);
        let meta = Meta {
            freelist: hwm,
            hwm: hwm + 1,
            ..db.meta
        };
        for m in [
            meta,
            Meta {
                txid: meta.txid - 1,
                ..meta
            },
        ] {
            let at = (m.txid % 2) as usize * ps;
            b[at..at + ps].copy_from_slice(&m.page_bytes());
        }
    });
    // bbolt itself accepts the crafted file, freelist and all.
    assert_eq!(
        etcdutl_status(&path)["revision"].as_i64(),
        Some(source().revision)
    );
    let data = tmp.path().join("data");
    etcd::restore_from_file(&path, &data, &RestoreOptions::default()).unwrap();
    with_trailer(
        &data.join("member/snap/db"),
        &tmp.path().join("restored.db"),
    );
    assert_eq!(
        etcdutl_status(&tmp.path().join("restored.db"))["revision"].as_i64(),
        Some(source().revision)
    );
}

/// Bumping again and again fills the rightmost leaf of `key` until the patch must give it a sibling.
#[test]
fn repeated_bumps_split_the_rightmost_leaf() {
    let tmp = TempDir::new().unwrap();
    let mut from = source().path.clone();
    let mut opts = RestoreOptions {
        bump_revision: Some(7),
        ..RestoreOptions::default()
    };
    let rounds = 200;
    let mut previous: Option<std::path::PathBuf> = None;
    for i in 0..rounds {
        let data = tmp.path().join(format!("r{i}"));
        etcd::restore_from_file(&from, &data, &opts).unwrap();
        opts.skip_hash_check = true;
        from = data.join("member/snap/db");
        // Each data dir holds a preallocated 64 MiB WAL: keep only the one being read.
        if let Some(done) = previous.replace(data) {
            std::fs::remove_dir_all(done).unwrap();
        }
    }
    with_trailer(&from, &tmp.path().join("last.db"));
    let status = etcdutl_status(&tmp.path().join("last.db"));
    assert_eq!(
        status["revision"].as_i64(),
        Some(source().revision + 7 * rounds)
    );
    let keys = dump(&from)
        .into_iter()
        .filter(|(b, _, _)| b == b"key")
        .count();
    assert_eq!(
        keys,
        dump(&source().path)
            .into_iter()
            .filter(|(b, _, _)| b == b"key")
            .count()
            + rounds as usize
    );
}

fn cpr(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cpr"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_prints_what_etcdutl_prints_and_checks_flags() {
    let src = source().path.to_str().unwrap();
    for format in ["simple", "json"] {
        let theirs = v35()
            .util()
            .args(["snapshot", "status", src, "-w", format])
            .output()
            .unwrap();
        assert_eq!(
            check(
                cpr(&["etcd", "snapshot", "status", src, "-w", format]),
                "cpr status"
            ),
            check(theirs, "etcdutl")
        );
    }
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    for lone in [&["--bump-revision", "5"][..], &["--mark-compacted"]] {
        let out = cpr(&[
            &["etcd", "snapshot", "restore", src, "--data-dir", d][..],
            lone,
        ]
        .concat());
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--bump-revision and --mark-compacted")
        );
        assert!(!data.exists());
    }
    check(
        cpr(&[
            "etcd",
            "snapshot",
            "restore",
            src,
            "--data-dir",
            d,
            "--bump-revision",
            "5",
            "--mark-compacted",
        ]),
        "cpr restore",
    );
    let status = etcd::snapshot_status(&data.join("member/snap/db")).unwrap();
    assert_eq!(status.revision, source().revision + 5);
}
