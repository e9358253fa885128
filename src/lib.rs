//! The extension module `rswaitress._core`: what Python sees of the Rust core.

mod config;
mod connection;
pub mod http;
mod listener;
mod logging;
mod reactor;
mod wsgi;

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::config::Config;
use crate::listener::{Listener, ListenerInfo};
use crate::reactor::Shared;
use crate::wsgi::environ::EnvConsts;
use crate::wsgi::file_wrapper::FileWrapper;
use crate::wsgi::worker::WorkerCtx;

/// One server: its listening sockets, its reactor and the state its workers share.
///
/// `run()` runs the reactor on the calling thread with the GIL released; each pool
/// thread calls `serve_worker()`; `close()` from any thread stops `run()` gracefully.
#[pyclass(module = "rswaitress._core")]
struct Server {
    shared: Arc<Shared>,
    ctx: Arc<WorkerCtx>,
    /// A signal's exception raised while run() was waiting (KeyboardInterrupt...).
    signal_error: Mutex<Option<PyErr>>,
}

#[pymethods]
impl Server {
    /// `listeners` are `(fd, server_port, is_unix)`; the Python socket objects keep
    /// owning the descriptors.
    #[new]
    fn new(
        py: Python<'_>,
        app: PyObject,
        listeners: Vec<(i64, String, bool)>,
        adj: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let cfg = Config::from_adjustments(adj)?;
        let mut adopted = Vec::with_capacity(listeners.len());
        for (fd, server_port, is_unix) in listeners {
            // SAFETY: the caller passes descriptors of listening sockets it keeps open
            // until after this server's run() has returned.
            let l = unsafe { Listener::adopt(fd, ListenerInfo { server_port, is_unix }) }
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            adopted.push(l);
        }
        let ident: PyObject = if cfg.ident.is_empty() {
            py.None()
        } else {
            PyString::new(py, &cfg.ident).into_any().unbind()
        };
        let mut consts = EnvConsts {
            wsgi_version: PyTuple::new(py, [1, 0])?.into_any().unbind(),
            ident,
            server_name: PyString::new(py, &cfg.server_name).into_any().unbind(),
            url_scheme: PyString::new(py, &cfg.url_scheme).into_any().unbind(),
            script_name: PyString::new(py, &cfg.url_prefix).into_any().unbind(),
            url_prefix: cfg.url_prefix.chars().map(|c| c as u32 as u8).collect(),
            file_wrapper: py.get_type::<FileWrapper>().into_any().unbind(),
            sys: py.import("sys")?.into_any().unbind(),
            drop_proxy_headers: cfg.drop_proxy_headers,
            template: PyDict::new(py).unbind(),
        };
        consts.make_template(py)?;
        let logger = py.import("logging")?.call_method1("getLogger", ("rswaitress",))?.unbind();
        let shared = Arc::new(Shared::new(cfg, adopted).map_err(|e| PyOSError::new_err(e.to_string()))?);
        let ctx = Arc::new(WorkerCtx { shared: shared.clone(), app, consts, logger });
        Ok(Server { shared, ctx, signal_error: Mutex::new(None) })
    }

    /// Runs the reactor until close() or a signal; re-raises a signal's exception.
    fn run(&self, py: Python<'_>) -> PyResult<()> {
        let shared = self.shared.clone();
        let result = py.allow_threads(|| {
            reactor::run(&shared, || {
                Python::with_gil(|py| {
                    match logging::deliver(py).and_then(|_| py.check_signals()) {
                        Ok(()) => true,
                        Err(e) => {
                            *self.signal_error.lock() = Some(e);
                            false
                        }
                    }
                })
            })
        });
        let delivered = logging::deliver(py);
        if let Some(e) = self.signal_error.lock().take() {
            return Err(e);
        }
        delivered?;
        result.map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// The loop of one pool thread; returns once stop_workers() is called.
    fn serve_worker(&self, py: Python<'_>) {
        wsgi::worker::run(py, &self.ctx);
    }

    /// Asks run() to stop accepting, finish what is in progress and return.
    fn close(&self) {
        self.shared.request_stop();
    }

    /// Tells `count` pool threads to return once the queue is empty.
    fn stop_workers(&self, count: usize) {
        for _ in 0..count {
            let _ = self.shared.tasks_tx.send(None);
        }
    }

    /// Number of open client connections.
    #[getter]
    fn connection_count(&self) -> usize {
        self.shared.conns.lock().len()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();
    m.add_class::<Server>()?;
    m.add_class::<FileWrapper>()?;
    m.add_class::<wsgi::input::InputStream>()?;
    m.add("ClientDisconnected", m.py().get_type::<wsgi::start_response::ClientDisconnected>())?;
    Ok(())
}
