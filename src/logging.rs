//! The `log` facade for the Rust side, delivered to Python's `logging`.
//!
//! Records are queued without the GIL (the reactor never takes it) and handed to Python
//! by a thread that holds the GIL: the thread waiting in `run()`, which the first record
//! of a batch wakes, or a worker between requests. Delivery is ordered: one thread at a
//! time empties the queue, in the order records were made. The target names the Python
//! logger (`rswaitress`, `rswaitress.queue`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use polling::Poller;
use pyo3::prelude::*;

/// Records kept at most while waiting for delivery; beyond this they are counted, not kept.
const MAX_QUEUED: usize = 10_000;

struct Queue {
    records: VecDeque<(log::Level, String, String)>,
    dropped: usize,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue { records: VecDeque::new(), dropped: 0 });
/// Access log lines waiting for delivery. None is ever dropped: past ACCESS_FLUSH_AT
/// lines, the thread that adds one delivers them itself (back-pressure on a logging
/// configuration that cannot keep up).
static ACCESS: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const ACCESS_FLUSH_AT: usize = 4096;
/// Access lines a pool thread delivers at once between requests.
const ACCESS_BATCH: usize = 64;
static ACCESS_PENDING: AtomicBool = AtomicBool::new(false);
/// Whether the record queue may hold records (checked without the lock).
static PENDING: AtomicBool = AtomicBool::new(false);
/// Held by the thread delivering, so that batches reach Python in order.
static DELIVERING: Mutex<()> = Mutex::new(());
/// The pollers of the threads waiting in run(), woken when a batch starts.
static WAKERS: Mutex<Vec<Weak<Poller>>> = Mutex::new(Vec::new());

struct Deferred;

impl log::Log for Deferred {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let target = record.target();
        if !target.starts_with("rswaitress") {
            return;
        }
        let first = {
            let mut q = QUEUE.lock();
            if q.records.len() >= MAX_QUEUED {
                q.dropped += 1;
                return;
            }
            q.records.push_back((record.level(), target.to_string(), record.args().to_string()));
            q.records.len() == 1
        };
        PENDING.store(true, Ordering::Release);
        if first {
            wake_waiters();
        }
    }

    fn flush(&self) {}
}

/// A file the access log's lines go to directly (see python/rswaitress/access.py): the
/// core's own duplicate of a logging handler's stream, and what the handler would write
/// around each message.
struct Sink {
    file: std::fs::File,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    buf: Vec<u8>,
    /// A pipe, a terminal or a socket (not a regular file): written in pieces of at most
    /// PIPE_ATOMIC bytes ending at line ends, so that lines of other processes writing
    /// to the same pipe (the other workers) never land inside ours.
    in_pieces: bool,
}

/// What POSIX promises a pipe writes whole (PIPE_BUF's least value is 512; Linux's 4096).
const PIPE_ATOMIC: usize = 4096;

/// What Python describes a direct sink with: (descriptor, prefix, suffix).
pub type SinkSpec = (i64, Vec<u8>, Vec<u8>);

/// The direct route's sinks and the description they were made from; None: every line
/// goes through Python logging.
static SINKS: Mutex<Option<(Vec<SinkSpec>, Vec<Sink>)>> = Mutex::new(None);
/// Buffered bytes per sink before they are written.
const SINK_BUFFER: usize = 16 * 1024;

impl Sink {
    fn write_out(&mut self) {
        use std::io::Write;
        if self.buf.is_empty() {
            return;
        }
        // An error (a full disk, a closed pipe) loses these lines, as a failing logging
        // handler would; the server goes on. (A regular file is opened for appending by
        // logging's FileHandler: one write is appended whole.)
        if !self.in_pieces {
            let _ = self.file.write_all(&self.buf);
        } else {
            let mut rest = &self.buf[..];
            while !rest.is_empty() {
                let mut end = rest.len().min(PIPE_ATOMIC);
                if end < rest.len() {
                    // Back to the last line end within the piece (a longer line goes alone).
                    end = rest[..end].iter().rposition(|&b| b == b'\n').map_or(end, |i| i + 1);
                }
                if self.file.write_all(&rest[..end]).is_err() {
                    break;
                }
                rest = &rest[end..];
            }
        }
        self.buf.clear();
    }
}

/// Routes access lines to these descriptors directly (None: through Python logging).
/// Unchanged descriptions keep their sinks; the core works on duplicates of the
/// descriptors, so a handler's file closed meanwhile cannot turn into another file.
pub fn set_access_sinks(wanted: Option<Vec<SinkSpec>>) -> std::io::Result<()> {
    let mut sinks = SINKS.lock();
    if sinks.as_ref().map(|(desc, _)| desc) == wanted.as_ref() {
        return Ok(());
    }
    if let Some((_, old)) = sinks.as_mut() {
        for sink in old.iter_mut() {
            sink.write_out();
        }
    }
    *sinks = match wanted {
        None => None,
        Some(desc) => {
            let mut made = Vec::with_capacity(desc.len());
            for (fd, prefix, suffix) in &desc {
                let file = duplicate_file(*fd)?;
                let in_pieces = !file.metadata().map(|m| m.is_file()).unwrap_or(false);
                made.push(Sink {
                    file,
                    prefix: prefix.clone(),
                    suffix: suffix.clone(),
                    buf: Vec::new(),
                    in_pieces,
                });
            }
            Some((desc, made))
        }
    };
    Ok(())
}

#[cfg(unix)]
fn duplicate_file(fd: i64) -> std::io::Result<std::fs::File> {
    use std::os::fd::BorrowedFd;
    let fd = i32::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid descriptor"))?;
    // SAFETY: the descriptor belongs to a logging handler's open stream, which the caller
    // holds for this call; it is only borrowed to make an owned duplicate.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(std::fs::File::from(borrowed.try_clone_to_owned()?))
}

#[cfg(not(unix))]
fn duplicate_file(_fd: i64) -> std::io::Result<std::fs::File> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "direct access log sinks are Unix-only"))
}

/// Writes out what the direct sinks hold.
fn flush_sinks() {
    if let Some((_, sinks)) = SINKS.lock().as_mut() {
        for sink in sinks.iter_mut() {
            sink.write_out();
        }
    }
}

/// Queues an access log line (the caller holds the GIL, so it may deliver at once when
/// too many lines wait). Lines are delivered in batches by the pool threads (when a batch
/// is full, and before a thread waits for work) or by the run() thread's tick; they do
/// not wake the run() thread, which would only take the GIL from a pool thread. With
/// direct sinks, the line is added to their buffers instead.
pub fn access(py: Python<'_>, line: String) {
    {
        let mut sinks = SINKS.lock();
        if let Some((_, sinks)) = sinks.as_mut() {
            for sink in sinks.iter_mut() {
                sink.buf.extend_from_slice(&sink.prefix);
                sink.buf.extend_from_slice(line.as_bytes());
                sink.buf.extend_from_slice(&sink.suffix);
                if sink.buf.len() >= SINK_BUFFER {
                    sink.write_out();
                }
            }
            if !sinks.is_empty() {
                ACCESS_PENDING.store(true, Ordering::Release);
            }
            return;
        }
    }
    let many = {
        let mut q = ACCESS.lock();
        q.push_back(line);
        q.len() >= ACCESS_FLUSH_AT
    };
    ACCESS_PENDING.store(true, Ordering::Release);
    if many {
        let _ = deliver(py);
    }
}

/// Whether a pool thread between requests should deliver now: log records wait, or a
/// full batch of access lines.
pub fn due() -> bool {
    PENDING.load(Ordering::Acquire) || ACCESS.lock().len() >= ACCESS_BATCH
}

fn wake_waiters() {
    let wakers = WAKERS.lock();
    for w in wakers.iter() {
        if let Some(p) = w.upgrade() {
            let _ = p.notify();
        }
    }
}

/// Registers the poller a run() thread waits on, to be woken when records arrive.
pub fn add_waker(p: &Arc<Poller>) {
    let mut wakers = WAKERS.lock();
    wakers.retain(|w| w.strong_count() > 0);
    wakers.push(Arc::downgrade(p));
}

pub fn remove_waker(p: &Arc<Poller>) {
    WAKERS.lock().retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(p)));
}

static LOGGER: Deferred = Deferred;

pub fn install() {
    // A second module initialisation (sub-interpreters, reloads) finds it installed.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

fn python_level(level: log::Level) -> i32 {
    match level {
        log::Level::Error => 40,
        log::Level::Warn => 30,
        log::Level::Info => 20,
        log::Level::Debug => 10,
        log::Level::Trace => 5,
    }
}

/// Whether records wait for delivery (cheap: no lock).
pub fn pending() -> bool {
    PENDING.load(Ordering::Acquire)
}

/// Hands access lines to the `rswaitress.access` logger, one record each (so that the
/// user's handlers, filters and formatters apply), all in one hold of the GIL.
fn deliver_access(py: Python<'_>, logging: &Bound<'_, PyModule>, lines: VecDeque<String>) -> PyResult<()> {
    // getLogger returns the same object for the process's life: looked up once.
    static LOGGER: pyo3::sync::GILOnceCell<PyObject> = pyo3::sync::GILOnceCell::new();
    let logger = LOGGER.get_or_try_init(py, || {
        logging.call_method1(pyo3::intern!(py, "getLogger"), ("rswaitress.access",)).map(Bound::unbind)
    })?;
    let logger = logger.bind(py);
    if !logger.call_method1(pyo3::intern!(py, "isEnabledFor"), (20,))?.is_truthy()? {
        return Ok(());
    }
    let info = logger.getattr(pyo3::intern!(py, "info"))?;
    let mut interrupt = None;
    for line in lines {
        if let Err(e) = info.call1((line,)) {
            if !e.is_instance_of::<pyo3::exceptions::PyException>(py) && interrupt.is_none() {
                interrupt = Some(e);
            }
        }
    }
    interrupt.map_or(Ok(()), Err)
}

/// Hands queued records to Python's logging. Cheap when there are none; returns at once
/// when another thread is delivering (it empties the queue).
///
/// A failing handler does not stop delivery, but an exception that is not an `Exception`
/// (KeyboardInterrupt or SystemExit from a signal handler that ran during the logging
/// call) is returned, after the remaining records are delivered, so that it is not lost.
pub fn deliver(py: Python<'_>) -> PyResult<()> {
    if !pending() && !ACCESS_PENDING.load(Ordering::Acquire) {
        return Ok(());
    }
    // Never wait for this lock while holding the GIL: the thread that has it may be
    // waiting for the GIL inside a logging call.
    let Some(_delivering) = DELIVERING.try_lock() else { return Ok(()) };
    flush_sinks();
    let mut interrupt: Option<PyErr> = None;
    loop {
        let lines = {
            let mut q = ACCESS.lock();
            ACCESS_PENDING.store(false, Ordering::Release);
            std::mem::take(&mut *q)
        };
        let (records, dropped) = {
            let mut q = QUEUE.lock();
            if q.records.is_empty() && q.dropped == 0 && lines.is_empty() {
                PENDING.store(false, Ordering::Release);
                break;
            }
            (std::mem::take(&mut q.records), std::mem::replace(&mut q.dropped, 0))
        };
        let logging = py.import("logging")?;
        if !lines.is_empty() {
            if let Err(e) = deliver_access(py, &logging, lines) {
                if !e.is_instance_of::<pyo3::exceptions::PyException>(py) && interrupt.is_none() {
                    interrupt = Some(e);
                }
            }
        }
        let mut emit = |target: &str, level: i32, msg: String| {
            let sent = logging
                .call_method1("getLogger", (target,))
                .and_then(|logger| logger.call_method1("log", (level, msg)));
            if let Err(e) = sent {
                if !e.is_instance_of::<pyo3::exceptions::PyException>(py) && interrupt.is_none() {
                    interrupt = Some(e);
                }
            }
        };
        for (level, target, msg) in records {
            emit(&target, python_level(level), msg);
        }
        if dropped > 0 {
            emit(
                "rswaitress",
                30,
                format!("{dropped} log records were dropped while the log queue was full"),
            );
        }
    }
    interrupt.map_or(Ok(()), Err)
}
