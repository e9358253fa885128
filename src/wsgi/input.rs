//! `wsgi.input`: the request body, already complete, read from memory or its spill file.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::http::body::Spool;

/// Size of the pieces a file-backed body is scanned in by readline().
const SCAN: usize = 8192;

#[pyclass(module = "rswaitress._core", name = "InputStream")]
pub struct InputStream {
    body: Spool,
    pos: u64,
}

impl InputStream {
    pub fn new(body: Spool) -> Self {
        InputStream { body, pos: 0 }
    }

    fn remaining(&self) -> u64 {
        self.body.len() - self.pos
    }

    fn limit(&self, size: Option<i64>) -> usize {
        match size {
            Some(n) if n >= 0 => (n as u64).min(self.remaining()) as usize,
            _ => self.remaining() as usize,
        }
    }

    fn take<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let start = self.pos;
        if !self.body.is_file() {
            let s = start as usize;
            let out = PyBytes::new(py, &self.body.memory()[s..s + n]);
            self.pos += n as u64;
            return Ok(out);
        }
        // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new bytes object whose n
        // bytes are ours to fill before anyone else sees it (or NULL with an exception).
        // Filling it from the spool without zeroing it first saves a pass over the body.
        let out: Bound<'py, PyBytes> = unsafe {
            let ptr = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as pyo3::ffi::Py_ssize_t);
            Bound::from_owned_ptr_or_err(py, ptr)?.downcast_into_unchecked()
        };
        let buf = unsafe {
            std::slice::from_raw_parts_mut(pyo3::ffi::PyBytes_AsString(out.as_ptr()) as *mut u8, n)
        };
        let mut got = 0;
        while got < n {
            let r = self.body.read_at(start + got as u64, &mut buf[got..])?;
            if r == 0 {
                break;
            }
            got += r;
        }
        if got < n {
            // The spill file was shorter than recorded: never hand out unfilled bytes.
            buf[got..].fill(0);
            return Err(pyo3::exceptions::PyIOError::new_err("request body spool was truncated"));
        }
        self.pos += n as u64;
        Ok(out)
    }

    /// Length of the next line (through its `\n`), at most `limit` bytes.
    fn line_len(&mut self, limit: usize) -> PyResult<usize> {
        if !self.body.is_file() {
            let s = self.pos as usize;
            let hay = &self.body.memory()[s..s + limit];
            return Ok(hay.iter().position(|&b| b == b'\n').map_or(limit, |i| i + 1));
        }
        let mut buf = [0u8; SCAN];
        let mut scanned = 0usize;
        while scanned < limit {
            let want = SCAN.min(limit - scanned);
            let n = self.body.read_at(self.pos + scanned as u64, &mut buf[..want])?;
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

#[pymethods]
impl InputStream {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.limit(size);
        self.take(py, n)
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let limit = self.limit(size);
        let n = self.line_len(limit)?;
        self.take(py, n)
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&mut self, py: Python<'py>, hint: Option<i64>) -> PyResult<Bound<'py, PyList>> {
        let lines = PyList::empty(py);
        let mut total = 0usize;
        while self.remaining() > 0 {
            let n = self.line_len(self.remaining() as usize)?;
            lines.append(self.take(py, n)?)?;
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

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        let n = self.line_len(self.remaining() as usize)?;
        Ok(Some(self.take(py, n)?))
    }

    fn readable(&self) -> bool {
        true
    }

    fn close(&self) {}
}
