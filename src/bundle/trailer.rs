//! etcd's snapshot integrity check: the last 32 bytes are sha256 of everything before them.
//!
//! Snapshots are streamed, so the hasher holds back the newest 32 bytes until it knows they are the end.
//! The hashing runs on a thread of its own while the reader decompresses and writes.

use std::io::{self, Read};

use crate::hashing::{sha256, Background};

const TRAILER: usize = 32;

pub struct TrailerCheck {
    hasher: Background<ring::digest::Context>,
    tail: Vec<u8>,
}

impl TrailerCheck {
    pub fn new() -> Self {
        TrailerCheck {
            hasher: Background::new(sha256),
            tail: Vec::with_capacity(2 * TRAILER),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        if data.len() >= TRAILER {
            self.hasher.update(&self.tail);
            self.tail.clear();
            let (body, tail) = data.split_at(data.len() - TRAILER);
            self.hasher.update(body);
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > TRAILER {
                let spill = self.tail.len() - TRAILER;
                self.hasher.update(&self.tail[..spill]);
                self.tail.drain(..spill);
            }
        }
    }

    /// True when the stream ended in the sha256 of what came before.
    pub fn matches(self) -> bool {
        self.tail.len() == TRAILER && self.hasher.finish().finish().as_ref() == &self.tail[..]
    }
}

/// Passes a snapshot through, checking its trailer on the way.
pub struct TrailerReader<R> {
    inner: R,
    check: TrailerCheck,
    count: u64,
}

impl<R> TrailerReader<R> {
    pub fn new(inner: R) -> Self {
        TrailerReader {
            inner,
            check: TrailerCheck::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn matches(self) -> bool {
        self.check.matches()
    }
}

impl<R: Read> Read for TrailerReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn snapshot(body: &[u8]) -> Vec<u8> {
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(&Sha256::digest(body));
        bytes
    }

    #[test]
    fn accepts_any_chunking_of_a_good_snapshot() {
        let bytes = snapshot(&(0..5000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        for chunk in [1, 5, 31, 32, 33, 512, 4096, bytes.len()] {
            let mut check = TrailerCheck::new();
            bytes.chunks(chunk).for_each(|c| check.update(c));
            assert!(check.matches(), "chunk size {chunk}");
        }
    }

    #[test]
    fn rejects_a_flipped_byte_anywhere() {
        let good = snapshot(b"some bbolt pages would be here");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let mut check = TrailerCheck::new();
            bad.chunks(7).for_each(|c| check.update(c));
            assert!(!check.matches(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn rejects_a_stream_shorter_than_the_trailer() {
        let mut check = TrailerCheck::new();
        check.update(&[0u8; 31]);
        assert!(!check.matches());
    }
}
