//! `start_response` and the `write()` callable it returns, and the response state they
//! share with the worker: status and headers, framing, bytes written, and the connection
//! the bytes go to.

use std::sync::Arc;

use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::connection::{Conn, ConnState};
use crate::http::response::{self, build_head, chunk_header, Framing, RequestSide};
use crate::reactor::Shared;
use crate::wsgi::file_wrapper::FileRegion;

pyo3::create_exception!(
    _core,
    ClientDisconnected,
    pyo3::exceptions::PyException,
    "The client closed the connection before the response was sent."
);

pub struct Response {
    pub shared: Arc<Shared>,
    pub conn: Arc<Conn>,
    pub req: RequestSide,
    pub is_head: bool,
    pub status: Option<String>,
    pub headers: Vec<(String, String)>,
    /// From the application's Content-Length header, or learnt from a one-item body.
    pub content_length: Option<u64>,
    pub framing: Option<Framing>,
    pub bytes_written: u64,
    /// The connection must close after this response.
    pub close: bool,
    pub disconnected: bool,
    logged_excess: bool,
    logged_no_body: bool,
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
            close: false,
            disconnected: false,
            logged_excess: false,
            logged_no_body: false,
        }
    }

    pub fn wrote_header(&self) -> bool {
        self.framing.is_some()
    }

    fn head_bytes(&mut self) -> Vec<u8> {
        let mut head = Vec::with_capacity(256);
        let status = self.status.as_deref().unwrap_or("200 OK");
        let framing = build_head(
            &mut head,
            self.req,
            status,
            &self.headers,
            self.content_length,
            &self.shared.cfg.ident,
        );
        if framing.close {
            self.close = true;
        }
        self.framing = Some(framing);
        head
    }

    /// Sends body bytes (framed as the head says), preceded by the head the first time.
    pub fn write(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if self.status.is_none() {
            return Err(PyRuntimeError::new_err("start_response was not called before body written"));
        }
        if self.disconnected {
            return Err(self.lost());
        }
        let head = if self.framing.is_none() { Some(self.head_bytes()) } else { None };
        let framing = self.framing.unwrap();
        let mut parts: [&[u8]; 4] = [&[], &[], &[], &[]];
        let mut n = 0;
        if let Some(h) = &head {
            parts[n] = h;
            n += 1;
        }
        let size_line;
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
                    parts[n] = piece;
                    n += 1;
                }
            }
        }
        if n > 0 {
            self.send(py, &parts[..n])?;
        }
        Ok(())
    }

    /// Puts bytes on the connection; waits (without the GIL) while more than
    /// outbuf_high_watermark bytes are waiting for the client.
    fn send(&mut self, py: Python<'_>, parts: &[&[u8]]) -> PyResult<()> {
        let pending = self.put("writing a response", |st, sock| st.send(sock, parts))?;
        let (shared, conn) = (&self.shared, &self.conn);
        let high = shared.cfg.outbuf_high_watermark as u64;
        if pending > high {
            let still_open = py.allow_threads(|| {
                let mut st = conn.st.lock();
                while !st.closed && st.out.pending() > high {
                    conn.drained.wait(&mut st);
                }
                !st.closed
            });
            if !still_open {
                return Err(self.lost());
            }
        }
        Ok(())
    }

    /// Runs `op` on the open connection (queueing and sending output), registers for
    /// writability when output is left waiting, and returns how much is. A closed
    /// connection or a socket error ends the response as disconnected.
    fn put(
        &mut self,
        what: &str,
        op: impl FnOnce(&mut ConnState, &socket2::Socket) -> std::io::Result<u64>,
    ) -> PyResult<u64> {
        let (shared, conn) = (&self.shared, &self.conn);
        let mut st = conn.st.lock();
        if st.closed {
            drop(st);
            return Err(self.lost());
        }
        match op(&mut st, &conn.sock) {
            Ok(left) => {
                if left > 0 && !st.write_armed {
                    shared.arm(conn, &mut st, true);
                }
                Ok(left)
            }
            Err(e) => {
                shared.log_socket_error(what, &e);
                shared.close_locked(conn, &mut st);
                drop(st);
                Err(self.lost())
            }
        }
    }

    /// Marks the client gone; the error to raise into the application.
    fn lost(&mut self) -> PyErr {
        self.disconnected = true;
        self.close = true;
        ClientDisconnected::new_err("client disconnected")
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
    pub fn send_file(&mut self, py: Python<'_>, region: FileRegion) -> PyResult<()> {
        let size = self.set_file_length(region.len);
        self.write(py, b"")?;
        let framing = self.framing.unwrap();
        self.bytes_written = size;
        if self.is_head || !framing.has_body || size == 0 {
            return Ok(());
        }
        self.put("sending a file", |st, sock| {
            st.out.push_file(region.file, region.offset, size);
            st.flush(sock)
        })?;
        Ok(())
    }

    /// The body piece as bytes, or a TypeError. As in Waitress, the head goes out before
    /// the error surfaces (the client then sees the status and a closed connection).
    pub fn expect_bytes<'a, 'py>(&mut self, py: Python<'py>, data: &'a Bound<'py, PyAny>)
        -> PyResult<&'a Bound<'py, PyBytes>>
    {
        match data.downcast::<PyBytes>() {
            Ok(b) => Ok(b),
            Err(_) => {
                if self.status.is_some() && !self.wrote_header() {
                    let _ = self.write(py, b"");
                }
                Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "response body items must be bytes, not {}",
                    data.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                )))
            }
        }
    }

    /// Ends the response: the head if nothing was written, the last chunk if chunked.
    pub fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.disconnected {
            return Ok(());
        }
        if self.framing.is_none() {
            self.write(py, b"")?;
        }
        if let Some(f) = self.framing {
            if f.chunked && !self.is_head {
                self.send(py, &[response::LAST_CHUNK])?;
            }
        }
        Ok(())
    }
}

/// The `start_response` callable handed to the application.
#[pyclass(module = "rswaitress._core", name = "StartResponse")]
pub struct StartResponse {
    pub resp: Response,
}

fn check_no_crlf(s: &str, what: &str) -> PyResult<()> {
    if s.contains('\r') || s.contains('\n') {
        return Err(PyValueError::new_err(format!(
            "carriage return/line feed character present in {what}"
        )));
    }
    Ok(())
}

fn check_latin1(s: &str, what: &str) -> PyResult<()> {
    if !s.is_ascii() && s.chars().any(|c| c as u32 > 0xff) {
        return Err(PyValueError::new_err(format!("{what} {s:?} is not encodable as latin-1")));
    }
    Ok(())
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        {
            let mut me = slf.borrow_mut();
            let r = &mut me.resp;
            let exc_info = exc_info.filter(|e| !e.is_none());
            if r.status.is_some() && exc_info.is_none() {
                return Err(PyAssertionError::new_err(
                    "start_response called a second time without providing exc_info.",
                ));
            }
            if let Some(info) = exc_info {
                if r.wrote_header() {
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                r.headers.clear();
                r.content_length = None;
            }
            let Ok(status) = status.downcast::<PyString>() else {
                return Err(PyAssertionError::new_err(format!("status {status} is not a string")));
            };
            let status = status.to_cow()?;
            let status: &str = &status;
            check_no_crlf(status, "status")?;
            check_latin1(status, "status")?;
            let mut parsed = Vec::new();
            let mut content_length = None;
            for item in headers.try_iter()? {
                let item = item?;
                let pair = item.downcast::<PyTuple>().ok().filter(|t| t.len() == 2);
                let (k, v) = match pair {
                    Some(t) => (t.get_item(0)?, t.get_item(1)?),
                    None => {
                        let (k, v): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item.extract()?;
                        (k, v)
                    }
                };
                let Ok(ks) = k.downcast::<PyString>() else {
                    return Err(PyAssertionError::new_err(format!(
                        "Header name {} is not a string in ({}, {})", k.repr()?, k.repr()?, v.repr()?
                    )));
                };
                let Ok(vs) = v.downcast::<PyString>() else {
                    return Err(PyAssertionError::new_err(format!(
                        "Header value {} is not a string in ({}, {})", v.repr()?, k.repr()?, v.repr()?
                    )));
                };
                let (ks, vs) = (ks.to_cow()?, vs.to_cow()?);
                let (ks, vs): (&str, &str) = (&ks, &vs);
                check_no_crlf(vs, "header value")?;
                check_no_crlf(ks, "header name")?;
                check_latin1(ks, "header name")?;
                check_latin1(vs, "header value")?;
                if ks.eq_ignore_ascii_case("content-length") {
                    let n: u64 = vs.trim().parse().map_err(|_| {
                        PyValueError::new_err(format!("invalid literal for int() with base 10: {vs:?}"))
                    })?;
                    content_length = Some(n);
                } else if response::is_hop_by_hop(ks) {
                    return Err(PyAssertionError::new_err(format!(
                        "{ks} is a \"hop-by-hop\" header; it cannot be used by a WSGI application (see PEP 3333)"
                    )));
                }
                parsed.push((ks.to_string(), vs.to_string()));
            }
            r.status = Some(status.to_string());
            if content_length.is_some() {
                r.content_length = content_length;
            }
            r.headers.extend(parsed);
        }
        slf.getattr(pyo3::intern!(slf.py(), "write"))
    }

    /// The write() callable of PEP 3333.
    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = self.resp.expect_bytes(py, data)?;
        self.resp.write(py, bytes.as_bytes())
    }
}
