//! Response bytes waiting for the socket: memory segments, files sent as they are
//! (wsgi.file_wrapper, with sendfile where the OS has it), and a temporary file that
//! takes memory output past `outbuf_overflow`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};

use socket2::Socket;

/// Response bytes waiting for the socket: memory segments, files sent as they are
/// (wsgi.file_wrapper), and a temporary file that takes memory output past
/// `outbuf_overflow`.
pub struct OutBuf {
    segs: VecDeque<Seg>,
    pending: u64,
    mem_bytes: usize,
    overflow: usize,
    /// Where `feed` reads file segments.
    file_buf: Vec<u8>,
}

/// Most bytes `feed` reads from a file at once.
const FEED_READ: usize = 64 * 1024;

enum Seg {
    Mem {
        data: Vec<u8>,
        pos: usize,
    },
    /// `len` bytes of `file` from `offset`; `spill` files are ours to append to.
    File {
        file: File,
        offset: u64,
        len: u64,
        spill: bool,
    },
}

impl OutBuf {
    pub fn new(overflow: usize) -> Self {
        OutBuf { segs: VecDeque::new(), pending: 0, mem_bytes: 0, overflow, file_buf: Vec::new() }
    }

    pub fn pending(&self) -> u64 {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Whether pushing `n` more bytes would write them to the spill file.
    pub fn would_spill(&self, n: usize) -> bool {
        self.mem_bytes + n > self.overflow
    }

    pub fn push(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.mem_bytes + data.len() > self.overflow {
            if let Some(Seg::File { file, offset, len, spill: true }) = self.segs.back_mut() {
                file.seek(SeekFrom::Start(*offset + *len))?;
                file.write_all(data)?;
                *len += data.len() as u64;
            } else {
                let mut file = tempfile::tempfile()?;
                file.write_all(data)?;
                self.segs.push_back(Seg::File { file, offset: 0, len: data.len() as u64, spill: true });
            }
        } else {
            match self.segs.back_mut() {
                Some(Seg::Mem { data: buf, .. }) if buf.len() < 65536 => buf.extend_from_slice(data),
                _ => self.segs.push_back(Seg::Mem { data: data.to_vec(), pos: 0 }),
            }
            self.mem_bytes += data.len();
        }
        self.pending += data.len() as u64;
        Ok(())
    }

    /// Queues `len` bytes of `file` from `offset`, sent without copying where the OS can.
    pub fn push_file(&mut self, file: File, offset: u64, len: u64) {
        if len > 0 {
            self.segs.push_back(Seg::File { file, offset, len, spill: false });
            self.pending += len;
        }
    }

    /// Sends what the socket takes; returns how many bytes were sent.
    pub fn flush(&mut self, sock: &Socket) -> io::Result<u64> {
        let mut sent = 0u64;
        while let Some(seg) = self.segs.front_mut() {
            match seg {
                Seg::Mem { .. } => {
                    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(8);
                    for s in self.segs.iter().take(16) {
                        match s {
                            Seg::Mem { data, pos } => slices.push(IoSlice::new(&data[*pos..])),
                            Seg::File { .. } => break,
                        }
                    }
                    let n = match sock.send_vectored(&slices) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
                        Err(e) => return Err(e),
                    };
                    sent += n as u64;
                    self.consume_mem(n);
                }
                Seg::File { file, offset, len, .. } => match send_file(sock, file, *offset, *len) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        sent += n as u64;
                        *offset += n as u64;
                        *len -= n as u64;
                        self.pending -= n as u64;
                        if *len == 0 {
                            self.segs.pop_front();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(sent)
    }

    /// Hands up to `max` waiting bytes, in order, to `accept` (a TLS session's plaintext
    /// writer), which returns how many it took; files are read here (no sendfile: the
    /// bytes are encrypted). Returns the bytes taken.
    pub fn feed(&mut self, max: usize, mut accept: impl FnMut(&[u8]) -> usize) -> io::Result<u64> {
        let mut taken = 0u64;
        while (taken as usize) < max {
            let room = max - taken as usize;
            let n = match self.segs.front_mut() {
                None => break,
                Some(Seg::Mem { data, pos }) => {
                    let end = data.len().min(*pos + room);
                    let n = accept(&data[*pos..end]);
                    self.consume_mem(n);
                    n
                }
                Some(Seg::File { file, offset, len, .. }) => {
                    let want = (*len).min(room.min(FEED_READ) as u64) as usize;
                    self.file_buf.resize(want, 0);
                    let got = read_at(file, *offset, &mut self.file_buf)?;
                    if got == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file shrank while being sent",
                        ));
                    }
                    let n = accept(&self.file_buf[..got]);
                    *offset += n as u64;
                    *len -= n as u64;
                    self.pending -= n as u64;
                    if *len == 0 {
                        self.segs.pop_front();
                    }
                    n
                }
            };
            if n == 0 {
                break;
            }
            taken += n as u64;
        }
        if self.segs.is_empty() {
            self.file_buf = Vec::new();
        }
        Ok(taken)
    }

    fn consume_mem(&mut self, mut n: usize) {
        self.pending -= n as u64;
        self.mem_bytes -= n;
        while n > 0 {
            let Some(Seg::Mem { data, pos }) = self.segs.front_mut() else { break };
            let left = data.len() - *pos;
            if n >= left {
                n -= left;
                self.segs.pop_front();
            } else {
                *pos += n;
                n = 0;
            }
        }
    }

    /// Drops everything waiting (the connection is gone).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.pending = 0;
        self.mem_bytes = 0;
        self.file_buf = Vec::new();
    }
}

/// Sends up to `len` bytes of `file` from `offset`: sendfile(2) on Linux, a bounded
/// read-and-send elsewhere.
#[cfg(target_os = "linux")]
fn send_file(sock: &Socket, file: &File, offset: u64, len: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut off = offset as libc::off_t;
    let count = len.min(1 << 30) as usize;
    // SAFETY: both descriptors are open for the duration of the call; `off` is a valid
    // pointer to the offset sendfile advances.
    let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(not(target_os = "linux"))]
fn send_file(sock: &Socket, file: &File, offset: u64, len: u64) -> io::Result<usize> {
    let mut buf = vec![0u8; len.min(256 * 1024) as usize];
    let n = read_at(file, offset, &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent"));
    }
    sock.send(&buf[..n])
}

#[cfg(unix)]
fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    file.read_at(buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::windows::fs::FileExt;
    file.seek_read(buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    pub fn pair() -> (Socket, Socket) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (Socket::from(a), Socket::from(b))
    }

    #[test]
    fn spills_and_flushes_in_order() {
        let (a, b) = pair();
        let mut out = OutBuf::new(8);
        out.push(b"hello ").unwrap();
        assert!(out.would_spill(3));
        out.push(b"spilled ").unwrap();
        out.push(b"world").unwrap();
        assert_eq!(out.pending(), 19);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"..file-part..").unwrap();
        out.push_file(f, 2, 9);
        let mut sent = 0;
        while !out.is_empty() {
            sent += out.flush(&a).unwrap();
        }
        assert_eq!(sent, 28);
        drop(a);
        let mut got = Vec::new();
        (&b).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello spilled worldfile-part");
    }

    #[test]
    fn feeds_in_order_as_far_as_taken() {
        let mut out = OutBuf::new(4);
        out.push(b"ab").unwrap();
        out.push(b"cdefg").unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        out.push_file(f, 3, 5);
        out.push(b"xyz").unwrap();
        let mut got = Vec::new();
        // A taker that accepts at most 3 bytes per call, and 8 in all per feed.
        while !out.is_empty() {
            let mut budget = 8usize;
            let taken = out
                .feed(1 << 20, |b| {
                    let n = b.len().min(3).min(budget);
                    budget -= n;
                    got.extend_from_slice(&b[..n]);
                    n
                })
                .unwrap();
            assert!(taken > 0 && taken <= 8);
            assert_eq!(out.pending() + got.len() as u64, 15);
        }
        assert_eq!(got, b"abcdefg34567xyz");
    }
}
