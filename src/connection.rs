//! One client connection: its input buffer and parse state, its output buffer, and the
//! flags that say who (the reactor or one worker) is driving it.
//!
//! The reactor reads and parses only while no request of the connection is being served;
//! the worker serving a request writes its response straight to the socket while the
//! socket takes it, and leaves the rest in the output buffer for the reactor to flush.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use socket2::Socket;

use crate::config::Config;
use crate::http::body::{BodyDecoder, Spool};
use crate::http::request::{self, BodyFraming, HeadScanner, RequestHead};
use crate::http::{HttpError, Version};
use crate::listener::ListenerInfo;

/// A request whose head and whole body have arrived.
pub struct Request {
    pub head: RequestHead,
    pub body: Spool,
}

pub enum ReadState {
    Head(HeadScanner),
    /// `raw` counts the body bytes received with their framing: Waitress counts chunked
    /// bodies that way against max_request_body_size.
    Body { head: RequestHead, decoder: BodyDecoder, spool: Spool, raw: u64 },
}

/// What parsing the buffered input gave.
pub enum Parsed {
    Request(Request),
    /// A request that must be refused; answer with this error, then close.
    Error(HttpError, Version),
    /// More input is needed.
    NeedMore,
}

pub struct Conn {
    pub key: usize,
    pub sock: Socket,
    pub listener: std::sync::Arc<ListenerInfo>,
    pub remote_addr: String,
    pub remote_port: String,
    pub st: Mutex<ConnState>,
    /// Signalled when the output buffer drains or the connection closes.
    pub drained: Condvar,
}

pub struct ConnState {
    pub inbuf: Vec<u8>,
    pub reading: ReadState,
    pub out: OutBuf,
    /// A worker is serving a request of this connection.
    pub busy: bool,
    /// Close once the output buffer is empty (an error answer, `Connection: close`, EOF).
    pub close_after_flush: bool,
    pub closed: bool,
    /// The peer will send nothing more.
    pub eof: bool,
    /// Interest in writability is registered with the poller.
    pub write_armed: bool,
    /// After an error answer: half-close and read (discarding) until the client closes,
    /// so that data it is still sending does not turn our close into a reset that
    /// destroys the answer before the client reads it.
    pub linger: bool,
    /// Half-closed; input is discarded until EOF or the linger deadline.
    pub draining: bool,
    /// When the first byte of the request head being read arrived: a head must be
    /// complete within channel_timeout, so a client dribbling it byte by byte (slowloris)
    /// is closed like an idle one.
    pub head_started: Option<Instant>,
    pub last_activity: Instant,
}

impl Conn {
    pub fn new(key: usize, sock: Socket, listener: std::sync::Arc<ListenerInfo>,
               remote: (String, String), cfg: &Config) -> Self {
        Conn {
            key,
            sock,
            listener,
            remote_addr: remote.0,
            remote_port: remote.1,
            st: Mutex::new(ConnState {
                inbuf: Vec::new(),
                reading: ReadState::Head(HeadScanner::default()),
                out: OutBuf::new(cfg.outbuf_overflow),
                busy: false,
                close_after_flush: false,
                closed: false,
                eof: false,
                write_armed: false,
                linger: false,
                draining: false,
                head_started: None,
                last_activity: Instant::now(),
            }),
            drained: Condvar::new(),
        }
    }
}

impl ConnState {
    /// Reads what the socket has into `inbuf`, using `scratch` as the landing buffer.
    /// Returns the number of bytes read; sets `eof` when the peer closed.
    pub fn read_some(&mut self, sock: &Socket, scratch: &mut [u8]) -> io::Result<usize> {
        let mut total = 0;
        loop {
            // A Content-Length body goes from the landing buffer straight into its spool,
            // and no further than its end.
            let direct = match &self.reading {
                ReadState::Body { decoder, .. } if self.inbuf.is_empty() => decoder.remaining(),
                _ => None,
            };
            let want = match direct {
                Some(0) => return Ok(total),
                Some(left) => (left.min(scratch.len() as u64)) as usize,
                None => scratch.len(),
            };
            let got = match &mut self.reading {
                ReadState::Body { decoder, spool, raw, .. } if direct.is_some() => {
                    spool.recv_from(sock, want, scratch).inspect(|&n| {
                        decoder.advance(n as u64);
                        *raw += n as u64;
                    })
                }
                _ => (&*sock).read(&mut scratch[..want]).inspect(|&n| {
                    if n > 0 && self.head_started.is_none() && matches!(self.reading, ReadState::Head(_)) {
                        self.head_started = Some(Instant::now());
                    }
                    self.inbuf.extend_from_slice(&scratch[..n]);
                }),
            };
            match got {
                Ok(0) => {
                    self.eof = true;
                    return Ok(total);
                }
                Ok(n) => {
                    total += n;
                    self.last_activity = Instant::now();
                    // A short read means the socket is drained; past READ_BURST, other
                    // connections get their turn (the poller reports this one again).
                    if n < want || total >= READ_BURST {
                        return Ok(total);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }

    /// Parses as much of `inbuf` as makes one request.
    pub fn parse(&mut self, cfg: &Config) -> Parsed {
        loop {
            match &mut self.reading {
                ReadState::Head(scanner) => {
                    let head = match request::take_head(scanner, &mut self.inbuf, cfg.max_request_header_size) {
                        Ok(Some(head)) => {
                            self.head_started = None;
                            head
                        }
                        Ok(None) => return Parsed::NeedMore,
                        Err((e, version)) => return Parsed::Error(e, version),
                    };
                    let decoder = match head.framing {
                        BodyFraming::None | BodyFraming::Length(0) => {
                            self.start_next_head_clock();
                            return Parsed::Request(Request { head, body: Spool::new(0) });
                        }
                        BodyFraming::Length(n) => {
                            if n >= cfg.max_request_body_size {
                                let e = too_large_body(cfg.max_request_body_size);
                                return Parsed::Error(e, head.version);
                            }
                            BodyDecoder::length(n)
                        }
                        BodyFraming::Chunked => BodyDecoder::chunked(),
                    };
                    if head.expect_continue {
                        // Sent before any response bytes, since nothing of this
                        // connection is in flight while a request is parsed.
                        if let Err(e) = self.out.push(INTERIM_CONTINUE) {
                            return Parsed::Error(
                                HttpError::new(500, format!("could not buffer output: {e}")),
                                head.version,
                            );
                        }
                    }
                    let spool = match head.framing {
                        BodyFraming::Length(n) => Spool::for_length(cfg.inbuf_overflow, n),
                        _ => Ok(Spool::new(cfg.inbuf_overflow)),
                    };
                    let spool = match spool {
                        Ok(s) => s,
                        Err(e) => {
                            let e = HttpError::new(500, format!("could not buffer the request body: {e}"));
                            return Parsed::Error(e, head.version);
                        }
                    };
                    self.reading = ReadState::Body { head, decoder, spool, raw: 0 };
                }
                ReadState::Body { head, decoder, spool, raw } => {
                    if !self.inbuf.is_empty() {
                        let max = cfg.max_request_body_size;
                        let chunked = head.framing == BodyFraming::Chunked;
                        match decoder.feed(&self.inbuf, spool, max) {
                            Ok(p) => {
                                self.inbuf.drain(..p.consumed);
                                *raw += p.consumed as u64;
                                if chunked && *raw >= max {
                                    return Parsed::Error(too_large_body(max), head.version);
                                }
                            }
                            Err(e) => {
                                // Waitress checks the size before the framing: a body
                                // past the limit is 413 even if its framing is bad too.
                                let seen = *raw + self.inbuf.len() as u64;
                                let e = if chunked && seen >= max { too_large_body(max) } else { e };
                                return Parsed::Error(e, head.version);
                            }
                        }
                    }
                    if !decoder.is_done() {
                        return Parsed::NeedMore;
                    }
                    let state =
                        std::mem::replace(&mut self.reading, ReadState::Head(HeadScanner::default()));
                    let ReadState::Body { head, spool, .. } = state else { unreachable!() };
                    self.start_next_head_clock();
                    return Parsed::Request(Request { head, body: spool });
                }
            }
        }
    }

    /// A request is complete: bytes already buffered after it are the next head's.
    fn start_next_head_clock(&mut self) {
        self.head_started = (!self.inbuf.is_empty()).then(Instant::now);
    }

    /// Whether part of a request has arrived (so an EOF now loses it).
    pub fn mid_request(&self) -> bool {
        match &self.reading {
            ReadState::Head(_) => !self.inbuf.is_empty(),
            ReadState::Body { .. } => true,
        }
    }

    /// Sends `parts` now as far as the socket takes them, buffering the rest behind
    /// anything already waiting. Returns the bytes left waiting.
    pub fn send(&mut self, sock: &Socket, parts: &[&[u8]]) -> io::Result<u64> {
        let mut skip = 0usize;
        if self.out.is_empty() {
            skip = send_all_vectored(sock, parts)?;
            if skip > 0 {
                self.last_activity = Instant::now();
            }
        }
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            self.out.push(&part[skip..])?;
            skip = 0;
        }
        if !self.out.is_empty() {
            self.flush(sock)?;
        }
        Ok(self.out.pending())
    }

    /// Flushes the output buffer as far as the socket takes it.
    pub fn flush(&mut self, sock: &Socket) -> io::Result<u64> {
        if self.out.flush(sock)? {
            self.last_activity = Instant::now();
        }
        Ok(self.out.pending())
    }
}

/// Most bytes read from one connection per readiness event.
const READ_BURST: usize = 1 << 20;

pub const INTERIM_CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn too_large_body(max: u64) -> HttpError {
    HttpError::new(413, format!("exceeds max_body of {max}"))
}

/// Writes the parts with as few system calls as the socket allows; returns how many
/// bytes went out before the socket would block.
fn send_all_vectored(sock: &Socket, parts: &[&[u8]]) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0usize;
    while sent < total {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
        let mut skip = sent;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
        match sock.send_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Response bytes waiting for the socket: memory segments, files sent as they are
/// (wsgi.file_wrapper), and a temporary file that takes memory output past
/// `outbuf_overflow`.
pub struct OutBuf {
    segs: VecDeque<Seg>,
    pending: u64,
    mem_bytes: usize,
    overflow: usize,
}

enum Seg {
    Mem { data: Vec<u8>, pos: usize },
    /// `len` bytes of `file` from `offset`; `spill` files are ours to append to.
    File { file: File, offset: u64, len: u64, spill: bool },
}

impl OutBuf {
    pub fn new(overflow: usize) -> Self {
        OutBuf { segs: VecDeque::new(), pending: 0, mem_bytes: 0, overflow }
    }

    pub fn pending(&self) -> u64 {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
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

    /// Sends what the socket takes; returns whether anything was sent.
    pub fn flush(&mut self, sock: &Socket) -> io::Result<bool> {
        let mut progressed = false;
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
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(progressed),
                        Err(e) => return Err(e),
                    };
                    progressed = true;
                    self.consume_mem(n);
                }
                Seg::File { file, offset, len, .. } => {
                    match send_file(sock, file, *offset, *len) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            progressed = true;
                            *offset += n as u64;
                            *len -= n as u64;
                            self.pending -= n as u64;
                            if *len == 0 {
                                self.segs.pop_front();
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(progressed),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(progressed)
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

#[cfg(all(unix, not(target_os = "linux")))]
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

    fn pair() -> (Socket, Socket) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (Socket::from(a), Socket::from(b))
    }

    #[test]
    fn outbuf_spills_and_flushes_in_order() {
        let (a, b) = pair();
        let mut out = OutBuf::new(8);
        out.push(b"hello ").unwrap();
        out.push(b"spilled ").unwrap();
        out.push(b"world").unwrap();
        assert_eq!(out.pending(), 19);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"..file-part..").unwrap();
        out.push_file(f, 2, 9);
        while !out.is_empty() {
            out.flush(&a).unwrap();
        }
        drop(a);
        let mut got = Vec::new();
        (&b).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello spilled worldfile-part");
    }

    #[test]
    fn parse_pipelined_and_chunked() {
        let cfg = Config::default();
        let mut st = ConnState {
            inbuf: b"\r\nGET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET".to_vec(),
            reading: ReadState::Head(HeadScanner::default()),
            out: OutBuf::new(10),
            busy: false, close_after_flush: false, closed: false, eof: false, write_armed: false,
            linger: false, draining: false, head_started: None,
            last_activity: Instant::now(),
        };
        let Parsed::Request(r) = st.parse(&cfg) else { panic!() };
        assert_eq!(r.head.uri, b"/a");
        let Parsed::Request(r) = st.parse(&cfg) else { panic!() };
        assert_eq!(r.head.uri, b"/b");
        assert_eq!(r.body.memory(), b"abc");
        assert!(matches!(st.parse(&cfg), Parsed::NeedMore));
        assert_eq!(st.inbuf, b"GET");
    }
}
