//! Hashing on a thread of its own. sha256 (and BLAKE2b for signatures) of a multi-GiB stream costs
//! as much as decompressing and writing it, so readers and writers hand the bytes over in batches
//! and go on; a few batches in flight bound the memory.

use sha2::digest::Update;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Bytes handed to the hashing thread at a time.
const BATCH: usize = 1 << 20;
const BATCHES_IN_FLIGHT: usize = 4;

pub struct Background<H> {
    state: State<H>,
}

enum State<H> {
    Thread {
        batch: Vec<u8>,
        sender: SyncSender<Vec<u8>>,
        worker: JoinHandle<H>,
    },
    /// No thread could be had: hash in the caller's thread.
    Inline(H),
}

impl<H: Update + Send + 'static> Background<H> {
    /// `make` builds the hasher, in the worker or, when no thread can be had, here.
    pub fn new(make: impl Fn() -> H + Clone + Send + 'static) -> Self {
        let (sender, receiver) = sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT);
        let theirs = make.clone();
        let spawned = std::thread::Builder::new()
            .name("cpr-hash".into())
            .spawn(move || {
                let mut hasher = theirs();
                receiver.iter().for_each(|batch| hasher.update(&batch));
                hasher
            });
        let state = match spawned {
            Ok(worker) => State::Thread {
                batch: Vec::with_capacity(BATCH),
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
            State::Thread { batch, sender, .. } => {
                batch.extend_from_slice(data);
                if batch.len() >= BATCH {
                    let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
                    // The worker only stops when the sender is dropped, so sending cannot fail.
                    let _ = sender.send(full);
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
            let mut background = Background::new(Sha256::new);
            data.chunks(chunk).for_each(|c| background.update(c));
            assert_eq!(background.finish().finalize(), expected, "chunk {chunk}");
        }
    }
}
