//! The extension module `rswaitress._core`: what Python sees of the Rust core.
//!
//! Threads: `run()` starts the reactor on a thread of its own (it never takes the GIL)
//! and then waits, with the GIL released, for a signal, a log record or the reactor's
//! end; pool threads call `serve_worker()`. See the README's design section.

mod access_log;
mod check_timer;
mod config;
mod connection;
mod deferred;
pub mod http;
mod listener;
mod logging;
mod metrics;
mod metrics_hub;
mod pool;
mod reactor;
mod tls;
mod wsgi;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use polling::{Event as PollEvent, Events};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use socket2::Socket;

use crate::config::Config;
use crate::listener::{Listener, ListenerInfo};
use crate::metrics_hub::{MetricsHub, SharedBlock};
use crate::reactor::Shared;
use crate::wsgi::file_wrapper::FileWrapper;
use crate::wsgi::worker::WorkerCtx;

/// How long run() waits at most between looks at signals and logs (a signal arriving
/// through the wakeup descriptor, or a log record, wakes it sooner).
const MAIN_TICK: Duration = Duration::from_millis(200);
/// How often run() calls its `on_tick` callback.
const ON_TICK: Duration = Duration::from_secs(1);
/// The poller key of the signal wakeup socket.
const WAKEUP_KEY: usize = 1;

/// One server: its listening sockets, its reactor and the state its workers share.
///
/// `run()` runs the reactor until close() or a signal; each pool thread calls
/// `serve_worker()`; `close()` from any thread stops `run()` gracefully.
#[pyclass(module = "rswaitress._core", frozen)]
struct Server {
    shared: Arc<Shared>,
    ctx: Arc<WorkerCtx>,
}

fn os_error(e: std::io::Error) -> PyErr {
    PyOSError::new_err(e.to_string())
}

fn adopt(fd: i64, info: ListenerInfo) -> PyResult<Listener> {
    Listener::adopt(fd, info).map_err(|e| PyOSError::new_err(format!("cannot serve on descriptor {fd}: {e}")))
}

/// A master's metrics listener: `/metrics` over every worker's block (in memory shared
/// with the workers), `/healthz`, `/readyz`, answered on a reactor thread of its own.
#[pyclass(module = "rswaitress._core", frozen)]
struct MetricsServer {
    shared: Arc<Shared>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<std::io::Result<()>>>>,
}

#[pymethods]
impl MetricsServer {
    #[new]
    fn new(fd: i64, adj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let cfg = Config::from_adjustments(adj)?;
        let listener = adopt(
            fd,
            ListenerInfo { server_port: String::new(), is_unix: false, metrics: true, tls: false },
        )?;
        let shared = Shared::with_metrics(cfg, vec![listener], MetricsHub::master()).map_err(os_error)?;
        Ok(MetricsServer { shared: Arc::new(shared), thread: parking_lot::Mutex::new(None) })
    }

    /// Starts answering (on a thread of its own).
    fn start(&self) -> PyResult<()> {
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name("rswaitress-metrics".into())
            .spawn(move || reactor::run(&shared))
            .map_err(os_error)?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    /// Shows a worker's metrics block under `label` (replacing the block shown before).
    fn attach(
        &self,
        label: String,
        address: usize,
        size: usize,
        keep: PyObject,
        restarts: u64,
    ) -> PyResult<()> {
        // SAFETY: the caller passes the address and size of a mapping owned by `keep`,
        // used only as a metrics block.
        let block = unsafe { SharedBlock::new(address, size, keep) }
            .map_err(pyo3::exceptions::PyValueError::new_err)?;
        self.shared.metrics.attach(label, block, restarts);
        Ok(())
    }

    fn detach(&self, label: &str) {
        self.shared.metrics.detach(label);
    }

    fn set_master(&self, workers_configured: u64, ready: bool) {
        self.shared.metrics.set_master(workers_configured, ready);
    }

    /// Stops answering and waits for the thread.
    fn close(&self, py: Python<'_>) {
        self.shared.abort();
        if let Some(handle) = self.thread.lock().take() {
            let _ = py.allow_threads(|| handle.join());
        }
        self.shared.release_listeners();
    }
}

#[pymethods]
impl Server {
    /// `listeners` are `(fd, server_port, is_unix)`: listening sockets the caller keeps
    /// open for the duration of this call (the core works on duplicates).
    ///
    /// `metrics_fd`: a listening socket answered with `/metrics`, `/healthz` and
    /// `/readyz` by the reactor. `metrics_block`: `(address, size, keep)`, memory shared
    /// with a master to keep this worker's metrics in (`keep` owns the mapping).
    #[new]
    #[pyo3(signature = (app, listeners, adj, metrics_fd=None, metrics_block=None))]
    fn new(
        py: Python<'_>,
        app: PyObject,
        listeners: Vec<(i64, String, bool)>,
        adj: &Bound<'_, PyAny>,
        metrics_fd: Option<i64>,
        metrics_block: Option<(usize, usize, PyObject)>,
    ) -> PyResult<Self> {
        let cfg = Config::from_adjustments(adj)?;
        let tls = cfg.is_tls();
        let mut adopted = Vec::with_capacity(listeners.len() + 1);
        for (fd, server_port, is_unix) in listeners {
            adopted.push(adopt(
                fd,
                ListenerInfo { server_port, is_unix, metrics: false, tls: tls && !is_unix },
            )?);
        }
        if let Some(fd) = metrics_fd {
            adopted.push(adopt(
                fd,
                ListenerInfo { server_port: String::new(), is_unix: false, metrics: true, tls: false },
            )?);
        }
        let hub = match metrics_block {
            // SAFETY: the caller passes the address and size of a mapping owned by `keep`
            // (kept alive with it), used only as a metrics block.
            Some((address, size, keep)) => MetricsHub::worker(
                unsafe { SharedBlock::new(address, size, keep) }
                    .map_err(pyo3::exceptions::PyValueError::new_err)?,
            ),
            None => MetricsHub::single(),
        };
        let shared = Arc::new(Shared::with_metrics(cfg, adopted, hub).map_err(os_error)?);
        shared.load_tls().map_err(pyo3::exceptions::PyValueError::new_err)?;
        let ctx = Arc::new(WorkerCtx::new(py, shared.clone(), app)?);
        Ok(Server { shared, ctx })
    }

    /// Runs the reactor on a thread of its own and waits for it, with the GIL released,
    /// handling signals and log delivery meanwhile. `wakeup_fd` is the reading end of the
    /// socket given to `signal.set_wakeup_fd` (or None); `on_stop` is called once when a
    /// stop begins (the listening sockets are closed by then). A signal's exception
    /// (KeyboardInterrupt, SystemExit) starts a graceful stop and is raised once the
    /// reactor has finished; a second one stops at once.
    #[pyo3(signature = (wakeup_fd=None, on_stop=None, on_tick=None))]
    fn run(
        &self,
        py: Python<'_>,
        wakeup_fd: Option<i64>,
        on_stop: Option<PyObject>,
        on_tick: Option<PyObject>,
    ) -> PyResult<()> {
        let wakeup = match wakeup_fd {
            Some(fd) => Some(wakeup_socket(fd, &self.shared).map_err(os_error)?),
            None => None,
        };
        let shared = self.shared.clone();
        let reactor = std::thread::Builder::new()
            .name("rswaitress-reactor".into())
            .spawn(move || reactor::run(&shared))
            .map_err(os_error)?;
        logging::add_waker(&self.shared.main_waker);
        let mut first_error: Option<PyErr> = None;
        let mut told_stop = false;
        let mut next_tick = std::time::Instant::now() + ON_TICK;
        let mut events = Events::new();
        loop {
            let waker = &self.shared.main_waker;
            py.allow_threads(|| {
                events.clear();
                let _ = waker.wait(&mut events, Some(MAIN_TICK));
            });
            if let Some(sock) = &wakeup {
                drain_wakeup(sock, &self.shared);
            }
            let delivered = logging::deliver(py);
            let signalled = py.check_signals();
            for e in [delivered.err(), signalled.err()].into_iter().flatten() {
                if first_error.is_none() {
                    first_error = Some(e);
                    self.shared.request_stop();
                } else {
                    self.shared.abort();
                }
            }
            if self.shared.is_stopping() && !told_stop {
                told_stop = true;
                if let Some(cb) = &on_stop {
                    if let Err(e) = cb.call0(py) {
                        e.print(py);
                    }
                }
            }
            if let Some(cb) = on_tick.as_ref().filter(|_| std::time::Instant::now() >= next_tick) {
                next_tick = std::time::Instant::now() + ON_TICK;
                if let Err(e) = cb.call0(py) {
                    e.print(py);
                }
            }
            if self.shared.is_finished() {
                break;
            }
        }
        logging::remove_waker(&self.shared.main_waker);
        if let Some(sock) = &wakeup {
            let _ = self.shared.main_waker.delete(sock);
        }
        let joined = py.allow_threads(|| reactor.join());
        let delivered = logging::deliver(py);
        if let Some(e) = first_error {
            return Err(e);
        }
        delivered?;
        match joined {
            Ok(result) => result.map_err(os_error),
            Err(_) => Err(PyOSError::new_err("the reactor thread failed")),
        }
    }

    /// The loop of one pool thread; returns once stop_workers() is called.
    fn serve_worker(&self, py: Python<'_>) {
        // Read when each thread starts (after the application is imported, which may
        // load an extension that turns the GIL back on).
        self.shared.pool.set_gil(gil_enabled(py));
        wsgi::worker::run(py, &self.ctx);
    }

    /// Loads the TLS certificate and key again (their files may have been replaced): new
    /// connections use them, those open keep their session. ValueError, with the old
    /// ones still in use, when they cannot be loaded.
    fn reload_tls(&self) -> PyResult<()> {
        self.shared.load_tls().map_err(pyo3::exceptions::PyValueError::new_err)
    }

    /// Asks run() to stop accepting, finish what is in progress and return.
    fn close(&self) {
        self.shared.request_stop();
    }

    /// Asks run() to close every connection and return at once.
    fn abort(&self) {
        self.shared.abort();
    }

    /// Closes the core's copies of the listening sockets of a server that never ran.
    fn release(&self) {
        self.shared.release_listeners();
    }

    /// Tells `count` pool threads to return once the queue is empty.
    fn stop_workers(&self, count: usize) {
        self.shared.pool.stop(count);
    }

    /// Responses completed so far.
    #[getter]
    fn requests_served(&self) -> u64 {
        self.shared.requests_served()
    }

    /// Whether the stop under way was started by max_requests.
    #[getter]
    fn recycling(&self) -> bool {
        self.shared.is_recycling()
    }

    /// Number of open client connections.
    #[getter]
    fn connection_count(&self) -> usize {
        self.shared.conns.lock().len()
    }
}

/// Whether this interpreter runs with the GIL: `sys._is_gil_enabled()` where it exists
/// (3.13 and later), true before.
fn gil_enabled(py: Python<'_>) -> bool {
    let check = || -> PyResult<bool> {
        let sys = py.import("sys")?;
        if !sys.hasattr("_is_gil_enabled")? {
            return Ok(true);
        }
        sys.call_method0("_is_gil_enabled")?.is_truthy()
    };
    check().unwrap_or(true)
}

/// A duplicate of the signal wakeup socket's reading end, watched by the run() thread.
fn wakeup_socket(fd: i64, shared: &Shared) -> std::io::Result<Socket> {
    let sock = listener::duplicate(fd)?;
    sock.set_nonblocking(true)?;
    // SAFETY: the socket is deleted from the poller before it is dropped (end of run()).
    unsafe { shared.main_waker.add(&sock, PollEvent::readable(WAKEUP_KEY))? };
    Ok(sock)
}

/// Empties the wakeup socket (each signal wrote a byte) and watches it again.
fn drain_wakeup(sock: &Socket, shared: &Shared) {
    let mut buf = [0u8; 64];
    while let Ok(n) = (&*sock).read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    let _ = shared.main_waker.modify(sock, PollEvent::readable(WAKEUP_KEY));
}

/// Checks an access log format (Gunicorn's syntax); ValueError says what is wrong.
#[pyfunction]
fn check_access_log_format(format: &str) -> PyResult<()> {
    access_log::Format::parse(format).map(|_| ()).map_err(pyo3::exceptions::PyValueError::new_err)
}

/// Loads the TLS settings of `adj` as a server would: ValueError naming the file and the
/// problem (unreadable, not PEM, wrong password, key not matching the certificate).
#[pyfunction]
fn check_tls(adj: &Bound<'_, PyAny>) -> PyResult<()> {
    match config::tls_settings(adj)? {
        Some(settings) => tls::load(&settings).map(|_| ()).map_err(pyo3::exceptions::PyValueError::new_err),
        None => Ok(()),
    }
}

/// Sends access log lines straight to these files, `[(fd, prefix, suffix), ...]`, or
/// through Python logging (None). See python/rswaitress/access.py.
#[pyfunction]
fn set_access_sinks(sinks: Option<Vec<logging::SinkSpec>>) -> PyResult<()> {
    logging::set_access_sinks(sinks).map_err(os_error)
}

// Free-threaded CPython: the module is declared GIL-independent. Every piece of state
// Python can reach from two threads at once is behind a Rust lock or an atomic, never
// behind the GIL (docs/free-threading.md lists each and how it is synchronised).
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();
    m.add_function(wrap_pyfunction!(check_access_log_format, m)?)?;
    m.add_function(wrap_pyfunction!(check_tls, m)?)?;
    m.add_function(wrap_pyfunction!(set_access_sinks, m)?)?;
    m.add("DEFAULT_ACCESS_LOG_FORMAT", access_log::DEFAULT_FORMAT)?;
    m.add_class::<Server>()?;
    m.add_class::<MetricsServer>()?;
    m.add("METRICS_SIZE", metrics::Metrics::SIZE)?;
    m.add_class::<FileWrapper>()?;
    m.add_class::<wsgi::input::InputStream>()?;
    m.add("ClientDisconnected", m.py().get_type::<wsgi::start_response::ClientDisconnected>())?;
    Ok(())
}
