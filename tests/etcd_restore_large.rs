//! A 2 GiB etcd snapshot of Kubernetes-like small objects (0.5–4 KiB values, about 700,000
//! revisions, rewrites, deletes and a compaction), restored by `cpr etcd snapshot restore
//! --bump-revision` and served by a real etcd 3.5.1 at the bumped revision with every key.
//!
//! Filling a real etcd with 2 GiB takes many minutes (etcd's gateway and etcdctl manage ~5-20 MB/s
//! here), so the snapshot is written directly in bbolt's file format, as etcd 3.5 lays out its
//! buckets and values (server/mvcc/kvstore.go, revision.go, mvccpb.KeyValue; bbolt's page.go for
//! pages): a few seconds. The real etcd that serves the restored db checks the result.
//!
//! A db this size of small objects needs more page skeletons than the restore's 16 MiB budget
//! holds; the pages past it are read back by the consistency check. The restore's time is printed.

mod common;

use common::etcd_cluster::{check, v35, Server, Spec};
use cpr::etcd::bbolt::Meta;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

const PAGE: usize = 4096;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_FREELIST: u16 = 0x10;
const BUCKET: u32 = 0x01;
const DB_BYTES: u64 = 2 << 30;
const BUMP: u64 = 1_000_000_000;
const DELETED: usize = 1000;

/// Pages appended to the db file.
struct Pages {
    out: BufWriter<File>,
    next: u64,
}

impl Pages {
    /// Writes one page (and its overflow pages) with `count` elements; returns its id.
    fn write(&mut self, flags: u16, count: usize, body: &[u8]) -> u64 {
        let id = self.next;
        let pages = (16 + body.len()).div_ceil(PAGE);
        let mut bytes = Vec::with_capacity(pages * PAGE);
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&u16::try_from(count).unwrap().to_le_bytes());
        bytes.extend_from_slice(&(pages as u32 - 1).to_le_bytes());
        bytes.extend_from_slice(body);
        bytes.resize(pages * PAGE, 0);
        self.put(&bytes);
        self.next += pages as u64;
        id
    }

    fn put(&mut self, bytes: &[u8]) {
        self.out.write_all(bytes).unwrap();
    }
}

/// Element headers then keys and values: bbolt's leafPageElement (flags, pos, ksize, vsize) or
/// branchPageElement (pos, ksize, pgid), `pos` counted from the element's own header.
fn page_body(elems: &[(&[u8], &[u8], [u32; 2])], leaf: bool) -> Vec<u8> {
    let mut headers = Vec::new();
    let mut data = Vec::new();
    for (i, (key, value, extra)) in elems.iter().enumerate() {
        let pos = (16 * (elems.len() - i) + data.len()) as u32;
        let words: [u32; 4] = if leaf {
            [extra[0], pos, key.len() as u32, value.len() as u32]
        } else {
            [pos, key.len() as u32, extra[0], extra[1]]
        };
        words
            .iter()
            .for_each(|w| headers.extend_from_slice(&w.to_le_bytes()));
        data.extend_from_slice(key);
        data.extend_from_slice(value);
    }
    headers.extend_from_slice(&data);
    headers
}

/// One bucket's B+tree, built bottom-up from keys added in order.
#[derive(Default)]
struct Tree {
    pending: Vec<(Vec<u8>, Vec<u8>, u32)>,
    size: usize,
    /// First key and page id of every page of the level being built.
    level: Vec<(Vec<u8>, u64)>,
}

impl Tree {
    fn add(&mut self, pages: &mut Pages, key: Vec<u8>, value: Vec<u8>, flags: u32) {
        let grows = 16 + key.len() + value.len();
        if !self.pending.is_empty() && 16 + self.size + grows > PAGE {
            self.flush(pages);
        }
        self.size += grows;
        self.pending.push((key, value, flags));
    }

    fn flush(&mut self, pages: &mut Pages) {
        let elems: Vec<(&[u8], &[u8], [u32; 2])> = self
            .pending
            .iter()
            .map(|(k, v, f)| (&k[..], &v[..], [*f, 0]))
            .collect();
        let id = pages.write(FLAG_LEAF, elems.len(), &page_body(&elems, true));
        let first = self
            .pending
            .first()
            .map(|e| e.0.clone())
            .unwrap_or_default();
        self.level.push((first, id));
        self.pending.clear();
        self.size = 0;
    }

    /// Writes what is pending and the branch levels; returns the root page id.
    fn finish(mut self, pages: &mut Pages) -> u64 {
        if !self.pending.is_empty() || self.level.is_empty() {
            self.flush(pages);
        }
        let mut level = self.level;
        while level.len() > 1 {
            let mut upper = Vec::new();
            let mut group: Vec<&(Vec<u8>, u64)> = Vec::new();
            let mut size = 16;
            let mut close = |group: &mut Vec<&(Vec<u8>, u64)>, upper: &mut Vec<(Vec<u8>, u64)>| {
                let elems: Vec<(&[u8], &[u8], [u32; 2])> = group
                    .iter()
                    .map(|(k, id)| (&k[..], &[][..], [*id as u32, (*id >> 32) as u32]))
                    .collect();
                let id = pages.write(FLAG_BRANCH, elems.len(), &page_body(&elems, false));
                upper.push((group[0].0.clone(), id));
                group.clear();
            };
            for child in &level {
                if !group.is_empty() && size + 16 + child.0.len() > PAGE {
                    close(&mut group, &mut upper);
                    size = 16;
                }
                size += 16 + child.0.len();
                group.push(child);
            }
            close(&mut group, &mut upper);
            level = upper;
        }
        level[0].1
    }
}

/// etcd's revision key: main and sub revision, big-endian, joined by '_' (mvcc/revision.go).
fn revision(main: i64) -> Vec<u8> {
    let mut key = main.to_be_bytes().to_vec();
    key.push(b'_');
    key.extend_from_slice(&0i64.to_be_bytes());
    key
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// mvccpb.KeyValue: key, create_revision, mod_revision, version, value (zero fields omitted, as
/// protobuf does; a tombstone holds the key alone, as mvcc's delete writes it).
fn key_value(key: &[u8], create: i64, modified: i64, version: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + value.len() + 32);
    out.push(0x0a);
    varint(&mut out, key.len() as u64);
    out.extend_from_slice(key);
    for (tag, n) in [(0x10, create), (0x18, modified), (0x20, version)] {
        if n != 0 {
            out.push(tag);
            varint(&mut out, n as u64);
        }
    }
    if !value.is_empty() {
        out.push(0x2a);
        varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
    }
    out
}

/// What the generated snapshot holds, to check the served data against.
struct Made {
    revision: i64,
    keys: usize,
    /// A few keys and their latest values.
    samples: Vec<(String, Vec<u8>)>,
}

fn object_key(i: usize) -> String {
    format!("/registry/pods/ns-{:03}/pod-{i:07}", i % 500)
}

/// Writes a snapshot of a little over `DB_BYTES`: objects of 0.5–4 KiB written once, the first
/// quarter rewritten, the last `DELETED` deleted; compacted at half the first writes' revisions,
/// which frees nothing (every object's first revision is its latest up to there).
fn make_snapshot(path: &Path) -> Made {
    let mut pages = Pages {
        out: BufWriter::with_capacity(4 << 20, File::create(path).unwrap()),
        next: 0,
    };
    // Meta pages are written last, at the start of the file.
    pages.put(&[0u8; 2 * PAGE]);
    pages.next = 2;
    let freelist = pages.write(FLAG_FREELIST, 0, &[]);

    // Value bytes: slices of a pseudo-random pool, so pages differ and compress like real objects.
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pool: Vec<u8> = (0..(8 << 20)).map(|_| (random() % 94 + 33) as u8).collect();
    let value = |rev: i64, random: &mut dyn FnMut() -> u64| {
        let len = 512 + (random() % 3585) as usize;
        let at = (random() as usize) % (pool.len() - len);
        let mut v = format!("{{\"rev\":{rev},\"spec\":\"").into_bytes();
        v.extend_from_slice(&pool[at..at + len]);
        v
    };

    let mut keys = Tree::default();
    let mut rev = 1i64;
    let mut first_writes = 0usize;
    let mut samples = Vec::new();
    let first_bytes = DB_BYTES * 17 / 20;
    while pages.next * (PAGE as u64) < first_bytes {
        rev += 1;
        let key = object_key(first_writes);
        let v = value(rev, &mut random);
        let kv = key_value(key.as_bytes(), rev, rev, 1, &v);
        keys.add(&mut pages, revision(rev), kv, 0);
        if first_writes % 100_003 == 7 {
            samples.push((key, v));
        }
        first_writes += 1;
    }
    let compacted = rev / 2;
    for i in 0..first_writes / 4 {
        rev += 1;
        let key = object_key(i);
        let v = value(rev, &mut random);
        // Object i was created at revision i + 2 (revision 1 is the empty store's).
        let kv = key_value(key.as_bytes(), i as i64 + 2, rev, 2, &v);
        keys.add(&mut pages, revision(rev), kv, 0);
        if let Some(sample) = samples.iter_mut().find(|(k, _)| *k == key) {
            sample.1 = v;
        }
    }
    for i in (first_writes - DELETED)..first_writes {
        rev += 1;
        let mut tombstone = revision(rev);
        tombstone.push(b't');
        keys.add(
            &mut pages,
            tombstone,
            key_value(object_key(i).as_bytes(), 0, 0, 0, &[]),
            0,
        );
    }
    let key_root = keys.finish(&mut pages);

    let mut meta = Tree::default();
    for (k, v) in [
        ("consistent_index", (rev as u64).to_be_bytes().to_vec()),
        ("finishedCompactRev", revision(compacted)),
        ("scheduledCompactRev", revision(compacted)),
        ("term", 2u64.to_be_bytes().to_vec()),
    ] {
        meta.add(&mut pages, k.as_bytes().to_vec(), v, 0);
    }
    let meta_root = meta.finish(&mut pages);
    let mut cluster = Tree::default();
    cluster.add(&mut pages, b"clusterVersion".to_vec(), b"3.5.0".to_vec(), 0);
    let cluster_root = cluster.finish(&mut pages);

    let mut root = Tree::default();
    for name in [
        "alarm",
        "auth",
        "authRoles",
        "authUsers",
        "cluster",
        "key",
        "lease",
        "members",
        "members_removed",
        "meta",
    ] {
        let id = match name {
            "key" => key_root,
            "meta" => meta_root,
            "cluster" => cluster_root,
            _ => Tree::default().finish(&mut pages),
        };
        let mut header = id.to_le_bytes().to_vec();
        header.extend_from_slice(&0u64.to_le_bytes());
        root.add(&mut pages, name.as_bytes().to_vec(), header, BUCKET);
    }
    let root_page = root.finish(&mut pages);
    let mut out = pages.out.into_inner().unwrap();
    for txid in [2, 3] {
        let meta = Meta {
            page_size: PAGE as u32,
            flags: 0,
            root: root_page,
            root_sequence: 0,
            freelist,
            hwm: pages.next,
            txid,
        };
        std::os::unix::fs::FileExt::write_all_at(
            &out,
            &meta.page_bytes(),
            (txid % 2) * PAGE as u64,
        )
        .unwrap();
    }
    // etcd's trailer: sha256 of the whole db, meta pages included (read back from the page cache).
    // ring's assembly: the sha2 crate unoptimised (a test build) would take minutes here.
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut file = File::open(path).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    out.write_all(sha.finish().as_ref()).unwrap();
    out.sync_all().unwrap();
    Made {
        revision: rev,
        keys: first_writes - DELETED,
        samples,
    }
}

#[test]
fn a_2_gib_snapshot_of_small_objects_is_restored_and_served_by_etcd_35() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let snapshot = tmp.path().join("snapshot.db");
    let started = Instant::now();
    let made = make_snapshot(&snapshot);
    let size = std::fs::metadata(&snapshot).unwrap().len();
    eprintln!(
        "snapshot: {size} bytes, revision {}, {} keys, written in {:.1} s",
        made.revision,
        made.keys,
        started.elapsed().as_secs_f64()
    );
    assert!(size >= DB_BYTES, "{size}");

    let tools = v35();
    let data = tmp.path().join("data");
    let spec = Spec::single(&tools, &data);
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cpr"))
        .args(["etcd", "snapshot", "restore"])
        .arg(&snapshot)
        .arg("--data-dir")
        .arg(&data)
        .args(["--initial-cluster", &spec.initial_cluster])
        .args(["--initial-advertise-peer-urls", &spec.peer])
        .args(["--bump-revision", &BUMP.to_string(), "--mark-compacted"])
        .output()
        .unwrap();
    check(out, "cpr etcd snapshot restore");
    eprintln!(
        "cpr etcd snapshot restore: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&snapshot).unwrap();

    let status = tools
        .util()
        .args(["snapshot", "status", "-w", "json"])
        .arg(data.join("member/snap/db"))
        .output()
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&check(status, "etcdutl snapshot status")).unwrap();
    assert_eq!(status["revision"], made.revision + BUMP as i64, "{status}");

    let mut server = Server::start(&spec);
    server.wait_healthy();
    assert_eq!(
        server.revision_and_count(),
        (made.revision + BUMP as i64, made.keys as i64)
    );
    for (key, value) in &made.samples {
        let got = server.ctl_ok(&["get", key, "--print-value-only"]);
        assert_eq!(got.trim_end().as_bytes(), &value[..], "{key}");
    }
    let deleted = object_key(made.keys + DELETED - 1);
    let got = server.ctl_ok(&["get", &deleted, "--count-only", "-w", "fields"]);
    assert!(got.contains("\"Count\" : 0"), "{deleted}: {got}");
}
