//! `start_response` and the `write()` callable it returns: the checks PEP 3333 and
//! Waitress make on status and headers, then the response itself (`response.rs`).
//!
//! The object is frozen and holds its response behind a lock, so an application that
//! calls `write()` from another thread gets its bytes in order (or an exception), never
//! a crash. The lock is taken with [`lock_py`]: a thread that must wait for it releases
//! the GIL meanwhile, since its holder may be writing without the GIL.

use parking_lot::{Mutex, MutexGuard};
use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::http::response;
use crate::wsgi::response::{Flow, Response, WriteError};

pyo3::create_exception!(
    _core,
    ClientDisconnected,
    pyo3::exceptions::PyException,
    "The client closed the connection before the response was sent."
);

/// Locks `m` from a thread that holds the GIL: at once when it is free, otherwise
/// waiting with the GIL released, so that its holder can take the GIL if it needs it.
pub fn lock_py<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        if let Some(g) = m.try_lock() {
            return g;
        }
        py.allow_threads(|| drop(m.lock()));
    }
}

/// The Python exception for a write that did not happen.
pub fn write_error(e: WriteError) -> PyErr {
    match e {
        WriteError::NotStarted => PyRuntimeError::new_err("start_response was not called before body written"),
        WriteError::Lost => ClientDisconnected::new_err("client disconnected"),
        WriteError::Finished => PyRuntimeError::new_err(
            "the response is already complete; write() may only be called while the application is being served",
        ),
    }
}

/// Writes `data` on the response, releasing the GIL for what may block (a large piece,
/// output queued behind a slow client, the wait for it to drain).
pub fn write_bytes(py: Python<'_>, resp: &mut Response, data: &[u8]) -> PyResult<()> {
    let flow =
        if resp.needs_io(data.len()) { py.allow_threads(|| resp.write(data)) } else { resp.write(data) };
    settle(py, resp, flow)
}

/// Waits (without the GIL) when a write left the client too far behind.
pub fn settle(py: Python<'_>, resp: &mut Response, flow: Result<Flow, WriteError>) -> PyResult<()> {
    match flow.map_err(write_error)? {
        Flow::Sent => Ok(()),
        Flow::Backlogged => py.allow_threads(|| resp.wait_drained()).map_err(write_error),
    }
}

/// The body piece as bytes, or a TypeError. As in Waitress, the head goes out before the
/// error surfaces (the client then sees the status and a closed connection).
pub fn expect_bytes<'a, 'py>(
    py: Python<'py>,
    resp: &mut Response,
    data: &'a Bound<'py, PyAny>,
) -> PyResult<&'a Bound<'py, PyBytes>> {
    match data.downcast::<PyBytes>() {
        Ok(b) => Ok(b),
        Err(_) => {
            if resp.status.is_some() && !resp.wrote_header() {
                let _ = write_bytes(py, resp, b"");
            }
            Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "response body items must be bytes, not {}",
                data.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            )))
        }
    }
}

/// The `start_response` callable handed to the application.
#[pyclass(module = "rswaitress._core", name = "StartResponse", frozen)]
pub struct StartResponse {
    resp: Mutex<Response>,
}

impl StartResponse {
    pub fn new(resp: Response) -> Self {
        StartResponse { resp: Mutex::new(resp) }
    }

    pub fn lock<'a>(&'a self, py: Python<'_>) -> MutexGuard<'a, Response> {
        lock_py(py, &self.resp)
    }
}

fn check_no_crlf(s: &str, what: &str) -> PyResult<()> {
    if s.contains('\r') || s.contains('\n') {
        return Err(PyValueError::new_err(format!("carriage return/line feed character present in {what}")));
    }
    Ok(())
}

fn check_latin1(s: &str, what: &str) -> PyResult<()> {
    if !s.is_ascii() && s.chars().any(|c| c as u32 > 0xff) {
        return Err(PyValueError::new_err(format!("{what} {s:?} is not encodable as latin-1")));
    }
    Ok(())
}

/// An application's headers, checked, and the Content-Length among them.
type Headers = (Vec<(String, String)>, Option<u64>);

/// Checks an application's headers; returns them and the Content-Length they carry.
fn parse_headers(headers: &Bound<'_, PyAny>) -> PyResult<Headers> {
    let mut parsed = Vec::new();
    let mut content_length = None;
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item.downcast::<PyTuple>().ok().filter(|t| t.len() == 2);
        let (k, v) = match pair {
            Some(t) => (t.get_item(0)?, t.get_item(1)?),
            None => item.extract()?,
        };
        let Ok(ks) = k.downcast::<PyString>() else {
            return Err(PyAssertionError::new_err(format!(
                "Header name {} is not a string in ({}, {})",
                k.repr()?,
                k.repr()?,
                v.repr()?
            )));
        };
        let Ok(vs) = v.downcast::<PyString>() else {
            return Err(PyAssertionError::new_err(format!(
                "Header value {} is not a string in ({}, {})",
                v.repr()?,
                k.repr()?,
                v.repr()?
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
    Ok((parsed, content_length))
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
        let py = slf.py();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let r = slf.get().lock(py);
            if r.is_finished() {
                return Err(write_error(WriteError::Finished));
            }
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
            }
        }
        let Ok(status) = status.downcast::<PyString>() else {
            return Err(PyAssertionError::new_err(format!("status {status} is not a string")));
        };
        let status = status.to_cow()?;
        check_no_crlf(&status, "status")?;
        check_latin1(&status, "status")?;
        let (parsed, content_length) = parse_headers(headers)?;
        slf.get().lock(py).start(status.to_string(), parsed, content_length, exc_info.is_some());
        slf.getattr(pyo3::intern!(py, "write"))
    }

    /// The write() callable of PEP 3333.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut resp = self.lock(py);
        let bytes = expect_bytes(py, &mut resp, data)?;
        write_bytes(py, &mut resp, bytes.as_bytes())
    }
}
