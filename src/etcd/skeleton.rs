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
//! straddles two chunks, or the budget is spent) gets none: the walk reads that page from the file
//! and reports what is wrong with it there.
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
    /// The `len` bytes at `at` of a spill of `end` bytes.
    pub(super) fn get(&mut self, file: &File, at: u64, len: usize, end: u64) -> io::Result<&[u8]> {
        let stop = at.checked_add(len as u64).filter(|&stop| stop <= end);
        let Some(stop) = stop else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at byte {at} run past the spill file's {end} bytes"),
            ));
        };
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
                        (lru, SMALL_READ)
                    }
                };
                let window = &mut self.windows[index];
                window
                    .bytes
                    .resize((end - at).min(size.max(len) as u64) as usize, 0);
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
        let first = offset / ps as u64;
        let mut elems = Vec::new();
        for (i, start) in (0..data.len()).step_by(ps).enumerate() {
            let id = first + i as u64;
            if id < 2 || start + ps > data.len() || le_u64(data, start) != id {
                continue;
            }
            let span = (u64::from(le_u32(data, start + 12)) + 1).saturating_mul(ps as u64);
            let Some(bytes) = data.get(start..).and_then(|d| d.get(..span as usize)) else {
                continue;
            };
            // A page without a skeleton is read from the db by the walk, which says what is wrong.
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
        let mut window = self.read_back.borrow_mut();
        let len = le_u32(window.get(file, at, 4, spill.len)?, 0) as usize;
        buf.extend_from_slice(window.get(file, at + 4, len, spill.len)?);
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

    /// Every page of a real etcd 3.4 db (the fuzz seed), each on its own, as a walk finds them.
    fn seed_pages() -> (Vec<u8>, usize) {
        let db = include_bytes!("../../fuzz/corpus/bbolt/seed-etcd-3.4").to_vec();
        let page_size = Meta::parse(0, &db).unwrap().page_size as usize;
        (db, page_size)
    }

    #[test]
    fn spilled_images_read_back_in_any_order_as_they_were_recorded() {
        let (db, ps) = seed_pages();
        let mut in_memory = Skeletons::new(usize::MAX);
        in_memory.record(0, &db);
        // Budget 0: every image goes to the spill file, and the window is smaller than the spill
        // only if the test reads out of order, which it does.
        let mut spilled = Skeletons::spilling(0, tempfile::tempfile().unwrap());
        spilled.record(0, &db);
        assert!(spilled.finish_recording().is_none());
        assert!(spilled.spilled() > 0);
        let ids: Vec<u64> = (0..(db.len() / ps) as u64).collect();
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        let mut compared = 0;
        for &id in ids
            .iter()
            .chain(ids.iter().rev())
            .chain(ids.iter().step_by(3))
        {
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
        assert!(compared > 3, "only {compared} pages had skeletons");
    }

    #[test]
    fn read_back_returns_the_bytes_asked_for_in_runs_and_jumps() {
        let bytes: Vec<u8> = (0..3 * READ_AHEAD as u32 + 999)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let end = bytes.len() as u64;
        let mut read_back = ReadBack::default();
        let mut check = |at: usize, len: usize| {
            let got = read_back.get(&file, at as u64, len, end).unwrap();
            assert!(got == &bytes[at..at + len], "{len} bytes at {at}");
        };
        // Two interleaved runs (leaves, and the branches that point to them), as the walk reads.
        let (mut leaves, mut branches) = (0, 2 * READ_AHEAD + 100);
        while branches + 3000 < bytes.len() {
            for len in [90, 4, 300, 17] {
                check(leaves, len);
                leaves += len;
            }
            check(branches, 2500);
            branches += 2500;
        }
        // Jumps, an image larger than a window, and the last byte.
        let mut at = 12345;
        for _ in 0..500 {
            at = (at * 7919 + 13) % (bytes.len() - 5000);
            check(at, 1 + at % 4000);
        }
        check(7, READ_AHEAD + SMALL_READ);
        check(bytes.len() - 1, 1);
        assert!(read_back.get(&file, end - 3, 4, end).is_err());
    }

    #[test]
    fn a_spill_cut_short_is_an_error_when_read_back() {
        let (db, ps) = seed_pages();
        let mut spilled = Skeletons::spilling(0, tempfile::tempfile().unwrap());
        spilled.record(0, &db);
        assert!(spilled.finish_recording().is_none());
        let spill = spilled.spill.as_ref().unwrap();
        spill.file.get_ref().set_len(spill.len / 2).unwrap();
        let ids = 0..(db.len() / ps) as u64;
        let failed = ids
            .clone()
            .filter(|&id| spilled.image(id, &mut Vec::new()).is_err())
            .count();
        let recorded = ids
            .filter(|&id| spilled.index.get(id as usize).is_some_and(|&at| at > 0))
            .count();
        // Whatever the window read before, every image read back fails: none is half read.
        assert_eq!(failed, recorded);
    }
}
