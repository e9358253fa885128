//! `wsgi.file_wrapper`. Iterating it reads blocks; but when an application returns one
//! around a seekable regular file, the worker does not iterate it: it queues the file
//! itself on the connection, to go out with sendfile(2) where the OS has it.

use pyo3::prelude::*;

#[pyclass(module = "rswaitress._core", name = "FileWrapper", frozen)]
pub struct FileWrapper {
    #[pyo3(get)]
    pub filelike: PyObject,
    #[pyo3(get)]
    pub block_size: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, block_size=8192))]
    fn new(filelike: PyObject, block_size: usize) -> Self {
        FileWrapper { filelike, block_size: block_size.max(1) }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        let data = self.filelike.bind(py).call_method1("read", (self.block_size,))?;
        if data.len()? == 0 {
            return Ok(None);
        }
        Ok(Some(data.unbind()))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

/// The part of a wrapped file that is left to send: an OS-level duplicate of its
/// descriptor, the current position and the bytes from there to the end.
pub struct FileRegion {
    pub file: std::fs::File,
    pub offset: u64,
    pub len: u64,
}

/// How a wrapped file-like object can be sent.
pub enum Wrapped {
    /// A regular file with a descriptor: its region goes out with sendfile.
    File(FileRegion),
    /// Seekable but without a usable descriptor (BytesIO...): `len` bytes from its current
    /// position, read in blocks; the length is known, so Content-Length is exact.
    Seekable { len: u64 },
    /// Anything else is iterated like any other response.
    Stream,
}

/// Looks at a wrapped file-like object without moving its position.
pub fn inspect(py: Python<'_>, wrapper: &FileWrapper) -> Wrapped {
    let f = wrapper.filelike.bind(py);
    let found = (|| -> PyResult<Wrapped> {
        if !f.hasattr("tell")? || !f.hasattr("seek")? {
            return Ok(Wrapped::Stream);
        }
        if f.hasattr("seekable")? && !f.call_method0("seekable")?.is_truthy()? {
            return Ok(Wrapped::Stream);
        }
        let start: u64 = f.call_method0("tell")?.extract()?;
        let end: u64 = f.call_method1("seek", (0, 2))?.extract()?;
        f.call_method1("seek", (start,))?;
        let len = end.saturating_sub(start);
        let fd = if f.hasattr("fileno")? {
            f.call_method0("fileno").and_then(|n| n.extract::<i64>()).ok()
        } else {
            None
        };
        Ok(match fd.and_then(dup_file) {
            Some(file) => Wrapped::File(FileRegion { file, offset: start, len }),
            None => Wrapped::Seekable { len },
        })
    })();
    found.unwrap_or(Wrapped::Stream)
}

#[cfg(unix)]
fn dup_file(fd: i64) -> Option<std::fs::File> {
    use std::os::fd::BorrowedFd;
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor belongs to a live Python file object for this call; it is
    // only borrowed long enough to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd as i32) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    let file = std::fs::File::from(owned);
    // Only regular files: a pipe or socket cannot be sent with an offset.
    let meta = file.metadata().ok()?;
    meta.is_file().then_some(file)
}

/// Elsewhere a C runtime descriptor is not an OS handle; the wrapper is iterated instead.
#[cfg(not(unix))]
fn dup_file(_fd: i64) -> Option<std::fs::File> {
    None
}
