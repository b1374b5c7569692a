//! Hashing of streams, for the bundle format and for the etcd snapshot streaming out of a bundle.
//!
//! Mostly on a thread of its own: sha256 (and BLAKE2b for signatures) of a multi-GiB stream costs
//! as much as decompressing and writing it, so readers and writers hand the bytes over in batches
//! and go on; a few batches in flight bound the memory.
//!
//! SHA-256 of big streams is ring's (OpenSSL's assembly: SHA extensions where the CPU has them,
//! AVX2 otherwise, about twice the sha2 crate's software speed); BLAKE3 is the blake3 crate's (SIMD,
//! several GB/s per core on any x86-64 server).

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::batch::{Batcher, Handed, Handover};

/// A streaming hash: the hashing thread's, or one a reader feeds where it reads.
pub trait Hasher {
    fn update(&mut self, data: &[u8]);
}

/// A hasher the caller keeps, to hash more of the stream or finalize.
impl<H: Hasher + ?Sized> Hasher for &mut H {
    fn update(&mut self, data: &[u8]) {
        H::update(self, data);
    }
}

impl Hasher for ring::digest::Context {
    fn update(&mut self, data: &[u8]) {
        ring::digest::Context::update(self, data);
    }
}

impl Hasher for blake3::Hasher {
    fn update(&mut self, data: &[u8]) {
        blake3::Hasher::update(self, data);
    }
}

impl Hasher for sha2::Sha256 {
    fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(self, data);
    }
}

/// A fresh SHA-256.
pub fn sha256() -> ring::digest::Context {
    ring::digest::Context::new(&ring::digest::SHA256)
}

/// Bytes handed to the hashing thread at a time.
const BATCH: usize = 1 << 20;
/// Queued for the hashing thread. Recycled batches stay resident, so each hasher holds at most this
/// many plus the one being hashed and the one being filled; two keep BLAKE3 (several times
/// faster than zstd's decompression feeding it) and SHA-256 behind a stream with no more memory
/// than fresh batches took.
const BATCHES_IN_FLIGHT: usize = 2;

pub struct Background<H> {
    state: State<H>,
}

enum State<H> {
    Thread {
        /// Filled with the worker's hashed batches.
        batcher: Batcher,
        sender: SyncSender<Vec<u8>>,
        worker: JoinHandle<H>,
    },
    /// No thread could be had: hash in the caller's thread.
    Inline(H),
}

impl<H: Hasher + Send + 'static> Background<H> {
    /// `make` builds the hasher, in the worker or, when no thread can be had, here.
    pub fn new(make: impl Fn() -> H + Clone + Send + 'static) -> Self {
        let (sender, receiver) = sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT);
        let (give_back, hashed) = sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT + 1);
        let theirs = make.clone();
        let spawned = std::thread::Builder::new()
            .name("cpr-hash".into())
            .spawn(move || {
                let mut hasher = theirs();
                for batch in receiver {
                    hasher.update(&batch);
                    // Full only if the caller stopped taking batches back: this one is dropped.
                    let _ = give_back.try_send(batch);
                }
                hasher
            });
        let state = match spawned {
            Ok(worker) => State::Thread {
                batcher: Batcher::new(BATCH, hashed),
                sender,
                worker,
            },
            Err(_) => State::Inline(make()),
        };
        Background { state }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Inline(hasher) => hasher.update(data),
            State::Thread {
                batcher, sender, ..
            } => {
                let mut rest = data;
                while let Some((full, more)) = batcher.push(rest) {
                    // The worker only stops when the sender is dropped, so sending cannot fail.
                    let _ = sender.send(full);
                    rest = more;
                }
            }
        }
    }

    /// The hasher with everything fed to it, ready to finalize.
    pub fn finish(self) -> H {
        match self.state {
            State::Inline(hasher) => hasher,
            State::Thread {
                batcher,
                sender,
                worker,
            } => {
                let _ = sender.send(batcher.rest());
                drop(sender);
                // A panic while hashing is passed on as if it had happened inline.
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
        }
    }
}

impl<H: Hasher + Send + 'static> Hasher for Background<H> {
    fn update(&mut self, data: &[u8]) {
        Background::update(self, data);
    }
}

/// Passes a stream through, feeding `hasher` every byte read.
pub struct HashingReader<R, H> {
    inner: R,
    hasher: H,
}

impl<R, H> HashingReader<R, H> {
    pub fn new(inner: R, hasher: H) -> Self {
        HashingReader { inner, hasher }
    }

    /// The stream, and the hasher fed everything read through it.
    pub fn into_parts(self) -> (R, H) {
        (self.inner, self.hasher)
    }
}

impl<R> HashingReader<R, Background<blake3::Hasher>> {
    /// Hashing with BLAKE3 on the hashing thread.
    pub fn blake3(inner: R) -> Self {
        HashingReader::new(inner, Background::new(blake3::Hasher::new))
    }

    /// The stream, and the digest of everything read through it.
    pub fn finish(self) -> (R, blake3::Hash) {
        (self.inner, self.hasher.finish().finalize())
    }
}

impl<R: Read, H: Hasher> Read for HashingReader<R, H> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Bytes read ahead at a time, and how many such reads may wait for the caller.
const READ_AHEAD: usize = 1 << 20;
const READS_IN_FLIGHT: usize = 3;

/// Reads a stream ahead of the caller on a thread of its own, which also feeds `H` what it reads:
/// the caller (a restore's decompressing thread, its critical path) neither waits on the store nor
/// copies what it read for the hashing thread. A failed read fails the caller's read that reaches
/// it, and every read after.
pub struct ReadAhead<R, H> {
    state: AheadState<R, H>,
}

enum AheadState<R, H> {
    Thread {
        filled: Handover<Receiver<Handed>>,
        worker: JoinHandle<H>,
    },
    /// No thread could be had: read and hash in the caller's thread.
    Inline(HashingReader<R, H>),
}

impl<R: Read + Send + 'static, H: Hasher + Send + 'static> ReadAhead<R, H> {
    pub fn new(inner: R, hasher: H) -> Self {
        let (filled_tx, filled) = sync_channel(READS_IN_FLIGHT);
        let (give_back, recycled) = sync_channel::<Vec<u8>>(READS_IN_FLIGHT + 1);
        // Handed over once the thread runs, so that they stay ours when it cannot be had.
        let (start, started) = sync_channel::<(R, H)>(1);
        let spawned = std::thread::Builder::new()
            .name("cpr-read".into())
            .spawn(move || {
                let (mut inner, mut hasher) = started.recv().expect("handed over once spawned");
                loop {
                    let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0; READ_AHEAD]);
                    // A download comes in pieces of a few KiB: each hop to the caller carries a
                    // full buffer instead.
                    let (mut n, mut last) = (0, None);
                    while n < buf.len() && last.is_none() {
                        match inner.read(&mut buf[n..]) {
                            Ok(0) => last = Some(Handed::End),
                            Ok(read) => n += read,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => last = Some(Handed::Failed(e)),
                        }
                    }
                    hasher.update(&buf[..n]);
                    let read = (n > 0).then_some(Handed::Batch(buf, n));
                    let stop = last.is_some();
                    for message in read.into_iter().chain(last) {
                        // The caller went away: nobody reads on.
                        if filled_tx.send(message).is_err() {
                            return hasher;
                        }
                    }
                    if stop {
                        return hasher;
                    }
                }
            });
        let state = match spawned {
            Ok(worker) => {
                start
                    .send((inner, hasher))
                    .expect("the thread waits for them");
                AheadState::Thread {
                    filled: Handover::new(
                        filled,
                        give_back,
                        "the thread reading ahead stopped before the end",
                    ),
                    worker,
                }
            }
            Err(_) => AheadState::Inline(HashingReader::new(inner, hasher)),
        };
        ReadAhead { state }
    }

    /// The hasher fed everything read; call after the end of the stream (before it, the hasher
    /// has been fed however far the thread read ahead).
    pub fn finish(self) -> H {
        match self.state {
            AheadState::Inline(reader) => reader.into_parts().1,
            AheadState::Thread { filled, worker } => {
                // Stops a thread that is still reading ahead.
                drop(filled);
                // A panic while reading or hashing is passed on as if it had happened inline.
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
        }
    }
}

impl<R: Read, H: Hasher> Read for ReadAhead<R, H> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.state {
            AheadState::Inline(reader) => reader.read(buf),
            // A vanished thread is not an end: it panicked, which `finish` passes on.
            AheadState::Thread { filled, .. } => filled.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn equals_hashing_inline_for_any_chunking() {
        let data: Vec<u8> = (0..3 * BATCH as u32 + 777)
            .map(|i| (i * 31) as u8)
            .collect();
        let expected = Sha256::digest(&data);
        for chunk in [1000, 4096, BATCH - 1, BATCH + 1, data.len()] {
            let mut background = Background::new(sha256);
            data.chunks(chunk).for_each(|c| background.update(c));
            assert_eq!(
                background.finish().finish().as_ref(),
                &expected[..],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn blake3_reader_passes_the_stream_through_and_hashes_all_of_it() {
        let data: Vec<u8> = (0..2 * BATCH as u32 + 5).map(|i| (i * 7) as u8).collect();
        let mut reader = HashingReader::blake3(&data[..]);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        let (_, digest) = reader.finish();
        assert!(out == data);
        assert_eq!(digest, blake3::hash(&data));
    }

    #[test]
    fn a_borrowed_hasher_keeps_what_was_read_through_it() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13) as u8).collect();
        let mut blake3 = blake3::Hasher::new();
        let mut reader = HashingReader::new(&data[..], &mut blake3);
        let mut first = vec![0; 777];
        reader.read_exact(&mut first).unwrap();
        let (mut rest, _) = reader.into_parts();
        io::copy(&mut rest, &mut blake3).unwrap();
        assert_eq!(blake3.finalize(), blake3::hash(&data));
    }

    /// A reader that hands out `data` in reads of `step` bytes, then fails once if `fail` says so.
    struct Steps {
        data: Vec<u8>,
        at: usize,
        step: usize,
        fail: bool,
    }

    impl Read for Steps {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() && std::mem::take(&mut self.fail) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "reset by peer",
                ));
            }
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn read_ahead_passes_the_stream_through_hashed_for_any_read_sizes() {
        let data: Vec<u8> = (0..5 * READ_AHEAD as u32 / 2)
            .map(|i| (i * 11) as u8)
            .collect();
        for (step, take) in [(READ_AHEAD, 4096), (1000, READ_AHEAD + 3), (7, 1 << 16)] {
            let inner = Steps {
                data: data.clone(),
                at: 0,
                step,
                fail: false,
            };
            let mut ahead = ReadAhead::new(inner, blake3::Hasher::new());
            let (mut out, mut buf, mut reads) = (Vec::new(), vec![0; take], Vec::new());
            loop {
                let n = ahead.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                reads.push(n);
                out.extend_from_slice(&buf[..n]);
            }
            assert!(out == data, "reads of {step}, taken {take} at a time");
            // Small reads reach the caller gathered into full buffers.
            if take > READ_AHEAD {
                assert_eq!(reads[..2], [READ_AHEAD; 2], "reads of {step}");
            }
            assert_eq!(ahead.read(&mut buf).unwrap(), 0, "the end stays the end");
            assert_eq!(ahead.finish().finalize(), blake3::hash(&data));
        }
    }

    #[test]
    fn read_ahead_fails_the_read_that_reaches_a_failed_read_and_every_one_after() {
        let data = vec![5u8; READ_AHEAD + 10];
        let inner = Steps {
            data: data.clone(),
            at: 0,
            step: 4096,
            fail: true,
        };
        let mut ahead = ReadAhead::new(inner, blake3::Hasher::new());
        let mut out = Vec::new();
        let error = ahead.read_to_end(&mut out).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        assert!(out == data, "everything before the failure is handed out");
        let again = ahead.read(&mut [0; 10]).unwrap_err();
        assert_eq!(
            (again.kind(), again.to_string()),
            (error.kind(), error.to_string())
        );
    }
}
