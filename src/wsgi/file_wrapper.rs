//! `wsgi.file_wrapper`. Iterating it reads blocks; but when an application returns one
//! around a seekable regular file, the worker does not iterate it: it queues the file
//! itself on the connection, to go out with sendfile(2) where the OS has it.

use pyo3::prelude::*;

#[pyclass(module = "rswaitress._core", name = "FileWrapper")]
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

/// Looks at a wrapped file-like object: when it is a seekable file with a descriptor,
/// returns its remaining region (without moving its position); otherwise None, and the
/// wrapper is iterated like any other response.
pub fn file_region(py: Python<'_>, wrapper: &FileWrapper) -> Option<FileRegion> {
    let f = wrapper.filelike.bind(py);
    let region = (|| -> PyResult<Option<FileRegion>> {
        if f.hasattr("seekable")? && !f.call_method0("seekable")?.is_truthy()? {
            return Ok(None);
        }
        if !f.hasattr("fileno")? || !f.hasattr("tell")? || !f.hasattr("seek")? {
            return Ok(None);
        }
        let fd: i64 = f.call_method0("fileno")?.extract()?;
        let start: u64 = f.call_method0("tell")?.extract()?;
        let end: u64 = f.call_method1("seek", (0, 2))?.extract()?;
        f.call_method1("seek", (start,))?;
        Ok(dup_file(fd).map(|file| FileRegion { file, offset: start, len: end.saturating_sub(start) }))
    })();
    match region {
        Ok(r) => r,
        Err(_) => None,
    }
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
