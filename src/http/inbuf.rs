//! Received bytes not yet parsed.
//!
//! Parsing consumes from the front by moving an offset; the bytes left are moved to the
//! front only when appending and only when the consumed part is at least as large as
//! what is left, so each byte is moved a bounded number of times however many pipelined
//! requests a buffer holds (a `drain` per request would make that quadratic).

use std::io;
use std::mem::MaybeUninit;

#[derive(Debug, Default)]
pub struct InBuf {
    buf: Vec<u8>,
    start: usize,
    /// Bytes moved by compaction, for the linearity test.
    #[cfg(test)]
    pub moved: usize,
}

impl InBuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// Marks the first `n` bytes as used.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Drops everything buffered.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Drops everything and gives the memory back (a connection that is done reading).
    pub fn release(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
    }

    /// Gives the memory back when the buffer is empty and holds more than `keep` bytes
    /// of capacity (after a large request, so that idle connections stay small).
    pub fn release_if_larger(&mut self, keep: usize) {
        if self.is_empty() && self.buf.capacity() > keep {
            self.release();
        }
    }

    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.len() {
            #[cfg(test)]
            {
                self.moved += self.len();
            }
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    pub fn extend(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Receives up to `max` bytes with `recv` straight into the buffer's free space.
    /// `recv` is given uninitialised memory it must only write to, and returns how many
    /// bytes it wrote.
    pub fn recv_with(
        &mut self,
        max: usize,
        recv: impl FnOnce(&mut [MaybeUninit<u8>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.compact();
        self.buf.reserve(max);
        let spare = &mut self.buf.spare_capacity_mut()[..max];
        let n = recv(spare)?;
        assert!(n <= max, "recv reported more bytes than it was given room for");
        // SAFETY: `recv` initialised the first `n` bytes of the spare capacity (its
        // contract, as for socket2's `recv`), and `n` is within that capacity.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_and_extend() {
        let mut b = InBuf::new();
        b.extend(b"hello world");
        b.consume(6);
        assert_eq!(b.data(), b"world");
        b.extend(b"!");
        assert_eq!(b.data(), b"world!");
        b.consume(6);
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
    }

    /// Consuming many small requests out of one large buffer, with input arriving in
    /// pieces, moves a number of bytes bounded by the bytes received (no memmove of the
    /// remaining buffer per request).
    #[test]
    fn pipelined_consumption_is_linear() {
        let request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let stream = request.repeat(20_000);
        let total = stream.len();
        let mut b = InBuf::new();
        for piece in stream.chunks(64 * 1024 + 7) {
            b.extend(piece);
            while b.len() >= request.len() {
                assert_eq!(&b.data()[..4], b"GET ");
                b.consume(request.len());
            }
        }
        assert!(b.is_empty());
        assert!(b.moved <= total, "moved {} bytes for {total} received", b.moved);
    }

    #[test]
    fn recv_with_fills_spare_room() {
        let mut b = InBuf::new();
        b.extend(b"ab");
        let n = b
            .recv_with(8, |spare| {
                for (i, slot) in spare.iter_mut().take(3).enumerate() {
                    slot.write(b'x' + i as u8);
                }
                Ok(3)
            })
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(b.data(), b"abxyz");
    }
}
