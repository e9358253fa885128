//! Server metrics: the counters, gauges and histograms the server keeps while it serves,
//! their exposition in the OpenMetrics text format, and the answers of the metrics
//! listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! # The store
//!
//! [`Metrics`] is a `#[repr(C)]` block made only of 64-bit atomic integers. Every update
//! on the serving path is a few relaxed atomic operations (five for a request, one or two
//! otherwise): no lock, no allocation, no system call, so the reactor and the pool
//! threads update it without the GIL and without waiting for one another. An all-zero block is a valid, empty `Metrics`, so
//! the same block can live in memory shared between processes: with workers, the master
//! maps one zeroed block per worker before starting it, the worker updates its block
//! through [`Metrics::from_raw`], and the master reads every block live when it is
//! scraped. The first word of the block records the layout (a magic number holding
//! [`Metrics::LAYOUT_VERSION`] and the size of the block); `from_raw` claims a zeroed
//! block for this layout and refuses one that another layout claimed, so a master and a
//! worker built from different sources never misread each other's counters.
//! A single process uses [`Metrics::new_boxed`].
//!
//! # Where each update belongs (for the reactor, the pool and the supervisor)
//!
//! - accept: [`Metrics::connection_opened`]; the close of a connection (its phase becoming
//!   `Closed`): [`Metrics::connection_closed`] with the [`CloseReason`], exactly once per
//!   opened connection.
//! - every successful `recv`: [`Metrics::add_bytes_in`]; every `send`/`sendfile`, by the
//!   reactor or by a pool thread writing straight to the socket: [`Metrics::add_bytes_out`].
//! - a request read in full (head and body; the instant `complete` is noted with it) and
//!   handed to the pool, queued or taken at once by the thread that served the one before:
//!   [`Metrics::in_flight_add`]`(1)`; its response complete (or abandoned):
//!   [`Metrics::observe_request`]`(status, done - complete, taken - complete)` and
//!   [`Metrics::in_flight_add`]`(-1)`. `taken` is when a pool thread took it.
//! - an error answer the server gives itself (a malformed or oversized request, 4xx/5xx
//!   before the application is called): [`Metrics::request_refused`]`(status)`. These are
//!   not in the requests counted by `observe_request`.
//! - the pool, whenever a thread starts or stops serving: [`Metrics::set_threads`].
//! - when the process starts serving: [`Metrics::mark_started`]; when a graceful stop or
//!   a reload of that process begins: [`Metrics::set_ready`]`(false)`.
//! - a scrape: [`encode`] over one [`ProcessMetrics`] (single process), or over one per
//!   worker plus a [`MasterInfo`] (the master, which owns the metrics listener);
//!   [`answer`] builds the whole HTTP response for a request head the server's parser has
//!   accepted. Neither needs the GIL.
//!
//! # Exposition format
//!
//! OpenMetrics 1.0 text ([`CONTENT_TYPE`]), written by the encoder of the
//! `prometheus-client` crate: Prometheus parses it strictly (its OpenMetrics parser, which
//! it picks from the Content-Type), and so does the Python `prometheus_client`
//! (`prometheus_client.openmetrics.parser`), whose text-0.0.4 parser is lenient. Counters
//! are declared under their base name (`# TYPE rswaitress_requests counter`) and sampled
//! with the `_total` suffix; units are suffixes declared by `# UNIT`; the text ends with
//! `# EOF`. Histogram buckets are cumulative in the output, the `+Inf` bucket always equals
//! `_count` (the count is the sum of the stored buckets), and `_sum` is in seconds.

use std::fmt;
use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds (seconds) of the duration histograms' buckets; a last bucket, `+Inf`,
/// takes what is above.
pub const BUCKETS_SECONDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// The same bounds in nanoseconds, the unit observations are counted in.
const BUCKETS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Buckets stored per histogram: one per bound, and `+Inf`.
pub const BUCKET_COUNT: usize = BUCKETS_NS.len() + 1;

/// Status-code counters: slot 0 counts codes outside 100..=599, slot `code - 99` the others.
const CODE_SLOTS: usize = 501;

/// The Content-Type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a connection was closed; `connection_closed` counts each reason apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum CloseReason {
    /// The peer closed (or reset) the connection, or said `Connection: close` and the
    /// response is complete.
    Client = 0,
    /// No progress for `channel_timeout` while reading: an idle kept-alive connection, or
    /// a request head or body sent too slowly.
    IdleTimeout,
    /// The client accepted none of its response for `channel_timeout`.
    SlowReader,
    /// Closed after an error answer the server gave (and its linger).
    Refused,
    /// Closed by a graceful stop or an abort of the server.
    Stopping,
    /// A socket error.
    Error,
    /// Anything else (an internal fault).
    Other,
}

impl CloseReason {
    /// Every reason, in the order of their counters.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Client,
        CloseReason::IdleTimeout,
        CloseReason::SlowReader,
        CloseReason::Refused,
        CloseReason::Stopping,
        CloseReason::Error,
        CloseReason::Other,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The value of the `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::SlowReader => "slow_reader",
            CloseReason::Refused => "refused",
            CloseReason::Stopping => "stopping",
            CloseReason::Error => "error",
            CloseReason::Other => "other",
        }
    }
}

/// A histogram of durations: per-bucket counts (not cumulative) and their sum.
#[derive(Debug)]
#[repr(C)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKET_COUNT],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Counts one duration: two relaxed atomic additions.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let ns = nanos(d);
        // The first bound the duration does not exceed (bounds are inclusive, as `le`).
        let i = BUCKETS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.each_ref().map(|b| b.load(Relaxed)),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }

    fn clear(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
        self.sum_ns.store(0, Relaxed);
    }
}

/// Whole nanoseconds, saturating (584 years).
fn nanos(d: Duration) -> u64 {
    d.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(d.subsec_nanos()))
}

/// What one process counts. Every field is an atomic integer, so all-zero memory is a
/// valid, empty `Metrics` (see the module documentation).
#[derive(Debug)]
#[repr(C)]
pub struct Metrics {
    /// 0 in a block nobody claimed yet, else [`Metrics::MAGIC`].
    magic: AtomicU64,
    /// 1 while serving, 0 before and once a graceful stop or reload has begun.
    ready: AtomicU64,
    /// When the process started serving (seconds since the Unix epoch), 0 before.
    started_unix: AtomicU64,
    /// Requests handed to the pool whose response is not complete (queued or served).
    in_flight: AtomicI64,
    threads_busy: AtomicU64,
    threads_idle: AtomicU64,
    connections_open: AtomicI64,
    connections_accepted: AtomicU64,
    connections_closed: [AtomicU64; CloseReason::COUNT],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Requests the application answered, by status code (see CODE_SLOTS).
    requests: [AtomicU64; CODE_SLOTS],
    /// Error answers the server gave itself, by status code.
    refused: [AtomicU64; CODE_SLOTS],
    /// From the request read in full to its response complete.
    duration: Histogram,
    /// From the request read in full to a pool thread taking it.
    queue_wait: Histogram,
}

// The magic number keeps the size in its low 24 bits.
const _: () = assert!(size_of::<Metrics>() < 1 << 24);

/// Why [`Metrics::from_raw`] refused a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawError {
    Null,
    /// The address is not a multiple of [`Metrics::ALIGN`].
    Misaligned {
        addr: usize,
    },
    /// Fewer than [`Metrics::SIZE`] bytes.
    TooShort {
        len: usize,
    },
    /// The block was claimed by another layout (or holds something else).
    Layout {
        found: u64,
    },
}

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawError::Null => write!(f, "the metrics block is a null pointer"),
            RawError::Misaligned { addr } => {
                write!(f, "the metrics block at {addr:#x} is not aligned to {} bytes", Metrics::ALIGN)
            }
            RawError::TooShort { len } => {
                write!(f, "the metrics block has {len} bytes, {} are needed", Metrics::SIZE)
            }
            RawError::Layout { found } => write!(
                f,
                "the metrics block has layout {found:#018x}, this build uses {:#018x}",
                Metrics::MAGIC
            ),
        }
    }
}

impl std::error::Error for RawError {}

impl Metrics {
    /// Bytes a block takes (a multiple of [`Metrics::ALIGN`], so blocks can follow one
    /// another in one mapping).
    pub const SIZE: usize = size_of::<Metrics>();
    /// The alignment a block needs (8; a page-aligned mapping satisfies it).
    pub const ALIGN: usize = align_of::<Metrics>();
    /// Raised whenever the layout changes in a way that keeps its size.
    pub const LAYOUT_VERSION: u64 = 1;
    /// What the first word of a claimed block holds: "RSWM", the layout version, the size.
    pub const MAGIC: u64 = (0x5253_574D << 32) | (Self::LAYOUT_VERSION << 24) | Self::SIZE as u64;

    /// An empty store for a single process, on the heap.
    pub fn new_boxed() -> Box<Metrics> {
        // SAFETY: every field is an atomic integer (or an array or struct of them), for
        // which all-zero bytes are a valid value.
        let m = unsafe { Box::<Metrics>::new_zeroed().assume_init() };
        m.magic.store(Self::MAGIC, Relaxed);
        m
    }

    /// The store in a block of memory, possibly shared with other processes: a zeroed
    /// block is claimed for this layout (an empty store); a block this layout claimed
    /// before is used as it is, with what it already counted; anything else is refused.
    ///
    /// # Safety
    ///
    /// Unless an error is returned, `ptr` must be valid for reads and writes of
    /// [`Metrics::SIZE`] bytes for the whole of `'a` (the mapping stays mapped, the
    /// allocation alive), and during `'a` those bytes must be accessed only through
    /// `Metrics` references (in this process or in others sharing the memory: atomic
    /// operations only, never plain reads or writes, never a `memset`; zeroing the
    /// memory before any reference to it exists is fine). Null, misaligned and short
    /// blocks, and blocks of another layout, are refused here, not undefined behaviour.
    pub unsafe fn from_raw<'a>(ptr: *const u8, len: usize) -> Result<&'a Metrics, RawError> {
        if ptr.is_null() {
            return Err(RawError::Null);
        }
        let addr = ptr as usize;
        if !addr.is_multiple_of(Self::ALIGN) {
            return Err(RawError::Misaligned { addr });
        }
        if len < Self::SIZE {
            return Err(RawError::TooShort { len });
        }
        // SAFETY: non-null, aligned and large enough (checked above); valid and accessed
        // atomically only for 'a (the caller's contract). Any bytes are valid atomics.
        let m = unsafe { &*ptr.cast::<Metrics>() };
        match m.magic.compare_exchange(0, Self::MAGIC, Relaxed, Relaxed) {
            Ok(_) => Ok(m),
            Err(found) if found == Self::MAGIC => Ok(m),
            Err(found) => Err(RawError::Layout { found }),
        }
    }

    /// Zeroes every counter and gauge, keeping the block claimed: for a supervisor that
    /// gives a worker's block to its replacement (scrapers see the counters reset).
    pub fn clear(&self) {
        for a in [
            &self.ready,
            &self.started_unix,
            &self.threads_busy,
            &self.threads_idle,
            &self.connections_accepted,
            &self.bytes_in,
            &self.bytes_out,
        ] {
            a.store(0, Relaxed);
        }
        self.in_flight.store(0, Relaxed);
        self.connections_open.store(0, Relaxed);
        for a in self.connections_closed.iter().chain(&self.requests).chain(&self.refused) {
            a.store(0, Relaxed);
        }
        self.duration.clear();
        self.queue_wait.clear();
    }

    /// One response complete: its status (codes outside 100..=599 are counted as
    /// "other"), the time from the request read in full to the response complete, and
    /// the time the request waited for a pool thread. Five relaxed atomic additions.
    #[inline]
    pub fn observe_request(&self, status: u16, duration: Duration, queue_wait: Duration) {
        self.requests[code_slot(status)].fetch_add(1, Relaxed);
        self.duration.observe(duration);
        self.queue_wait.observe(queue_wait);
    }

    /// An error answer the server gave without calling the application.
    #[inline]
    pub fn request_refused(&self, status: u16) {
        self.refused[code_slot(status)].fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn connection_closed(&self, reason: CloseReason) {
        self.connections_closed[reason as usize].fetch_add(1, Relaxed);
        self.connections_open.fetch_sub(1, Relaxed);
    }

    #[inline]
    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    #[inline]
    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    /// Pool threads serving a request and waiting for one.
    #[inline]
    pub fn set_threads(&self, busy: u64, idle: u64) {
        self.threads_busy.store(busy, Relaxed);
        self.threads_idle.store(idle, Relaxed);
    }

    /// +1 when a request is handed to the pool, -1 when its response is complete.
    #[inline]
    pub fn in_flight_add(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Relaxed);
    }

    #[inline]
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(u64::from(ready), Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed) != 0
    }

    /// The process starts serving: notes the time and becomes ready.
    pub fn mark_started(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.started_unix.store(now, Relaxed);
        self.set_ready(true);
    }

    /// A copy of every value, each read once (relaxed: values updated meanwhile may be
    /// seen in one field and not yet in another).
    pub fn snapshot(&self) -> Snapshot {
        let by_code = |slots: &[AtomicU64; CODE_SLOTS]| {
            slots
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    let n = a.load(Relaxed);
                    (n != 0).then(|| (if i == 0 { 0 } else { i as u16 + 99 }, n))
                })
                .collect()
        };
        Snapshot {
            requests: by_code(&self.requests),
            refused: by_code(&self.refused),
            duration: self.duration.snapshot(),
            queue_wait: self.queue_wait.snapshot(),
            in_flight: self.in_flight.load(Relaxed),
            threads_busy: self.threads_busy.load(Relaxed),
            threads_idle: self.threads_idle.load(Relaxed),
            connections_open: self.connections_open.load(Relaxed),
            connections_accepted: self.connections_accepted.load(Relaxed),
            connections_closed: self.connections_closed.each_ref().map(|a| a.load(Relaxed)),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            ready: self.is_ready(),
            started_unix: self.started_unix.load(Relaxed),
        }
    }
}

#[inline]
fn code_slot(status: u16) -> usize {
    if (100..=599).contains(&status) {
        usize::from(status - 99)
    } else {
        0
    }
}

/// The values of a [`Histogram`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket (not cumulative): the bounds of [`BUCKETS_SECONDS`], then `+Inf`.
    pub buckets: [u64; BUCKET_COUNT],
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Observations: the sum of the buckets, so that it always equals the `+Inf` bucket.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, &b| a.wrapping_add(b))
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

/// The values of a [`Metrics`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `(status, count)` for each status seen, ascending; status 0 is "other".
    pub requests: Vec<(u16, u64)>,
    /// The same for the error answers the server gave itself.
    pub refused: Vec<(u16, u64)>,
    pub duration: HistogramSnapshot,
    pub queue_wait: HistogramSnapshot,
    pub in_flight: i64,
    pub threads_busy: u64,
    pub threads_idle: u64,
    pub connections_open: i64,
    pub connections_accepted: u64,
    /// Indexed by `CloseReason as usize`.
    pub connections_closed: [u64; CloseReason::COUNT],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub ready: bool,
    pub started_unix: u64,
}

/// One process's store, as [`encode`] exposes it.
pub struct ProcessMetrics<'a> {
    /// The `worker` label's value; None for a server without workers. Either every
    /// process given to one `encode` has one (all distinct) or there is only one, without.
    pub worker: Option<String>,
    pub metrics: &'a Metrics,
}

/// What the master of a server with workers adds to the exposition.
pub struct MasterInfo<'a> {
    /// The `workers` setting (processes meant to run, whatever runs now).
    pub workers_configured: u64,
    /// Restarts of each worker (a replacement started after it died or was recycled),
    /// under the worker label the processes use.
    pub restarts: &'a [(String, u64)],
    /// The master serves (false once a graceful stop has begun).
    pub ready: bool,
}

/// The exposition of `processes` (and of the master's own values, with workers): an
/// OpenMetrics text ending with `# EOF`, to send with [`CONTENT_TYPE`]. Every family is
/// declared once, with one sample set per process under its `worker` label.
pub fn encode(processes: &[ProcessMetrics<'_>], master: Option<&MasterInfo<'_>>) -> String {
    let scrape = Scrape {
        processes: processes.iter().map(|p| (p.worker.clone(), p.metrics.snapshot())).collect(),
        master: master.map(|m| MasterSnapshot {
            workers_configured: m.workers_configured,
            restarts: m.restarts.to_vec(),
            ready: m.ready,
        }),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail, and the collector only passes on the writer's
    // errors: an error here would leave a truncated text, never a panic.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct MasterSnapshot {
    workers_configured: u64,
    restarts: Vec<(String, u64)>,
    ready: bool,
}

/// One scrape's values, owned (the registry wants a 'static collector).
#[derive(Debug)]
struct Scrape {
    processes: Vec<(Option<String>, Snapshot)>,
    master: Option<MasterSnapshot>,
}

/// The label pairs of one sample: `worker` first when there is one, then the family's own.
fn labels<'a>(
    worker: &'a Option<String>,
    own: Option<(&'static str, &'a str)>,
) -> Vec<(&'static str, &'a str)> {
    worker.as_deref().map(|w| ("worker", w)).into_iter().chain(own).collect()
}

fn code_label(code: u16) -> String {
    if code == 0 {
        "other".to_string()
    } else {
        code.to_string()
    }
}

fn counter(m: &mut MetricEncoder<'_>, labels: &[(&str, &str)], v: u64) -> fmt::Result {
    m.encode_family(&labels)?.encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    m: &mut MetricEncoder<'_>,
    labels: &[(&str, &str)],
    v: V,
) -> fmt::Result {
    m.encode_family(&labels)?.encode_gauge(&v)
}

impl Scrape {
    fn by_code(
        &self,
        enc: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        get: impl Fn(&Snapshot) -> &[(u16, u64)],
    ) -> fmt::Result {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (worker, s) in &self.processes {
            for &(code, n) in get(s) {
                let code = code_label(code);
                counter(&mut m, &labels(worker, Some(("code", &code))), n)?;
            }
        }
        Ok(())
    }

    fn histogram(
        &self,
        enc: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        get: impl Fn(&Snapshot) -> &HistogramSnapshot,
    ) -> fmt::Result {
        let seconds = Unit::Seconds;
        let mut m = enc.encode_descriptor(name, help, Some(&seconds), MetricType::Histogram)?;
        for (worker, s) in &self.processes {
            let h = get(s);
            let mut buckets = [(f64::INFINITY, 0u64); BUCKET_COUNT];
            for (i, b) in buckets.iter_mut().enumerate() {
                b.1 = h.buckets[i];
                if let Some(&bound) = BUCKETS_SECONDS.get(i) {
                    b.0 = bound;
                }
            }
            m.encode_family(&labels(worker, None))?.encode_histogram::<NoLabelSet>(
                h.sum_seconds(),
                h.count(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }

    /// One sample per process, of a counter or a gauge.
    fn per_process(
        &self,
        enc: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        kind: MetricType,
        get: impl Fn(&Snapshot) -> u64,
    ) -> fmt::Result {
        let mut m = enc.encode_descriptor(name, help, unit, kind)?;
        for (worker, s) in &self.processes {
            let l = labels(worker, None);
            match kind {
                MetricType::Counter => counter(&mut m, &l, get(s))?,
                _ => gauge(&mut m, &l, get(s))?,
            }
        }
        Ok(())
    }

    /// One sample per process of a gauge that may go below zero.
    fn signed(
        &self,
        enc: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        get: impl Fn(&Snapshot) -> i64,
    ) -> fmt::Result {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (worker, s) in &self.processes {
            gauge(&mut m, &labels(worker, None), get(s))?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        self.by_code(
            &mut enc,
            "rswaitress_requests",
            "Responses of the application completed, by status code (other: outside 100-599)",
            |s| &s.requests,
        )?;
        self.by_code(
            &mut enc,
            "rswaitress_requests_refused",
            "Error answers the server gave itself, without calling the application, by status code",
            |s| &s.refused,
        )?;
        self.histogram(
            &mut enc,
            "rswaitress_request_duration",
            "Time from a request read in full to its response complete",
            |s| &s.duration,
        )?;
        self.histogram(
            &mut enc,
            "rswaitress_request_queue_wait",
            "Time from a request read in full to a pool thread taking it",
            |s| &s.queue_wait,
        )?;
        self.signed(
            &mut enc,
            "rswaitress_requests_in_flight",
            "Requests handed to the pool whose response is not complete (queued or being served)",
            |s| s.in_flight,
        )?;
        self.signed(&mut enc, "rswaitress_connections_open", "Client connections open", |s| {
            s.connections_open
        })?;
        self.per_process(
            &mut enc,
            "rswaitress_threads_busy",
            "Pool threads serving a request",
            None,
            Gauge,
            |s| s.threads_busy,
        )?;
        self.per_process(
            &mut enc,
            "rswaitress_threads_idle",
            "Pool threads waiting for a request",
            None,
            Gauge,
            |s| s.threads_idle,
        )?;
        self.per_process(
            &mut enc,
            "rswaitress_connections_accepted",
            "Client connections accepted",
            None,
            Counter,
            |s| s.connections_accepted,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "rswaitress_connections_closed",
                "Client connections closed, by reason",
                None,
                Counter,
            )?;
            for (worker, s) in &self.processes {
                for r in CloseReason::ALL {
                    counter(
                        &mut m,
                        &labels(worker, Some(("reason", r.label()))),
                        s.connections_closed[r as usize],
                    )?;
                }
            }
        }
        let bytes = Unit::Bytes;
        self.per_process(
            &mut enc,
            "rswaitress_received",
            "Bytes received from clients",
            Some(&bytes),
            Counter,
            |s| s.bytes_in,
        )?;
        self.per_process(&mut enc, "rswaitress_sent", "Bytes sent to clients", Some(&bytes), Counter, |s| {
            s.bytes_out
        })?;
        self.per_process(
            &mut enc,
            "rswaitress_ready",
            "1 while the process serves, 0 before and once a graceful stop or reload has begun",
            None,
            Gauge,
            |s| u64::from(s.ready),
        )?;
        let seconds = Unit::Seconds;
        self.per_process(
            &mut enc,
            "rswaitress_start_time",
            "When the process started serving, in seconds since the Unix epoch",
            Some(&seconds),
            Gauge,
            |s| s.started_unix,
        )?;
        if let Some(master) = &self.master {
            let mut m = enc.encode_descriptor(
                "rswaitress_workers_configured",
                "Worker processes the server is configured to run",
                None,
                Gauge,
            )?;
            gauge(&mut m, &[], master.workers_configured)?;
            let mut m = enc.encode_descriptor(
                "rswaitress_worker_restarts",
                "Replacements the master started for each worker",
                None,
                Counter,
            )?;
            for (worker, n) in &master.restarts {
                counter(&mut m, &[("worker", worker.as_str())], *n)?;
            }
            let mut m = enc.encode_descriptor(
                "rswaitress_master_ready",
                "1 while the master serves, 0 once a graceful stop has begun",
                None,
                Gauge,
            )?;
            gauge(&mut m, &[], u64::from(master.ready))?;
        }
        Ok(())
    }
}

/// The metrics listener's answer to one request, a complete HTTP/1.1 response that
/// closes the connection: GET or HEAD of `/metrics` (the text `metrics_text` makes, with
/// [`CONTENT_TYPE`]), `/healthz` (200 while the server runs) and `/readyz` (200 while
/// `ready`, else 503); any other path is 404, any other method on these paths 405. The
/// query is ignored; an absolute-form target (`http://host/metrics`) is routed by its
/// path. `metrics_text` is called only for `/metrics`. No input makes it panic.
pub fn answer(method: &str, target: &[u8], ready: bool, metrics_text: impl FnOnce() -> String) -> Vec<u8> {
    answer_at(method, target, ready, metrics_text, SystemTime::now())
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

fn answer_at(
    method: &str,
    target: &[u8],
    ready: bool,
    metrics_text: impl FnOnce() -> String,
    now: SystemTime,
) -> Vec<u8> {
    let head_only = method == "HEAD";
    let path = route_path(target);
    let known = matches!(path, b"/metrics" | b"/healthz" | b"/readyz");
    if !known {
        return response("404 Not Found", TEXT_PLAIN, &[], b"not found\n", head_only, now);
    }
    if method != "GET" && !head_only {
        return response(
            "405 Method Not Allowed",
            TEXT_PLAIN,
            &[("Allow", "GET, HEAD")],
            b"method not allowed\n",
            false,
            now,
        );
    }
    match path {
        b"/metrics" => response("200 OK", CONTENT_TYPE, &[], metrics_text().as_bytes(), head_only, now),
        b"/healthz" => response("200 OK", TEXT_PLAIN, &[], b"ok\n", head_only, now),
        _ if ready => response("200 OK", TEXT_PLAIN, &[], b"ready\n", head_only, now),
        _ => response("503 Service Unavailable", TEXT_PLAIN, &[], b"draining\n", head_only, now),
    }
}

/// The path of a request target: the query and fragment dropped, an absolute form's
/// scheme and authority too.
fn route_path(target: &[u8]) -> &[u8] {
    let mut t = target;
    for scheme in [&b"http://"[..], b"https://"] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            t = match rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')) {
                Some(i) => &rest[i..],
                None => b"",
            };
            break;
        }
    }
    let end = t.iter().position(|&b| matches!(b, b'?' | b'#')).unwrap_or(t.len());
    &t[..end]
}

fn response(
    status: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
    now: SystemTime,
) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(256 + if head_only { 0 } else { body.len() });
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nDate: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n",
        httpdate::fmt_http_date(now),
        body.len()
    );
    for (k, v) in extra {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    // -----------------------------------------------------------------------------------
    // A strict parser of the exposition, written from the OpenMetrics 1.0 text rules:
    // every line a `# HELP|TYPE|UNIT name ...` comment or a `name{labels} value` sample;
    // a family's metadata before its samples, each family once; sample names from the
    // family's type; label syntax and escapes; no duplicate series; `# EOF` last;
    // histograms with increasing `le`, cumulative (non-decreasing) buckets ending at
    // `+Inf`, `+Inf == _count`.
    // -----------------------------------------------------------------------------------

    type Labels = BTreeMap<String, String>;

    #[derive(Debug, Clone)]
    struct Sample {
        name: String,
        labels: Labels,
        value: f64,
    }

    #[derive(Debug, Default)]
    struct Family {
        kind: Option<String>,
        help: Option<String>,
        unit: Option<String>,
        samples: Vec<Sample>,
    }

    type Families = BTreeMap<String, Family>;

    fn is_metric_name(s: &str) -> bool {
        let mut b = s.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
    }

    fn is_label_name(s: &str) -> bool {
        let mut b = s.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ if s.bytes().all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c)) && !s.is_empty() => {
                s.parse::<f64>().map_err(|e| format!("bad value {s:?}: {e}"))
            }
            _ => Err(format!("bad value {s:?}")),
        }
    }

    /// `{k="v",...}` at the start of `s`: the labels and the rest of `s`.
    fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
        let mut labels = Labels::new();
        let mut rest = s.strip_prefix('{').ok_or("no {")?;
        loop {
            let eq = rest.find('=').ok_or("label without =")?;
            let name = &rest[..eq];
            if !is_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, '\n')) => return Err("raw newline in a label value".into()),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.insert(name.to_string(), value).is_some() {
                return Err(format!("label {name} twice"));
            }
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if let Some(r) = rest.strip_prefix('}') {
                return Ok((labels, r));
            } else {
                return Err(format!("expected , or }} at {rest:?}"));
            }
        }
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (Labels::new(), &line[name_end..])
        };
        let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
        if value.contains(' ') {
            return Err(format!("unexpected timestamp or exemplar in {line:?}"));
        }
        Ok(Sample { name: name.to_string(), labels, value: parse_value(value)? })
    }

    fn parse_strict(text: &str) -> Result<Families, String> {
        let body = text.strip_suffix("# EOF\n").ok_or("does not end with # EOF")?;
        let mut families = Families::new();
        let mut current: Option<String> = None;
        let mut series = HashSet::new();
        for line in body.lines() {
            if line.is_empty() || line.contains('\r') {
                return Err(format!("empty line or CR: {line:?}"));
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.strip_prefix(' ').ok_or("bad comment")?.splitn(3, ' ');
                let (kw, name, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
                let rest = rest.ok_or(format!("comment without a value: {line:?}"))?;
                if !is_metric_name(name) {
                    return Err(format!("bad family name {name:?}"));
                }
                if current.as_deref() != Some(name) {
                    if families.contains_key(name) {
                        return Err(format!("family {name} declared twice"));
                    }
                    families.insert(name.to_string(), Family::default());
                    current = Some(name.to_string());
                }
                let fam = families.get_mut(name).unwrap();
                if !fam.samples.is_empty() {
                    return Err(format!("metadata of {name} after its samples"));
                }
                let slot = match kw {
                    "HELP" => &mut fam.help,
                    "TYPE" => &mut fam.kind,
                    "UNIT" => &mut fam.unit,
                    _ => return Err(format!("unknown comment {line:?}")),
                };
                if slot.replace(rest.to_string()).is_some() {
                    return Err(format!("{kw} of {name} twice"));
                }
                if kw == "TYPE" && !["counter", "gauge", "histogram"].contains(&rest) {
                    return Err(format!("unexpected type {rest}"));
                }
                if kw == "UNIT" && !name.ends_with(&format!("_{rest}")) {
                    return Err(format!("{name} does not end with its unit {rest}"));
                }
                continue;
            }
            let sample = parse_sample(line)?;
            let fam_name = current.clone().ok_or("sample before any family")?;
            let fam = families.get_mut(&fam_name).unwrap();
            let kind = fam.kind.as_deref().ok_or(format!("sample of {fam_name} before its TYPE"))?;
            let suffix = sample
                .name
                .strip_prefix(fam_name.as_str())
                .ok_or(format!("sample {} outside its family {fam_name}", sample.name))?;
            let allowed: &[&str] = match kind {
                "counter" => &["_total"],
                "gauge" => &[""],
                _ => &["_bucket", "_count", "_sum"],
            };
            if !allowed.contains(&suffix) {
                return Err(format!("sample {} not allowed in a {kind}", sample.name));
            }
            if sample.labels.contains_key("le") != (suffix == "_bucket") {
                return Err(format!("le label misplaced in {line:?}"));
            }
            if kind == "counter" && !(sample.value >= 0.0 && sample.value.is_finite()) {
                return Err(format!("bad counter value in {line:?}"));
            }
            if !series.insert((sample.name.clone(), format!("{:?}", sample.labels))) {
                return Err(format!("duplicate series {line:?}"));
            }
            fam.samples.push(sample);
        }
        for (name, fam) in &families {
            if fam.kind.is_none() || fam.help.is_none() {
                return Err(format!("{name} without TYPE or HELP"));
            }
            if fam.kind.as_deref() == Some("histogram") {
                check_histogram(name, &fam.samples)?;
            }
        }
        Ok(families)
    }

    fn check_histogram(name: &str, samples: &[Sample]) -> Result<(), String> {
        // Group by the labels other than le; each group contiguous.
        let mut groups: Vec<(Labels, Vec<&Sample>)> = Vec::new();
        for s in samples {
            let mut key = s.labels.clone();
            key.remove("le");
            match groups.last_mut() {
                Some((k, v)) if *k == key => v.push(s),
                _ => {
                    if groups.iter().any(|(k, _)| *k == key) {
                        return Err(format!("{name}: samples of {key:?} not contiguous"));
                    }
                    groups.push((key, vec![s]));
                }
            }
        }
        for (key, group) in groups {
            let one = |suffix: &str| -> Result<f64, String> {
                let found: Vec<_> = group.iter().filter(|s| s.name == format!("{name}{suffix}")).collect();
                match found.as_slice() {
                    [s] => Ok(s.value),
                    _ => Err(format!("{name}{{{key:?}}}: {} {suffix} samples", found.len())),
                }
            };
            let count = one("_count")?;
            let sum = one("_sum")?;
            if sum.is_nan() || sum < 0.0 {
                return Err(format!("{name}: negative or NaN sum"));
            }
            let buckets: Vec<(f64, f64)> = group
                .iter()
                .filter(|s| s.name.ends_with("_bucket"))
                .map(|s| Ok((parse_value(&s.labels["le"])?, s.value)))
                .collect::<Result<_, String>>()?;
            for w in buckets.windows(2) {
                if w[0].0.partial_cmp(&w[1].0) != Some(std::cmp::Ordering::Less) {
                    return Err(format!("{name}: le not increasing: {buckets:?}"));
                }
                if !matches!(
                    w[0].1.partial_cmp(&w[1].1),
                    Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                ) {
                    return Err(format!("{name}: buckets not cumulative: {buckets:?}"));
                }
            }
            match buckets.last() {
                Some(&(le, n)) if le == f64::INFINITY && n == count => {}
                _ => return Err(format!("{name}: last bucket is not +Inf == _count {count}: {buckets:?}")),
            }
            if buckets.iter().any(|&(_, n)| n.fract() != 0.0 || n < 0.0) {
                return Err(format!("{name}: non-integer bucket"));
            }
        }
        Ok(())
    }

    fn lbl(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The value of the one sample named `sample` with exactly these labels.
    fn value(fams: &Families, sample: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        let want = lbl(pairs);
        fams.values().flat_map(|f| &f.samples).find(|s| s.name == sample && s.labels == want).map(|s| s.value)
    }

    fn samples<'a>(fams: &'a Families, family: &str) -> &'a [Sample] {
        &fams[family].samples
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // -----------------------------------------------------------------------------------
    // The store
    // -----------------------------------------------------------------------------------

    #[test]
    fn hot_path_methods_update_their_values() {
        let m = Metrics::new_boxed();
        let s = m.snapshot();
        assert!(s.requests.is_empty() && s.refused.is_empty() && !s.ready && s.started_unix == 0);
        assert_eq!(s.duration.count(), 0);

        m.observe_request(200, ms(3), ms(1));
        m.observe_request(200, ms(30), Duration::ZERO);
        m.observe_request(404, ms(1), ms(2));
        m.request_refused(400);
        m.request_refused(431);
        m.request_refused(431);
        for _ in 0..3 {
            m.connection_opened();
        }
        m.connection_closed(CloseReason::Client);
        m.connection_closed(CloseReason::SlowReader);
        m.add_bytes_in(100);
        m.add_bytes_in(23);
        m.add_bytes_out(4096);
        m.set_threads(3, 1);
        m.in_flight_add(2);
        m.in_flight_add(-1);
        m.mark_started();

        let s = m.snapshot();
        assert_eq!(s.requests, vec![(200, 2), (404, 1)]);
        assert_eq!(s.refused, vec![(400, 1), (431, 2)]);
        assert_eq!(s.duration.count(), 3);
        assert_eq!(s.duration.sum_ns, 34_000_000);
        assert_eq!(s.queue_wait.count(), 3);
        assert_eq!(s.queue_wait.sum_ns, 3_000_000);
        assert_eq!((s.connections_accepted, s.connections_open), (3, 1));
        let mut closed = [0; CloseReason::COUNT];
        closed[CloseReason::Client as usize] = 1;
        closed[CloseReason::SlowReader as usize] = 1;
        assert_eq!(s.connections_closed, closed);
        assert_eq!((s.bytes_in, s.bytes_out), (123, 4096));
        assert_eq!((s.threads_busy, s.threads_idle, s.in_flight), (3, 1, 1));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(s.ready && s.started_unix > 0 && s.started_unix <= now, "{}", s.started_unix);

        m.set_ready(false);
        assert!(!m.is_ready() && !m.snapshot().ready);
        m.set_threads(0, 4);
        assert_eq!((m.snapshot().threads_busy, m.snapshot().threads_idle), (0, 4));

        m.clear();
        let c = m.snapshot();
        let empty = Metrics::new_boxed().snapshot();
        assert_eq!(c, empty);
        assert_eq!(m.magic.load(Relaxed), Metrics::MAGIC, "clear keeps the block claimed");
    }

    #[test]
    fn histogram_bounds_are_inclusive() {
        let h = &Metrics::new_boxed().duration;
        for (i, &ns) in BUCKETS_NS.iter().enumerate() {
            h.observe(Duration::from_nanos(ns));
            assert_eq!(h.snapshot().buckets[i], 1, "exactly {ns} ns counts under its own bound");
            h.observe(Duration::from_nanos(ns + 1));
            assert_eq!(h.snapshot().buckets[i + 1], 1, "{ns} + 1 ns counts under the next bound");
            h.clear();
        }
        h.observe(Duration::ZERO);
        assert_eq!(h.snapshot().buckets[0], 1);
        h.observe(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.buckets[BUCKET_COUNT - 1], 1, "beyond 10 s: +Inf");
        assert_eq!(s.sum_ns, u64::MAX, "a duration past u64 nanoseconds saturates");
        assert_eq!(s.count(), 2);
        // The bounds in seconds and in nanoseconds are the same.
        for (s, ns) in BUCKETS_SECONDS.iter().zip(BUCKETS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
    }

    #[test]
    fn status_codes_outside_100_to_599_are_other() {
        let m = Metrics::new_boxed();
        for code in [0, 1, 99, 100, 101, 599, 600, 999, u16::MAX] {
            m.observe_request(code, ms(1), ms(1));
            m.request_refused(code);
        }
        let want = vec![(0, 6), (100, 1), (101, 1), (599, 1)];
        let s = m.snapshot();
        assert_eq!(s.requests, want);
        assert_eq!(s.refused, want);
    }

    #[test]
    fn close_reasons_have_distinct_labels_and_slots() {
        let labels: HashSet<_> = CloseReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), CloseReason::COUNT);
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert!(is_label_name(r.label()));
        }
    }

    // -----------------------------------------------------------------------------------
    // Raw blocks
    // -----------------------------------------------------------------------------------

    /// A zeroed, 8-aligned buffer of at least `bytes` bytes.
    fn zeroed(bytes: usize) -> Vec<u64> {
        vec![0u64; bytes.div_ceil(8) + 1]
    }

    #[test]
    fn from_raw_claims_a_zeroed_block() {
        let mut buf = zeroed(Metrics::SIZE);
        let ptr = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: buf outlives both references and is touched only through them.
        let a = unsafe { Metrics::from_raw(ptr, Metrics::SIZE) }.expect("a zeroed block is valid");
        assert_eq!(a.snapshot(), Metrics::new_boxed().snapshot(), "and empty");
        a.observe_request(201, ms(2), ms(1));
        a.connection_opened();
        // A second view of the same claimed block (another process mapping it) sees it.
        let b = unsafe { Metrics::from_raw(ptr, Metrics::SIZE + 8) }.expect("claimed by this layout");
        assert_eq!(b.snapshot().requests, vec![(201, 1)]);
        assert_eq!(b.snapshot().connections_open, 1);
        assert_eq!(buf[0], Metrics::MAGIC, "the first word records the layout");
    }

    #[test]
    fn from_raw_refuses_null_misaligned_short_and_foreign_blocks() {
        assert_eq!(unsafe { Metrics::from_raw(std::ptr::null(), Metrics::SIZE) }.err(), Some(RawError::Null));
        let mut buf = zeroed(Metrics::SIZE + 16);
        let ptr = buf.as_mut_ptr().cast::<u8>();
        for off in [1, 2, 4, 7] {
            let p = ptr.wrapping_add(off);
            assert_eq!(
                unsafe { Metrics::from_raw(p, Metrics::SIZE) }.err(),
                Some(RawError::Misaligned { addr: p as usize })
            );
        }
        for len in [0, 8, Metrics::SIZE - 1] {
            assert_eq!(unsafe { Metrics::from_raw(ptr, len) }.err(), Some(RawError::TooShort { len }));
        }
        assert!(buf.iter().all(|&w| w == 0), "a refused block is not written");
        for foreign in [
            0xdead_beef,
            Metrics::MAGIC ^ (1 << 24), // another layout version, same size
            Metrics::MAGIC + 8,         // same version, another size
            u64::MAX,
        ] {
            buf[0] = foreign;
            assert_eq!(
                unsafe { Metrics::from_raw(ptr, Metrics::SIZE) }.err(),
                Some(RawError::Layout { found: foreign })
            );
            assert_eq!(buf[0], foreign, "left as it was");
        }
        let msg = RawError::Layout { found: 1 }.to_string();
        assert!(
            msg.contains("0x0000000000000001") && msg.contains(&format!("{:#018x}", Metrics::MAGIC)),
            "{msg}"
        );
        assert!(RawError::TooShort { len: 3 }.to_string().contains(&Metrics::SIZE.to_string()));
    }

    #[test]
    fn layout_constants() {
        assert_eq!(Metrics::ALIGN, 8);
        assert!(Metrics::SIZE.is_multiple_of(Metrics::ALIGN));
        assert_eq!(Metrics::MAGIC & 0xff_ffff, Metrics::SIZE as u64);
        assert_eq!(&Metrics::MAGIC.to_be_bytes()[..4], b"RSWM");
    }

    /// Child processes update a block in a shared mapping; the parent reads their totals.
    #[cfg(unix)]
    #[test]
    fn a_block_in_shared_memory_counts_what_other_processes_do() {
        const CHILDREN: usize = 3;
        const EACH: u64 = 5_000;
        let len = Metrics::SIZE * 2;
        // SAFETY: an anonymous shared mapping of `len` bytes, zeroed by the kernel, unmapped
        // at the end of the test once every child has exited.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let ptr = ptr.cast::<u8>();
        // The second block of the mapping, as a supervisor lays one per worker.
        let block = ptr.wrapping_add(Metrics::SIZE);
        let mut pids = Vec::new();
        for i in 0..CHILDREN {
            // SAFETY: the child only does atomic operations on the mapping and _exit()s:
            // no allocation, no lock, nothing the other threads of the test might hold.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let code = match unsafe { Metrics::from_raw(block, Metrics::SIZE) } {
                    Ok(m) => {
                        for _ in 0..EACH {
                            m.observe_request(200 + i as u16, ms(1), Duration::from_micros(50));
                            m.connection_opened();
                            m.add_bytes_out(10);
                        }
                        0
                    }
                    Err(_) => 3,
                };
                unsafe { libc::_exit(code) };
            }
            pids.push(pid);
        }
        for pid in pids {
            let mut status = 0;
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
        }
        let m = unsafe { Metrics::from_raw(block, Metrics::SIZE) }.unwrap();
        let s = m.snapshot();
        assert_eq!(s.requests, (0..CHILDREN as u16).map(|i| (200 + i, EACH)).collect::<Vec<_>>());
        assert_eq!(s.duration.count(), EACH * CHILDREN as u64);
        assert_eq!(s.duration.buckets[3], EACH * CHILDREN as u64, "1 ms: the le=0.001 bucket");
        assert_eq!(s.queue_wait.buckets[0], EACH * CHILDREN as u64);
        assert_eq!(s.connections_accepted, EACH * CHILDREN as u64);
        assert_eq!(s.bytes_out, 10 * EACH * CHILDREN as u64);
        // The first block was never claimed.
        assert_eq!(unsafe { std::ptr::read_volatile(ptr.cast::<u64>()) }, 0);
        assert_eq!(unsafe { libc::munmap(ptr.cast(), len) }, 0);
    }

    // -----------------------------------------------------------------------------------
    // Exposition
    // -----------------------------------------------------------------------------------

    const PER_PROCESS: [(&str, &str); 14] = [
        ("rswaitress_requests", "counter"),
        ("rswaitress_requests_refused", "counter"),
        ("rswaitress_request_duration_seconds", "histogram"),
        ("rswaitress_request_queue_wait_seconds", "histogram"),
        ("rswaitress_requests_in_flight", "gauge"),
        ("rswaitress_connections_open", "gauge"),
        ("rswaitress_threads_busy", "gauge"),
        ("rswaitress_threads_idle", "gauge"),
        ("rswaitress_connections_accepted", "counter"),
        ("rswaitress_connections_closed", "counter"),
        ("rswaitress_received_bytes", "counter"),
        ("rswaitress_sent_bytes", "counter"),
        ("rswaitress_ready", "gauge"),
        ("rswaitress_start_time_seconds", "gauge"),
    ];
    const MASTER: [(&str, &str); 3] = [
        ("rswaitress_workers_configured", "gauge"),
        ("rswaitress_worker_restarts", "counter"),
        ("rswaitress_master_ready", "gauge"),
    ];

    fn single(m: &Metrics) -> Families {
        let text = encode(&[ProcessMetrics { worker: None, metrics: m }], None);
        parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn single_process_exposition_parses_strictly_and_counts_what_was_observed() {
        let m = Metrics::new_boxed();
        m.mark_started();
        let durations =
            [ms(0), Duration::from_micros(100), Duration::from_micros(101), ms(7), ms(400), ms(12_000)];
        for (i, d) in durations.iter().enumerate() {
            m.observe_request(if i % 2 == 0 { 200 } else { 500 }, *d, *d / 10);
        }
        m.observe_request(777, ms(1), ms(1));
        m.request_refused(400);
        for _ in 0..4 {
            m.connection_opened();
        }
        m.connection_closed(CloseReason::IdleTimeout);
        m.connection_closed(CloseReason::Stopping);
        m.add_bytes_in(1000);
        m.add_bytes_out(25_000);
        m.set_threads(1, 3);
        m.in_flight_add(1);

        let f = single(&m);
        let names: Vec<(&str, &str)> =
            f.iter().map(|(n, fam)| (n.as_str(), fam.kind.as_deref().unwrap())).collect();
        let mut want = PER_PROCESS.to_vec();
        want.sort();
        assert_eq!(names, want, "exactly the per-process families, without the master's");
        assert!(f.values().flat_map(|f| &f.samples).all(|s| !s.labels.contains_key("worker")));

        assert_eq!(value(&f, "rswaitress_requests_total", &[("code", "200")]), Some(3.0));
        assert_eq!(value(&f, "rswaitress_requests_total", &[("code", "500")]), Some(3.0));
        assert_eq!(value(&f, "rswaitress_requests_total", &[("code", "other")]), Some(1.0));
        assert_eq!(samples(&f, "rswaitress_requests").len(), 3, "codes never seen are not exposed");
        assert_eq!(value(&f, "rswaitress_requests_refused_total", &[("code", "400")]), Some(1.0));

        let h = "rswaitress_request_duration_seconds";
        assert_eq!(value(&f, &format!("{h}_count"), &[]), Some(7.0));
        let sum = durations.iter().map(Duration::as_secs_f64).sum::<f64>() + 0.001;
        assert!((value(&f, &format!("{h}_sum"), &[]).unwrap() - sum).abs() < 1e-9);
        let bucket = |le: &str| value(&f, &format!("{h}_bucket"), &[("le", le)]).unwrap();
        // 0 and 100 us (inclusive) in the first bucket; 101 us, 1 ms, 7 ms, 400 ms, 12 s after.
        assert_eq!(bucket("0.0001"), 2.0);
        assert_eq!(bucket("0.00025"), 3.0);
        assert_eq!(bucket("0.001"), 4.0);
        assert_eq!(bucket("0.005"), 4.0);
        assert_eq!(bucket("0.01"), 5.0);
        assert_eq!(bucket("0.5"), 6.0);
        assert_eq!(bucket("10.0"), 6.0);
        assert_eq!(bucket("+Inf"), 7.0);
        assert_eq!(f[h].unit.as_deref(), Some("seconds"));
        let les: Vec<f64> = samples(&f, h)
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
            .map(|s| parse_value(&s.labels["le"]).unwrap())
            .collect();
        let mut want_les = BUCKETS_SECONDS.to_vec();
        want_les.push(f64::INFINITY);
        assert_eq!(les, want_les);
        let q = "rswaitress_request_queue_wait_seconds";
        assert_eq!(value(&f, &format!("{q}_count"), &[]), Some(7.0));
        assert_eq!(value(&f, &format!("{q}_bucket"), &[("le", "0.0001")]), Some(3.0), "0, 10 us, 10.1 us");

        assert_eq!(value(&f, "rswaitress_connections_accepted_total", &[]), Some(4.0));
        assert_eq!(value(&f, "rswaitress_connections_open", &[]), Some(2.0));
        for r in CloseReason::ALL {
            let want = matches!(r, CloseReason::IdleTimeout | CloseReason::Stopping) as u8 as f64;
            assert_eq!(
                value(&f, "rswaitress_connections_closed_total", &[("reason", r.label())]),
                Some(want)
            );
        }
        assert_eq!(value(&f, "rswaitress_received_bytes_total", &[]), Some(1000.0));
        assert_eq!(value(&f, "rswaitress_sent_bytes_total", &[]), Some(25_000.0));
        assert_eq!(f["rswaitress_sent_bytes"].unit.as_deref(), Some("bytes"));
        assert_eq!(value(&f, "rswaitress_threads_busy", &[]), Some(1.0));
        assert_eq!(value(&f, "rswaitress_threads_idle", &[]), Some(3.0));
        assert_eq!(value(&f, "rswaitress_requests_in_flight", &[]), Some(1.0));
        assert_eq!(value(&f, "rswaitress_ready", &[]), Some(1.0));
        assert_eq!(value(&f, "rswaitress_start_time_seconds", &[]), Some(m.snapshot().started_unix as f64));
        for fam in f.values() {
            let help = fam.help.as_deref().unwrap();
            assert!(!help.is_empty() && !help.contains(['\\', '"']), "{help}");
        }
    }

    #[test]
    fn empty_store_exposition_parses_strictly() {
        let m = Metrics::new_boxed();
        let f = single(&m);
        assert!(samples(&f, "rswaitress_requests").is_empty());
        assert!(samples(&f, "rswaitress_requests_refused").is_empty());
        let h = "rswaitress_request_duration_seconds";
        assert_eq!(value(&f, &format!("{h}_count"), &[]), Some(0.0));
        assert_eq!(value(&f, &format!("{h}_bucket"), &[("le", "+Inf")]), Some(0.0));
        assert_eq!(value(&f, "rswaitress_ready", &[]), Some(0.0), "not ready before mark_started");
        // No process at all (a master whose workers are all starting): families, no samples.
        let text = encode(&[], Some(&MasterInfo { workers_configured: 2, restarts: &[], ready: true }));
        let f = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(samples(&f, h).is_empty());
        assert_eq!(value(&f, "rswaitress_workers_configured", &[]), Some(2.0));
    }

    #[test]
    fn two_workers_and_the_master_in_one_exposition() {
        let w0 = Metrics::new_boxed();
        let w1 = Metrics::new_boxed();
        w0.mark_started();
        w1.mark_started();
        w1.set_ready(false);
        for _ in 0..5 {
            w0.observe_request(200, ms(2), ms(0));
        }
        w1.observe_request(200, ms(20), ms(3));
        w1.observe_request(503, ms(1), ms(0));
        w0.connection_opened();
        w1.connection_opened();
        w1.connection_opened();
        w1.connection_closed(CloseReason::Error);
        w0.add_bytes_in(7);
        w1.add_bytes_in(11);
        let restarts = vec![("0".to_string(), 0), ("1".to_string(), 3)];
        let master = MasterInfo { workers_configured: 2, restarts: &restarts, ready: true };
        let procs = [
            ProcessMetrics { worker: Some("0".into()), metrics: &w0 },
            ProcessMetrics { worker: Some("1".into()), metrics: &w1 },
        ];
        let text = encode(&procs, Some(&master));
        let f = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(text.matches("# TYPE rswaitress_requests counter\n").count(), 1);

        let mut want: Vec<_> = PER_PROCESS.iter().chain(&MASTER).map(|&(n, k)| (n, k)).collect();
        want.sort();
        let names: Vec<(&str, &str)> =
            f.iter().map(|(n, fam)| (n.as_str(), fam.kind.as_deref().unwrap())).collect();
        assert_eq!(names, want);
        // Every per-process sample carries a worker label, and each worker has its own.
        for (name, _) in PER_PROCESS {
            let workers: HashSet<_> = samples(&f, name).iter().map(|s| s.labels["worker"].as_str()).collect();
            if name != "rswaitress_requests_refused" {
                assert_eq!(workers, HashSet::from(["0", "1"]), "{name}");
            }
        }
        assert_eq!(value(&f, "rswaitress_requests_total", &[("worker", "0"), ("code", "200")]), Some(5.0));
        assert_eq!(value(&f, "rswaitress_requests_total", &[("worker", "1"), ("code", "200")]), Some(1.0));
        assert_eq!(value(&f, "rswaitress_requests_total", &[("worker", "1"), ("code", "503")]), Some(1.0));
        assert_eq!(value(&f, "rswaitress_requests_total", &[("worker", "0"), ("code", "503")]), None);
        let h = "rswaitress_request_duration_seconds";
        assert_eq!(value(&f, &format!("{h}_count"), &[("worker", "0")]), Some(5.0));
        assert_eq!(value(&f, &format!("{h}_bucket"), &[("worker", "1"), ("le", "0.001")]), Some(1.0));
        assert_eq!(value(&f, &format!("{h}_bucket"), &[("worker", "1"), ("le", "+Inf")]), Some(2.0));
        assert_eq!(value(&f, "rswaitress_connections_open", &[("worker", "1")]), Some(1.0));
        assert_eq!(
            value(&f, "rswaitress_connections_closed_total", &[("worker", "1"), ("reason", "error")]),
            Some(1.0)
        );
        assert_eq!(value(&f, "rswaitress_received_bytes_total", &[("worker", "0")]), Some(7.0));
        assert_eq!(value(&f, "rswaitress_received_bytes_total", &[("worker", "1")]), Some(11.0));
        assert_eq!(value(&f, "rswaitress_ready", &[("worker", "0")]), Some(1.0));
        assert_eq!(value(&f, "rswaitress_ready", &[("worker", "1")]), Some(0.0));
        assert_eq!(value(&f, "rswaitress_workers_configured", &[]), Some(2.0));
        assert_eq!(value(&f, "rswaitress_worker_restarts_total", &[("worker", "0")]), Some(0.0));
        assert_eq!(value(&f, "rswaitress_worker_restarts_total", &[("worker", "1")]), Some(3.0));
        assert_eq!(value(&f, "rswaitress_master_ready", &[]), Some(1.0));
        let stopping = MasterInfo { ready: false, ..master };
        let f = parse_strict(&encode(&procs, Some(&stopping))).unwrap();
        assert_eq!(value(&f, "rswaitress_master_ready", &[]), Some(0.0));
    }

    #[test]
    fn worker_labels_are_escaped() {
        let m = Metrics::new_boxed();
        m.observe_request(200, ms(1), ms(1));
        let hostile = "a\"b\\c\nd} x=\"1\"";
        let restarts = vec![(hostile.to_string(), 1)];
        let text = encode(
            &[ProcessMetrics { worker: Some(hostile.into()), metrics: &m }],
            Some(&MasterInfo { workers_configured: 1, restarts: &restarts, ready: true }),
        );
        let f = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            value(&f, "rswaitress_requests_total", &[("worker", hostile), ("code", "200")]),
            Some(1.0)
        );
        assert_eq!(value(&f, "rswaitress_worker_restarts_total", &[("worker", hostile)]), Some(1.0));
    }

    #[test]
    fn the_parser_in_these_tests_is_strict() {
        let good = encode(&[ProcessMetrics { worker: None, metrics: &Metrics::new_boxed() }], None);
        assert!(parse_strict(&good).is_ok());
        let without_eof = good.strip_suffix("# EOF\n").unwrap();
        let h = "rswaitress_request_duration_seconds";
        let broken = [
            without_eof.to_string(),
            format!("{good}x 1\n"),
            good.replacen(
                &format!("{h}_bucket{{le=\"+Inf\"}} 0"),
                &format!("{h}_bucket{{le=\"+Inf\"}} 1"),
                1,
            ),
            good.replacen(
                &format!("{h}_bucket{{le=\"0.0001\"}} 0"),
                &format!("{h}_bucket{{le=\"0.0001\"}} 5"),
                1,
            ),
            good.replacen(&format!("{h}_bucket{{le=\"+Inf\"}} 0\n"), "", 1),
            good.replacen("rswaitress_ready 0", "rswaitress_ready_total 0", 1),
            good.replacen("rswaitress_sent_bytes_total 0", "rswaitress_sent_bytes 0", 1),
            good.replacen(
                "rswaitress_connections_open 0",
                "rswaitress_connections_open 0\nrswaitress_connections_open 0",
                1,
            ),
            good.replacen("# TYPE rswaitress_ready gauge\n", "", 1),
            good.replacen("reason=\"client\"", "reason=\"client\",", 1),
            good.replacen("reason=\"client\"", "reason=client", 1),
            format!("{without_eof}# TYPE rswaitress_ready gauge\n# EOF\n"),
            good.replacen("rswaitress_ready 0", "rswaitress_ready zero", 1),
        ];
        for (i, text) in broken.iter().enumerate() {
            assert_ne!(text, &good, "case {i} changed nothing");
            assert!(parse_strict(text).is_err(), "case {i} accepted:\n{text}");
        }
    }

    /// Many threads update one store while another scrapes it: every scrape parses
    /// strictly (buckets cumulative, +Inf == _count even mid-update), and the totals at
    /// the end are exactly what the threads did.
    #[test]
    fn concurrent_updates_and_scrapes() {
        const THREADS: u64 = 8;
        const EACH: u64 = 20_000;
        let m: Arc<Metrics> = Arc::from(Metrics::new_boxed());
        let done = Arc::new(AtomicBool::new(false));
        let scraper = {
            let (m, done) = (m.clone(), done.clone());
            std::thread::spawn(move || {
                let mut scrapes = 0u32;
                loop {
                    // Read `done` first: the scrape after it sees every update.
                    let last = done.load(Ordering::SeqCst);
                    let text = encode(&[ProcessMetrics { worker: Some("w".into()), metrics: &m }], None);
                    if let Err(e) = parse_strict(&text) {
                        panic!("{e}\n{text}");
                    }
                    scrapes += 1;
                    if last {
                        return scrapes;
                    }
                }
            })
        };
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        m.in_flight_add(1);
                        m.connection_opened();
                        m.add_bytes_in(3);
                        m.observe_request(
                            200 + (i % 3) as u16,
                            Duration::from_micros(i % 2000),
                            Duration::from_micros(t),
                        );
                        m.add_bytes_out(5);
                        m.request_refused(400);
                        m.connection_closed(CloseReason::ALL[(i % CloseReason::COUNT as u64) as usize]);
                        m.set_threads(t, THREADS - t);
                        m.in_flight_add(-1);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        assert!(scraper.join().unwrap() >= 1);

        let total = THREADS * EACH;
        let s = m.snapshot();
        let by_code: u64 = s.requests.iter().map(|&(_, n)| n).sum();
        assert_eq!(by_code, total);
        assert_eq!(s.requests.len(), 3);
        assert_eq!(s.refused, vec![(400, total)]);
        assert_eq!(s.duration.count(), total);
        assert_eq!(s.queue_wait.count(), total);
        let per_thread_sum: u64 = (0..EACH).map(|i| (i % 2000) * 1000).sum();
        assert_eq!(s.duration.sum_ns, per_thread_sum * THREADS);
        assert_eq!(s.queue_wait.sum_ns, (0..THREADS).map(|t| t * 1000 * EACH).sum::<u64>());
        assert_eq!((s.connections_accepted, s.connections_open, s.in_flight), (total, 0, 0));
        assert_eq!(s.connections_closed.iter().sum::<u64>(), total);
        assert_eq!((s.bytes_in, s.bytes_out), (3 * total, 5 * total));
        assert_eq!(s.threads_busy + s.threads_idle, THREADS, "one writer's pair, or another's");

        let f = parse_strict(&encode(&[ProcessMetrics { worker: None, metrics: &m }], None)).unwrap();
        let exposed: f64 = samples(&f, "rswaitress_requests").iter().map(|s| s.value).sum();
        assert_eq!(exposed, total as f64);
        assert_eq!(value(&f, "rswaitress_request_duration_seconds_count", &[]), Some(total as f64));
    }

    // -----------------------------------------------------------------------------------
    // HTTP answers
    // -----------------------------------------------------------------------------------

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            let mut found = self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
            let first = found.next().map(|(_, v)| v.as_str());
            assert!(found.next().is_none(), "{name} twice");
            first
        }
    }

    /// Parses a response, checking its framing: the status line, header syntax, a Date,
    /// `Connection: close`, and a Content-Length equal to the body (or, for HEAD, to what
    /// GET would send: `get_len`).
    fn parse_response(raw: &[u8], head: bool, get_len: Option<usize>) -> Resp {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of head");
        let head_text = std::str::from_utf8(&raw[..split]).expect("ASCII head");
        let body = raw[split + 4..].to_vec();
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().unwrap();
        let rest = status_line.strip_prefix("HTTP/1.1 ").expect("HTTP/1.1 status line");
        let status: u16 = rest[..3].parse().unwrap();
        assert_eq!(&rest[3..4], " ");
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap_or_else(|| panic!("bad header {l:?}"));
                assert!(is_label_name(&k.replace('-', "_")), "{k:?}");
                (k.to_string(), v.to_string())
            })
            .collect();
        let r = Resp { status, headers, body };
        let len: usize = r.header("Content-Length").expect("Content-Length").parse().unwrap();
        if head {
            assert!(r.body.is_empty(), "HEAD has no body");
            if let Some(g) = get_len {
                assert_eq!(len, g, "HEAD announces GET's length");
            }
        } else {
            assert_eq!(len, r.body.len());
        }
        assert_eq!(r.header("Connection"), Some("close"));
        httpdate::parse_http_date(r.header("Date").expect("Date")).expect("an HTTP date");
        assert!(r.header("Content-Type").is_some());
        r
    }

    fn ask(method: &str, target: &str, ready: bool) -> Resp {
        let raw = answer(method, target.as_bytes(), ready, || "METRICS\n# EOF\n".to_string());
        parse_response(&raw, method == "HEAD", None)
    }

    #[test]
    fn metrics_health_and_readiness_answers() {
        let r = ask("GET", "/metrics", true);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"METRICS\n# EOF\n"[..]));
        assert_eq!(r.header("Content-Type"), Some(CONTENT_TYPE));
        let r = ask("GET", "/metrics", false);
        assert_eq!(r.status, 200, "metrics are served while draining");

        let r = ask("GET", "/healthz", false);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
        let r = ask("GET", "/readyz", true);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ready\n"[..]));
        let r = ask("GET", "/readyz", false);
        assert_eq!((r.status, r.body.as_slice()), (503, &b"draining\n"[..]));
        assert!(std::str::from_utf8(&answer("GET", b"/readyz", false, String::new))
            .unwrap()
            .starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    }

    #[test]
    fn head_gets_the_headers_of_get_without_the_body() {
        for (target, ready) in
            [("/metrics", true), ("/healthz", true), ("/readyz", true), ("/readyz", false), ("/nope", true)]
        {
            let get = answer("GET", target.as_bytes(), ready, || "x 1\n# EOF\n".into());
            let get = parse_response(&get, false, None);
            let head = answer("HEAD", target.as_bytes(), ready, || "x 1\n# EOF\n".into());
            let head = parse_response(&head, true, Some(get.body.len()));
            assert_eq!(head.status, get.status, "{target}");
            assert_eq!(head.header("Content-Type"), get.header("Content-Type"));
        }
    }

    #[test]
    fn queries_and_absolute_forms_are_routed_by_path() {
        for target in [
            "/metrics?",
            "/metrics?name[]=rswaitress_ready",
            "/metrics#frag",
            "http://127.0.0.1:9100/metrics",
            "HTTPS://[::1]:9100/metrics?x=1",
            "http://host/metrics#f",
        ] {
            let r = ask("GET", target, true);
            assert_eq!((r.status, r.header("Content-Type")), (200, Some(CONTENT_TYPE)), "{target}");
        }
        assert_eq!(ask("GET", "/healthz?verbose=1", true).status, 200);
        assert_eq!(ask("GET", "http://h/readyz?x", false).status, 503);
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        let called = std::cell::Cell::new(false);
        for target in [
            "",
            "/",
            "*",
            "/metric",
            "/metrics/",
            "/metricsx",
            "//metrics",
            "/%6detrics",
            "/METRICS",
            "/healthz/",
            "metrics",
            "http://host",
            "http://host?metrics",
            "http:/metrics",
            "/readyz/../metrics",
        ] {
            for method in ["GET", "HEAD", "POST"] {
                let raw = answer(method, target.as_bytes(), true, || {
                    called.set(true);
                    String::new()
                });
                let r = parse_response(&raw, method == "HEAD", None);
                assert_eq!(r.status, 404, "{method} {target:?}");
                assert!(r.header("Allow").is_none());
            }
        }
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get", "Head", "", "GET ", "\u{0}"] {
            for target in ["/metrics", "/healthz", "/readyz?x"] {
                let raw = answer(method, target.as_bytes(), true, || {
                    called.set(true);
                    String::new()
                });
                let r = parse_response(&raw, false, None);
                assert_eq!(r.status, 405, "{method:?} {target}");
                assert_eq!(r.header("Allow"), Some("GET, HEAD"));
                assert_eq!(r.body, b"method not allowed\n");
            }
        }
        assert!(!called.get(), "the exposition is built only for /metrics");
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Any method and any target bytes: a well-framed answer, never a panic.
        #[test]
        fn any_request_gets_a_well_framed_answer(
            method in prop_oneof![
                Just("GET".to_string()), Just("HEAD".to_string()), ".{0,8}".prop_map(|s: String| s)
            ],
            target in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::sample::select(vec!["/metrics", "/healthz", "/readyz", "http://h/metrics"])
                    .prop_flat_map(|p| proptest::collection::vec(any::<u8>(), 0..8)
                    .prop_map(move |tail| [p.as_bytes(), &tail].concat())),
            ],
            ready in any::<bool>(),
        ) {
            let raw = answer(&method, &target, ready, || "m 1\n# EOF\n".into());
            let r = parse_response(&raw, method == "HEAD", None);
            prop_assert!([200, 404, 405, 503].contains(&r.status));
        }
    }
}
