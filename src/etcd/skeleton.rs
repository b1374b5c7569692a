//! Page skeletons: what the restore's consistency walk needs of each page, recorded while the db
//! streams past on its way to disk, so the walk does not read a 1 GiB db back.
//!
//! The db is written with direct I/O, past the page cache; reading it back for the walk would
//! bring it all in again, which costs more than the whole copy. A skeleton is a bbolt page image
//! that keeps, of a leaf page, its first and last keys, every nested bucket (with its value), and
//! one key that is not a bucket if there is any; of a branch page, every element. Values of plain
//! keys are left empty. The walk over skeletons checks what the walk over pages checks: order
//! between pages through first and last keys, order within a page when the skeleton is made,
//! reachability and overlap through the page count kept in the header, top-level keys being
//! buckets through the one plain key kept. A page whose skeleton cannot be made (it fails a check,
//! spans more than `STRADDLING_MAX` across chunks, or the budget is spent) gets none: the walk reads
//! that page from the file and reports what is wrong with it there.
//!
//! Skeletons take about 2 % of a db of small objects: past the memory budget they go to a spill
//! file (unlinked, through the page cache), so a db of several GiB is not read back either: reading
//! back the half of a 2 GiB db past a 16 MiB budget took longer than writing the whole db.

use super::bbolt::{
    corrupt, le_u32, le_u64, Corruption, Meta, Page, FLAG_BUCKET, META_PAGE_PREFIX, PAGE_SIZES,
};
use super::patch::{encode, Elem};
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

/// Skeletons past the memory budget: offsets continue from the budget on.
struct Spill {
    file: BufWriter<File>,
    len: u64,
    /// A write failed: what the file holds is not trusted, its pages are read from the db.
    failed: bool,
    /// The failed write's error, until [`Skeletons::finish_recording`] hands it out.
    error: Option<io::Error>,
}

/// Spilled images are read back through a few windows of the spill file. The walk visits the
/// pages of a run of leaves about in the order they were recorded, branch pages elsewhere in the
/// file in between; two preads per image were most of the walk's time past the budget (2 of the 13 s
/// of an 8.6 GiB restore). A window that the walk runs on past reads ahead `READ_AHEAD`; an image
/// away from every window gets a small window of its own, so a fragmented db (pages in no order)
/// costs one small read per image, not a large one.
const READ_AHEAD: usize = 256 << 10;
const SMALL_READ: usize = 4 << 10;
const WINDOWS: usize = 4;

/// Pages whose span goes past their chunk are put together from the chunks that follow, up to
/// this size in all: etcd refuses requests over 1.5 MiB by default (`--max-request-bytes`), so
/// larger values are rare. Reading such a page from the db instead costs a disk read: the db was written past
/// the page cache. With 1 MiB chunks and 10 KiB values, two in three chunks end inside a page; read
/// back, those pages were a fifth of a 1 GiB restore.
const STRADDLING_MAX: usize = 2 << 20;

/// The start of a page whose span goes past the chunk it starts in.
struct Straddling {
    id: u64,
    span: usize,
    bytes: Vec<u8>,
}

/// A part of the spill file read back.
#[derive(Default)]
struct Window {
    start: u64,
    bytes: Vec<u8>,
    /// When it was last read from, in reads: the least recent is reused first.
    used: u64,
}

impl Window {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// Reads back the spill files of `etcd::stream` too (its records).
#[derive(Default)]
pub(super) struct ReadBack {
    windows: [Window; WINDOWS],
    reads: u64,
}

impl ReadBack {
    /// Appends to `out` the record at `at` of a spill of `end` bytes: a little-endian u32 length,
    /// then that many bytes.
    pub(super) fn record(
        &mut self,
        file: &File,
        at: u64,
        end: u64,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let len = le_u32(self.get(file, at, 4, end)?, 0) as usize;
        let at = at + 4;
        if len <= READ_AHEAD {
            out.extend_from_slice(self.get(file, at, len, end)?);
            return Ok(());
        }
        // Past the windows, which would keep the size of a large record (a value of up to 32 MiB
        // for `cpr get`) for the rest of the walk.
        within(at, len, end)?;
        let start = out.len();
        out.resize(start + len, 0);
        file.read_exact_at(&mut out[start..], at).inspect_err(|_| {
            out.truncate(start);
        })
    }

    /// The `len` bytes at `at` of a spill of `end` bytes; `len` at most `READ_AHEAD`.
    fn get(&mut self, file: &File, at: u64, len: usize, end: u64) -> io::Result<&[u8]> {
        let stop = within(at, len, end)?;
        self.reads += 1;
        let held = self
            .windows
            .iter()
            .position(|w| w.start <= at && stop <= w.end());
        let index = match held {
            Some(index) => index,
            None => {
                let (index, size) = match self
                    .windows
                    .iter()
                    .position(|w| !w.bytes.is_empty() && w.start <= at && at <= w.end())
                {
                    Some(index) => (index, READ_AHEAD),
                    None => {
                        let lru = (0..WINDOWS)
                            .min_by_key(|&i| self.windows[i].used)
                            .expect("there are windows");
                        (lru, SMALL_READ.max(len))
                    }
                };
                let window = &mut self.windows[index];
                window.bytes.resize((end - at).min(size as u64) as usize, 0);
                if let Err(e) = file.read_exact_at(&mut window.bytes, at) {
                    window.bytes.clear();
                    return Err(e);
                }
                window.start = at;
                index
            }
        };
        let window = &mut self.windows[index];
        window.used = self.reads;
        let from = (at - window.start) as usize;
        Ok(&window.bytes[from..from + len])
    }
}

/// Where `len` bytes at `at` stop, if a spill of `end` bytes holds them.
fn within(at: u64, len: usize, end: u64) -> io::Result<u64> {
    at.checked_add(len as u64)
        .filter(|&stop| stop <= end)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at byte {at} run past the spill file's {end} bytes"),
            )
        })
}

/// Images of the pages of one db, by page id.
pub struct Skeletons {
    /// Unknown until the first chunk; `None` after it when page 0 is no valid meta page.
    page_size: Option<usize>,
    /// Per page id: 1 + the offset of its image's length prefix, in `images` below `budget`, in
    /// the spill file (less `budget`) from it on; 0 for none.
    index: Vec<u32>,
    images: Vec<u8>,
    budget: usize,
    /// Set once an image did not fit `images`: later ones go to the spill file, if any.
    memory_full: bool,
    spill: Option<Spill>,
    /// Set once an image fits nowhere: later pages are not recorded.
    spent: bool,
    /// One record (length prefix and image) being made.
    record: Vec<u8>,
    /// Usually one; more when bytes inside a page's overflow look like a page of their own, which
    /// recording the db whole would also take for one.
    straddling: Vec<Straddling>,
    /// The end of the last chunk recorded: where the next must start for them to be put together.
    recorded_to: u64,
    read_back: RefCell<ReadBack>,
}

impl Skeletons {
    /// Records at most `budget` bytes of images; pages past it are read from the file by the walk.
    pub fn new(budget: usize) -> Skeletons {
        Skeletons {
            page_size: None,
            index: Vec::new(),
            images: Vec::new(),
            budget: budget.min(u32::MAX as usize),
            memory_full: false,
            spill: None,
            spent: false,
            record: Vec::new(),
            straddling: Vec::new(),
            recorded_to: 0,
            read_back: RefCell::default(),
        }
    }

    /// Keeps `budget` bytes of images in memory and the rest in `spill`, an empty file.
    pub fn spilling(budget: usize, spill: File) -> Skeletons {
        Skeletons {
            spill: Some(Spill {
                file: BufWriter::with_capacity(1 << 20, spill),
                len: 0,
                failed: false,
                error: None,
            }),
            ..Skeletons::new(budget)
        }
    }

    /// Makes the spilled images readable; call once every chunk is recorded. Returns the error
    /// of the write (or final flush) that left the spill incomplete, if one did: the pages whose
    /// images were lost have none, which a caller that has no db to read them from must not take
    /// for pages the db lacks.
    pub fn finish_recording(&mut self) -> Option<io::Error> {
        self.straddling = Vec::new();
        let spill = self.spill.as_mut()?;
        if !spill.failed {
            if let Err(e) = spill.file.flush() {
                spill.fail(e);
            }
        }
        spill.error.take()
    }

    pub fn page_size(&self) -> Option<usize> {
        self.page_size
    }

    /// Records the whole pages of `data`, the db's bytes from `offset` on. Chunks arrive in order,
    /// starting at page boundaries; the first one starts at 0 and names the page size.
    pub fn record(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.page_size = (data.len() >= META_PAGE_PREFIX)
                .then(|| Meta::parse(0, &data[..META_PAGE_PREFIX]).ok())
                .flatten()
                .map(|meta| meta.page_size as usize)
                .filter(|ps| PAGE_SIZES.contains(ps));
        }
        let Some(ps) = self.page_size else { return };
        if self.spent || offset % ps as u64 != 0 {
            return;
        }
        let mut carried = std::mem::take(&mut self.straddling);
        if self.recorded_to != offset {
            // A chunk that does not follow on leaves the pages to be read from the db.
            carried.clear();
        }
        self.recorded_to = offset + data.len() as u64;
        let mut open = Vec::new();
        for mut page in carried {
            let wanted = page.span - page.bytes.len();
            let taken = wanted.min(data.len());
            page.bytes.extend_from_slice(&data[..taken]);
            if taken < wanted {
                open.push(page);
                continue;
            }
            // A page without a skeleton is read from the db by the walk, which says what is wrong.
            let _ = self.add(page.id, &page.bytes, &mut Vec::new());
            if self.spent {
                return;
            }
        }
        self.straddling = open;
        let first = offset / ps as u64;
        let mut elems = Vec::new();
        for start in (0..data.len()).step_by(ps) {
            let id = first + (start / ps) as u64;
            if id < 2 || start + ps > data.len() || le_u64(data, start) != id {
                continue;
            }
            let span = (u64::from(le_u32(data, start + 12)) + 1).saturating_mul(ps as u64);
            let Some(bytes) = data.get(start..).and_then(|d| d.get(..span as usize)) else {
                let carried: usize = self.straddling.iter().map(|p| p.span).sum();
                if carried as u64 + span <= STRADDLING_MAX as u64 {
                    let mut bytes = Vec::with_capacity(span as usize);
                    bytes.extend_from_slice(&data[start..]);
                    self.straddling.push(Straddling {
                        id,
                        span: span as usize,
                        bytes,
                    });
                }
                continue;
            };
            let _ = self.add(id, bytes, &mut elems);
            if self.spent {
                return;
            }
        }
    }

    /// Records the skeleton of page `id` (`bytes`: the page and its overflow pages), for a caller
    /// that cuts the db into pages itself; what is wrong with the page when it has none. Check
    /// [`Skeletons::spent`] after it.
    pub fn record_page(&mut self, id: u64, bytes: &[u8]) -> Result<(), Corruption> {
        self.add(id, bytes, &mut Vec::new())
    }

    /// Whether a skeleton found no room (the spill file failed): later pages get none.
    pub fn spent(&self) -> bool {
        self.spent
    }

    /// Bytes of skeletons in the spill file.
    pub fn spilled(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.len)
    }

    /// Adds the skeleton of page `id`, unless the budget is spent by it.
    fn add<'a>(
        &mut self,
        id: u64,
        bytes: &'a [u8],
        elems: &mut Vec<Elem<'a>>,
    ) -> Result<(), Corruption> {
        elems.clear();
        let leaf = keep(id, bytes, elems)?;
        let record = &mut self.record;
        record.clear();
        record.extend_from_slice(&[0; 4]);
        encode(id, leaf, elems, record);
        let len = (record.len() - 4) as u32;
        record[..4].copy_from_slice(&len.to_le_bytes());
        // The page count of the original page, for the walk's overlap check.
        record[4 + 12..4 + 16].copy_from_slice(&bytes[12..16]);
        if !self.memory_full && self.images.len() + record.len() <= self.budget {
            let at = self.images.len();
            self.images.extend_from_slice(record);
            self.point(id, at);
            return Ok(());
        }
        self.memory_full = true;
        let Some(spill) = self.spill.as_mut().filter(|s| !s.failed) else {
            self.spent = true;
            return Ok(());
        };
        let at = self.budget as u64 + spill.len;
        if at + record.len() as u64 >= u64::from(u32::MAX) {
            self.spent = true;
            return Ok(());
        }
        if let Err(e) = spill.file.write_all(record) {
            spill.fail(e);
            self.spent = true;
            return Ok(());
        }
        spill.len += record.len() as u64;
        self.point(id, at as usize);
        Ok(())
    }

    fn point(&mut self, id: u64, at: usize) {
        let slot = id as usize;
        if self.index.len() <= slot {
            self.index.resize(slot + 1, 0);
        }
        self.index[slot] = at as u32 + 1;
    }

    /// The skeleton of page `id` into `buf`: whether one was recorded (none when its spill file
    /// failed), or the error of a spill file that does not read back.
    pub fn image(&self, id: u64, buf: &mut Vec<u8>) -> io::Result<bool> {
        let Some(&at) = usize::try_from(id).ok().and_then(|id| self.index.get(id)) else {
            return Ok(false);
        };
        let Some(at) = (at as usize).checked_sub(1) else {
            return Ok(false);
        };
        buf.clear();
        if at < self.budget {
            let len = le_u32(&self.images, at) as usize;
            buf.extend_from_slice(&self.images[at + 4..at + 4 + len]);
            return Ok(true);
        }
        let Some(spill) = self.spill.as_ref().filter(|s| !s.failed) else {
            return Ok(false);
        };
        let file = spill.file.get_ref();
        let at = (at - self.budget) as u64;
        self.read_back
            .borrow_mut()
            .record(file, at, spill.len, buf)?;
        Ok(true)
    }
}

impl Spill {
    fn fail(&mut self, e: io::Error) {
        self.failed = true;
        self.error.get_or_insert(e);
    }
}

/// The elements a skeleton keeps of page `id`, and whether it is a leaf; what is wrong with the
/// page when it fails a check the walk would make.
fn keep<'a>(id: u64, bytes: &'a [u8], elems: &mut Vec<Elem<'a>>) -> Result<bool, Corruption> {
    let page = Page::parse(id, bytes)?;
    if !page.is_leaf() {
        for i in 0..page.count {
            let (key, child) = page.branch(i)?;
            elems.push(Elem::branch(key, child));
        }
        return Ok(false);
    }
    let mut previous: Option<&[u8]> = None;
    let mut plain_kept = false;
    for i in 0..page.count {
        let e = page.leaf(i)?;
        if previous.is_some_and(|p| p >= e.key) {
            return Err(corrupt(
                Some(id),
                format!("keys out of order at element {i}"),
            ));
        }
        previous = Some(e.key);
        let bucket = e.flags & FLAG_BUCKET != 0;
        // The first element is kept either way: as a bucket, or as the first plain key.
        if bucket || !plain_kept || i + 1 == page.count {
            plain_kept |= !bucket;
            let value = if bucket { e.value } else { &[] };
            elems.push(Elem::leaf(e.flags, e.key, value));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real etcd 3.4 db (the fuzz seed) followed by `copies` copies of one of its leaf pages,
    /// each with the id of where it lies and `overflow` pages of filler: a db whose skeletons span
    /// many read-back windows.
    fn db_of_leaves(copies: u64, overflow: u32) -> (Vec<u8>, usize) {
        let mut db = include_bytes!("../../fuzz/corpus/bbolt/seed-etcd-3.4").to_vec();
        let ps = Meta::parse(0, &db).unwrap().page_size as usize;
        let leaf = (2..db.len() / ps)
            .map(|id| db[id * ps..(id + 1) * ps].to_vec())
            .find(|page| Page::parse(le_u64(page, 0), page).is_ok_and(|p| p.is_leaf()))
            .expect("the seed has a leaf page");
        let first = (db.len() / ps) as u64;
        let span = 1 + u64::from(overflow);
        for id in (first..).step_by(span as usize).take(copies as usize) {
            let mut page = leaf.clone();
            page[..8].copy_from_slice(&id.to_le_bytes());
            page[12..16].copy_from_slice(&overflow.to_le_bytes());
            db.extend_from_slice(&page);
            db.resize(db.len() + overflow as usize * ps, 0xee);
        }
        (db, ps)
    }

    /// The same db recorded in memory and, budget 0, all in a spill file.
    fn recorded_both_ways(db: &[u8]) -> (Skeletons, Skeletons) {
        let mut in_memory = Skeletons::new(usize::MAX);
        in_memory.record(0, db);
        let mut spilled = Skeletons::spilling(0, tempfile::tempfile().unwrap());
        spilled.record(0, db);
        assert!(spilled.finish_recording().is_none());
        (in_memory, spilled)
    }

    #[test]
    fn spilled_images_read_back_in_any_order_as_they_were_recorded() {
        let (db, ps) = db_of_leaves(8000, 0);
        let (in_memory, spilled) = recorded_both_ways(&db);
        assert!(
            spilled.spilled() > 2 * READ_AHEAD as u64,
            "{}",
            spilled.spilled()
        );
        let ids: Vec<u64> = (0..(db.len() / ps) as u64).collect();
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        let mut compared = 0;
        // In order (one window reading ahead), backwards (small reads), and in two interleaved
        // runs, as the walk reads leaves and the branches elsewhere that point to them.
        let half = ids.len() / 2;
        let interleaved = (0..half).flat_map(|i| [ids[i], ids[half + i]]);
        let order = ids
            .iter()
            .copied()
            .chain(ids.iter().rev().copied())
            .chain(interleaved);
        for id in order {
            let recorded = in_memory.image(id, &mut expected).unwrap();
            assert_eq!(
                spilled.image(id, &mut actual).unwrap(),
                recorded,
                "page {id}"
            );
            if recorded {
                assert!(actual == expected, "page {id}");
                compared += 1;
            }
        }
        assert!(compared > 3 * 8000, "only {compared} pages had skeletons");
    }

    #[test]
    fn pages_that_straddle_chunks_get_the_skeletons_they_get_whole() {
        let (mut db, ps) = db_of_leaves(60, 2);
        // In every fourth copy's overflow, bytes that look like a page of two: recorded whole, they
        // get a skeleton too, and one chunk may end inside both.
        let leaf = db[db.len() - 3 * ps..db.len() - 2 * ps].to_vec();
        for copy in (1..=60).step_by(4) {
            let at = db.len() - copy * 3 * ps + ps;
            db[at..at + ps].copy_from_slice(&leaf);
            db[at..at + 8].copy_from_slice(&((at / ps) as u64).to_le_bytes());
            db[at + 12..at + 16].copy_from_slice(&1u32.to_le_bytes());
        }
        let mut whole = Skeletons::new(usize::MAX);
        whole.record(0, &db);
        let pages = (db.len() / ps) as u64;
        let leaves = (0..pages)
            .filter(|&id| whole.image(id, &mut Vec::new()).unwrap())
            .count();
        assert!(leaves >= 60 + 15, "only {leaves} pages had skeletons");
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        // Chunks of one page, shorter than a page's span, and of spans that end in every page of one.
        for pages_per_chunk in [1, 2, 4, 5, 7] {
            let mut chunked = Skeletons::new(usize::MAX);
            for (i, chunk) in db.chunks(pages_per_chunk * ps).enumerate() {
                chunked.record((i * pages_per_chunk * ps) as u64, chunk);
            }
            for id in 0..pages {
                let recorded = whole.image(id, &mut expected).unwrap();
                assert_eq!(
                    chunked.image(id, &mut actual).unwrap(),
                    recorded,
                    "page {id}, chunks of {pages_per_chunk} pages"
                );
                assert!(
                    !recorded || actual == expected,
                    "page {id}, chunks of {pages_per_chunk} pages"
                );
            }
        }
    }

    #[test]
    fn records_read_back_in_runs_and_jumps_and_past_the_windows() {
        let lens: Vec<usize> = (0..3000)
            .map(|i| [90, 4, 300, 17, 2500, 0][i % 6])
            .chain([READ_AHEAD + 1, 3 * READ_AHEAD, 5])
            .collect();
        let (mut bytes, mut records) = (Vec::new(), Vec::new());
        for (i, &len) in lens.iter().enumerate() {
            let body: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
            records.push((bytes.len() as u64, body.clone()));
            bytes.extend_from_slice(&(len as u32).to_le_bytes());
            bytes.extend_from_slice(&body);
        }
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let end = bytes.len() as u64;
        let mut read_back = ReadBack::default();
        let mut check = |i: usize| {
            let (at, body) = &records[i];
            let mut out = vec![1, 2, 3];
            read_back.record(&file, *at, end, &mut out).unwrap();
            assert!(out[..3] == [1, 2, 3] && out[3..] == body[..], "record {i}");
        };
        let n = records.len();
        (0..n).for_each(&mut check);
        (0..n / 2).flat_map(|i| [i, n / 2 + i]).for_each(&mut check);
        let mut i = 17;
        for _ in 0..500 {
            i = (i * 7919 + 13) % n;
            check(i);
        }
        let windows: usize = read_back.windows.iter().map(|w| w.bytes.capacity()).sum();
        assert!(windows <= WINDOWS * READ_AHEAD, "{windows} bytes held");
        let mut out = Vec::new();
        assert!(read_back.get(&file, end - 3, 4, end).is_err());
        // The largest record, one byte past a spill that ends where the next record starts.
        let cut = records[n - 1].0 - 1;
        assert!(read_back
            .record(&file, records[n - 2].0, cut, &mut out)
            .is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn a_spill_cut_short_reads_back_whole_images_or_errors() {
        let (db, ps) = db_of_leaves(8000, 0);
        let (in_memory, spilled) = recorded_both_ways(&db);
        let spill = spilled.spill.as_ref().unwrap();
        spill.file.get_ref().set_len(spill.len / 2).unwrap();
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        let (mut whole, mut failed) = (0, 0);
        for id in 0..(db.len() / ps) as u64 {
            if !in_memory.image(id, &mut expected).unwrap() {
                continue;
            }
            match spilled.image(id, &mut actual) {
                Ok(true) if actual == expected => whole += 1,
                Ok(found) => panic!("page {id}: {found}, {} bytes", actual.len()),
                Err(_) => failed += 1,
            }
        }
        assert!(whole > 0 && failed > 0, "{whole} whole, {failed} failed");
    }
}
