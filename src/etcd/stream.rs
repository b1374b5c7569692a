//! The revisions of bucket `key` of a snapshot that streams past once (out of a bundle), or its
//! status (`cpr verify`), with no copy of it on disk.
//!
//! One pass cannot read a bbolt db: pages arrive in file order, a leaf can come before the branch
//! that points to it, freed pages keep stale leaves (revisions compacted or deleted since), and
//! bucket `key`'s root is only known from the root bucket's leaf. So as the db streams past, each
//! page's skeleton is recorded (`Skeletons`: what the restore's consistency walk needs of it), and
//! each leaf page is decoded provisionally into compact records, kept per page in a memory budget
//! and past it in an unlinked spill file: read as a leaf of bucket `key`, every revision goes
//! through the caller's `map` into one ([`revisions`]: the inventory keeps a little metadata, never
//! the value); for the status, the page's tally (`status::Tally`). After the last page, the meta
//! page is picked as bbolt picks it, the skeletons are walked from the root with the restore's
//! checks, and only the records of the live leaves are replayed, in key order, each at the walk's
//! first visit of its page: for [`Recorded::replay`], those of bucket `key`, what
//! `keys::each_revision` gives of the same db as a file; for `status::streamed_status`, those of
//! every top-level bucket, what `status_of` hashes of it. A damaged page is refused by the walk,
//! naming the page, as it is when the db is read in place.
//!
//! Recording decodes bytes not yet known to be the ones backed up: a bundle's digests are checked
//! at the end of its stream (a signature, with a verify key, before any of it is read), so pages,
//! `mvccpb.KeyValue`s and what `map` reads of a value (the inventory: an object's metadata) are
//! decoded first. That is acceptable because these decoders are memory-safe, check every length
//! and offset against their page (fuzzed: fuzz/fuzz_targets/bbolt.rs), and are bounded (a page
//! and its overflow at most `MAX_SPAN`, memory budgets, spills the scratch dir's size); and because
//! nothing derived from them is shown or written before the check, but the unlinked spills: the
//! caller replays, and says that no meta page is valid, only once the bundle has read whole and
//! its digests passed (`cli::snapshot`'s `Snapshot`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::bbolt::{
    bucket_root, corrupt, le_u32, le_u64, pick_meta, BucketRoot, Corruption, Db, Meta, Page,
    ReadError, FLAG_BUCKET, PAGE_HEADER_SIZE,
};
use super::keys::{revision_of, Revision};
use super::skeleton::{ReadBack, Skeletons};
use super::status::checked_walk;
use crate::hashing::HashingReader;

/// Memory for page skeletons and for records each; the rest is spilled. Small against the 64 MiB
/// budget of the whole command, which also holds what the caller keeps (the inventory itself).
const MEMORY_BUDGET: usize = 2 << 20;
/// A page with its overflow pages is held whole to be decoded; a larger one is refused when it is
/// live. etcd takes values up to its --max-request-bytes, 1.5 MiB unless raised: one raised past
/// this has its largest values read from the extracted snapshot file (README says how).
const MAX_SPAN: u64 = 32 << 20;
/// Bytes asked of the stream at a time.
const READ_SIZE: usize = 1 << 20;
/// Reads of `READ_SIZE` queued for the recording thread: enough to ride out a page that costs
/// more than its share (a spill write, a large span) without holding much memory.
const READS_IN_FLIGHT: usize = 4;
/// Why a page has no skeleton is kept for this many pages; past it the walk names the page only.
const MAX_REASONS: usize = 4096;

/// Why recording stopped.
#[derive(Debug)]
pub enum Stopped {
    /// The stream failed (the bundle's reader says why).
    Read(io::Error),
    /// No meta page of the db is valid: nothing can be walked.
    Damaged(Corruption),
    /// The spill file in the scratch dir could not be created or written.
    Scratch(io::Error),
}

/// A snapshot's pages as they streamed past, ready for the walk and the replay.
pub struct Recorded<T> {
    meta: Meta,
    skeletons: Skeletons,
    records: Arena,
    /// Per page id: 1 + where its block (records or a problem) is in `records`; 0 for none. 4
    /// bytes a page, as the skeletons' index, where a (page, offset) pair per leaf took 16.
    blocks: Vec<u32>,
    /// Why a page has no skeleton, for the first `MAX_REASONS` such pages.
    reasons: BTreeMap<u64, Corruption>,
    record: PhantomData<T>,
}

/// A block is a tag byte and then the page's records (length-delimited) or its problem.
const RECORDS: u8 = 0;
const PROBLEM: u8 = 1;

/// What is recorded of a leaf page (read as a page of whatever bucket the walk finds it in): its
/// records, handed out in order; the first problem with them.
pub type LeafRecords<'a, T> =
    dyn FnMut(&Page<'_>, &mut dyn FnMut(T)) -> Result<(), Corruption> + Send + 'a;

/// Records the snapshot of `size` bytes (sha256 trailer included) that `data` streams, spilling
/// past the memory budget into unlinked files in `scratch`; `leaf` makes the records of each leaf
/// page ([`revisions`] for the inventory). Reads the db's pages, not the trailer after them.
pub fn record<T: prost::Message + Default>(
    data: &mut dyn Read,
    size: u64,
    scratch: &Path,
    leaf: &mut LeafRecords<'_, T>,
) -> Result<Recorded<T>, Stopped> {
    record_within(MEMORY_BUDGET, None, data, size, scratch, leaf)
}

/// [`record`], feeding `blake3` every byte read of `data` (a bundle's digest of its snapshot
/// entry) where the pages are recorded, instead of copying each read to a hashing thread: when it
/// returns the recorded pages or `Stopped::Damaged`, the hasher has every byte read so far, and
/// the caller reads (and hashes) what is left.
pub fn record_hashing<T: prost::Message + Default>(
    data: &mut dyn Read,
    size: u64,
    scratch: &Path,
    leaf: &mut LeafRecords<'_, T>,
    blake3: &mut blake3::Hasher,
) -> Result<Recorded<T>, Stopped> {
    record_within(MEMORY_BUDGET, Some(blake3), data, size, scratch, leaf)
}

/// The records of a leaf page read as one of bucket `key`: `map` of each revision whose etcd key
/// `wanted` accepts.
pub fn revisions<'a, T>(
    wanted: &'a (dyn Fn(&[u8]) -> bool + Sync),
    map: &'a mut (dyn FnMut(Revision) -> T + Send),
) -> impl FnMut(&Page<'_>, &mut dyn FnMut(T)) -> Result<(), Corruption> + Send + 'a {
    move |page, out| {
        for i in 0..page.count {
            let e = page.leaf(i)?;
            if e.flags & FLAG_BUCKET != 0 {
                continue;
            }
            if let Some(revision) = revision_of(page.id, e.key, e.value, wanted)? {
                out(map(revision));
            }
        }
        Ok(())
    }
}

/// [`record`] with `budget` bytes of memory for skeletons and records each. The stream is read
/// (decompressed, for a bundle) in this thread and its pages recorded in another, which takes the
/// reads through a bounded queue and hands their buffers back: the two are the command's critical
/// path and take a core each. When no thread can be had, both are done here.
fn record_within<T: prost::Message + Default>(
    budget: usize,
    mut blake3: Option<&mut blake3::Hasher>,
    data: &mut dyn Read,
    size: u64,
    scratch: &Path,
    leaf: &mut LeafRecords<'_, T>,
) -> Result<Recorded<T>, Stopped> {
    let (reads, receiver) = sync_channel(READS_IN_FLIGHT);
    let (give_back, recycled) = sync_channel(READS_IN_FLIGHT + 2);
    let threaded = std::thread::scope(|scope| {
        let pages = &mut *leaf;
        let hasher = blake3.as_deref_mut();
        let worker = std::thread::Builder::new()
            .name("cpr-pages".into())
            .spawn_scoped(scope, move || {
                let mut queued = Queued {
                    receiver,
                    give_back,
                    current: Vec::new(),
                    at: 0,
                    blake3: hasher,
                };
                let recorded = record_pages(budget, &mut queued, size, scratch, pages);
                if !matches!(recorded, Ok(_) | Err(Stopped::Damaged(_))) {
                    return recorded;
                }
                // The bundle's reader goes on: what was read past the pages is hashed too, and a
                // read that failed there fails the stream as it would have failed that reader
                // (which does not fail twice: zstd, age and tar readers may return 0 after an error).
                match queued.take_the_rest() {
                    Some(e) => Err(Stopped::Read(e)),
                    None => recorded,
                }
            })
            .ok()?;
        let undelivered = feed(data, size, &reads, &recycled);
        drop(reads);
        let recorded = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Some(match (recorded, undelivered) {
            // The thread stopped taking reads before this one failed: the pages were recorded (or
            // found damaged) before it, and the failed read is what stops the stream.
            (Ok(_) | Err(Stopped::Damaged(_)), Some(e)) => Err(Stopped::Read(e)),
            (recorded, _) => recorded,
        })
    });
    threaded.unwrap_or_else(|| match blake3 {
        Some(blake3) => record_pages(
            budget,
            &mut HashingReader::new(data, blake3),
            size,
            scratch,
            leaf,
        ),
        None => record_pages(budget, data, size, scratch, leaf),
    })
}

/// Reads the first `size` bytes of `data` into buffers (recycled from the recording thread) and
/// queues them for it, with the error of a read that fails where it fails; stops early when the
/// thread stopped taking them, returning the error of a read it did not take. A recycled buffer
/// is read into as it is: `read_to_end` zeroes the spare room before each read (memset was 3.5 %
/// of verify's CPU).
fn feed(
    data: &mut dyn Read,
    size: u64,
    reads: &SyncSender<io::Result<Vec<u8>>>,
    recycled: &Receiver<Vec<u8>>,
) -> Option<io::Error> {
    let mut left = size;
    while left > 0 {
        let mut buf = recycled.try_recv().unwrap_or_default();
        buf.resize(READ_SIZE, 0);
        let want = left.min(READ_SIZE as u64) as usize;
        let mut filled = 0;
        let read = loop {
            match data.read(&mut buf[filled..want]) {
                Ok(0) => break Ok(()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
            if filled == want {
                break Ok(());
            }
        };
        buf.truncate(filled);
        left -= filled as u64;
        if filled > 0 && reads.send(Ok(buf)).is_err() {
            return read.err();
        }
        match read {
            Err(e) => return reads.send(Err(e)).err().and_then(|unsent| unsent.0.err()),
            Ok(()) if filled < want => return None,
            Ok(()) => {}
        }
    }
    None
}

/// The stream as `feed` queues it, read in the recording thread.
struct Queued<'h> {
    receiver: Receiver<io::Result<Vec<u8>>>,
    give_back: SyncSender<Vec<u8>>,
    /// The read being taken, from `at` on.
    current: Vec<u8>,
    at: usize,
    /// Fed each read as it is taken.
    blake3: Option<&'h mut blake3::Hasher>,
}

impl Queued<'_> {
    /// The next read, hashed; none at the end of the stream.
    fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Ok(next) = self.receiver.recv() else {
            return Ok(None);
        };
        let next = next?;
        if let Some(blake3) = self.blake3.as_deref_mut() {
            blake3.update(&next);
        }
        Ok(Some(next))
    }

    /// Takes (and hashes) the reads left, up to the end of the stream; the error of a read that
    /// failed.
    fn take_the_rest(&mut self) -> Option<io::Error> {
        loop {
            match self.next() {
                Ok(Some(read)) => {
                    let _ = self.give_back.try_send(read);
                }
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    }
}

impl Read for Queued<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            let Some(next) = self.next()? else {
                return Ok(0);
            };
            let done = std::mem::replace(&mut self.current, next);
            self.at = 0;
            // Full only once `feed` has stopped taking buffers back: this one is dropped.
            let _ = self.give_back.try_send(done);
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Records the pages of the snapshot `data` streams (see [`record_within`]).
fn record_pages<T: prost::Message + Default>(
    budget: usize,
    data: &mut dyn Read,
    size: u64,
    scratch: &Path,
    leaf: &mut LeafRecords<'_, T>,
) -> Result<Recorded<T>, Stopped> {
    let mut window = Window {
        reader: data,
        bytes: Vec::new(),
        start: 0,
        limit: size,
    };
    // Both meta pages lie within the first two pages of the largest page size.
    window
        .fill(2 * (64 << 10) + PAGE_HEADER_SIZE as u64 + 64)
        .map_err(Stopped::Read)?;
    let meta = pick_meta(size, &mut |buf, at| window.read_at(buf, at)).map_err(|e| match e {
        ReadError::Corrupt(c) => Stopped::Damaged(c),
        ReadError::Io(e) | ReadError::Scratch(e) => Stopped::Read(e),
    })?;
    let ps = meta.page_size as u64;
    let spill = tempfile::tempfile_in(scratch).map_err(Stopped::Scratch)?;
    let mut skeletons = Skeletons::spilling(budget, spill);
    // The picked meta as the first chunk names the page size, even when meta page 0 is damaged.
    skeletons.record(0, &meta.page_bytes());
    let mut recorded = Recorded {
        meta,
        skeletons,
        records: Arena {
            budget,
            memory: Vec::new(),
            spill: None,
            scratch: scratch.to_path_buf(),
        },
        blocks: Vec::new(),
        reasons: BTreeMap::new(),
        record: PhantomData,
    };
    let mut block = Vec::new();
    for id in 2..meta.hwm {
        let at = id * ps;
        window.release(at);
        window.fill(at + ps).map_err(Stopped::Read)?;
        let head = window.slice(at, ps);
        if (head.len() as u64) < ps {
            // The reader refuses a snapshot shorter than its entry; pick_meta one shorter than hwm.
            break;
        }
        if le_u64(head, 0) != id {
            continue;
        }
        let overflow = u64::from(le_u32(head, 12));
        let span = (overflow + 1) * ps;
        if id + overflow >= meta.hwm {
            recorded.reason(
                id,
                format!("{overflow} overflow pages run past the end of the db"),
            );
            continue;
        }
        if span > MAX_SPAN {
            recorded.reason(id, format!(
                "with its {overflow} overflow pages it is larger than the {} MiB a streamed read holds; extract etcd/snapshot.db from the bundle file (age -d -i IDENTITY first if it is encrypted, then zstd -dc | tar -x etcd/snapshot.db) and read that file",
                MAX_SPAN >> 20
            ));
            continue;
        }
        window.fill(at + span).map_err(Stopped::Read)?;
        let bytes = window.slice(at, span);
        if let Err(problem) = recorded.skeletons.record_page(id, bytes) {
            recorded.reason(id, problem.problem);
            continue;
        }
        if recorded.skeletons.spent() {
            return Err(Stopped::Scratch(
                recorded.skeletons.finish_recording().unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "the page skeletons' spill reached the 4 GiB its offsets address",
                    )
                }),
            ));
        }
        provisional_records(id, bytes, leaf, &mut block);
        if block.len() > 1 {
            let at = recorded.records.push(&block).map_err(Stopped::Scratch)?;
            let slot = u32::try_from(at + 1).map_err(|_| {
                Stopped::Scratch(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "the records' spill reached the 4 GiB its offsets address",
                ))
            })?;
            let id = id as usize;
            if recorded.blocks.len() <= id {
                recorded.blocks.resize(id + 1, 0);
            }
            recorded.blocks[id] = slot;
        }
    }
    if let Some(e) = recorded.skeletons.finish_recording() {
        return Err(Stopped::Scratch(e));
    }
    recorded.records.finish().map_err(Stopped::Scratch)?;
    Ok(recorded)
}

/// The block of leaf page `id` (`bytes`, overflow included): the records `leaf` makes of it, or
/// the first problem with them (a page of another bucket, or a stale one, has problems that count
/// only if the walk finds it live where they matter). Empty for a page that is no leaf (its
/// skeleton's checks report what is wrong with a page that fails to parse).
fn provisional_records<T: prost::Message>(
    id: u64,
    bytes: &[u8],
    leaf: &mut LeafRecords<'_, T>,
    block: &mut Vec<u8>,
) {
    block.clear();
    let Ok(page) = Page::parse(id, bytes) else {
        return;
    };
    if !page.is_leaf() {
        return;
    }
    block.push(RECORDS);
    let made = leaf(&page, &mut |record| {
        record
            .encode_length_delimited(block)
            .expect("a Vec grows as needed")
    });
    if let Err(problem) = made {
        block.clear();
        block.push(PROBLEM);
        block.extend_from_slice(problem.problem.as_bytes());
    }
}

impl<T: prost::Message + Default> Recorded<T> {
    fn reason(&mut self, id: u64, problem: String) {
        if self.reasons.len() < MAX_REASONS {
            self.reasons.insert(id, corrupt(Some(id), problem));
        }
    }

    /// Bytes spilled into the scratch dir: page skeletons, records.
    pub fn spilled(&self) -> (u64, u64) {
        (
            self.skeletons.spilled(),
            self.records.spill.as_ref().map_or(0, |s| s.len),
        )
    }

    /// Walks the db from the meta page bbolt would pick, with the restore's checks over the
    /// skeletons, and hands `visit` the records of the live revisions of bucket `key`, in order
    /// (`wanted` and `map` as for [`revisions`], for a bucket `key` inline in the root bucket's leaf,
    /// whose revisions the walk meets whole).
    pub fn replay(
        &self,
        wanted: &dyn Fn(&[u8]) -> bool,
        map: &mut dyn FnMut(Revision) -> T,
        visit: &mut dyn FnMut(T),
    ) -> Result<(), ReadError> {
        self.walk(|db, skeletons, leaves| {
            let mut inline = false;
            checked_walk(db, Some(skeletons), &mut |v| {
                if v.depth == 0 {
                    inline = matches!(bucket_root(v.page, v.value)?.0, BucketRoot::Inline(_));
                } else if v.depth == 1 && !v.bucket {
                    if inline {
                        if let Some(revision) = revision_of(v.page, v.key, v.value, wanted)? {
                            visit(map(revision));
                        }
                    } else {
                        leaves.replay(v.page, visit)?;
                    }
                }
                Ok(())
            })
            .map(drop)
        })
    }

    /// Hands `walk` the db from the meta page bbolt would pick, its skeletons, and the records
    /// of its leaf pages, for a walk over the skeletons that replays the records of each live leaf
    /// it meets.
    pub fn walk<R>(
        &self,
        walk: impl FnOnce(&Db<'_>, &Skeletons, &mut Leaves<'_, T>) -> Result<R, ReadError>,
    ) -> Result<R, ReadError> {
        let reasons = &self.reasons;
        let missing = |id: u64| {
            reasons.get(&id).cloned().unwrap_or_else(|| {
                let why = if reasons.len() < MAX_REASONS {
                    "its header carries another id"
                } else {
                    "its header carries another id, or it failed a check; the first pages that did are named, not this one"
                };
                corrupt(
                    Some(id),
                    format!("no branch or leaf page of this db as it streamed past ({why})"),
                )
            })
        };
        let db = Db::streamed(self.meta, &missing);
        let mut leaves = Leaves {
            recorded: self,
            replayed: None,
            block: Vec::new(),
        };
        walk(&db, &self.skeletons, &mut leaves)
    }

    /// Hands `visit` the records of live leaf page `id` (`block`: room to read them into).
    fn replay_leaf(
        &self,
        id: u64,
        block: &mut Vec<u8>,
        visit: &mut dyn FnMut(T),
    ) -> Result<(), ReadError> {
        let Some(at) = self
            .blocks
            .get(id as usize)
            .and_then(|&slot| slot.checked_sub(1))
        else {
            return Ok(());
        };
        self.records
            .read(u64::from(at), block)
            .map_err(ReadError::Scratch)?;
        let (&tag, mut records) = block.split_first().unwrap_or((&RECORDS, &[]));
        if tag == PROBLEM {
            return Err(corrupt(Some(id), String::from_utf8_lossy(records)).into());
        }
        while !records.is_empty() {
            let record = T::decode_length_delimited(&mut records).map_err(|e| {
                ReadError::Scratch(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a record of page {id} does not read back from the spill: {e}"),
                ))
            })?;
            visit(record);
        }
        Ok(())
    }
}

/// The records of the leaf pages of a walk (see [`Recorded::walk`]).
pub struct Leaves<'r, T> {
    recorded: &'r Recorded<T>,
    /// The leaf whose records went out last.
    replayed: Option<u64>,
    /// Room to read a block into.
    block: Vec<u8>,
}

impl<T: prost::Message + Default> Leaves<'_, T> {
    /// Hands `visit` the records of live leaf page `id` at the walk's first visit of one of its
    /// elements; nothing at the others (a leaf's elements are visited together).
    pub fn replay(&mut self, id: u64, visit: &mut dyn FnMut(T)) -> Result<(), ReadError> {
        if self.replayed == Some(id) {
            return Ok(());
        }
        self.replayed = Some(id);
        self.recorded.replay_leaf(id, &mut self.block, visit)
    }
}

/// Where the stream is: its bytes from `start` on, as far as read.
struct Window<'r> {
    reader: &'r mut dyn Read,
    bytes: Vec<u8>,
    start: u64,
    /// The snapshot's size: nothing past it is asked of the reader.
    limit: u64,
}

impl Window<'_> {
    /// Reads until the bytes up to offset `end` are in (fewer at the end of the stream), at least
    /// `READ_SIZE` at a time, into the window's spare room: a decompressing reader hands out some
    /// 128 KiB a call, and zeroing a whole `READ_SIZE` before each call cost as much as the data.
    fn fill(&mut self, end: u64) -> io::Result<()> {
        let end = end.min(self.limit);
        let have = self.start + self.bytes.len() as u64;
        if have >= end {
            return Ok(());
        }
        let want = (end - have).max(READ_SIZE as u64).min(self.limit - have);
        let read = (&mut *self.reader)
            .take(want)
            .read_to_end(&mut self.bytes)?;
        if (read as u64) < want {
            self.limit = self.start + self.bytes.len() as u64;
        }
        Ok(())
    }

    /// Up to `len` bytes from offset `at`, which must not lie before the window.
    fn slice(&self, at: u64, len: u64) -> &[u8] {
        let from = ((at - self.start) as usize).min(self.bytes.len());
        let to = ((at + len - self.start) as usize).min(self.bytes.len());
        &self.bytes[from..to]
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let bytes = self.slice(at, buf.len() as u64);
        if bytes.len() < buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(bytes);
        Ok(())
    }

    /// Forgets the bytes before offset `at`, a few MiB at a time, and the room a large span grew
    /// the window to once it has passed.
    fn release(&mut self, at: u64) {
        let done = (at - self.start) as usize;
        if done >= 4 * READ_SIZE {
            self.bytes.drain(..done);
            self.start = at;
            if self.bytes.capacity() > 8 * READ_SIZE && self.bytes.len() < 4 * READ_SIZE {
                self.bytes.shrink_to(4 * READ_SIZE);
            }
        }
    }
}

/// Records of leaf pages, length-prefixed: in memory up to `budget`, then in an unlinked file in
/// the scratch dir (offsets go on from the budget).
struct Arena {
    budget: usize,
    memory: Vec<u8>,
    spill: Option<Spill>,
    scratch: PathBuf,
}

struct Spill {
    file: BufWriter<File>,
    len: u64,
    /// Records are read back in about the order they were written (see `ReadBack`).
    read_back: RefCell<ReadBack>,
}

impl Arena {
    fn push(&mut self, block: &[u8]) -> io::Result<u64> {
        let len = u32::try_from(block.len())
            .expect("a block is smaller than MAX_SPAN")
            .to_le_bytes();
        if self.spill.is_none() && self.memory.len() + 4 + block.len() <= self.budget {
            let at = self.memory.len() as u64;
            self.memory.extend_from_slice(&len);
            self.memory.extend_from_slice(block);
            return Ok(at);
        }
        let spill = match &mut self.spill {
            Some(spill) => spill,
            None => self.spill.insert(Spill {
                file: BufWriter::with_capacity(1 << 20, tempfile::tempfile_in(&self.scratch)?),
                len: 0,
                read_back: RefCell::default(),
            }),
        };
        spill.file.write_all(&len)?;
        spill.file.write_all(block)?;
        let at = self.budget as u64 + spill.len;
        spill.len += 4 + block.len() as u64;
        Ok(at)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.spill.as_mut().map_or(Ok(()), |s| s.file.flush())
    }

    fn read(&self, at: u64, block: &mut Vec<u8>) -> io::Result<()> {
        block.clear();
        if at < self.budget as u64 {
            let at = at as usize;
            let len = le_u32(&self.memory, at) as usize;
            block.extend_from_slice(&self.memory[at + 4..at + 4 + len]);
            return Ok(());
        }
        let spill = self
            .spill
            .as_ref()
            .expect("an offset past the budget is in the spill");
        let file = spill.file.get_ref();
        let at = at - self.budget as u64;
        spill
            .read_back
            .borrow_mut()
            .record(file, at, spill.len, block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::keys::{each_revision, Record};
    use crate::etcd::patch::{encode, Elem};
    use crate::etcd::snapshot_status;
    use crate::etcd::status::{streamed_status, Status, Tally};

    const SEED: &[u8] = include_bytes!("../../fuzz/corpus/bbolt/seed-etcd-3.4");

    /// Hands out an odd number of bytes at a time, as a decompressing reader does.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7_777).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn streamed(budget: usize, db: &[u8], scratch: &Path) -> Result<Vec<Record>, String> {
        let everything = |_: &[u8]| true;
        let recorded = record_within(
            budget,
            None,
            &mut Trickle(db),
            db.len() as u64,
            scratch,
            &mut revisions(&everything, &mut Record::from),
        )
        .map_err(|e| format!("{e:?}"))?;
        let mut out = Vec::new();
        recorded
            .replay(&everything, &mut Record::from, &mut |s| out.push(s))
            .map_err(|e| match e {
                ReadError::Corrupt(c) => c.to_string(),
                ReadError::Io(e) | ReadError::Scratch(e) => e.to_string(),
            })?;
        Ok(out)
    }

    fn in_place(db: &[u8], dir: &Path) -> Result<Vec<Record>, String> {
        let path = dir.join("db");
        std::fs::write(&path, db).unwrap();
        let mut out = Vec::new();
        each_revision(&path, &|_| true, &mut |r| out.push(r.into())).map_err(|e| match e {
            crate::etcd::Error::Corrupt { detail, .. } => detail.to_string(),
            other => other.to_string(),
        })?;
        Ok(out)
    }

    /// `etcdutl snapshot status` of `db` streamed (`cpr verify`): none where it fails.
    fn streamed_status_of(budget: usize, db: &[u8], scratch: &Path) -> Option<Status> {
        let recorded = record_within(
            budget,
            None,
            &mut Trickle(db),
            db.len() as u64,
            scratch,
            &mut Tally::of_leaf,
        )
        .ok()?;
        streamed_status(&recorded).ok()
    }

    /// `etcdutl snapshot status` of `db` read in place: none where it fails.
    fn status_in_place(db: &[u8], dir: &Path) -> Option<Status> {
        let path = dir.join("db");
        std::fs::write(&path, db).unwrap();
        snapshot_status(&path).ok()
    }

    #[test]
    fn a_streamed_status_is_the_status_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bbolt");
        let mut dbs: Vec<_> = std::fs::read_dir(&corpus)
            .unwrap()
            .map(|f| std::fs::read(f.unwrap().path()).unwrap())
            .collect();
        dbs.extend([branched_db(4096), branched_db(16384)]);
        let mut statuses = 0;
        for db in &dbs {
            let want = status_in_place(db, dir.path());
            for budget in [MEMORY_BUDGET, 0] {
                assert_eq!(streamed_status_of(budget, db, dir.path()), want);
            }
            statuses += usize::from(want.is_some());
        }
        assert!(statuses >= 3, "{statuses} dbs have a status");
    }

    #[test]
    fn a_streamed_db_replays_what_the_file_gives() {
        let dir = tempfile::tempdir().unwrap();
        let want = in_place(SEED, dir.path()).unwrap();
        assert!(!want.is_empty());
        assert_eq!(streamed(MEMORY_BUDGET, SEED, dir.path()).unwrap(), want);
        // Every skeleton and record spilled, and read back.
        assert_eq!(streamed(0, SEED, dir.path()).unwrap(), want);
    }

    /// Revision `main` of etcd key `key` in bucket `key`: a put of `value`, or a deletion.
    fn revision(main: u64, key: &str, value: Option<Vec<u8>>) -> (Vec<u8>, Vec<u8>) {
        let mut revision = main.to_be_bytes().to_vec();
        revision.push(b'_');
        revision.extend_from_slice(&0u64.to_be_bytes());
        revision.extend(value.is_none().then_some(b't'));
        let kv = crate::etcd::keys::KeyValue {
            key: key.into(),
            mod_revision: if value.is_some() { main as i64 } else { 0 },
            value: value.unwrap_or_default(),
        };
        (revision, prost::Message::encode_to_vec(&kv))
    }

    /// Page `id` of `ps` bytes (with overflow pages if it needs them) holding `elems`.
    fn page(ps: usize, id: u64, leaf: bool, elems: &[Elem<'_>]) -> Vec<u8> {
        let mut page = Vec::new();
        encode(id, leaf, elems, &mut page);
        let overflow = page.len().div_ceil(ps) - 1;
        page[12..16].copy_from_slice(&(overflow as u32).to_le_bytes());
        page.resize((overflow + 1) * ps, 0);
        page
    }

    fn leaf_page(ps: usize, id: u64, revisions: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let elems: Vec<_> = revisions.iter().map(|(k, v)| Elem::leaf(0, k, v)).collect();
        page(ps, id, true, &elems)
    }

    /// A db of `ps`-byte pages whose bucket `key` is rooted in a branch page (page 7) over four
    /// leaves, three laid out before it, one of them with an overflow page for a value larger than
    /// a page; a freed leaf (page 3) holds stale revisions that no branch reaches. Bucket `meta` is
    /// inline in the root bucket's leaf, the last page.
    fn branched_db(ps: usize) -> Vec<u8> {
        let live = |mains: std::ops::RangeInclusive<u64>| -> Vec<_> {
            mains
                .map(|main| {
                    let value = match main {
                        7 => Some(vec![b'v'; ps + ps / 2]),
                        8 => None,
                        _ => Some(format!("value {main}").into_bytes()),
                    };
                    revision(
                        main,
                        &format!("/registry/pods/default/p{}", main % 5),
                        value,
                    )
                })
                .collect()
        };
        let stale: Vec<_> = (2..=4)
            .map(|main| revision(main, "stale", Some(b"compacted".to_vec())))
            .collect();
        let leaves = [
            (4, live(1..=5)),
            (5, live(6..=8)),
            (2, live(9..=13)),
            (8, live(14..=16)),
        ];
        let mut pages = BTreeMap::new();
        pages.insert(3, leaf_page(ps, 3, &stale));
        for (id, revisions) in &leaves {
            pages.insert(*id, leaf_page(ps, *id, revisions));
        }
        let branch: Vec<_> = leaves
            .iter()
            .map(|(id, revisions)| Elem::branch(&revisions[0].0, *id))
            .collect();
        pages.insert(7, page(ps, 7, false, &branch));
        let key_bucket = [7u64.to_le_bytes(), 0u64.to_le_bytes()].concat();
        let consistent_index = 16u64.to_be_bytes();
        let mut meta_bucket = vec![0; 16];
        encode(
            0,
            true,
            &[Elem::leaf(0, b"consistent_index", &consistent_index)],
            &mut meta_bucket,
        );
        let root = [
            Elem::leaf(FLAG_BUCKET, b"key", &key_bucket),
            Elem::leaf(FLAG_BUCKET, b"meta", &meta_bucket),
        ];
        pages.insert(9, page(ps, 9, true, &root));
        let mut db = Vec::new();
        for txid in [2, 1] {
            let meta = Meta {
                page_size: ps as u32,
                flags: 0,
                root: 9,
                root_sequence: 0,
                freelist: u64::MAX,
                hwm: 10,
                txid,
            };
            db.extend_from_slice(&meta.page_bytes());
        }
        for (id, page) in pages {
            assert_eq!(
                db.len() as u64,
                id * ps as u64,
                "page {id} follows the one before"
            );
            db.extend_from_slice(&page);
        }
        db
    }

    #[test]
    fn a_branched_key_bucket_replays_its_live_leaves_only() {
        let dir = tempfile::tempdir().unwrap();
        for ps in [4096, 16384] {
            let db = branched_db(ps);
            let want = in_place(&db, dir.path()).unwrap();
            assert_eq!(want.len(), 16, "page size {ps}");
            assert!(want.iter().all(|s| s.key != b"stale"));
            assert!(want
                .iter()
                .any(|s| s.value.as_ref().is_some_and(|v| v.len() == ps + ps / 2)));
            assert!(want.iter().any(|s| s.value.is_none()));
            assert_eq!(streamed(MEMORY_BUDGET, &db, dir.path()).unwrap(), want);
            assert_eq!(streamed(0, &db, dir.path()).unwrap(), want);
        }
    }

    /// The fuzz target's seed of a db whose bucket `key` is no inline bucket.
    #[test]
    fn the_branched_fuzz_seed_is_the_branched_db() {
        assert_eq!(
            include_bytes!("../../fuzz/corpus/bbolt/seed-branched-4k").as_slice(),
            branched_db(4096)
        );
    }

    /// Hands out `good` bytes, then fails.
    struct FailingAfter<'a>(&'a [u8]);

    impl Read for FailingAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("frame checksum mismatch"));
            }
            Trickle(self.0)
                .read(buf)
                .inspect(|&n| self.0 = &self.0[n..])
        }
    }

    #[test]
    fn a_read_that_fails_stops_the_recording_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = branched_db(4096);
        for good in [0, 4096 * 3, db.len() - 1] {
            let stopped = record_within(
                MEMORY_BUDGET,
                None,
                &mut FailingAfter(&db[..good]),
                db.len() as u64,
                dir.path(),
                &mut Tally::of_leaf,
            );
            assert!(
                matches!(&stopped, Err(Stopped::Read(e)) if e.to_string() == "frame checksum mismatch"),
                "{good} bytes: {:?}",
                stopped.map(drop)
            );
        }
        // A stream with no valid meta page stops the recording at its start; a read that fails
        // later, while the rest is only being hashed, is still what stops it.
        let damaged = vec![0u8; (READS_IN_FLIGHT + 4) * READ_SIZE];
        let stopped = record_within(
            MEMORY_BUDGET,
            None,
            &mut FailingAfter(&damaged),
            damaged.len() as u64 + 1,
            dir.path(),
            &mut Tally::of_leaf,
        );
        assert!(
            matches!(&stopped, Err(Stopped::Read(e)) if e.to_string() == "frame checksum mismatch"),
            "{:?}",
            stopped.map(drop)
        );
    }

    #[test]
    fn a_stream_whose_pages_are_not_read_does_not_hold_up_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        // No valid meta page: recording stops at the start of a stream many reads long.
        let db = vec![0u8; (READS_IN_FLIGHT + 4) * READ_SIZE];
        let stopped = record_within(
            MEMORY_BUDGET,
            None,
            &mut &db[..],
            db.len() as u64,
            dir.path(),
            &mut Tally::of_leaf,
        );
        assert!(
            matches!(&stopped, Err(Stopped::Damaged(_))),
            "{:?}",
            stopped.map(drop)
        );
    }

    #[test]
    fn the_hasher_is_fed_every_byte_read_whether_the_pages_are_read_or_not() {
        let dir = tempfile::tempdir().unwrap();
        // A db with its sha256 trailer, and a stream many reads long with no valid meta page.
        let mut db = branched_db(4096);
        db.extend_from_slice(&[7; 32]);
        let damaged = vec![0u8; (READS_IN_FLIGHT + 4) * READ_SIZE + 5];
        for (stream, readable) in [(db, true), (damaged, false)] {
            let mut blake3 = blake3::Hasher::new();
            let mut data = Trickle(&stream);
            let recorded = record_within(
                MEMORY_BUDGET,
                Some(&mut blake3),
                &mut data,
                stream.len() as u64,
                dir.path(),
                &mut Tally::of_leaf,
            );
            assert_eq!(recorded.is_ok(), readable);
            io::copy(&mut data, &mut blake3).unwrap();
            assert_eq!(blake3.finalize(), blake3::hash(&stream));
        }
    }

    #[test]
    fn a_scratch_dir_that_takes_no_spill_stops_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let stopped = record_within(
            0,
            None,
            &mut Trickle(SEED),
            SEED.len() as u64,
            &gone,
            &mut revisions(&|_| true, &mut Record::from),
        );
        assert!(
            matches!(&stopped, Err(Stopped::Scratch(e)) if e.kind() == io::ErrorKind::NotFound),
            "{:?}",
            stopped.map(drop)
        );
    }

    /// The spill files of a scratch dir that failed: one that takes no write (a full disk's
    /// last flush), one that does not read back.
    fn broken_spills(dir: &Path) -> (File, File) {
        let path = dir.join("spill");
        let unreadable = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (File::open(&path).unwrap(), unreadable)
    }

    fn is_bad_descriptor(e: &io::Error) -> bool {
        e.raw_os_error() == Some(nix::errno::Errno::EBADF as i32)
    }

    #[test]
    fn a_page_image_spill_that_failed_is_a_scratch_error_not_a_missing_page() {
        let dir = tempfile::tempdir().unwrap();
        let (unwritable, unreadable) = broken_spills(dir.path());
        // Every image fits the 1 MiB write buffer: only the last flush fails.
        let mut skeletons = Skeletons::spilling(0, unwritable);
        skeletons.record(0, SEED);
        assert!(!skeletons.spent());
        let flushed = skeletons.finish_recording();
        assert!(
            flushed.as_ref().is_some_and(is_bad_descriptor),
            "{flushed:?}"
        );

        let mut skeletons = Skeletons::spilling(0, unreadable);
        skeletons.record(0, SEED);
        assert!(skeletons.finish_recording().is_none());
        let meta = Meta::parse(0, SEED).unwrap();
        let never = |id| corrupt(Some(id), "not recorded");
        let walked = checked_walk(&Db::streamed(meta, &never), Some(&skeletons), &mut |_| {
            Ok(())
        });
        assert!(
            matches!(&walked, Err(ReadError::Scratch(e)) if is_bad_descriptor(e)),
            "{walked:?}"
        );
    }

    #[test]
    fn a_records_spill_that_does_not_read_back_is_a_scratch_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = branched_db(4096);
        let mut recorded = record_within(
            0,
            None,
            &mut Trickle(&db),
            db.len() as u64,
            dir.path(),
            &mut revisions(&|_| true, &mut Record::from),
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        let (_, unreadable) = broken_spills(dir.path());
        recorded.records.spill.as_mut().unwrap().file = BufWriter::new(unreadable);
        let replayed = recorded.replay(&|_| true, &mut Record::from, &mut drop);
        assert!(
            matches!(&replayed, Err(ReadError::Scratch(e)) if is_bad_descriptor(e)),
            "{replayed:?}"
        );
    }

    #[test]
    fn the_window_gives_back_the_room_of_a_large_span() {
        let data = vec![0u8; MAX_SPAN as usize + 8 * READ_SIZE];
        let mut window = Window {
            reader: &mut Trickle(&data),
            bytes: Vec::new(),
            start: 0,
            limit: data.len() as u64,
        };
        window.fill(MAX_SPAN).unwrap();
        assert!(window.bytes.capacity() >= MAX_SPAN as usize);
        window.release(MAX_SPAN);
        window.fill(MAX_SPAN + 4096).unwrap();
        assert!(
            window.bytes.capacity() <= 8 * READ_SIZE,
            "{} bytes held",
            window.bytes.capacity()
        );
    }

    #[test]
    fn damage_is_refused_naming_the_page_as_in_place() {
        for db in [SEED.to_vec(), branched_db(4096)] {
            refused_as_in_place(&db);
        }
    }

    fn refused_as_in_place(seed: &[u8]) {
        let page_size = Meta::parse(0, seed).unwrap().page_size as usize;
        let pages = seed.len() / page_size;
        let dir = tempfile::tempdir().unwrap();
        let mut refused = 0;
        // Every page's element count and first element's position, in turn: a live page's
        // damage is refused alike, a free page's is not seen by either.
        for id in 2..pages {
            for (at, value) in [(10, 0xfff0u16.to_le_bytes()), (16 + 4, [0xff, 0x7f])] {
                let mut db = seed.to_vec();
                let at = id * page_size + at;
                db[at..at + 2].copy_from_slice(&value);
                let want = in_place(&db, dir.path());
                assert_eq!(
                    streamed(MEMORY_BUDGET, &db, dir.path()),
                    want,
                    "page {id}, byte {at}"
                );
                assert_eq!(
                    streamed_status_of(MEMORY_BUDGET, &db, dir.path()),
                    status_in_place(&db, dir.path()),
                    "status, page {id}, byte {at}"
                );
                refused += usize::from(want.is_err());
            }
        }
        assert!(refused > 0);
    }
}
