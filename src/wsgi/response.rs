//! What an application's response becomes on the wire: the head (framing decided once),
//! body writes framed as the head says, the last chunk, back-pressure. Pure Rust: the
//! Python callables (`start_response`, `write`) and the worker loop drive it, and the
//! unit tests drive it over real sockets without Python.
//!
//! Bytes are written straight to the socket while it takes them; what it does not take
//! waits in the connection's output buffer for the reactor. A small write, when requests
//! wait for the pool and this one has had the thread a while, goes to the buffer instead
//! and the reactor sends it (see `deferred`). A write that would block on
//! I/O (a large piece, or output already waiting, which may spill to a file) is marked by
//! [`Response::needs_io`] so that the caller can release the GIL for it.

use std::sync::Arc;

use crate::connection::phase::Phase;
use crate::connection::{Conn, ConnState};
use crate::http::response::{self, build_head, chunk_header, Framing, RequestSide};
use crate::reactor::Shared;
use crate::wsgi::file_wrapper::FileRegion;

/// A piece at least this large is written with the GIL released.
const LARGE_WRITE: usize = 1 << 20;

/// A write at most this large may be left for the reactor to send (`Shared::defer`)...
const DEFER_MAX: u64 = 64 * 1024;
/// ...once the request has had the pool thread this long. A cheaper request leaves too
/// little time between responses for the reactor to send them without waking more often
/// than it saves: bare hello world lost 7% of its rate when every response was left.
const DEFER_AFTER: std::time::Duration = std::time::Duration::from_micros(25);

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// start_response has not been called.
    NotStarted,
    /// The client is gone (or the connection was closed: a timeout, a stop).
    Lost,
    /// The response is already complete; bytes written now would land in the next one.
    Finished,
}

/// After a write: whether more than outbuf_high_watermark bytes now wait for the client
/// (the caller then waits in [`Response::wait_drained`], without the GIL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Sent,
    Backlogged,
}

pub struct Response {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    req: RequestSide,
    pub is_head: bool,
    pub status: Option<String>,
    pub headers: Vec<(String, String)>,
    /// From the application's Content-Length header, or learnt from a one-item body.
    pub content_length: Option<u64>,
    pub framing: Option<Framing>,
    /// Body bytes the application produced (those a HEAD response or a body-less status
    /// drops included; those past Content-Length not).
    pub bytes_written: u64,
    /// Bytes put on the connection (head and framing included).
    pub bytes_sent: u64,
    /// Body bytes put on the connection (none for HEAD or a body-less status).
    pub body_sent: u64,
    /// The connection must close after this response.
    pub close: bool,
    pub disconnected: bool,
    finished: bool,
    logged_excess: bool,
    logged_no_body: bool,
    /// When a pool thread took the request (None: not served by one).
    pub taken_at: Option<std::time::Instant>,
}

impl Response {
    pub fn new(shared: Arc<Shared>, conn: Arc<Conn>, req: RequestSide, is_head: bool) -> Self {
        Response {
            shared,
            conn,
            req,
            is_head,
            status: None,
            headers: Vec::new(),
            content_length: None,
            framing: None,
            bytes_written: 0,
            bytes_sent: 0,
            body_sent: 0,
            close: false,
            disconnected: false,
            finished: false,
            logged_excess: false,
            logged_no_body: false,
            taken_at: None,
        }
    }

    pub fn wrote_header(&self) -> bool {
        self.framing.is_some()
    }

    /// The status code the head says (200 when the status line does not start with one).
    pub fn status_code(&self) -> u16 {
        let status = self.status.as_deref().unwrap_or("200");
        status.get(..3).and_then(|c| c.parse().ok()).unwrap_or(200)
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Records the status and headers (already checked by start_response). With
    /// `replace`, earlier headers are dropped (start_response called again with exc_info
    /// before anything was sent).
    pub fn start(
        &mut self,
        status: String,
        headers: Vec<(String, String)>,
        content_length: Option<u64>,
        replace: bool,
    ) {
        if replace {
            self.headers.clear();
            self.content_length = None;
        }
        self.status = Some(status);
        if content_length.is_some() {
            self.content_length = content_length;
        }
        self.headers.extend(headers);
    }

    /// Whether writing `len` bytes now may block on I/O: output already waits for the
    /// client (the piece is queued behind it, perhaps in the spill file), the piece would
    /// go to the spill file if the socket does not take it, or it is very large. A
    /// non-blocking send of a smaller piece costs less than handing the GIL to another
    /// thread and taking it back (measured: 64 KiB responses lost a quarter of their
    /// rate when every such write released the GIL).
    pub fn needs_io(&self, len: usize) -> bool {
        if len >= LARGE_WRITE {
            return true;
        }
        let st = self.conn.st.lock();
        (!st.out.is_empty() && !st.deferred) || st.out.would_spill(len)
    }

    fn head_bytes(&mut self) -> Vec<u8> {
        let mut head = Vec::with_capacity(256);
        let status = self.status.as_deref().unwrap_or("200 OK");
        let mut req = self.req;
        if self.shared.is_stopping() {
            // Draining: tell the client not to send another request on this connection.
            req.keep_alive = false;
        }
        let framing =
            build_head(&mut head, req, status, &self.headers, self.content_length, &self.shared.cfg.ident);
        if framing.close {
            self.close = true;
        }
        self.framing = Some(framing);
        head
    }

    /// Sends body bytes (framed as the head says), preceded by the head the first time.
    pub fn write(&mut self, data: &[u8]) -> Result<Flow, WriteError> {
        if self.finished {
            return Err(WriteError::Finished);
        }
        if self.status.is_none() {
            return Err(WriteError::NotStarted);
        }
        if self.disconnected {
            return Err(self.lost());
        }
        let head = if self.framing.is_none() { Some(self.head_bytes()) } else { None };
        let framing = self.framing.expect("the head was built");
        let mut parts: [&[u8]; 4] = [&[], &[], &[], &[]];
        let mut n = 0;
        if let Some(h) = &head {
            parts[n] = h;
            n += 1;
        }
        let size_line;
        let mut body = 0u64;
        if !data.is_empty() {
            if !framing.has_body {
                self.bytes_written += data.len() as u64;
                if !self.logged_no_body {
                    self.logged_no_body = true;
                    log::warn!(target: "rswaitress",
                        "application-written content was ignored due to HTTP response that may not contain a message-body: ({})",
                        self.status.as_deref().unwrap_or(""));
                }
            } else if framing.chunked {
                self.bytes_written += data.len() as u64;
                if !self.is_head {
                    body = data.len() as u64;
                    size_line = chunk_header(data.len());
                    parts[n] = &size_line;
                    parts[n + 1] = data;
                    parts[n + 2] = b"\r\n";
                    n += 3;
                }
            } else {
                let mut piece = data;
                if let Some(cl) = self.content_length {
                    let room = cl.saturating_sub(self.bytes_written);
                    if (piece.len() as u64) > room {
                        piece = &piece[..room as usize];
                        if !self.logged_excess {
                            self.logged_excess = true;
                            log::warn!(target: "rswaitress",
                                "application-written content exceeded the number of bytes specified by Content-Length header ({cl})");
                        }
                    }
                }
                self.bytes_written += piece.len() as u64;
                if !self.is_head && !piece.is_empty() {
                    body = piece.len() as u64;
                    parts[n] = piece;
                    n += 1;
                }
            }
        }
        if n == 0 {
            return Ok(Flow::Sent);
        }
        let total: u64 = parts[..n].iter().map(|p| p.len() as u64).sum();
        let pending = self.put("writing a response", self.may_defer(total), |st| st.send(&parts[..n]))?;
        self.bytes_sent += total;
        self.body_sent += body;
        Ok(self.flow(pending))
    }

    /// Whether a write of `len` bytes may be left for the reactor (see DEFER_AFTER).
    fn may_defer(&self, len: u64) -> bool {
        len <= DEFER_MAX && self.taken_at.is_some_and(|t| t.elapsed() >= DEFER_AFTER)
    }

    fn flow(&self, pending: u64) -> Flow {
        if pending > self.shared.cfg.outbuf_high_watermark as u64 {
            Flow::Backlogged
        } else {
            Flow::Sent
        }
    }

    /// Waits until no more than outbuf_high_watermark bytes wait for the client, or the
    /// connection closes (a disconnect, a slow-reader timeout, a stop). Call it without
    /// the GIL.
    pub fn wait_drained(&mut self) -> Result<(), WriteError> {
        let high = self.shared.cfg.outbuf_high_watermark as u64;
        let open = {
            let mut st = self.conn.st.lock();
            while !st.is_closed() && st.out.pending() > high {
                self.conn.drained.wait(&mut st);
            }
            !st.is_closed()
        };
        if open {
            Ok(())
        } else {
            Err(self.lost())
        }
    }

    /// Runs `op` on the open connection (queueing and sending output), registers for
    /// writability when output is left waiting, and returns how much is. A closed
    /// connection or a socket error ends the response as disconnected.
    fn put(
        &mut self,
        what: &str,
        may_defer: bool,
        op: impl FnOnce(&mut ConnState) -> std::io::Result<u64>,
    ) -> Result<u64, WriteError> {
        let shared = &self.shared;
        let conn = &self.conn;
        let mut st = conn.st.lock();
        if st.phase != Phase::Serving {
            drop(st);
            return Err(self.lost());
        }
        if may_defer {
            shared.defer(conn, &mut st);
        }
        match op(&mut st) {
            Ok(left) => {
                if left > 0 {
                    shared.watch(conn, &mut st);
                }
                Ok(left)
            }
            Err(e) => {
                shared.log_socket_error(what, &e);
                shared.close(conn, &mut st, crate::metrics::CloseReason::Error);
                drop(st);
                Err(self.lost())
            }
        }
    }

    /// Marks the client gone.
    fn lost(&mut self) -> WriteError {
        self.disconnected = true;
        self.close = true;
        WriteError::Lost
    }

    /// A wrapped file of `len` bytes is sent: it sets Content-Length, replacing the
    /// application's when that differs (the smaller of the two wins, as in Waitress).
    pub fn set_file_length(&mut self, len: u64) -> u64 {
        let size = match self.content_length {
            Some(cl) if cl < len => cl,
            _ => len,
        };
        if self.content_length != Some(size) {
            self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
            self.content_length = Some(size);
        }
        size
    }

    /// Sends a wrapped file's region after the head (Content-Length set to its size).
    /// Reads the file (sendfile): call it without the GIL.
    pub fn send_file(&mut self, region: FileRegion) -> Result<Flow, WriteError> {
        let size = self.set_file_length(region.len);
        self.write(b"")?;
        let framing = self.framing.expect("the head was sent");
        self.bytes_written = size;
        if self.is_head || !framing.has_body || size == 0 {
            return Ok(Flow::Sent);
        }
        let pending =
            self.put("sending a file", false, |st| st.send_file(region.file, region.offset, size))?;
        self.bytes_sent += size;
        self.body_sent += size;
        Ok(self.flow(pending))
    }

    /// Ends the response: the head if nothing was written, the last chunk if chunked.
    /// Later writes are refused.
    pub fn finish(&mut self) -> Result<Flow, WriteError> {
        if self.finished || self.disconnected {
            self.finished = true;
            return Ok(Flow::Sent);
        }
        let mut flow = Flow::Sent;
        if self.framing.is_none() {
            flow = self.write(b"")?;
        }
        if let Some(f) = self.framing {
            if f.chunked && !self.is_head {
                let pending = self.put(
                    "writing a response",
                    self.may_defer(response::LAST_CHUNK.len() as u64),
                    |st| st.send(&[response::LAST_CHUNK]),
                )?;
                self.bytes_sent += response::LAST_CHUNK.len() as u64;
                flow = self.flow(pending);
            }
        }
        self.finished = true;
        Ok(flow)
    }

    /// Marks the response complete without sending anything more (after an error).
    pub fn abandon(&mut self) {
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::connection::phase::Event;
    use crate::http::Version;
    use std::io::Read;

    const V11: RequestSide =
        RequestSide { version: Version::Http11, keep_alive: true, asked_keep_alive: false };

    /// A connection in the Serving phase over a real socket pair, as a worker has it.
    fn serving(cfg: Config) -> (Arc<Shared>, Arc<Conn>, std::net::TcpStream) {
        let (server, client) = crate::connection::tests::socket_pair();
        let shared = Arc::new(Shared::new(cfg.clone(), Vec::new()).unwrap());
        let conn = crate::connection::tests::plain_conn(7, server, &cfg);
        {
            let mut st = conn.st.lock();
            st.phase = Phase::Queued;
            shared.apply(&conn, &mut st, Event::Taken);
            assert_eq!(st.phase, Phase::Serving);
        }
        (shared, conn, client)
    }

    fn read_until(client: &mut std::net::TcpStream, end: &[u8]) -> Vec<u8> {
        client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(end) {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    fn start(r: &mut Response, headers: &[(&str, &str)]) {
        let hs = headers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        r.start("200 OK".into(), hs, None, false);
    }

    #[test]
    fn content_length_response_keeps_alive() {
        let (shared, conn, mut client) = serving(Config::default());
        let mut r = Response::new(shared, conn, V11, false);
        assert_eq!(r.write(b"x"), Err(WriteError::NotStarted));
        r.start("200 OK".into(), vec![("Content-Length".into(), "5".into())], Some(5), false);
        assert_eq!(r.write(b"hel"), Ok(Flow::Sent));
        assert_eq!(r.write(b"lo, and more"), Ok(Flow::Sent));
        r.finish().unwrap();
        let got = read_until(&mut client, b"hello");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(!text.contains("Connection: close"));
        assert!(!r.close);
        assert_eq!(r.bytes_written, 5);
        assert_eq!(r.write(b"late"), Err(WriteError::Finished), "nothing may reach the next response");
    }

    #[test]
    fn unknown_length_is_chunked_and_closes() {
        let (shared, conn, mut client) = serving(Config::default());
        let mut r = Response::new(shared, conn, V11, false);
        start(&mut r, &[("Content-Type", "text/plain")]);
        r.write(b"abc").unwrap();
        r.write(b"").unwrap();
        r.write(b"defgh").unwrap();
        r.finish().unwrap();
        let got = read_until(&mut client, b"0\r\n\r\n");
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"), "{text}");
        assert!(r.close);
    }

    #[test]
    fn head_request_sends_no_body() {
        let (shared, conn, mut client) = serving(Config::default());
        let mut r = Response::new(shared, conn, V11, true);
        r.start("200 OK".into(), vec![("Content-Length".into(), "4".into())], Some(4), false);
        r.write(b"body").unwrap();
        r.finish().unwrap();
        let got = read_until(&mut client, b"\r\n\r\n");
        assert!(String::from_utf8_lossy(&got).contains("Content-Length: 4"));
        client.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
        let mut rest = [0u8; 16];
        assert!(client.read(&mut rest).is_err(), "no body bytes follow a HEAD answer");
    }

    #[test]
    fn draining_server_answers_with_connection_close() {
        let (shared, conn, mut client) = serving(Config::default());
        shared.request_stop();
        let mut r = Response::new(shared, conn, V11, false);
        r.start("200 OK".into(), vec![("Content-Length".into(), "2".into())], Some(2), false);
        r.write(b"ok").unwrap();
        let got = read_until(&mut client, b"ok");
        assert!(String::from_utf8_lossy(&got).contains("Connection: close\r\n"));
        assert!(r.close);
    }

    /// A client that reads nothing: once more than the high watermark waits, the writer
    /// is told to wait; closing the connection (what the slow-reader timeout does) ends
    /// the wait with Lost.
    #[test]
    fn back_pressure_waits_until_close() {
        let cfg = Config { outbuf_high_watermark: 1 << 16, outbuf_overflow: 1 << 20, ..Config::default() };
        let (shared, conn, _client) = serving(cfg);
        let mut r = Response::new(shared.clone(), conn.clone(), V11, false);
        start(&mut r, &[]);
        let piece = vec![b'x'; 1 << 20];
        let mut flow = Flow::Sent;
        for _ in 0..256 {
            flow = r.write(&piece).unwrap();
            if flow == Flow::Backlogged {
                break;
            }
        }
        assert_eq!(flow, Flow::Backlogged);
        assert!(r.needs_io(10), "output waits: the next write may spill");
        let waiter = std::thread::spawn(move || r.wait_drained());
        {
            let mut st = conn.st.lock();
            shared.apply(&conn, &mut st, Event::Stalled);
            assert!(st.is_closed());
        }
        assert_eq!(waiter.join().unwrap(), Err(WriteError::Lost));
    }

    #[test]
    fn write_after_the_connection_closed_is_lost() {
        let (shared, conn, _client) = serving(Config::default());
        let mut r = Response::new(shared.clone(), conn.clone(), V11, false);
        start(&mut r, &[]);
        {
            let mut st = conn.st.lock();
            shared.close(&conn, &mut st, crate::metrics::CloseReason::Client);
        }
        assert_eq!(r.write(b"x"), Err(WriteError::Lost));
        assert!(r.disconnected && r.close);
    }
}
