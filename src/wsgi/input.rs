//! `wsgi.input`: the request body, already complete, read from memory or its spill file.
//!
//! The object is frozen and keeps its position behind a lock (two threads reading it
//! get each byte once, never a crash). A body that spilled to a temporary file is read
//! with the GIL released: the bytes object being filled is not visible to Python yet.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::http::body::Spool;
use crate::wsgi::start_response::lock_py;

/// Size of the pieces a file-backed body is scanned in by readline().
const SCAN: usize = 8192;

struct Body {
    spool: Spool,
    pos: u64,
}

impl Body {
    fn remaining(&self) -> u64 {
        self.spool.len() - self.pos
    }

    fn limit(&self, size: Option<i64>) -> usize {
        match size {
            Some(n) if n >= 0 => (n as u64).min(self.remaining()) as usize,
            _ => self.remaining() as usize,
        }
    }

    /// Fills `buf` from the current position of a file-backed body; false if the spill
    /// file turned out shorter than recorded.
    #[cfg(not(unix))]
    fn fill_from_file(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let start = self.pos;
        let mut got = 0;
        while got < buf.len() {
            let r = self.spool.read_at(start + got as u64, &mut buf[got..])?;
            if r == 0 {
                return Ok(false);
            }
            got += r;
        }
        Ok(true)
    }

    /// Length of the next line (through its `\n`), at most `limit` bytes.
    fn line_len(&mut self, limit: usize) -> std::io::Result<usize> {
        if !self.spool.is_file() {
            let s = self.pos as usize;
            let hay = &self.spool.memory()[s..s + limit];
            return Ok(hay.iter().position(|&b| b == b'\n').map_or(limit, |i| i + 1));
        }
        let mut buf = [0u8; SCAN];
        let mut scanned = 0usize;
        while scanned < limit {
            let want = SCAN.min(limit - scanned);
            let n = self.spool.read_at(self.pos + scanned as u64, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
                return Ok(scanned + i + 1);
            }
            scanned += n;
        }
        Ok(scanned.min(limit))
    }
}

#[pyclass(module = "rswaitress._core", name = "InputStream", frozen)]
pub struct InputStream {
    body: Mutex<Body>,
}

impl InputStream {
    pub fn new(spool: Spool) -> Self {
        InputStream { body: Mutex::new(Body { spool, pos: 0 }) }
    }
}

/// Takes the next `n` bytes as a bytes object.
fn take<'py>(py: Python<'py>, body: &mut Body, n: usize) -> PyResult<Bound<'py, PyBytes>> {
    if !body.spool.is_file() {
        let s = body.pos as usize;
        let out = PyBytes::new(py, &body.spool.memory()[s..s + n]);
        body.pos += n as u64;
        return Ok(out);
    }
    let (out, complete) = from_file(py, body, n)?;
    match complete {
        Ok(true) => {
            body.pos += n as u64;
            Ok(out)
        }
        Ok(false) => Err(pyo3::exceptions::PyIOError::new_err("request body spool was truncated")),
        Err(e) => Err(e.into()),
    }
}

/// A new bytes object of `n` bytes read from the spill file at the body's position,
/// filled without the GIL (the object is not visible to Python yet), and whether the
/// file held them all.
#[cfg(unix)]
fn from_file<'py>(
    py: Python<'py>,
    body: &Body,
    n: usize,
) -> PyResult<(Bound<'py, PyBytes>, std::io::Result<bool>)> {
    if n == 0 {
        return Ok((PyBytes::new(py, b""), Ok(true)));
    }
    // SAFETY: with a NULL source PyBytes_FromStringAndSize returns a new object with `n`
    // bytes of uninitialised contents (or NULL with an exception set); the new object is
    // referenced from here alone, so writing its contents through PyBytes_AsString is
    // sound, and fill_raw_at writes exactly those `n` bytes. When the fill falls short
    // the object is dropped unread.
    unsafe {
        let obj = Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as pyo3::ffi::Py_ssize_t),
        )?
        .downcast_into_unchecked::<PyBytes>();
        let dst = pyo3::ffi::PyBytes_AsString(obj.as_ptr()) as usize;
        let (spool, pos) = (&body.spool, body.pos);
        let complete = py.allow_threads(|| spool.fill_raw_at(pos, dst as *mut u8, n));
        Ok((obj, complete))
    }
}

/// As above, through a zeroed buffer: Windows has no pread(2) to fill one left
/// uninitialised.
#[cfg(not(unix))]
fn from_file<'py>(
    py: Python<'py>,
    body: &mut Body,
    n: usize,
) -> PyResult<(Bound<'py, PyBytes>, std::io::Result<bool>)> {
    let mut complete = Ok(true);
    let out = PyBytes::new_with(py, n, |buf| {
        complete = py.allow_threads(|| body.fill_from_file(buf));
        Ok(())
    })?;
    Ok((out, complete))
}

fn line_len(py: Python<'_>, body: &mut Body, limit: usize) -> PyResult<usize> {
    if body.spool.is_file() {
        return py.allow_threads(|| body.line_len(limit)).map_err(Into::into);
    }
    body.line_len(limit).map_err(Into::into)
}

#[pymethods]
impl InputStream {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let mut body = lock_py(py, &self.body);
        let n = body.limit(size);
        take(py, &mut body, n)
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let mut body = lock_py(py, &self.body);
        let limit = body.limit(size);
        let n = line_len(py, &mut body, limit)?;
        take(py, &mut body, n)
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<i64>) -> PyResult<Bound<'py, PyList>> {
        let mut body = lock_py(py, &self.body);
        let lines = PyList::empty(py);
        let mut total = 0usize;
        while body.remaining() > 0 {
            let limit = body.remaining() as usize;
            let n = line_len(py, &mut body, limit)?;
            lines.append(take(py, &mut body, n)?)?;
            total += n;
            if matches!(hint, Some(h) if h > 0 && total >= h as usize) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut body = lock_py(py, &self.body);
        if body.remaining() == 0 {
            return Ok(None);
        }
        let limit = body.remaining() as usize;
        let n = line_len(py, &mut body, limit)?;
        Ok(Some(take(py, &mut body, n)?))
    }

    fn readable(&self) -> bool {
        true
    }

    fn close(&self) {}
}
