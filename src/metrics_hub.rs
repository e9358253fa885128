//! Which metrics block a process updates, and which blocks its metrics listener shows.
//!
//! A single process updates a block of its own and shows it. A worker updates a block
//! in memory it shares with its master (given by the master when it starts the worker).
//! A master updates nothing: it shows every worker's block, each labelled, with its own
//! series (workers configured, restarts, readiness).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use pyo3::PyObject;

use crate::metrics::{self, MasterInfo, Metrics, ProcessMetrics};

/// A metrics block in memory another process shares, kept mapped by `_keep` (the Python
/// object that owns the mapping).
pub struct SharedBlock {
    block: &'static Metrics,
    _keep: PyObject,
}

impl SharedBlock {
    /// # Safety
    /// `address` must point to `size` bytes that stay mapped while `keep` is alive, and
    /// that are accessed only through `Metrics` (atomics), in every process sharing them.
    pub unsafe fn new(address: usize, size: usize, keep: PyObject) -> Result<Self, String> {
        // SAFETY: the caller's contract; `keep` is stored beside the reference, so the
        // mapping outlives every use of it made through this struct.
        let block = unsafe { Metrics::from_raw(address as *const u8, size) }.map_err(|e| e.to_string())?;
        Ok(SharedBlock { block, _keep: keep })
    }

    pub fn metrics(&self) -> &Metrics {
        self.block
    }
}

enum Own {
    Boxed(Box<Metrics>),
    Shared(SharedBlock),
}

struct Worker {
    label: String,
    block: SharedBlock,
    restarts: u64,
}

pub struct MetricsHub {
    own: Own,
    /// In a master: the workers' blocks, in the order they were attached.
    workers: Option<Mutex<Vec<Worker>>>,
    workers_configured: AtomicU64,
    master_ready: AtomicBool,
}

impl MetricsHub {
    /// A process with a block of its own.
    pub fn single() -> Self {
        MetricsHub {
            own: Own::Boxed(Metrics::new_boxed()),
            workers: None,
            workers_configured: AtomicU64::new(0),
            master_ready: AtomicBool::new(false),
        }
    }

    /// A worker, updating the block its master shares with it.
    pub fn worker(block: SharedBlock) -> Self {
        MetricsHub { own: Own::Shared(block), ..Self::single() }
    }

    /// A master, showing its workers' blocks.
    pub fn master() -> Self {
        MetricsHub { workers: Some(Mutex::new(Vec::new())), ..Self::single() }
    }

    /// The block this process updates.
    #[inline]
    pub fn own(&self) -> &Metrics {
        match &self.own {
            Own::Boxed(m) => m,
            Own::Shared(s) => s.metrics(),
        }
    }

    /// Shows (or replaces) a worker's block under `label`, with its restart count.
    pub fn attach(&self, label: String, block: SharedBlock, restarts: u64) {
        if let Some(workers) = &self.workers {
            let mut workers = workers.lock();
            workers.retain(|w| w.label != label);
            workers.push(Worker { label, block, restarts });
        }
    }

    /// Stops showing a worker's block (its process is gone and its slot not reused).
    pub fn detach(&self, label: &str) {
        if let Some(workers) = &self.workers {
            workers.lock().retain(|w| w.label != label);
        }
    }

    pub fn set_master(&self, workers_configured: u64, ready: bool) {
        self.workers_configured.store(workers_configured, Ordering::Relaxed);
        self.master_ready.store(ready, Ordering::Relaxed);
    }

    /// What `/readyz` says.
    pub fn ready(&self) -> bool {
        match &self.workers {
            Some(_) => self.master_ready.load(Ordering::Relaxed),
            None => self.own().is_ready(),
        }
    }

    /// The OpenMetrics text of a scrape.
    pub fn encode(&self) -> String {
        match &self.workers {
            None => metrics::encode(&[ProcessMetrics { worker: None, metrics: self.own() }], None),
            Some(workers) => {
                let workers = workers.lock();
                let processes: Vec<ProcessMetrics<'_>> = workers
                    .iter()
                    .map(|w| ProcessMetrics { worker: Some(w.label.clone()), metrics: w.block.metrics() })
                    .collect();
                let restarts: Vec<(String, u64)> =
                    workers.iter().map(|w| (w.label.clone(), w.restarts)).collect();
                let info = MasterInfo {
                    workers_configured: self.workers_configured.load(Ordering::Relaxed),
                    restarts: &restarts,
                    ready: self.master_ready.load(Ordering::Relaxed),
                };
                metrics::encode(&processes, Some(&info))
            }
        }
    }
}
