//! One client connection: its socket, the input buffer and the reader that turns it into
//! requests, the output buffer, and the phase that says who drives it (`phase.rs`).
//!
//! Locking: `Conn::st` is taken by the reactor and by the one worker serving the
//! connection, for short steps that never wait. Nothing that holds it calls into Python
//! or waits for the GIL, so a thread that holds the GIL may block on it without risk.
//!
//! The socket belongs to the state, not to the `Conn`: it is closed when the phase
//! becomes `Closed`, whatever still refers to the connection (an environ kept alive by a
//! stored traceback or a reference cycle keeps only this small struct alive).

pub mod outbuf;
pub mod phase;

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rustls::ServerConnection;
use socket2::Socket;

use crate::config::Config;
use crate::http::body::{BodyDecoder, Spool};
use crate::http::request::{self, BodyFraming, HeadRules, HeadScanner, RequestHead};
use crate::http::{HttpError, InBuf, Version};
use crate::listener::ListenerInfo;
use crate::tls::ClientCert;
pub use outbuf::OutBuf;
use phase::{Clocks, Facts, Phase};

/// A request whose head and whole body have arrived.
pub struct Request {
    pub head: RequestHead,
    pub body: Spool,
    /// When the request was complete (the time it then waits is the queue's).
    pub ready_at: Instant,
}

enum Reader {
    Head(HeadScanner),
    /// `raw` counts the body bytes received with their framing: Waitress counts chunked
    /// bodies that way against max_request_body_size.
    Body {
        head: Box<RequestHead>,
        decoder: BodyDecoder,
        spool: Spool,
        raw: u64,
    },
}

/// What parsing the buffered input gave.
pub enum Parsed {
    Request(Request),
    /// A request that must be refused; answer with this error, then close.
    Error(HttpError, Version),
    /// More input is needed.
    NeedMore,
}

/// What the poller is asked to report for a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

pub struct Conn {
    pub key: usize,
    pub listener: Arc<ListenerInfo>,
    pub remote_addr: String,
    pub remote_port: String,
    pub st: Mutex<ConnState>,
    /// Signalled when waiting output drops to the high watermark or the connection closes.
    pub drained: Condvar,
}

pub struct ConnState {
    sock: Option<Socket>,
    /// The TLS session of a connection to a TLS listener: what is read is decrypted into
    /// `input`, what `out` holds is encrypted on its way to the socket.
    tls: Option<Box<ServerConnection>>,
    /// The first byte that came in on a TLS connection (a handshake starts with 22).
    tls_first_byte: Option<u8>,
    /// A plain HTTP request came in on the TLS port: it is refused in plaintext.
    plain_on_tls: bool,
    handshake_done: bool,
    /// The verified client certificate, once the handshake is done.
    pub client_cert: Option<Arc<ClientCert>>,
    pub phase: Phase,
    pub input: InBuf,
    reader: Reader,
    pub out: OutBuf,
    /// The peer will send nothing more.
    pub peer_closed: bool,
    /// What the poller was last asked to report.
    pub interest: Interest,
    pub clocks: Clocks,
    /// While lingering: when the connection is closed whatever the client does.
    pub linger_until: Option<Instant>,
    /// Output left for the reactor's next pass to send (see `Shared::defer`): not sent
    /// now, and not watched for writability meanwhile.
    pub deferred: bool,
    /// Bytes received and sent since the metrics last took them (`take_io`).
    io_in: u64,
    io_out: u64,
}

/// Most bytes read from one connection per readiness event, so that one fast client does
/// not keep the others waiting (the poller reports it again).
const READ_BURST: usize = 1 << 20;
/// Most read into the input buffer at once while a head is awaited. Whatever body comes
/// behind the head is copied once more on its way through the buffer; past this, a
/// Content-Length body is read straight into its spool (a 1 MiB POST: 371 µs of server
/// CPU per request against 489 with the whole landing buffer). Pipelined heads are read
/// 64 KiB at a time, as Waitress's recv_bytes default does.
const HEAD_READ: usize = 64 * 1024;
/// Of the reactor's landing buffer, the part that takes decrypted TLS input (the rest takes
/// what the socket gives).
const TLS_PLAIN_SCRATCH: usize = 32 * 1024;
/// An empty input buffer larger than this gives its memory back.
const KEEP_INPUT_CAPACITY: usize = 64 * 1024;

pub const INTERIM_CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Conn {
    pub fn new(
        key: usize,
        sock: Socket,
        listener: Arc<ListenerInfo>,
        remote: (String, String),
        cfg: &Config,
        tls: Option<Box<ServerConnection>>,
    ) -> Self {
        let mut st = ConnState::new(sock, cfg);
        st.tls = tls;
        Conn {
            key,
            listener,
            remote_addr: remote.0,
            remote_port: remote.1,
            st: Mutex::new(st),
            drained: Condvar::new(),
        }
    }
}

impl ConnState {
    pub fn new(sock: Socket, cfg: &Config) -> Self {
        let now = Instant::now();
        ConnState {
            sock: Some(sock),
            tls: None,
            tls_first_byte: None,
            plain_on_tls: false,
            handshake_done: false,
            client_cert: None,
            phase: Phase::Reading,
            input: InBuf::new(),
            reader: Reader::Head(HeadScanner::default()),
            out: OutBuf::new(cfg.outbuf_overflow),
            peer_closed: false,
            interest: Interest::default(),
            clocks: Clocks { last_input: now, head_started: None, output_since: now },
            linger_until: None,
            deferred: false,
            io_in: 0,
            io_out: 0,
        }
    }

    pub fn sock(&self) -> Option<&Socket> {
        self.sock.as_ref()
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Marks the connection closed, drops its buffers and hands back the socket for the
    /// caller to deregister and drop. A TLS session says so first (close_notify), as far
    /// as the socket takes it.
    pub fn close(&mut self) -> Option<Socket> {
        if self.phase != Phase::Closed {
            self.send_close_notify();
        }
        self.tls = None;
        self.phase = Phase::Closed;
        self.out.clear();
        self.input.release();
        self.reader = Reader::Head(HeadScanner::default());
        self.sock.take()
    }

    /// The bytes received and sent since the last call (for the metrics).
    pub fn take_io(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.io_in), std::mem::take(&mut self.io_out))
    }

    pub fn facts(&self, stopping: bool) -> Facts {
        Facts { output_pending: self.output_pending(), peer_closed: self.peer_closed, stopping }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Bytes waiting for the socket: the output buffer's, and (counted as one) encrypted
    /// records the TLS session holds.
    pub fn pending_out(&self) -> u64 {
        self.out.pending() + self.tls.as_ref().is_some_and(|t| t.wants_write()) as u64
    }

    /// Whether anything waits for the socket.
    pub fn output_pending(&self) -> bool {
        self.pending_out() > 0
    }

    /// Shuts the sending side down (after an error answer), with a TLS close_notify first.
    pub fn shutdown_write(&mut self) {
        self.send_close_notify();
        if let Some(sock) = self.sock.as_ref() {
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }
    }

    fn send_close_notify(&mut self) {
        if let (Some(tls), Some(sock)) = (self.tls.as_deref_mut(), self.sock.as_ref()) {
            tls.send_close_notify();
            let mut w: &Socket = sock;
            while tls.wants_write() {
                match tls.write_tls(&mut w) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.io_out += n as u64,
                }
            }
        }
    }

    /// Whether part of a request has arrived (so an EOF now would lose it).
    #[cfg(test)]
    pub fn mid_request(&self) -> bool {
        match &self.reader {
            Reader::Head(_) => !self.input.is_empty(),
            Reader::Body { .. } => true,
        }
    }

    /// A connection becomes ready for its next request: its idle clock starts now.
    pub fn await_next_request(&mut self) {
        let now = Instant::now();
        self.clocks.last_input = now;
        self.clocks.head_started = (!self.input.is_empty()).then_some(now);
    }

    /// Reads what the socket has into the input buffer (through `scratch`, the reactor's
    /// landing buffer), or a Content-Length body straight into its spool. Returns the
    /// bytes read; sets `peer_closed` at end of stream.
    pub fn read_some(&mut self, scratch: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_some() {
            return self.read_tls(scratch);
        }
        let Some(sock) = self.sock.as_ref() else { return Ok(0) };
        let mut total = 0;
        loop {
            let direct = match &self.reader {
                Reader::Body { decoder, .. } if self.input.is_empty() => decoder.remaining(),
                _ => None,
            };
            let want = match direct {
                Some(0) => return Ok(total),
                Some(left) => left.min(scratch.len() as u64) as usize,
                None if matches!(self.reader, Reader::Head(_)) => HEAD_READ.min(scratch.len()),
                None => scratch.len(),
            };
            let got = match &mut self.reader {
                Reader::Body { decoder, spool, raw, .. } if direct.is_some() => {
                    spool.recv_from(sock, want, scratch).inspect(|&n| {
                        decoder.advance(n as u64);
                        *raw += n as u64;
                    })
                }
                _ => (&*sock).read(&mut scratch[..want]).inspect(|&n| {
                    if n > 0 && self.clocks.head_started.is_none() && matches!(self.reader, Reader::Head(_)) {
                        self.clocks.head_started = Some(Instant::now());
                    }
                    self.input.extend(&scratch[..n]);
                }),
            };
            match got {
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(total);
                }
                Ok(n) => {
                    total += n;
                    self.io_in += n as u64;
                    self.clocks.last_input = Instant::now();
                    // Input that went to the buffer is parsed before more is read: once a
                    // head is parsed, its Content-Length body is read straight into its
                    // spool instead of through the buffer (the poller reports the rest).
                    if n < want || total >= READ_BURST || direct.is_none() {
                        return Ok(total);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }

    /// `read_some` for a TLS connection: what the socket has goes through the session
    /// (handshake records are answered at once, as far as the socket takes the answer);
    /// the plaintext lands in the input buffer. Returns the plaintext bytes.
    fn read_tls(&mut self, scratch: &mut [u8]) -> io::Result<usize> {
        let (Some(sock), Some(tls)) = (self.sock.as_ref(), self.tls.as_deref_mut()) else { return Ok(0) };
        let split = scratch.len() - (scratch.len() / 2).min(TLS_PLAIN_SCRATCH);
        let (wire, plain) = scratch.split_at_mut(split);
        let mut total = 0;
        let mut received = 0;
        let mut failure = None;
        'socket: loop {
            let n = match (&*sock).read(wire) {
                Ok(0) => {
                    self.peer_closed = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if self.tls_first_byte.is_none() {
                self.tls_first_byte = Some(wire[0]);
            }
            if self.clocks.head_started.is_none() && matches!(self.reader, Reader::Head(_)) {
                // A handshake, like a head, must be done within channel_timeout.
                self.clocks.head_started = Some(Instant::now());
            }
            received += n;
            self.io_in += n as u64;
            self.clocks.last_input = Instant::now();
            let mut rest = &wire[..n];
            while !rest.is_empty() {
                if let Err(e) = tls.read_tls(&mut rest) {
                    failure = Some(e);
                    break 'socket;
                }
                if let Err(e) = tls.process_new_packets() {
                    failure = Some(io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")));
                    break 'socket;
                }
                loop {
                    match tls.reader().read(plain) {
                        Ok(0) => {
                            // close_notify: the client will send nothing more.
                            self.peer_closed = true;
                            break;
                        }
                        Ok(m) => {
                            self.input.extend(&plain[..m]);
                            total += m;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            self.peer_closed = true;
                            break;
                        }
                        Err(e) => {
                            failure = Some(e);
                            break 'socket;
                        }
                    }
                }
            }
            if n < wire.len() || received >= READ_BURST || self.peer_closed {
                break;
            }
        }
        if !self.handshake_done && !tls.is_handshaking() {
            self.handshake_done = true;
            self.client_cert = tls
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| crate::tls::client_cert(der))
                .map(Arc::new);
        }
        if let Some(e) = failure {
            if !self.handshake_done && self.tls_first_byte.is_some_and(|b| b.is_ascii_uppercase()) {
                // Plain HTTP on the TLS port: answered in plaintext (see `parse`).
                self.tls = None;
                self.plain_on_tls = true;
                self.input.clear();
                return Ok(0);
            }
            // The session's alert (if it made one) goes out before the close.
            let mut w: &Socket = sock;
            let _ = tls.write_tls(&mut w);
            return Err(e);
        }
        if tls.wants_write() {
            // Handshake records (and alerts): sent now as far as the socket takes them.
            let mut w: &Socket = sock;
            while tls.wants_write() {
                match tls.write_tls(&mut w) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.io_out += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.clocks.output_since = Instant::now();
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(total)
    }

    /// Parses as much of the input as makes one request.
    pub fn parse(&mut self, cfg: &Config) -> Parsed {
        if std::mem::take(&mut self.plain_on_tls) {
            let e = HttpError::new(400, "The plain HTTP request was sent to HTTPS port".to_string());
            return Parsed::Error(e, Version::Http11);
        }
        let rules =
            HeadRules { max_size: cfg.max_request_header_size, require_host: !cfg.allow_missing_host };
        loop {
            match &mut self.reader {
                Reader::Head(scanner) => {
                    let head = match request::take_head(scanner, &mut self.input, &rules) {
                        Ok(Some(head)) => {
                            self.clocks.head_started = None;
                            head
                        }
                        Ok(None) => {
                            self.shrink_input();
                            return Parsed::NeedMore;
                        }
                        Err((e, version)) => return Parsed::Error(e, version),
                    };
                    let decoder = match head.framing {
                        BodyFraming::None | BodyFraming::Length(0) => {
                            return Parsed::Request(Request {
                                head,
                                body: Spool::new(0),
                                ready_at: Instant::now(),
                            });
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
                            let e = HttpError::new(500, format!("could not buffer output: {e}"));
                            return Parsed::Error(e, head.version);
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
                    self.reader = Reader::Body { head: Box::new(head), decoder, spool, raw: 0 };
                }
                Reader::Body { head, decoder, spool, raw } => {
                    if !self.input.is_empty() {
                        let max = cfg.max_request_body_size;
                        let chunked = head.framing == BodyFraming::Chunked;
                        match decoder.feed(self.input.data(), spool, max) {
                            Ok(p) => {
                                self.input.consume(p.consumed);
                                *raw += p.consumed as u64;
                                if chunked && *raw >= max {
                                    return Parsed::Error(too_large_body(max), head.version);
                                }
                            }
                            Err(e) => {
                                // Waitress checks the size before the framing: a body
                                // past the limit is 413 even if its framing is bad too.
                                let seen = *raw + self.input.len() as u64;
                                let e = if chunked && seen >= max { too_large_body(max) } else { e };
                                return Parsed::Error(e, head.version);
                            }
                        }
                    }
                    if !decoder.is_done() {
                        return Parsed::NeedMore;
                    }
                    let state = std::mem::replace(&mut self.reader, Reader::Head(HeadScanner::default()));
                    let Reader::Body { head, spool, .. } = state else { unreachable!() };
                    return Parsed::Request(Request { head: *head, body: spool, ready_at: Instant::now() });
                }
            }
        }
    }

    fn shrink_input(&mut self) {
        if self.input.is_empty() {
            self.input.release_if_larger(KEEP_INPUT_CAPACITY);
        }
    }

    /// Sends `parts` now as far as the socket takes them, buffering the rest behind
    /// anything already waiting. Returns the bytes left waiting.
    pub fn send(&mut self, parts: &[&[u8]]) -> io::Result<u64> {
        if self.tls.is_some() {
            return self.send_tls(parts);
        }
        let Some(sock) = self.sock.as_ref() else { return Err(io::ErrorKind::NotConnected.into()) };
        let was_empty = self.out.is_empty();
        let mut skip = 0usize;
        if was_empty && !self.deferred {
            skip = send_all_vectored(sock, parts)?;
            self.io_out += skip as u64;
        }
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            self.out.push(&part[skip..])?;
            skip = 0;
        }
        if was_empty && !self.out.is_empty() {
            // Output begins to wait: its stall clock starts now.
            self.clocks.output_since = Instant::now();
        }
        Ok(self.out.pending())
    }

    /// `send` over TLS: the parts go to the session's writer as far as it takes them
    /// (one record for small parts together), the rest waits in the output buffer.
    fn send_tls(&mut self, parts: &[&[u8]]) -> io::Result<u64> {
        if self.sock.is_none() {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let was_pending = self.output_pending();
        let mut skip = 0usize;
        if let (true, Some(tls)) = (self.out.is_empty(), self.tls.as_deref_mut()) {
            let total: usize = parts.iter().map(|p| p.len()).sum();
            while skip < total {
                let mut slices: [IoSlice<'_>; 8] = [IoSlice::new(&[]); 8];
                let n = fill_slices(&mut slices, parts, skip);
                match tls.writer().write_vectored(&slices[..n])? {
                    0 => break,
                    taken => skip += taken,
                }
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
        if !was_pending {
            self.clocks.output_since = Instant::now();
        }
        self.flush()
    }

    /// Queues `len` bytes of `file` from `offset` and sends what the socket takes.
    pub fn send_file(&mut self, file: std::fs::File, offset: u64, len: u64) -> io::Result<u64> {
        if !self.output_pending() {
            self.clocks.output_since = Instant::now();
        }
        self.out.push_file(file, offset, len);
        self.flush()
    }

    /// Flushes the output buffer as far as the socket takes it; returns what is left.
    pub fn flush(&mut self) -> io::Result<u64> {
        let Some(sock) = self.sock.as_ref() else { return Err(io::ErrorKind::NotConnected.into()) };
        let sent = match self.tls.as_deref_mut() {
            None => self.out.flush(sock)?,
            Some(tls) => flush_tls(tls, &mut self.out, sock)?,
        };
        if sent > 0 {
            self.io_out += sent;
            self.clocks.output_since = Instant::now();
        }
        Ok(self.pending_out())
    }
}

/// Most plaintext bytes handed to a TLS session at once (it takes at most its buffer
/// limit, 64 KiB, of encrypted output waiting).
const TLS_FEED: usize = 256 * 1024;

/// Sends the session's encrypted records and feeds it what waits in `out`, until the
/// socket would block or nothing is left; returns the bytes sent.
fn flush_tls(tls: &mut ServerConnection, out: &mut OutBuf, sock: &Socket) -> io::Result<u64> {
    let mut sent = 0u64;
    let mut w: &Socket = sock;
    loop {
        while tls.wants_write() {
            match tls.write_tls(&mut w) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            return Ok(sent);
        }
        let fed = out.feed(TLS_FEED, |b| tls.writer().write(b).unwrap_or(0))?;
        if fed == 0 && !tls.wants_write() {
            // Only before the handshake is done (nothing is written then).
            return Ok(sent);
        }
    }
}

/// Fills `slices` with `parts` from byte `skip` on; returns how many were filled.
fn fill_slices<'a>(slices: &mut [IoSlice<'a>; 8], parts: &[&'a [u8]], mut skip: usize) -> usize {
    let mut n = 0;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        if n == slices.len() {
            break;
        }
        slices[n] = IoSlice::new(&p[skip..]);
        n += 1;
        skip = 0;
    }
    n
}

fn too_large_body(max: u64) -> HttpError {
    HttpError::new(413, format!("exceeds max_body of {max}"))
}

/// Writes the parts with as few system calls as the socket allows; returns how many
/// bytes went out before the socket would block.
fn send_all_vectored(sock: &Socket, parts: &[&[u8]]) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0usize;
    while sent < total {
        let mut slices: [IoSlice<'_>; 8] = [IoSlice::new(&[]); 8];
        let n = fill_slices(&mut slices, parts, sent);
        match sock.send_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::Write;

    /// A connected pair of TCP sockets on loopback: (server side, client side).
    pub fn socket_pair() -> (Socket, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (Socket::from(server), client)
    }

    /// A connection from a plain TCP listener over `server`, as the reactor makes one.
    pub fn plain_conn(key: usize, server: Socket, cfg: &Config) -> Arc<Conn> {
        let info = Arc::new(crate::listener::ListenerInfo {
            server_port: "80".into(),
            is_unix: false,
            metrics: false,
            tls: false,
        });
        Arc::new(Conn::new(key, server, info, ("127.0.0.1".into(), "1".into()), cfg, None))
    }

    /// A client socket with a small receive buffer (so that a response it does not read
    /// backs up quickly), connected to `addr`.
    pub fn small_receive_buffer(addr: std::net::SocketAddr) -> std::net::TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&addr.into()).unwrap();
        s.into()
    }

    fn read_all_available(st: &mut ConnState) {
        let mut scratch = vec![0u8; 4096];
        for _ in 0..1000 {
            match st.read_some(&mut scratch) {
                Ok(0) if st.peer_closed => return,
                Ok(0) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn reads_and_parses_pipelined_and_chunked_requests() {
        let (server, mut client) = socket_pair();
        let cfg = Config::default();
        let mut st = ConnState::new(server, &cfg);
        client.write_all(b"\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        read_all_available(&mut st);
        assert!(st.peer_closed);
        let Parsed::Request(r) = st.parse(&cfg) else { panic!() };
        assert_eq!(r.head.uri, b"/a");
        let Parsed::Request(r) = st.parse(&cfg) else { panic!() };
        assert_eq!(r.head.uri, b"/b");
        assert_eq!(r.body.memory(), b"abc");
        assert!(matches!(st.parse(&cfg), Parsed::NeedMore));
        assert_eq!(st.input.data(), b"GET");
        assert!(st.mid_request());
    }

    #[test]
    fn content_length_body_goes_straight_to_its_spool() {
        let (server, mut client) = socket_pair();
        let cfg = Config::default();
        let mut st = ConnState::new(server, &cfg);
        client.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n").unwrap();
        read_all_available_until(&mut st, &mut [0u8; 4096], |st| st.mid_request());
        assert!(matches!(st.parse(&cfg), Parsed::NeedMore));
        client.write_all(&vec![b'x'; 100_000]).unwrap();
        let r = read_request(&mut st, &cfg, &mut [0u8; 8192]);
        assert_eq!(r.body.len(), 100_000);
        assert!(st.input.is_empty());
    }

    #[test]
    fn a_head_read_takes_little_of_the_body_behind_it() {
        let (server, mut client) = socket_pair();
        let cfg = Config::default();
        let mut st = ConnState::new(server, &cfg);
        let mut data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n".to_vec();
        data.extend(vec![b'y'; 100_000]);
        client.write_all(&data).unwrap();
        let mut scratch = vec![0u8; 256 * 1024];
        read_all_available_until(&mut st, &mut scratch, |st| !st.input.is_empty());
        // What came behind the head goes to the spool straight from the socket, not
        // through the input buffer.
        assert!(st.input.len() <= HEAD_READ, "{}", st.input.len());
        assert_eq!(read_request(&mut st, &cfg, &mut scratch).body.len(), 100_000);
    }

    fn read_all_available_until(st: &mut ConnState, scratch: &mut [u8], done: impl Fn(&ConnState) -> bool) {
        for _ in 0..5000 {
            st.read_some(scratch).unwrap();
            if done(st) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("condition not reached");
    }

    /// Parses and reads until a whole request is in.
    fn read_request(st: &mut ConnState, cfg: &Config, scratch: &mut [u8]) -> Request {
        for _ in 0..5000 {
            if let Parsed::Request(r) = st.parse(cfg) {
                return r;
            }
            st.read_some(scratch).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no whole request arrived");
    }

    #[test]
    fn send_buffers_what_the_socket_does_not_take() {
        let (server, client) = socket_pair();
        let cfg = Config { outbuf_overflow: 1 << 16, ..Config::default() };
        let mut st = ConnState::new(server, &cfg);
        // The client does not read: the kernel buffers fill, then ours does (and spills).
        let chunk = vec![b'z'; 1 << 20];
        let mut left = 0;
        for _ in 0..64 {
            left = st.send(&[&chunk]).unwrap();
            if left > (4 << 20) {
                break;
            }
        }
        assert!(left > 0, "loopback took 64 MiB without the client reading");
        let t = st.clocks.output_since;
        let mut reader = client;
        let mut buf = vec![0u8; 1 << 16];
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0);
        for _ in 0..100 {
            st.flush().unwrap();
            if st.clocks.output_since > t {
                break;
            }
            let _ = reader.read(&mut buf);
        }
        assert!(st.clocks.output_since > t, "progress restarts the stall clock");
    }

    #[test]
    fn close_drops_the_socket() {
        let (server, mut client) = socket_pair();
        let cfg = Config::default();
        let mut st = ConnState::new(server, &cfg);
        drop(st.close());
        assert!(st.is_closed());
        assert!(st.sock().is_none());
        let mut buf = [0u8; 1];
        client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        // The peer sees the end of the stream (or a reset), not a hang.
        match client.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("read {n} bytes from a closed connection"),
            Err(e) => assert_ne!(e.kind(), io::ErrorKind::WouldBlock, "{e}"),
        }
        assert!(st.send(&[b"x"]).is_err());
    }
}
