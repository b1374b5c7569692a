//! Copy-on-write changes to a bbolt db, the way bbolt itself commits: changed pages are written
//! anew past the high-water mark, then a new meta page points at the new root. Pages that are no
//! longer referenced become free (etcd's files persist no freelist, so bbolt finds free pages by
//! reachability on open), and every page that did not change keeps its bytes.

use super::bbolt::{
    bucket_root, corrupt, BucketRoot, Db, Entry, Meta, Page, ReadError, BUCKET_HEADER_SIZE,
    ELEMENT_SIZE, FLAG_BRANCH, FLAG_BUCKET, FLAG_LEAF, NO_FREELIST, PAGE_HEADER_SIZE,
};

/// The small buckets a restore rewrites hold a handful of keys; anything bigger is not an etcd db.
const SMALL_BUCKET_LIMIT: usize = 16 << 20;
/// bbolt stores a page's element count in 16 bits.
const MAX_ELEMENTS: usize = 0xFFFF;

/// One element to write: a leaf entry (`flags`, `key`, `value`) or a branch entry (`key`, `child`).
pub(super) struct Elem<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
    child: u64,
}

impl<'a> Elem<'a> {
    pub(super) fn leaf(flags: u32, key: &'a [u8], value: &'a [u8]) -> Self {
        Elem {
            flags,
            key,
            value,
            child: 0,
        }
    }

    pub(super) fn branch(key: &'a [u8], child: u64) -> Self {
        Elem {
            flags: 0,
            key,
            value: &[],
            child,
        }
    }
}

impl<'a> From<&'a Entry> for Elem<'a> {
    fn from(e: &'a Entry) -> Self {
        Elem::leaf(e.flags, &e.key, &e.value)
    }
}

fn node_size(elems: &[Elem<'_>]) -> usize {
    PAGE_HEADER_SIZE
        + elems
            .iter()
            .map(|e| ELEMENT_SIZE + e.key.len() + e.value.len())
            .sum::<usize>()
}

/// Serializes a node like bbolt's `node.write`: element headers first, then keys and values in order.
pub(super) fn encode(id: u64, leaf: bool, elems: &[Elem<'_>], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(if leaf { FLAG_LEAF } else { FLAG_BRANCH }).to_le_bytes());
    out.extend_from_slice(&(elems.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut data = PAGE_HEADER_SIZE + elems.len() * ELEMENT_SIZE;
    for (i, e) in elems.iter().enumerate() {
        // `pos` counts from the element's own header to its key.
        let pos = (data - PAGE_HEADER_SIZE - i * ELEMENT_SIZE) as u32;
        if leaf {
            for v in [e.flags, pos, e.key.len() as u32, e.value.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        } else {
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.child.to_le_bytes());
        }
        data += e.key.len() + e.value.len();
    }
    for e in elems {
        out.extend_from_slice(e.key);
        out.extend_from_slice(e.value);
    }
    debug_assert_eq!(out.len() - start, data);
}

/// The pages a patch appends and the meta that makes them live.
pub struct Patch<'a, 'f> {
    db: &'a Db<'f>,
    next: u64,
    pages: Vec<u8>,
}

/// What a restore changes in the db.
pub struct Changes {
    /// New content of `members`: (member id as lowercase hex, member JSON).
    pub members: Vec<(Vec<u8>, Vec<u8>)>,
    pub consistent_index: u64,
    pub term: u64,
    /// `--bump-revision R --mark-compacted`.
    pub bump_revision: Option<u64>,
}

/// The appended pages (to be written at `first_page × page size`) and the new meta page.
pub struct Patched {
    pub first_page: u64,
    pub pages: Vec<u8>,
    pub meta: Meta,
    /// With a revision bump: the new latest revision (also the compacted one).
    pub bumped_to: Option<u64>,
}

impl<'a, 'f> Patch<'a, 'f> {
    pub fn new(db: &'a Db<'f>) -> Self {
        Patch {
            db,
            next: db.meta.hwm,
            pages: Vec::new(),
        }
    }

    /// Appends a node as a page (with overflow pages when it is larger than one) and returns its id.
    fn append(&mut self, leaf: bool, elems: &[Elem<'_>]) -> Result<u64, ReadError> {
        if elems.len() > MAX_ELEMENTS {
            return Err(corrupt(
                None,
                format!("a rewritten node would hold {} elements", elems.len()),
            )
            .into());
        }
        let ps = self.db.page_size;
        let count = node_size(elems).div_ceil(ps);
        let id = self.next;
        let start = self.pages.len();
        encode(id, leaf, elems, &mut self.pages);
        self.pages[start + 12..start + 16].copy_from_slice(&(count as u32 - 1).to_le_bytes());
        self.pages.resize(start + count * ps, 0);
        self.next += count as u64;
        Ok(id)
    }

    /// A bucket value holding `entries` (sorted by key): inline when bbolt would inline it, else a page.
    fn bucket_value(&mut self, sequence: u64, entries: &[Entry]) -> Result<Vec<u8>, ReadError> {
        let elems: Vec<Elem<'_>> = entries.iter().map(Elem::from).collect();
        let inline = entries.iter().all(|e| e.flags & FLAG_BUCKET == 0)
            && node_size(&elems) <= self.db.page_size / 4;
        let mut value = Vec::with_capacity(BUCKET_HEADER_SIZE + node_size(&elems));
        let root = if inline {
            0
        } else {
            self.append(true, &elems)?
        };
        value.extend_from_slice(&root.to_le_bytes());
        value.extend_from_slice(&sequence.to_le_bytes());
        if inline {
            encode(0, true, &elems, &mut value);
        }
        Ok(value)
    }

    /// Appends `key` (with an empty value) after the last key of the tree rooted at page `id`,
    /// rewriting only the rightmost path. A full page is left as it is and gets a new right sibling.
    /// Returns the node's replacement id, its first key, and a new right sibling (first key, id).
    #[allow(clippy::type_complexity)]
    fn append_right(
        &mut self,
        id: u64,
        key: &[u8],
        level: usize,
    ) -> Result<(u64, Vec<u8>, Option<(Vec<u8>, u64)>), ReadError> {
        if level > 64 {
            return Err(corrupt(Some(id), "tree too deep").into());
        }
        let mut buf = Vec::new();
        self.db.read_page(id, &mut buf)?;
        let page = Page::parse(id, &buf)?;
        let fits = |elems: &[Elem<'_>], extra: usize| {
            elems.len() < MAX_ELEMENTS
                && node_size(elems) + ELEMENT_SIZE + extra <= self.db.page_size
        };
        if page.is_leaf() {
            let mut entries = Vec::with_capacity(page.count + 1);
            for i in 0..page.count {
                let e = page.leaf(i)?;
                entries.push(Elem::leaf(e.flags, e.key, e.value));
            }
            if entries.last().is_some_and(|e| e.key >= key) {
                return Err(corrupt(Some(id), "the new revision is not above the last key").into());
            }
            let first = entries.first().map_or(key, |e| e.key).to_vec();
            let new = Elem::leaf(0, key, &[]);
            if fits(&entries, key.len()) {
                entries.push(new);
                return Ok((self.append(true, &entries)?, first, None));
            }
            let sibling = self.append(true, &[new])?;
            return Ok((id, first, Some((key.to_vec(), sibling))));
        }
        let mut children = Vec::with_capacity(page.count + 1);
        for i in 0..page.count {
            let (k, child) = page.branch(i)?;
            children.push(Elem::branch(k, child));
        }
        let first = children[0].key.to_vec();
        let last = children.len() - 1;
        let (replacement, last_first, sibling) =
            self.append_right(children[last].child, key, level + 1)?;
        let changed = replacement != children[last].child;
        children[last].child = replacement;
        if last == 0 {
            children[0].key = &last_first;
        }
        let Some((skey, sid)) = sibling else {
            return Ok((self.append(false, &children)?, first, None));
        };
        if fits(&children, skey.len()) {
            children.push(Elem::branch(&skey, sid));
            return Ok((self.append(false, &children)?, first, None));
        }
        let me = if changed {
            self.append(false, &children)?
        } else {
            id
        };
        let new_sibling = self.append(false, &[Elem::branch(&skey, sid)])?;
        Ok((me, first, Some((skey, new_sibling))))
    }

    /// Appends `key` to a bucket whose keys are all lower; returns the new bucket value.
    fn append_to_bucket(
        &mut self,
        holder: u64,
        value: &[u8],
        key: &[u8],
    ) -> Result<Vec<u8>, ReadError> {
        let (root, sequence) = bucket_root(holder, value)?;
        match root {
            BucketRoot::Inline(_) => {
                let mut entries = self.db.collect(root, holder, SMALL_BUCKET_LIMIT)?;
                entries.push(Entry {
                    flags: 0,
                    key: key.to_vec(),
                    value: Vec::new(),
                });
                self.bucket_value(sequence, &entries)
            }
            BucketRoot::Page(id) => {
                let (mut root, first, sibling) = self.append_right(id, key, 0)?;
                if let Some((skey, sid)) = sibling {
                    let elems = [Elem::branch(&first, root), Elem::branch(&skey, sid)];
                    root = self.append(false, &elems)?;
                }
                let mut v = root.to_le_bytes().to_vec();
                v.extend_from_slice(&sequence.to_le_bytes());
                Ok(v)
            }
        }
    }

    /// Applies a restore's changes (etcdutl 3.5/3.6 semantics) and returns what to write.
    pub fn apply(mut self, changes: &Changes) -> Result<Patched, ReadError> {
        let meta = self.db.meta;
        let mut root = self.db.collect(
            BucketRoot::Page(meta.root),
            meta.txid % 2,
            SMALL_BUCKET_LIMIT,
        )?;
        let holder = |root: &[Entry], name: &[u8]| root.iter().position(|e| e.key == name);
        for name in [&b"members"[..], b"members_removed", b"cluster", b"meta"] {
            if holder(&root, name).is_none() {
                root.push(Entry {
                    flags: FLAG_BUCKET,
                    key: name.to_vec(),
                    value: self.bucket_value(0, &[])?,
                });
            }
        }
        for e in &root {
            if e.flags & FLAG_BUCKET == 0 {
                let name = String::from_utf8_lossy(&e.key);
                return Err(corrupt(
                    Some(meta.root),
                    format!("top-level key {name:?} is not a bucket"),
                )
                .into());
            }
        }
        root.sort_by(|a, b| a.key.cmp(&b.key));
        let sequence_of = |v: &[u8]| bucket_root(meta.root, v).map(|(_, seq)| seq);

        let i = holder(&root, b"members").expect("bucket created above");
        let mut members: Vec<Entry> = changes
            .members
            .iter()
            .map(|(k, v)| Entry {
                flags: 0,
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        members.sort_by(|a, b| a.key.cmp(&b.key));
        root[i].value = self.bucket_value(sequence_of(&root[i].value)?, &members)?;

        let i = holder(&root, b"members_removed").expect("bucket created above");
        root[i].value = self.bucket_value(sequence_of(&root[i].value)?, &[])?;

        let mut bumped_to = None;
        let mut meta_puts = vec![
            (
                b"consistent_index".to_vec(),
                changes.consistent_index.to_be_bytes().to_vec(),
            ),
            (b"term".to_vec(), changes.term.to_be_bytes().to_vec()),
        ];
        if let Some(bump) = changes.bump_revision {
            let Some(k) = holder(&root, b"key") else {
                return Err(corrupt(Some(meta.root), "no `key` bucket: not an etcd v3 db").into());
            };
            let latest = self.latest_revision(&root[k].value)?;
            let rev = latest
                .checked_add(bump)
                .filter(|r| *r <= i64::MAX as u64)
                .ok_or_else(|| corrupt(None, format!("revision {latest} + {bump} overflows")))?;
            let mut revkey = rev.to_be_bytes().to_vec();
            revkey.push(b'_');
            revkey.extend_from_slice(&0u64.to_be_bytes());
            root[k].value = self.append_to_bucket(meta.root, &root[k].value.clone(), &revkey)?;
            meta_puts.push((b"scheduledCompactRev".to_vec(), revkey));
            bumped_to = Some(rev);
        }

        let i = holder(&root, b"meta").expect("bucket created above");
        let (mroot, mseq) = bucket_root(meta.root, &root[i].value)?;
        let mut entries = self.db.collect(mroot, meta.root, SMALL_BUCKET_LIMIT)?;
        for (key, value) in meta_puts {
            match entries.iter_mut().find(|e| e.key == key) {
                Some(e) if e.flags & FLAG_BUCKET == 0 => e.value = value,
                Some(_) => return Err(corrupt(Some(meta.root), "meta entry is a bucket").into()),
                None => entries.push(Entry {
                    flags: 0,
                    key,
                    value,
                }),
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        root[i].value = self.bucket_value(mseq, &entries)?;

        let elems: Vec<Elem<'_>> = root.iter().map(Elem::from).collect();
        let new_root = self.append(true, &elems)?;
        // A crafted or damaged meta page can hold the largest txid: no transaction can follow it.
        let txid = meta.txid.checked_add(1).ok_or_else(|| {
            corrupt(
                Some(meta.txid % 2),
                format!("meta page's transaction id {} is the largest there is, so no transaction can follow it", meta.txid),
            )
        })?;
        let new_meta = Meta {
            root: new_root,
            freelist: NO_FREELIST,
            hwm: self.next,
            txid,
            ..meta
        };
        Ok(Patched {
            first_page: meta.hwm,
            pages: self.pages,
            meta: new_meta,
            bumped_to,
        })
    }

    /// The main revision of the last key of bucket `key` (0 when it is empty).
    fn latest_revision(&self, value: &[u8]) -> Result<u64, ReadError> {
        let (mut root, _) = bucket_root(self.db.meta.root, value)?;
        let mut buf = Vec::new();
        let mut holder = self.db.meta.root;
        for _ in 0..64 {
            let page_id = match root {
                BucketRoot::Inline(_) => holder,
                BucketRoot::Page(id) => id,
            };
            let bytes = match root {
                BucketRoot::Inline(b) => b,
                BucketRoot::Page(id) => {
                    self.db.read_page(id, &mut buf)?;
                    &buf[..]
                }
            };
            let page = Page::parse(page_id, bytes)?;
            if page.count == 0 {
                return Ok(0);
            }
            if page.is_leaf() {
                let key = page.leaf(page.count - 1)?.key;
                if key.len() < 17 {
                    return Err(corrupt(
                        Some(page_id),
                        "a `key` bucket key shorter than a revision",
                    )
                    .into());
                }
                return Ok(u64::from_be_bytes(key[..8].try_into().expect("8 bytes")));
            }
            let (_, child) = page.branch(page.count - 1)?;
            holder = page_id;
            root = BucketRoot::Page(child);
        }
        Err(corrupt(Some(holder), "tree too deep").into())
    }
}
