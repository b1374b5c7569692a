//! A byte stream cut into fixed-size batches for another thread or task, whose buffers come back to
//! be filled again: a fresh buffer is pages for the kernel to fault in and zero, a few percent of a
//! restore's time.

use std::future::Future;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

pub struct Batcher {
    batch: Vec<u8>,
    size: usize,
    /// Batches the other side is done with, given back as they were.
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
        let next = match self.recycled.try_recv() {
            Ok(mut spent) => {
                spent.clear();
                spent
            }
            Err(_) => Vec::with_capacity(self.size),
        };
        Some((std::mem::replace(&mut self.batch, next), &data[take..]))
    }

    /// The last, partly filled batch, at the end of the stream.
    pub fn rest(self) -> Vec<u8> {
        self.batch
    }
}

/// Bytes a `stream` hands its reader at a time.
const STREAM_BATCH: usize = 1 << 20;
/// Batches received ahead of the reader.
const STREAM_BATCHES_IN_FLIGHT: usize = 2;

/// A stream a task on the runtime receives in pieces (etcd's 32 KiB messages, an HTTP body's chunks
/// of a few KiB to a few dozen) handed to a blocking reader in 1 MiB batches, two of them ahead: the
/// reading thread waits once per batch instead of once per piece, each wait a cross-thread wake-up
/// that cost more CPU than decrypting the piece.
pub fn stream() -> (StreamSender, StreamReader) {
    stream_of(STREAM_BATCH, STREAM_BATCHES_IN_FLIGHT)
}

fn stream_of(size: usize, in_flight: usize) -> (StreamSender, StreamReader) {
    let (sender, handed) = tokio::sync::mpsc::channel(in_flight);
    let (spent, recycled) = sync_channel(in_flight + 1);
    (
        StreamSender {
            batcher: Batcher::new(size, recycled),
            sender,
        },
        Handover::new(
            handed,
            spent,
            "the task receiving the stream stopped before its end",
        ),
    )
}

/// What a producer (a thread, a task) hands a `Handover`, in order.
pub enum Handed {
    /// A buffer, and how many bytes at its start are the stream's.
    Batch(Vec<u8>, usize),
    End,
    Failed(io::Error),
}

/// Where a `Handover` waits for what comes next: `None` once the producer is gone.
pub trait Producer {
    fn next(&mut self) -> Option<Handed>;
}

/// A thread's channel.
impl Producer for Receiver<Handed> {
    fn next(&mut self) -> Option<Handed> {
        self.recv().ok()
    }
}

/// A task's channel, waited on from a thread outside the runtime.
impl Producer for tokio::sync::mpsc::Receiver<Handed> {
    fn next(&mut self) -> Option<Handed> {
        self.blocking_recv()
    }
}

/// A blocking reader of what a producer hands over: it hands out each batch, gives the buffer back
/// to be filled again (fresh ones would be pages to fault in), and answers every read after the
/// end as the end did. Dropping it tells the producer to stop.
pub struct Handover<P> {
    producer: P,
    give_back: SyncSender<Vec<u8>>,
    batch: Vec<u8>,
    at: usize,
    len: usize,
    ended: Option<Result<(), (io::ErrorKind, String)>>,
    /// The error of a producer gone without an end, which is never taken for a complete stream.
    vanished: &'static str,
}

impl<P> Handover<P> {
    pub fn new(producer: P, give_back: SyncSender<Vec<u8>>, vanished: &'static str) -> Self {
        Handover {
            producer,
            give_back,
            batch: Vec::new(),
            at: 0,
            len: 0,
            ended: None,
            vanished,
        }
    }
}

impl<P: Producer> Read for Handover<P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.len {
            match &self.ended {
                Some(Ok(())) => return Ok(0),
                Some(Err((kind, message))) => return Err(io::Error::new(*kind, message.clone())),
                None => {}
            }
            match self.producer.next() {
                Some(Handed::Batch(next, len)) => {
                    let spent = std::mem::replace(&mut self.batch, next);
                    (self.at, self.len) = (0, len);
                    // Full only if the producer stopped taking buffers back: this one is dropped.
                    // The empty one a reader starts with is nothing to fill.
                    if spent.capacity() > 0 {
                        let _ = self.give_back.try_send(spent);
                    }
                }
                Some(Handed::End) => self.ended = Some(Ok(())),
                Some(Handed::Failed(error)) => {
                    self.ended = Some(Err((error.kind(), error.to_string())));
                    return Err(error);
                }
                None => self.ended = Some(Err((io::ErrorKind::Other, self.vanished.into()))),
            }
        }
        let n = buf.len().min(self.len - self.at);
        buf[..n].copy_from_slice(&self.batch[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The blocking reader's end of a `stream`.
pub type StreamReader = Handover<tokio::sync::mpsc::Receiver<Handed>>;

/// The task's end of a `stream`.
pub struct StreamSender {
    batcher: Batcher,
    sender: tokio::sync::mpsc::Sender<Handed>,
}

impl StreamSender {
    /// Passes `data` on; false once the reader is gone, and the task should stop receiving.
    pub async fn send(&mut self, mut data: &[u8]) -> bool {
        while let Some((full, rest)) = self.batcher.push(data) {
            let len = full.len();
            if self.sender.send(Handed::Batch(full, len)).await.is_err() {
                return false;
            }
            data = rest;
        }
        true
    }

    /// Awaits `receiving` (the next piece, a reconnection), unless the reader goes away first:
    /// then `None`, and the task stops at once instead of holding its connection until the peer
    /// sends more.
    pub async fn unless_abandoned<T>(&mut self, receiving: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            received = receiving => Some(received),
            () = self.sender.closed() => None,
        }
    }

    /// Ends the stream: what was sent before goes first, in order, then the end or `end`'s error.
    pub async fn end(self, end: io::Result<()>) {
        let rest = self.batcher.rest();
        let len = rest.len();
        if self.sender.send(Handed::Batch(rest, len)).await.is_ok() {
            let last = end.map_or_else(Handed::Failed, |()| Handed::End);
            let _ = self.sender.send(last).await;
        }
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
                // Given back as it was: the batcher empties it.
                give_back.send(batch).unwrap();
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

    /// Pieces sent from a task come out of the reader whole and in order, then its end: a clean end
    /// as the end of the stream, a failure after what came before it, and a task gone without an
    /// end as an error, never as a complete stream.
    #[test]
    fn a_stream_hands_over_every_piece_then_how_it_ended() {
        let read_all = |end: Option<io::Result<()>>| {
            let (mut sender, mut reader) = stream_of(4, 2);
            crate::rt::runtime().spawn(async move {
                for piece in [&b"abc"[..], b"", b"defghij", b"k"] {
                    assert!(sender.send(piece).await);
                }
                if let Some(end) = end {
                    sender.end(end).await;
                }
            });
            let mut got = Vec::new();
            let ended = reader.read_to_end(&mut got).map(drop);
            // Once ended, the reader keeps saying so.
            let again = reader.read(&mut [0; 4]).map_err(|e| e.to_string());
            (got, ended.map_err(|e| e.to_string()), again)
        };
        assert_eq!(
            read_all(Some(Ok(()))),
            (b"abcdefghijk".to_vec(), Ok(()), Ok(0))
        );
        let failed = read_all(Some(Err(io::Error::other("connection reset"))));
        assert_eq!(failed.0, b"abcdefghijk");
        assert_eq!(failed.1, Err("connection reset".into()));
        assert_eq!(failed.2, Err("connection reset".into()));
        let gone = read_all(None);
        assert_eq!(gone.0, b"abcdefgh", "the last partial batch was never sent");
        assert!(gone.1.unwrap_err().contains("stopped before its end"));
    }

    #[test]
    fn a_dropped_reader_stops_the_task_even_while_it_waits_for_more() {
        let (mut sender, reader) = stream_of(4, 1);
        drop(reader);
        let (sent, waited) = crate::rt::block_on(async move {
            let sent = sender.send(b"more than a batch").await;
            (
                sent,
                sender.unless_abandoned(std::future::pending::<()>()).await,
            )
        });
        assert!(!sent);
        assert_eq!(waited, None);
    }
}
