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
pub fn deliver(py: Python<'_>) {
    let (records, dropped) = {
        let mut q = QUEUE.lock();
        if q.records.is_empty() && q.dropped == 0 {
            return;
        }
        (std::mem::take(&mut q.records), std::mem::replace(&mut q.dropped, 0))
    };
    let Ok(logging) = py.import("logging") else { return };
    for (level, target, msg) in records {
        if let Ok(logger) = logging.call_method1("getLogger", (target,)) {
            let _ = logger.call_method1("log", (python_level(level), msg));
        }
    }
    if dropped > 0 {
        if let Ok(logger) = logging.call_method1("getLogger", ("rswaitress",)) {
            let _ = logger.call_method1(
                "warning",
                (format!("{dropped} log records were dropped while the log queue was full"),),
            );
        }
    }
}
