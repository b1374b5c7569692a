//! A reader for bbolt files (etcd-io/bbolt v1.3.x format) that treats its input as hostile.
//!
//! A snapshot may come from a damaged disk, a truncated upload or a tampered bundle, so every
//! page id, offset and length read from the file is checked before use, and every error names the
//! page it was found on. Pages are read with positioned reads, never mapped, so a 1 GiB db costs
//! a page-sized buffer per tree level, plus one bit per page for cycle detection.

use super::skeleton::Skeletons;
use std::fs::File;
use std::os::unix::fs::FileExt;

pub const PAGE_HEADER_SIZE: usize = 16;
pub const ELEMENT_SIZE: usize = 16;
pub const BUCKET_HEADER_SIZE: usize = 16;

pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
/// Leaf element flag: the value is a nested bucket header.
pub const FLAG_BUCKET: u32 = 0x01;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const META_SIZE: usize = 64;
/// The bytes `Meta::parse` reads: a page header and the meta struct.
pub const META_PAGE_PREFIX: usize = PAGE_HEADER_SIZE + META_SIZE;
/// The checksum covers the meta fields before it.
const META_CHECKSUM_OFFSET: usize = 56;
/// Meta value of `freelist` when the freelist is not persisted (etcd's NoFreelistSync).
pub const NO_FREELIST: u64 = u64::MAX;
/// Deeper trees do not occur with real page sizes; a hostile file could chain pages to exhaust the stack.
const MAX_DEPTH: usize = 64;

/// What is wrong with a db file, and where. Wrapped by the caller, who knows the file's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The page the problem was found on; `None` when it concerns the file as a whole.
    pub page: Option<u64>,
    pub problem: String,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.page {
            Some(id) => write!(f, "page {id}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

pub(crate) fn corrupt(page: Option<u64>, problem: impl Into<String>) -> Corruption {
    Corruption {
        page,
        problem: problem.into(),
    }
}

/// Errors while reading a db: either the bytes are wrong or the file could not be read, or, for a
/// db that streamed past, what it left in the scratch dir (skeletons, records) does not read back.
#[derive(Debug)]
pub enum ReadError {
    Corrupt(Corruption),
    Io(std::io::Error),
    Scratch(std::io::Error),
}

impl From<Corruption> for ReadError {
    fn from(c: Corruption) -> Self {
        ReadError::Corrupt(c)
    }
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

pub fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4-byte slice"))
}

pub fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8-byte slice"))
}

/// FNV-1a, 64 bit: bbolt's meta checksum.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The meta struct of a bbolt file (stored at byte 16 of pages 0 and 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// High-water mark: the number of pages in the db.
    pub hwm: u64,
    pub txid: u64,
}

impl Meta {
    pub fn parse(page_id: u64, b: &[u8]) -> Result<Meta, Corruption> {
        let m = &b[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE];
        if le_u32(m, 0) != MAGIC {
            return Err(corrupt(
                Some(page_id),
                "meta page has no bbolt magic number (not a bbolt db)",
            ));
        }
        if le_u32(m, 4) != VERSION {
            return Err(corrupt(
                Some(page_id),
                format!("unsupported bbolt version {}", le_u32(m, 4)),
            ));
        }
        let sum = le_u64(m, META_CHECKSUM_OFFSET);
        if fnv1a64(&m[..META_CHECKSUM_OFFSET]) != sum {
            return Err(corrupt(Some(page_id), "meta checksum mismatch"));
        }
        Ok(Meta {
            page_size: le_u32(m, 8),
            flags: le_u32(m, 12),
            root: le_u64(m, 16),
            root_sequence: le_u64(m, 24),
            freelist: le_u64(m, 32),
            hwm: le_u64(m, 40),
            txid: le_u64(m, 48),
        })
    }

    /// A complete meta page (header and meta struct, rest zero) for page `txid % 2`.
    pub fn page_bytes(&self) -> Vec<u8> {
        let mut p = vec![0u8; self.page_size as usize];
        let id = self.txid % 2;
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
        let m = &mut p[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        m[12..16].copy_from_slice(&self.flags.to_le_bytes());
        for (i, v) in [
            self.root,
            self.root_sequence,
            self.freelist,
            self.hwm,
            self.txid,
        ]
        .into_iter()
        .enumerate()
        {
            m[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let sum = fnv1a64(&m[..META_CHECKSUM_OFFSET]);
        m[META_CHECKSUM_OFFSET..META_SIZE].copy_from_slice(&sum.to_le_bytes());
        p
    }
}

/// One page (with its overflow pages) or an inline bucket's page image, already bounds-checked
/// for its header; element accessors check each element against the page end.
pub struct Page<'a> {
    /// The page id for error messages (for an inline page: the page holding its bucket).
    pub id: u64,
    pub flags: u16,
    pub count: usize,
    pub bytes: &'a [u8],
}

/// A leaf element: key, value, and whether the value is a nested bucket.
pub struct LeafElem<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> Page<'a> {
    pub fn parse(id: u64, bytes: &'a [u8]) -> Result<Page<'a>, Corruption> {
        if bytes.len() < PAGE_HEADER_SIZE {
            return Err(corrupt(Some(id), "page shorter than its header"));
        }
        let flags = le_u16(bytes, 8);
        let count = usize::from(le_u16(bytes, 10));
        if flags != FLAG_BRANCH && flags != FLAG_LEAF {
            return Err(corrupt(
                Some(id),
                format!("expected a branch or leaf page, found flags {flags:#x}"),
            ));
        }
        if PAGE_HEADER_SIZE + count * ELEMENT_SIZE > bytes.len() {
            return Err(corrupt(
                Some(id),
                format!("{count} elements do not fit in the page"),
            ));
        }
        if flags == FLAG_BRANCH && count == 0 {
            return Err(corrupt(Some(id), "branch page without elements"));
        }
        Ok(Page {
            id,
            flags,
            count,
            bytes,
        })
    }

    pub fn is_leaf(&self) -> bool {
        self.flags == FLAG_LEAF
    }

    /// The `len` bytes at `pos` after element `i`'s own start, or an error naming the page.
    fn slice_at(&self, i: usize, pos: u32, len: u64) -> Result<&'a [u8], Corruption> {
        let start = (PAGE_HEADER_SIZE + i * ELEMENT_SIZE) as u64 + u64::from(pos);
        let end = start + len;
        if end > self.bytes.len() as u64 {
            return Err(corrupt(
                Some(self.id),
                format!("element {i} lies outside its page"),
            ));
        }
        Ok(&self.bytes[start as usize..end as usize])
    }

    pub fn leaf(&self, i: usize) -> Result<LeafElem<'a>, Corruption> {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let b = self.bytes;
        let (flags, pos, ksize, vsize) = (
            le_u32(b, e),
            le_u32(b, e + 4),
            le_u32(b, e + 8),
            le_u32(b, e + 12),
        );
        if flags & !FLAG_BUCKET != 0 {
            return Err(corrupt(
                Some(self.id),
                format!("element {i} has unknown flags {flags:#x}"),
            ));
        }
        let kv = self.slice_at(i, pos, u64::from(ksize) + u64::from(vsize))?;
        let (key, value) = kv.split_at(ksize as usize);
        Ok(LeafElem { flags, key, value })
    }

    /// Branch element `i`: the first key of the child and the child's page id.
    pub fn branch(&self, i: usize) -> Result<(&'a [u8], u64), Corruption> {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let b = self.bytes;
        let key = self.slice_at(i, le_u32(b, e), u64::from(le_u32(b, e + 4)))?;
        Ok((key, le_u64(b, e + 8)))
    }
}

/// Where a bucket's content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketRoot<'a> {
    Page(u64),
    /// An inline bucket: the leaf page image stored in the parent's value.
    Inline(&'a [u8]),
}

/// Parses a bucket value (header, and for inline buckets the page image after it).
pub fn bucket_root(holder: u64, value: &[u8]) -> Result<(BucketRoot<'_>, u64), Corruption> {
    if value.len() < BUCKET_HEADER_SIZE {
        return Err(corrupt(
            Some(holder),
            "bucket value shorter than a bucket header",
        ));
    }
    let (root, sequence) = (le_u64(value, 0), le_u64(value, 8));
    if root == 0 {
        Ok((BucketRoot::Inline(&value[BUCKET_HEADER_SIZE..]), sequence))
    } else {
        Ok((BucketRoot::Page(root), sequence))
    }
}

/// One key of a bucket, as met by [`Db::walk`].
pub struct Visit<'a> {
    /// 0 for the names of top-level buckets, 1 for their keys, and so on.
    pub depth: usize,
    pub key: &'a [u8],
    /// For a nested bucket, its raw bucket value; its content follows at `depth + 1`.
    pub value: &'a [u8],
    pub bucket: bool,
    /// The page holding the key (for an inline bucket's key: the page holding its bucket).
    pub page: u64,
}

/// An open bbolt file: the chosen meta and positioned page reads.
pub struct Db<'f> {
    pages: Pages<'f>,
    pub meta: Meta,
    pub page_size: usize,
}

/// Where a page without a skeleton comes from.
enum Pages<'f> {
    File(&'f File),
    /// A db that streamed past (`etcd::stream`): only skeletons are left; for a page without one,
    /// what was wrong with it as it passed.
    Gone(&'f dyn Fn(u64) -> Corruption),
}

/// Page sizes bbolt can have been written with (the OS page size of the writer).
pub(crate) const PAGE_SIZES: [usize; 5] = [4096, 8192, 16384, 32768, 65536];

impl<'f> Db<'f> {
    /// Reads both meta pages and picks bbolt's choice: the valid one with the higher txid.
    /// `len` is the length of the db within the file (a snapshot's trailer excluded).
    pub fn open(file: &'f File, len: u64) -> Result<Db<'f>, ReadError> {
        let meta = pick_meta(len, &mut |buf, at| file.read_exact_at(buf, at))?;
        Ok(Db {
            pages: Pages::File(file),
            page_size: meta.page_size as usize,
            meta,
        })
    }

    /// A db of which only `skeletons` are left, for a walk that must not read a page: `meta` from
    /// [`pick_meta`], `missing` says why a page has no skeleton.
    pub fn streamed(meta: Meta, missing: &'f dyn Fn(u64) -> Corruption) -> Db<'f> {
        Db {
            pages: Pages::Gone(missing),
            page_size: meta.page_size as usize,
            meta,
        }
    }

    /// Reads page `id` with its overflow pages into `buf` and checks its header; returns the pages
    /// it spans.
    pub fn read_page(&self, id: u64, buf: &mut Vec<u8>) -> Result<u64, ReadError> {
        self.check_id(id)?;
        let file = match self.pages {
            Pages::File(file) => file,
            Pages::Gone(missing) => return Err(missing(id).into()),
        };
        buf.resize(self.page_size, 0);
        file.read_exact_at(buf, id * self.page_size as u64)?;
        let pages = self.check_header(id, buf)?;
        if pages > 1 {
            buf.resize(pages as usize * self.page_size, 0);
            file.read_exact_at(&mut buf[self.page_size..], (id + 1) * self.page_size as u64)?;
        }
        Ok(pages)
    }

    fn check_id(&self, id: u64) -> Result<(), Corruption> {
        if id < 2 || id >= self.meta.hwm {
            return Err(corrupt(
                Some(id),
                format!("page id out of range (db has {} pages)", self.meta.hwm),
            ));
        }
        Ok(())
    }

    /// Checks the header of page `id` (or of its skeleton); returns the pages it spans.
    fn check_header(&self, id: u64, header: &[u8]) -> Result<u64, Corruption> {
        if le_u64(header, 0) != id {
            return Err(corrupt(
                Some(id),
                format!("page header carries id {}", le_u64(header, 0)),
            ));
        }
        let overflow = u64::from(le_u32(header, 12));
        if id + overflow >= self.meta.hwm {
            return Err(corrupt(
                Some(id),
                format!("{overflow} overflow pages run past the end of the db"),
            ));
        }
        Ok(overflow + 1)
    }

    /// Visits every key of every bucket in order (a bucket's name, then its content), checking the
    /// whole tree: page ids in range, each page referenced once (so no cycles), keys strictly
    /// ascending within each bucket, elements inside their pages. Returns the pages in use; the
    /// others are free (what bbolt computes on open when no freelist is persisted).
    ///
    /// With `skeletons`, a page that has one is checked through it instead of being read: plain
    /// keys between a leaf page's first and last are then not visited, and plain values are empty.
    pub fn walk(
        &self,
        skeletons: Option<&Skeletons>,
        visit: &mut dyn FnMut(Visit<'_>) -> Result<(), ReadError>,
    ) -> Result<PageSet, ReadError> {
        let mut seen = vec![0u64; (self.meta.hwm as usize).div_ceil(64)];
        let mut walker = Walker {
            db: self,
            seen: &mut seen,
            visit,
            descend: true,
            skeletons: skeletons.filter(|s| s.page_size() == Some(self.page_size)),
        };
        walker.bucket(BucketRoot::Page(self.meta.root), self.meta.txid % 2, 0)?;
        Ok(PageSet(seen))
    }

    /// Copies out the entries of one bucket (nested buckets as their raw values), failing when its
    /// content exceeds `limit` bytes: only for the small buckets a restore rewrites.
    pub fn collect(
        &self,
        root: BucketRoot<'_>,
        holder: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, ReadError> {
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut seen = vec![0u64; (self.meta.hwm as usize).div_ceil(64)];
        let mut visit = |v: Visit<'_>| {
            total += v.key.len() + v.value.len();
            if total > limit {
                return Err(
                    corrupt(Some(holder), format!("bucket larger than {limit} bytes")).into(),
                );
            }
            let flags = if v.bucket { FLAG_BUCKET } else { 0 };
            out.push(Entry {
                flags,
                key: v.key.to_vec(),
                value: v.value.to_vec(),
            });
            Ok(())
        };
        let mut walker = Walker {
            db: self,
            seen: &mut seen,
            visit: &mut visit,
            descend: false,
            skeletons: None,
        };
        walker.bucket(root, holder, 0)?;
        Ok(out)
    }
}

/// Reads both meta pages through `read_at` (bytes at an offset) and picks bbolt's choice: the
/// valid one with the higher txid, checked against `len`, the length of the db within its file
/// (a snapshot's trailer excluded).
pub fn pick_meta(
    len: u64,
    read_at: &mut dyn FnMut(&mut [u8], u64) -> std::io::Result<()>,
) -> Result<Meta, ReadError> {
    let mut first = vec![0u8; PAGE_HEADER_SIZE + META_SIZE];
    if len < first.len() as u64 {
        return Err(corrupt(None, format!("{len} bytes is too short for a bbolt db")).into());
    }
    read_at(&mut first, 0)?;
    let meta0 = Meta::parse(0, &first);
    // Page 1 sits one page in; without a valid meta 0 the page size is unknown, so try each.
    let candidates: Vec<usize> = match &meta0 {
        Ok(m) => vec![m.page_size as usize],
        Err(_) => PAGE_SIZES.to_vec(),
    };
    let mut meta1 = Err(corrupt(Some(1), "meta page beyond the end of the file"));
    for ps in candidates {
        if (ps + first.len()) as u64 > len {
            continue;
        }
        let mut b = vec![0u8; first.len()];
        read_at(&mut b, ps as u64)?;
        meta1 = Meta::parse(1, &b).and_then(|m| {
            if m.page_size as usize == ps {
                Ok(m)
            } else {
                Err(corrupt(
                    Some(1),
                    "meta page size does not match its position",
                ))
            }
        });
        if meta1.is_ok() {
            break;
        }
    }
    let meta = match (meta0, meta1) {
        (Ok(a), Ok(b)) => {
            if b.txid > a.txid {
                b
            } else {
                a
            }
        }
        (Ok(m), Err(e)) | (Err(e), Ok(m)) => {
            log::warn!("bbolt {e}; using the other meta page (txid {})", m.txid);
            m
        }
        (Err(a), Err(b)) => {
            return Err(corrupt(
                Some(0),
                format!("both meta pages are invalid ({}; {b})", a.problem),
            )
            .into())
        }
    };
    let page_size = meta.page_size as usize;
    if !PAGE_SIZES.contains(&page_size) {
        return Err(corrupt(Some(0), format!("unsupported page size {page_size}")).into());
    }
    if meta.hwm < 3
        || meta
            .hwm
            .checked_mul(page_size as u64)
            .is_none_or(|end| end > len)
    {
        return Err(corrupt(
            None,
            format!(
                "meta says {} pages of {page_size} bytes but the db has {len} bytes (truncated?)",
                meta.hwm
            ),
        )
        .into());
    }
    if meta.root < 2 || meta.root >= meta.hwm {
        return Err(corrupt(
            Some(meta.txid % 2),
            format!("root page {} out of range", meta.root),
        )
        .into());
    }
    Ok(meta)
}

/// A set of page ids, one bit each.
pub struct PageSet(Vec<u64>);

impl PageSet {
    pub fn contains(&self, id: u64) -> bool {
        self.0
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// An owned leaf entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub flags: u32,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

struct Walker<'a, 'f> {
    db: &'a Db<'f>,
    seen: &'a mut [u64],
    visit: &'a mut dyn FnMut(Visit<'_>) -> Result<(), ReadError>,
    /// Whether to enter nested buckets (a full check) or stay in the first one.
    descend: bool,
    skeletons: Option<&'a Skeletons>,
}

impl Walker<'_, '_> {
    fn mark(&mut self, id: u64, pages: u64) -> Result<(), Corruption> {
        for p in id..id + pages {
            let (word, bit) = ((p / 64) as usize, p % 64);
            if self.seen[word] & (1 << bit) != 0 {
                return Err(corrupt(
                    Some(p),
                    "page referenced twice (cycle or shared page)",
                ));
            }
            self.seen[word] |= 1 << bit;
        }
        Ok(())
    }

    fn bucket(&mut self, root: BucketRoot<'_>, holder: u64, depth: usize) -> Result<(), ReadError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(
                Some(holder),
                format!("buckets nested deeper than {MAX_DEPTH} levels"),
            )
            .into());
        }
        let mut last: Option<Vec<u8>> = None;
        self.node(root, holder, depth, 0, &mut last)
    }

    fn node(
        &mut self,
        root: BucketRoot<'_>,
        holder: u64,
        depth: usize,
        level: usize,
        last: &mut Option<Vec<u8>>,
    ) -> Result<(), ReadError> {
        if level > MAX_DEPTH {
            return Err(
                corrupt(Some(holder), format!("tree deeper than {MAX_DEPTH} levels")).into(),
            );
        }
        let mut buf = Vec::new();
        let (id, bytes) = match root {
            BucketRoot::Inline(b) => (holder, b),
            BucketRoot::Page(id) => {
                let image = match self.skeletons.map(|s| s.image(id, &mut buf)) {
                    Some(Ok(found)) => found,
                    // A spill that does not read back is no fault of the db, which a db in a file
                    // still has; one that streamed past has nothing else.
                    Some(Err(e)) => match self.db.pages {
                        Pages::File(_) => false,
                        Pages::Gone(_) => return Err(ReadError::Scratch(e)),
                    },
                    None => false,
                };
                let (bytes, pages) = if image {
                    self.db.check_id(id)?;
                    (&buf[..], self.db.check_header(id, &buf)?)
                } else {
                    let pages = self.db.read_page(id, &mut buf)?;
                    (&buf[..], pages)
                };
                self.mark(id, pages)?;
                (id, bytes)
            }
        };
        let page = Page::parse(id, bytes)?;
        if !page.is_leaf() {
            if matches!(root, BucketRoot::Inline(_)) {
                return Err(corrupt(Some(holder), "inline bucket is not a leaf").into());
            }
            let mut prev: Option<&[u8]> = None;
            for i in 0..page.count {
                let (key, child) = page.branch(i)?;
                if prev.is_some_and(|p| p >= key) {
                    return Err(corrupt(
                        Some(id),
                        format!("branch keys out of order at element {i}"),
                    )
                    .into());
                }
                prev = Some(key);
                self.node(BucketRoot::Page(child), id, depth, level + 1, last)?;
            }
            return Ok(());
        }
        for i in 0..page.count {
            let e = page.leaf(i)?;
            if last.as_deref().is_some_and(|l| l >= e.key) {
                return Err(corrupt(Some(id), format!("keys out of order at element {i}")).into());
            }
            *last = Some(e.key.to_vec());
            let bucket = e.flags & FLAG_BUCKET != 0;
            (self.visit)(Visit {
                depth,
                key: e.key,
                value: e.value,
                bucket,
                page: id,
            })?;
            if bucket && self.descend {
                let (sub, _) = bucket_root(id, e.value)?;
                self.bucket(sub, id, depth + 1)?;
            }
        }
        Ok(())
    }
}
