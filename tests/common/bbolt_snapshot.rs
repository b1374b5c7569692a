//! An etcd 3.5 snapshot written directly in bbolt's file format, as etcd lays out its buckets and
//! values (server/mvcc/kvstore.go, revision.go, mvccpb.KeyValue; bbolt's page.go for pages), at
//! disk speed: filling a real etcd with GiBs takes many minutes (etcd's gateway and etcdctl manage
//! ~5-20 MB/s). Used by tests/etcd_restore_large.rs and, through examples/bbolt-snapshot.rs, by the
//! benchmarks (scripts/lib/bench-node.sh), which put it under a real etcd before measuring.
//!
//! Leaf pages are filled to the page size: etcd's sequential puts fill them to 90 %
//! (FillPercent 0.9 in backend/batch_tx.go), and a db that etcd compacted also carries free
//! pages; so this db has about 10 % fewer pages than an etcd-filled one of the same data.

use cpr::etcd::bbolt::Meta;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

const PAGE: usize = 4096;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_FREELIST: u16 = 0x10;
const BUCKET: u32 = 0x01;
/// Keys deleted (tombstones) in the small-object shape.
pub const DELETED: usize = 1000;

/// What the db holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// 10 KiB values, each key written once.
    Large,
    /// Kubernetes-like objects of 0.5-4 KiB: every object written once, the first quarter
    /// rewritten, the last `DELETED` deleted; compacted at half the first writes' revisions,
    /// which frees nothing (every object's first revision is its latest up to there).
    Small,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "large" => Ok(Shape::Large),
            "small" => Ok(Shape::Small),
            _ => Err(format!("shape {s:?}: expected large or small")),
        }
    }
}

/// What the written snapshot holds, to check the served data against.
pub struct Made {
    pub revision: i64,
    /// Live keys at `revision`.
    pub keys: usize,
    /// A few keys and their latest values.
    pub samples: Vec<(String, Vec<u8>)>,
    /// A key whose latest revision is a tombstone (the small-object shape only).
    pub deleted: Option<String>,
}

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

/// Object `i`'s namespace and name.
fn object(i: usize) -> (String, String) {
    (format!("ns-{:03}", i % 500), format!("pod-{i:07}"))
}

pub fn object_key(i: usize) -> String {
    let (namespace, name) = object(i);
    format!("/registry/pods/{namespace}/{name}")
}

/// Object values: a Pod's JSON (kind, apiVersion, metadata) whose spec is half random hex and half
/// one repeated byte, so they compress about 4:1 as the etcd-filled benches' values did and no two
/// are alike.
struct Values {
    state: u64,
    /// Random hex, sliced at random offsets; larger than any zstd window cpr writes with, so the
    /// slices do not repeat within one.
    pool: Vec<u8>,
    shape: Shape,
}

impl Values {
    fn new(shape: Shape) -> Values {
        let mut values = Values {
            state: 0x9e37_79b9_7f4a_7c15,
            pool: Vec::new(),
            shape,
        };
        values.pool = (0..(16 << 20))
            .map(|_| b"0123456789abcdef"[(values.random() % 16) as usize])
            .collect();
        values
    }

    fn random(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// Object `i`'s value as written at revision `rev`.
    fn next(&mut self, i: usize, rev: i64) -> Vec<u8> {
        let len = match self.shape {
            Shape::Large => 10 << 10,
            Shape::Small => 512 + (self.random() % 3585) as usize,
        };
        let random = len / 2;
        let at = (self.random() as usize) % (self.pool.len() - random);
        let (namespace, name) = object(i);
        let mut v = format!(
            "{{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"{name}\",\
             \"namespace\":\"{namespace}\",\"resourceVersion\":\"{rev}\"}},\"spec\":\""
        )
        .into_bytes();
        v.extend_from_slice(&self.pool[at..at + random]);
        v.resize(len, b'a');
        v.extend_from_slice(b"\"}");
        v
    }
}

/// Writes a snapshot of a little over `bytes` bytes of the given shape, with etcd's SHA-256
/// trailer, and fsyncs it.
pub fn write_snapshot(path: &Path, bytes: u64, shape: Shape) -> Made {
    let mut pages = Pages {
        out: BufWriter::with_capacity(4 << 20, File::create(path).unwrap()),
        next: 0,
    };
    // Meta pages are written last, at the start of the file.
    pages.put(&[0u8; 2 * PAGE]);
    pages.next = 2;
    let freelist = pages.write(FLAG_FREELIST, 0, &[]);

    let mut values = Values::new(shape);
    let mut keys = Tree::default();
    let mut rev = 1i64;
    let mut first_writes = 0usize;
    let mut samples = Vec::new();
    let first_bytes = match shape {
        Shape::Large => bytes,
        Shape::Small => bytes * 17 / 20,
    };
    while pages.next * (PAGE as u64) < first_bytes {
        rev += 1;
        let key = object_key(first_writes);
        let v = values.next(first_writes, rev);
        let kv = key_value(key.as_bytes(), rev, rev, 1, &v);
        keys.add(&mut pages, revision(rev), kv, 0);
        if first_writes % 100_003 == 7 {
            samples.push((key, v));
        }
        first_writes += 1;
    }
    let compacted = rev / 2;
    let mut deleted = None;
    if shape == Shape::Small {
        for i in 0..first_writes / 4 {
            rev += 1;
            let key = object_key(i);
            let v = values.next(i, rev);
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
            let key = object_key(i);
            keys.add(
                &mut pages,
                tombstone,
                key_value(key.as_bytes(), 0, 0, 0, &[]),
                0,
            );
            deleted = Some(key);
        }
        samples.retain(|(k, _)| Some(k) != deleted.as_ref());
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
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    out.write_all(sha.finish().as_ref()).unwrap();
    out.sync_all().unwrap();
    Made {
        revision: rev,
        keys: first_writes - if shape == Shape::Small { DELETED } else { 0 },
        samples,
        deleted,
    }
}
