//! Hashing on a thread of its own. sha256 (and BLAKE2b for signatures) of a multi-GiB stream costs
//! as much as decompressing and writing it, so readers and writers hand the bytes over in batches
//! and go on; a few batches in flight bound the memory.
//!
//! SHA-256 of big streams is ring's (OpenSSL's assembly: SHA extensions where the CPU has them,
//! AVX2 otherwise, about twice the sha2 crate's software speed); BLAKE3 is the blake3 crate's (SIMD,
//! several GB/s per core on any x86-64 server).

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// A streaming hash the hashing thread can feed.
pub trait Hasher: Send + 'static {
    fn update(&mut self, data: &[u8]);
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
        batch: Vec<u8>,
        sender: SyncSender<Vec<u8>>,
        /// Batches the worker has hashed, to fill again: a fresh one would be new pages for the
        /// kernel to fault in and zero, a few percent of a restore's time.
        hashed: Receiver<Vec<u8>>,
        worker: JoinHandle<H>,
    },
    /// No thread could be had: hash in the caller's thread.
    Inline(H),
}

impl<H: Hasher> Background<H> {
    /// `make` builds the hasher, in the worker or, when no thread can be had, here.
    pub fn new(make: impl Fn() -> H + Clone + Send + 'static) -> Self {
        let (sender, receiver) = sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT);
        let (give_back, hashed) = sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT + 1);
        let theirs = make.clone();
        let spawned = std::thread::Builder::new()
            .name("cpr-hash".into())
            .spawn(move || {
                let mut hasher = theirs();
                for mut batch in receiver {
                    hasher.update(&batch);
                    batch.clear();
                    // Full only if the caller stopped taking batches back: this one is dropped.
                    let _ = give_back.try_send(batch);
                }
                hasher
            });
        let state = match spawned {
            Ok(worker) => State::Thread {
                batch: Vec::with_capacity(BATCH),
                sender,
                hashed,
                worker,
            },
            Err(_) => State::Inline(make()),
        };
        Background { state }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        match &mut self.state {
            State::Inline(hasher) => hasher.update(data),
            State::Thread {
                batch,
                sender,
                hashed,
                ..
            } => {
                // Batches are filled to BATCH exactly, never grown: a read of several MiB appended
                // whole would reallocate and copy the batch again.
                while !data.is_empty() {
                    let take = (BATCH - batch.len()).min(data.len());
                    batch.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if batch.len() == BATCH {
                        let next = hashed
                            .try_recv()
                            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
                        let full = std::mem::replace(batch, next);
                        // The worker only stops when the sender is dropped, so sending cannot fail.
                        let _ = sender.send(full);
                    }
                }
            }
        }
    }

    /// The hasher with everything fed to it, ready to finalize.
    pub fn finish(self) -> H {
        match self.state {
            State::Inline(hasher) => hasher,
            State::Thread {
                batch,
                sender,
                worker,
                ..
            } => {
                let _ = sender.send(batch);
                drop(sender);
                // A panic while hashing is passed on as if it had happened inline.
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
        }
    }
}

/// Passes a stream through, hashing it with BLAKE3 on the hashing thread.
pub struct Blake3Reader<R> {
    inner: R,
    hasher: Background<blake3::Hasher>,
}

impl<R> Blake3Reader<R> {
    pub fn new(inner: R) -> Self {
        Blake3Reader {
            inner,
            hasher: Background::new(blake3::Hasher::new),
        }
    }

    /// The stream, and the digest of everything read through it.
    pub fn finish(self) -> (R, blake3::Hash) {
        (self.inner, self.hasher.finish().finalize())
    }
}

impl<R: Read> Read for Blake3Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
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
        let mut reader = Blake3Reader::new(&data[..]);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        let (_, digest) = reader.finish();
        assert!(out == data);
        assert_eq!(digest, blake3::hash(&data));
    }
}
