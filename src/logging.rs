//! The `log` facade for the Rust side, delivered to Python's `logging`.
//!
//! Records are queued without the GIL and handed to Python later by a thread that holds
//! the GIL anyway (the reactor's periodic signal check, or a worker between requests), so
//! logging never adds a GIL acquisition to the request path. The target names the Python
//! logger (`rswaitress`, `rswaitress.queue`).

use std::collections::VecDeque;

use parking_lot::Mutex;
use pyo3::prelude::*;

/// Records kept at most while waiting for delivery; beyond this they are counted, not kept.
const MAX_QUEUED: usize = 10_000;

struct Queue {
    records: VecDeque<(log::Level, String, String)>,
    dropped: usize,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue { records: VecDeque::new(), dropped: 0 });

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
        let mut q = QUEUE.lock();
        if q.records.len() >= MAX_QUEUED {
            q.dropped += 1;
            return;
        }
        q.records.push_back((record.level(), target.to_string(), record.args().to_string()));
    }

    fn flush(&self) {}
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

/// Hands queued records to Python's logging. Cheap when there are none.
///
/// A failing handler does not stop delivery, but an exception that is not an `Exception`
/// (KeyboardInterrupt or SystemExit from a signal handler that ran during the logging
/// call) is returned, after the remaining records are delivered, so that it is not lost.
pub fn deliver(py: Python<'_>) -> PyResult<()> {
    let (records, dropped) = {
        let mut q = QUEUE.lock();
        if q.records.is_empty() && q.dropped == 0 {
            return Ok(());
        }
        (std::mem::take(&mut q.records), std::mem::replace(&mut q.dropped, 0))
    };
    let logging = py.import("logging")?;
    let mut interrupt: Option<PyErr> = None;
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
        emit("rswaitress", 30, format!("{dropped} log records were dropped while the log queue was full"));
    }
    interrupt.map_or(Ok(()), Err)
}
