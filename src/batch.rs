//! A byte stream cut into fixed-size batches for another thread or task, whose buffers come back to
//! be filled again: a fresh buffer is pages for the kernel to fault in and zero, a few percent of a
//! restore's time.

use std::sync::mpsc::Receiver;

pub struct Batcher {
    batch: Vec<u8>,
    size: usize,
    /// Batches the other side is done with.
    recycled: Receiver<Vec<u8>>,
}

impl Batcher {
    pub fn new(size: usize, recycled: Receiver<Vec<u8>>) -> Self {
        Batcher {
            batch: Vec::with_capacity(size),
            size,
            recycled,
        }
    }

    /// Appends as much of `data` as the batch holds; once it is full, returns it and the rest of
    /// `data`. Batches are filled to their size exactly, never grown: a read of several MiB
    /// appended whole would reallocate and copy the batch again.
    pub fn push<'d>(&mut self, data: &'d [u8]) -> Option<(Vec<u8>, &'d [u8])> {
        let take = (self.size - self.batch.len()).min(data.len());
        self.batch.extend_from_slice(&data[..take]);
        if self.batch.len() < self.size {
            return None;
        }
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.size));
        Some((std::mem::replace(&mut self.batch, next), &data[take..]))
    }

    /// The last, partly filled batch, at the end of the stream.
    pub fn rest(self) -> Vec<u8> {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_the_stream_in_order_at_their_size_and_reuse_buffers() {
        let (give_back, recycled) = std::sync::mpsc::sync_channel(4);
        let mut batcher = Batcher::new(4, recycled);
        let stream: Vec<u8> = (0..23).collect();
        let mut full = Vec::new();
        let mut buffers = Vec::new();
        for piece in [
            &stream[..1],
            &stream[1..11],
            &stream[11..11],
            &stream[11..23],
        ] {
            let mut rest = piece;
            while let Some((batch, more)) = batcher.push(rest) {
                assert_eq!(batch.len(), 4);
                full.extend_from_slice(&batch);
                buffers.push(batch.as_ptr());
                let mut spent = batch;
                spent.clear();
                give_back.send(spent).unwrap();
                rest = more;
            }
        }
        let last = batcher.rest();
        assert_eq!(last.len(), 3);
        full.extend_from_slice(&last);
        assert_eq!(full, stream);
        // Two buffers take turns: each given back is filled again.
        assert_eq!(buffers.len(), 5);
        assert_ne!(buffers[0], buffers[1]);
        assert_eq!(&buffers[2..], &[buffers[0], buffers[1], buffers[0]]);
    }
}
