//! The poll loop, on a thread of its own that never touches Python: accepts, reads and
//! parses, hands complete requests to the pool, flushes what workers could not write and
//! sends what they left to it (see `deferred`), enforces timeouts and the connection
//! limit, and drains in order on a stop.
//!
//! Connections change phase only through [`Shared::apply`], which feeds an event to
//! `connection::phase::step` and carries out the action it returns; the reactor and the
//! workers both use it.

use std::collections::HashMap;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use polling::{Event as PollEvent, Events, PollMode, Poller};

use crate::check_timer::{self, CheckTimer};
use crate::config::Config;
use crate::connection::phase::{self, Action, Event, Phase};
use crate::connection::{Conn, ConnState, Interest, Parsed, Request};
use crate::deferred::{Deferred, Nap, Naps};
use crate::http::response::error_response;
use crate::http::{HttpError, Version};
use crate::listener::{peer_strings, Listener};
use crate::metrics::CloseReason;
use crate::metrics_hub::MetricsHub;
use crate::pool::Pool;

/// A complete request for a worker.
pub struct Task {
    pub conn: Arc<Conn>,
    pub req: Request,
}

/// How often the loop wakes when idle: the bound on how late a stop, a linger deadline
/// or a drain step is noticed.
const TICK: Duration = Duration::from_millis(100);
/// Size of the reactor's read buffer, at least.
const RECV_BUFFER: usize = 256 * 1024;
/// Connections a reactor accepts per wake-up of a listening socket it shares with other
/// worker processes.
const SHARED_ACCEPT_BATCH: usize = 1;
/// Input read ahead (unparsed) while a request of the connection is served, at least.
const READ_AHEAD: usize = 64 * 1024;
/// How long a connection refused with an error is drained before it is closed.
const LINGER: Duration = Duration::from_secs(2);
/// While draining, a reading connection is closed once it has been quiet this long: a
/// client that is sending its next request gets it answered (with `Connection: close`)
/// instead of a reset, and one that sends nothing does not hold the stop up.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

/// What the reactor, the workers and the run() thread share.
pub struct Shared {
    pub cfg: Config,
    pub poller: Poller,
    /// The listening sockets, until the reactor takes them (and closes them on a stop).
    listeners: Mutex<Option<Vec<Listener>>>,
    /// The stall check's timer, made with the poller (its descriptor exists from the
    /// start, like the listeners') until the reactor takes it.
    check_timer: Mutex<Option<CheckTimer>>,
    listener_count: usize,
    pub conns: Mutex<HashMap<usize, Arc<Conn>>>,
    next_key: AtomicUsize,
    /// The queue of complete requests and the pool threads waiting on it.
    pub pool: Pool<Task>,
    stop: AtomicU8,
    /// Set by the reactor thread when it has returned.
    finished: AtomicBool,
    accept_paused: AtomicBool,
    /// Connections lingering after an error answer, with their deadlines.
    lingering: Mutex<Vec<(Instant, usize)>>,
    /// Woken when the reactor starts draining and when it finishes (the run() thread).
    pub main_waker: Arc<Poller>,
    /// Responses completed by this process.
    requests: AtomicU64,
    /// The stop under way was asked for by max_requests (the process is to be replaced).
    recycling: AtomicBool,
    /// The metrics this process updates, and those its metrics listener shows.
    pub metrics: MetricsHub,
    /// The TLS configuration new connections to a TLS listener get (replaced by a
    /// certificate reload; sessions under way keep theirs).
    tls: parking_lot::RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// Responses pool threads left for the reactor to send (see [`Shared::defer`]).
    pub deferred: Deferred,
    /// Changes of a connection's interest made in the poller so far.
    #[cfg(test)]
    interest_changes: AtomicU64,
}

impl Shared {
    pub fn new(cfg: Config, listeners: Vec<Listener>) -> io::Result<Self> {
        Self::with_metrics(cfg, listeners, MetricsHub::single())
    }

    pub fn with_metrics(cfg: Config, listeners: Vec<Listener>, metrics: MetricsHub) -> io::Result<Self> {
        let listener_count = listeners.len();
        let poller = Poller::new()?;
        let check_timer = CheckTimer::new(&poller);
        Ok(Shared {
            cfg,
            poller,
            listeners: Mutex::new(Some(listeners)),
            check_timer: Mutex::new(Some(check_timer)),
            listener_count,
            conns: Mutex::new(HashMap::new()),
            next_key: AtomicUsize::new(listener_count),
            pool: Pool::new(),
            stop: AtomicU8::new(RUNNING),
            finished: AtomicBool::new(false),
            accept_paused: AtomicBool::new(false),
            lingering: Mutex::new(Vec::new()),
            main_waker: Arc::new(Poller::new()?),
            requests: AtomicU64::new(0),
            recycling: AtomicBool::new(false),
            metrics,
            tls: parking_lot::RwLock::new(None),
            deferred: Deferred::new(),
            #[cfg(test)]
            interest_changes: AtomicU64::new(0),
        })
    }

    /// Loads the TLS settings' certificate and key (at start and on a reload); the
    /// configuration in use stays when they cannot be loaded.
    pub fn load_tls(&self) -> Result<(), String> {
        let Some(settings) = &self.cfg.tls else { return Ok(()) };
        let config = crate::tls::load(settings)?;
        *self.tls.write() = Some(config);
        Ok(())
    }

    /// A new server-side TLS session.
    fn tls_session(&self) -> Result<Box<rustls::ServerConnection>, String> {
        let config = self.tls.read().clone().ok_or("no TLS configuration")?;
        rustls::ServerConnection::new(config).map(Box::new).map_err(|e| e.to_string())
    }

    /// Asks for a graceful stop: no new connections, requests in progress finish (within
    /// graceful_timeout). Safe from any thread.
    pub fn request_stop(&self) {
        self.metrics.own().set_ready(false);
        let _ = self.stop.compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.poller.notify();
    }

    /// Stops now: every connection is closed.
    pub fn abort(&self) {
        self.metrics.own().set_ready(false);
        self.stop.store(ABORTING, Ordering::SeqCst);
        let _ = self.poller.notify();
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) != RUNNING
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Counts a completed response; the one that reaches max_requests starts a graceful
    /// stop, so that the process is replaced (the requests still in progress finish).
    pub fn count_request(&self) {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.cfg.max_requests > 0 && n == self.cfg.max_requests {
            log::info!(target: "rswaitress",
                "Served {n} requests (max_requests): stopping to be replaced");
            self.recycling.store(true, Ordering::SeqCst);
            self.request_stop();
            let _ = self.main_waker.notify();
        }
    }

    pub fn requests_served(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn is_recycling(&self) -> bool {
        self.recycling.load(Ordering::SeqCst)
    }

    /// Closes the listening sockets if the reactor never ran (a server closed unused).
    pub fn release_listeners(&self) {
        self.listeners.lock().take();
    }

    /// Feeds `event` to the connection's phase machine and carries out the actions until
    /// the connection waits; the caller holds its lock. A request that becomes ready is
    /// returned (the phase is then `Queued`): the caller hands it to the pool, or serves
    /// it itself when it is the worker that just finished the one before.
    pub fn apply(&self, conn: &Conn, st: &mut ConnState, mut event: Event) -> Option<Request> {
        self.account(conn, st);
        let mut ready = None;
        loop {
            let prev = st.phase;
            let facts = st.facts(self.is_stopping());
            let (next, action) = phase::step(prev, event, facts);
            st.phase = next;
            match action {
                Action::Nothing | Action::AwaitInput | Action::Dispatch => break,
                Action::AwaitWritable => {
                    if !st.output_pending() {
                        event = Event::Drained;
                        continue;
                    }
                    break;
                }
                Action::ParseNext => {
                    if prev != Phase::Reading {
                        // Back from a response: the idle and head clocks start again.
                        st.await_next_request();
                    }
                    event = match st.parse(&self.cfg) {
                        Parsed::Request(req) => {
                            if !conn.listener.metrics {
                                self.metrics.own().in_flight_add(1);
                            }
                            ready = Some(req);
                            Event::RequestComplete
                        }
                        Parsed::NeedMore => Event::NeedMore,
                        Parsed::Error(err, version) => {
                            if !conn.listener.metrics {
                                self.metrics.own().request_refused(err.code);
                            }
                            self.queue_refusal(st, &err, version)
                        }
                    };
                }
                Action::HalfClose => {
                    st.input.release();
                    st.shutdown_write();
                    let until = Instant::now() + LINGER;
                    st.linger_until = Some(until);
                    self.lingering.lock().push((until, conn.key));
                    break;
                }
                Action::Close => {
                    self.close(conn, st, close_reason(prev, event, facts));
                    return None;
                }
            }
        }
        self.watch(conn, st);
        ready
    }

    /// Leaves a pool thread's output for the reactor to send instead of sending it now
    /// (see `deferred`), and says whether it did: only with a GIL (without one, threads
    /// send at once in parallel), on Linux (where it was measured; a nap elsewhere may
    /// last a whole timer tick), over plain TCP, when nothing waits for the socket
    /// already, and when more requests wait for the pool (the thread's time is better
    /// spent on them). Marks the connection: until the reactor's pass, what it is sent
    /// goes to its output buffer, and it is not watched for writability.
    pub fn defer(&self, conn: &Arc<Conn>, st: &mut ConnState) -> bool {
        if st.deferred {
            return true;
        }
        if !cfg!(target_os = "linux")
            || !self.pool.has_gil()
            || st.is_tls()
            || !st.out.is_empty()
            || !self.pool.requests_wait()
        {
            return false;
        }
        st.deferred = self.deferred.offer(conn);
        st.deferred
    }

    /// Queues an error answer (sent at once as far as the socket takes it).
    fn queue_refusal(&self, st: &mut ConnState, err: &HttpError, version: Version) -> Event {
        let page = error_response(err, version, &self.cfg.ident);
        st.input.release();
        match st.send(&[&page]) {
            Ok(_) => Event::Refused,
            Err(e) => {
                self.log_socket_error("sending an error response", &e);
                Event::Failed
            }
        }
    }

    /// What the poller should report for a connection in its phase.
    fn interest(&self, st: &ConnState) -> Interest {
        let write = st.output_pending() && !st.deferred;
        let read = match st.phase {
            Phase::Reading | Phase::Lingering => !st.peer_closed,
            // Input that arrives while a request is served is buffered, unparsed, up to
            // a bound (more with channel_request_lookahead): the thread that finishes the
            // response then finds the next request complete and serves it at once, and
            // the poller's interest need not change per request.
            Phase::Queued | Phase::Serving => !st.peer_closed && st.input.len() < self.lookahead_bytes(),
            // After an error answer the client may still be sending: keep reading (and
            // dropping) so that neither side blocks.
            Phase::Flushing(phase::After::Linger) => !st.peer_closed,
            Phase::Flushing(_) | Phase::Closed => false,
        };
        Interest { read, write }
    }

    /// Registers with the poller what the connection now waits for. Connections are
    /// watched level-triggered, and what a keep-alive connection waits for is the same
    /// (input) from one request to the next, so a request costs no poller call. That
    /// holds for a response left for the reactor too: while it waits to be sent, the
    /// connection keeps the read interest it had (whether the reactor reads meanwhile is
    /// still the phase's to say, see `on_ready`), and once the reactor has sent it,
    /// within a nap, the connection waits for input again. Dropping the interest in
    /// between cost two poller calls a request, one of them on the thread running Python.
    pub fn watch(&self, conn: &Conn, st: &mut ConnState) {
        let want = self.interest(st);
        if want == st.interest || (st.deferred && !want.read) {
            return;
        }
        #[cfg(test)]
        self.interest_changes.fetch_add(1, Ordering::Relaxed);
        let Some(sock) = st.sock() else { return };
        let ev = PollEvent::new(conn.key, want.read, want.write);
        match self.poller.modify_with_mode(sock, ev, PollMode::Level) {
            Ok(()) => st.interest = want,
            Err(e) => log::debug!(target: "rswaitress", "poller modify failed: {e}"),
        }
    }

    /// Input buffered ahead of the request being served, at most.
    fn lookahead_bytes(&self) -> usize {
        self.cfg.recv_bytes.saturating_mul(self.cfg.channel_request_lookahead).max(READ_AHEAD)
    }

    /// Moves a connection's byte counts into the metrics.
    fn account(&self, conn: &Conn, st: &mut ConnState) {
        let (received, sent) = st.take_io();
        if !conn.listener.metrics && (received | sent) != 0 {
            let m = self.metrics.own();
            m.add_bytes_in(received);
            m.add_bytes_out(sent);
        }
    }

    /// Closes a connection (idempotent): deregisters and closes the socket, wakes a
    /// worker waiting on back-pressure. The caller holds its lock.
    pub fn close(&self, conn: &Conn, st: &mut ConnState, reason: CloseReason) {
        self.account(conn, st);
        if let Some(sock) = st.close() {
            let _ = self.poller.delete(&sock);
            drop(sock);
            if !conn.listener.metrics {
                self.metrics.own().connection_closed(reason);
            }
        }
        conn.drained.notify_all();
        let remaining = {
            let mut conns = self.conns.lock();
            conns.remove(&conn.key);
            conns.len()
        };
        if remaining < self.cfg.connection_limit && self.accept_paused.load(Ordering::Relaxed) {
            let _ = self.poller.notify();
        }
    }

    pub fn log_socket_error(&self, what: &str, e: &io::Error) {
        if e.kind() == io::ErrorKind::InvalidData {
            // A failed TLS handshake or a bad record: common from scanners and clients
            // that do not trust the certificate, so not a warning.
            log::debug!(target: "rswaitress", "TLS error while {what}: {e}");
        } else if self.cfg.log_socket_errors && !is_disconnect(e) {
            log::warn!(target: "rswaitress", "Socket error while {what}: {e}");
        }
    }

    /// Answers a request on the metrics listener, on the reactor (no Python, no pool):
    /// `/metrics`, `/healthz`, `/readyz`; then the connection closes.
    fn answer_metrics(&self, conn: &Conn, st: &mut ConnState, req: &Request) {
        self.apply(conn, st, Event::Taken);
        let page = crate::metrics::answer(&req.head.method, &req.head.uri, self.metrics.ready(), || {
            self.metrics.encode()
        });
        let close = match st.send(&[&page]) {
            Ok(_) => true,
            Err(e) => {
                self.log_socket_error("answering a metrics request", &e);
                self.close(conn, st, CloseReason::Error);
                return;
            }
        };
        self.apply(conn, st, Event::ResponseDone { close });
    }

    /// Hands a request to the worker pool.
    pub fn dispatch(&self, conn: Arc<Conn>, req: Request) {
        self.pool.push(Task { conn, req });
        let queued = self.pool.queued();
        let idle = self.pool.idle();
        if queued > idle {
            queue_warning(queued - idle);
        }
    }

    fn new_key(&self) -> usize {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }
}

/// Why a connection is closed, from what closed it (for the metrics).
fn close_reason(prev: Phase, event: Event, facts: phase::Facts) -> CloseReason {
    match (prev, event) {
        (_, Event::Failed) => CloseReason::Error,
        (_, Event::Abort) => CloseReason::Stopping,
        (Phase::Lingering | Phase::Flushing(phase::After::Linger), _) => CloseReason::Refused,
        (_, Event::Stalled) if facts.output_pending => CloseReason::SlowReader,
        (_, Event::Stalled) => CloseReason::IdleTimeout,
        _ => CloseReason::Client,
    }
}

/// "Task queue depth is N", as Waitress logs it, at most once a second (with the deepest
/// depth seen), so that a loaded server does not spend its time logging.
fn queue_warning(depth: usize) {
    static LAST: Mutex<Option<(Instant, usize)>> = Mutex::new(None);
    let mut last = LAST.lock();
    let now = Instant::now();
    match *last {
        Some((t, max)) if now.duration_since(t) < Duration::from_secs(1) => {
            *last = Some((t, max.max(depth)));
        }
        Some((_, max)) => {
            log::warn!(target: "rswaitress.queue", "Task queue depth is {}", max.max(depth));
            *last = Some((now, 0));
        }
        None => {
            log::warn!(target: "rswaitress.queue", "Task queue depth is {depth}");
            *last = Some((now, 0));
        }
    }
}

pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WriteZero
    )
}

/// Runs the loop until a stop has been requested and the connections have drained (or
/// the grace period is over). Meant for a thread of its own.
pub fn run(shared: &Arc<Shared>) -> io::Result<()> {
    let result = Reactor::new(shared).and_then(|mut r| r.run());
    shared.finished.store(true, Ordering::SeqCst);
    let _ = shared.main_waker.notify();
    result
}

struct Reactor<'a> {
    shared: &'a Arc<Shared>,
    /// By poller key; a listener closed by a stop leaves its place empty.
    listeners: Vec<Option<Listener>>,
    scratch: Vec<u8>,
    /// Accepting was put off after an accept error: the listeners are watched again at
    /// the next tick.
    accept_deferred: bool,
    check_timer: CheckTimer,
    naps: Naps,
}

impl Drop for Reactor<'_> {
    /// Listeners still open (the metrics listener) leave the poller before they close.
    fn drop(&mut self) {
        for l in self.listeners.iter().flatten() {
            let _ = self.shared.poller.delete(l.socket());
        }
        let _ = self.check_timer.remove(&self.shared.poller);
        let left = self.shared.deferred.close();
        self.send_left(left);
    }
}

impl<'a> Reactor<'a> {
    fn new(shared: &'a Arc<Shared>) -> io::Result<Self> {
        let listeners = shared.listeners.lock().take().unwrap_or_default();
        for (i, l) in listeners.iter().enumerate() {
            // SAFETY: each listener is deleted from the poller (in stop_accepting, or when
            // the Reactor is dropped) before it is dropped, and lives in this struct until.
            unsafe { shared.poller.add(l.socket(), PollEvent::readable(i))? };
        }
        // recv_bytes is Waitress's recv() size; large bodies arrive in far fewer system
        // calls with a bigger landing buffer, so it is taken as a lower bound.
        let scratch = vec![0u8; shared.cfg.recv_bytes.max(RECV_BUFFER)];
        shared.metrics.own().mark_started();
        let listeners = listeners.into_iter().map(Some).collect();
        let check_timer = shared.check_timer.lock().take().unwrap_or_else(|| CheckTimer::new(&shared.poller));
        Ok(Reactor { shared, listeners, scratch, accept_deferred: false, check_timer, naps: Naps::new() })
    }

    fn run(&mut self) -> io::Result<()> {
        let shared = self.shared;
        let mut events = Events::with_capacity(std::num::NonZeroUsize::new(1024).unwrap());
        let mut next_cleanup = Instant::now() + shared.cfg.cleanup_interval;
        let mut next_tick = Instant::now() + TICK;
        let mut deadline: Option<Instant> = None;
        let mut pool_check: Option<Instant> = None;
        loop {
            events.clear();
            let nap = self.send_deferred();
            let wait = match nap {
                Some(Nap::Poll(length)) => length,
                Some(Nap::Sleep(_)) => Duration::ZERO,
                None => TICK,
            };
            let timeout = self.check_timer.timeout(pool_check, wait);
            // With the pool's queue long enough, the nap is a sleep that socket events do
            // not end; they are taken together after it (see crate::deferred).
            if let Some(Nap::Sleep(mut sleep)) = nap {
                if let Some(at) = pool_check {
                    sleep = sleep.min(at.saturating_duration_since(Instant::now()));
                }
                shared.deferred.sleep(sleep);
            }
            if let Err(e) = shared.poller.wait(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.stop_accepting();
                    self.close_all();
                    return Err(e);
                }
            }
            for ev in events.iter() {
                if ev.key == check_timer::KEY {
                    self.check_timer.fired();
                    continue;
                }
                // A fault in the handling of one connection closes that connection and
                // is logged; the loop goes on.
                let outcome = catch_unwind(AssertUnwindSafe(|| self.on_event(ev)));
                if outcome.is_err() {
                    log::error!(target: "rswaitress", "internal error while handling a connection event; the connection was closed");
                    if let Some(conn) = shared.conns.lock().get(&ev.key).cloned() {
                        let mut st = conn.st.lock();
                        shared.close(&conn, &mut st, CloseReason::Other);
                    }
                }
            }
            let now = Instant::now();
            // Requests waiting while the threads serving are stuck wake another thread.
            if pool_check.is_none_or(|at| now >= at) {
                pool_check = shared.pool.check();
            }
            if shared.accept_paused.load(Ordering::Relaxed)
                && !shared.is_stopping()
                && shared.conns.lock().len() < shared.cfg.connection_limit
            {
                shared.accept_paused.store(false, Ordering::Relaxed);
                log::info!(target: "rswaitress",
                    "total open connections dropped below the connection limit, listening again");
                for (i, l) in self.listeners.iter().enumerate() {
                    if let Some(l) = l {
                        let _ = shared.poller.modify(l.socket(), PollEvent::readable(i));
                    }
                }
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.close_lingering(now);
                if self.accept_deferred && !shared.accept_paused.load(Ordering::Relaxed) {
                    self.accept_deferred = false;
                    for (i, l) in self.listeners.iter().enumerate() {
                        if let Some(l) = l {
                            let _ = shared.poller.modify(l.socket(), PollEvent::readable(i));
                        }
                    }
                }
            }
            if now >= next_cleanup {
                next_cleanup = now + shared.cfg.cleanup_interval;
                self.close_stalled(now);
            }
            match shared.stop.load(Ordering::SeqCst) {
                RUNNING => {}
                ABORTING => {
                    self.stop_accepting();
                    self.close_all();
                    return Ok(());
                }
                _ => {
                    let deadline = *deadline.get_or_insert_with(|| {
                        self.stop_accepting();
                        now + shared.cfg.graceful_timeout
                    });
                    if self.drain_step(now) {
                        return Ok(());
                    }
                    if now >= deadline {
                        let left = shared.conns.lock().len();
                        if left > 0 {
                            log::warn!(target: "rswaitress",
                                "graceful stop timed out; closing {left} connection(s) still in progress");
                        }
                        self.close_all();
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Stops accepting: the listening sockets are closed, so new connections are refused.
    /// The metrics listener stays open until the end (a drain is what /readyz reports).
    fn stop_accepting(&mut self) {
        for slot in self.listeners.iter_mut() {
            if slot.as_ref().is_some_and(|l| !l.info.metrics) {
                if let Some(l) = slot.take() {
                    let _ = self.shared.poller.delete(l.socket());
                }
            }
        }
        let _ = self.shared.main_waker.notify();
    }

    fn close_all(&self) {
        let conns: Vec<Arc<Conn>> = self.shared.conns.lock().values().cloned().collect();
        for conn in conns {
            let mut st = conn.st.lock();
            self.shared.apply(&conn, &mut st, Event::Abort);
        }
    }

    /// One step of a graceful stop: closes the connections with nothing in progress;
    /// true once none is left and no request waits in the queue.
    fn drain_step(&self, now: Instant) -> bool {
        let conns: Vec<Arc<Conn>> = self.shared.conns.lock().values().cloned().collect();
        let mut left = 0;
        for conn in conns {
            let mut st = conn.st.lock();
            let quiet = now.saturating_duration_since(st.clocks.last_input) > DRAIN_IDLE;
            if phase::closes_while_draining(st.phase, st.output_pending(), quiet) {
                let reason =
                    if st.phase == Phase::Lingering { CloseReason::Refused } else { CloseReason::Stopping };
                self.shared.close(&conn, &mut st, reason);
            } else if !st.is_closed() {
                left += 1;
            }
        }
        left == 0 && self.shared.pool.is_empty()
    }

    /// Sends the output pool threads left; returns the next wait when it is a nap.
    fn send_deferred(&mut self) -> Option<Nap> {
        let (conns, nap) = self.shared.deferred.take(&mut self.naps);
        if !nap && conns.is_empty() {
            // Not napping: the pool's pace is not followed (a pass costs nothing more).
            self.naps.unwatched();
            return None;
        }
        let now = Instant::now();
        let queued = self.shared.pool.queued();
        self.naps.pool_taken(self.shared.pool.taken(), queued, now);
        if !conns.is_empty() {
            self.naps.found(conns.len(), now);
            self.send_left(conns);
        }
        nap.then(|| self.naps.next(queued))
    }

    fn send_left(&mut self, conns: Vec<Arc<Conn>>) {
        let shared = self.shared;
        for conn in conns {
            conn.st.lock().deferred = false;
            // As for an event: a fault closes this connection only.
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                Self::on_ready(shared, &mut self.scratch, &conn, false, true)
            }));
            if outcome.is_err() {
                log::error!(target: "rswaitress", "internal error while sending a response; the connection was closed");
                let mut st = conn.st.lock();
                shared.close(&conn, &mut st, CloseReason::Other);
            }
        }
    }

    fn on_event(&mut self, ev: PollEvent) {
        if ev.key < self.shared.listener_count {
            self.accept(ev.key);
            return;
        }
        let conn = self.shared.conns.lock().get(&ev.key).cloned();
        if let Some(conn) = conn {
            Self::on_ready(self.shared, &mut self.scratch, &conn, ev.readable, ev.writable);
        }
    }

    fn accept(&mut self, idx: usize) {
        let shared = self.shared;
        // With worker processes the listening socket is shared: each reactor takes one
        // connection per wake-up, so that the first one awake does not take a whole burst
        // (a connection keeps its worker for its lifetime). Putting accepts off while the
        // pool is behind was tried and starved connections waiting in the backlog.
        let shared_socket = shared.cfg.multiprocess;
        let Some(Some(listener)) = self.listeners.get(idx) else { return };
        let scratch = &mut self.scratch;
        let mut accepted = 0usize;
        loop {
            if shared.conns.lock().len() >= shared.cfg.connection_limit {
                if !shared.accept_paused.swap(true, Ordering::Relaxed) {
                    log::warn!(target: "rswaitress",
                        "total open connections reached the connection limit, no longer accepting new connections");
                }
                return;
            }
            match listener.accept() {
                Ok((sock, addr)) => {
                    let key = shared.new_key();
                    let peer = peer_strings(&addr, listener.info.is_unix);
                    let session = if listener.info.tls {
                        match shared.tls_session() {
                            Ok(s) => Some(s),
                            Err(e) => {
                                log::warn!(target: "rswaitress", "could not start a TLS session: {e}");
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let conn =
                        Arc::new(Conn::new(key, sock, listener.info.clone(), peer, &shared.cfg, session));
                    {
                        let st = conn.st.lock();
                        let sock = st.sock().expect("a new connection has its socket");
                        // Registered with no interest yet: the request usually arrived
                        // with the handshake, so it is read at once below.
                        // SAFETY: the socket is deleted from the poller in Shared::close
                        // before it is dropped, and it lives in the state until then.
                        if let Err(e) = unsafe {
                            shared.poller.add_with_mode(sock, PollEvent::none(key), PollMode::Level)
                        } {
                            log::warn!(target: "rswaitress", "could not watch a new connection: {e}");
                            continue;
                        }
                    }
                    shared.conns.lock().insert(key, conn.clone());
                    if !listener.info.metrics {
                        shared.metrics.own().connection_opened();
                    }
                    Self::on_ready(shared, scratch, &conn, true, false);
                    accepted += 1;
                    if shared_socket && accepted >= SHARED_ACCEPT_BATCH {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if shared.cfg.log_socket_errors {
                        log::warn!(target: "rswaitress", "server accept() threw an exception: {e}");
                    }
                    // Out of descriptors and the like: the listener is watched again at
                    // the next tick (at once, it would report the same error in a loop).
                    self.accept_deferred = true;
                    return;
                }
            }
        }
        let Some(Some(listener)) = self.listeners.get(idx) else { return };
        let _ = shared.poller.modify(listener.socket(), PollEvent::readable(idx));
    }

    fn on_ready(shared: &Shared, scratch: &mut [u8], conn: &Arc<Conn>, readable: bool, writable: bool) {
        let mut st = conn.st.lock();
        if st.is_closed() {
            return;
        }
        let mut event = None;
        if writable && st.output_pending() {
            match st.flush() {
                Ok(left) => {
                    if left <= shared.cfg.outbuf_high_watermark as u64 {
                        conn.drained.notify_all();
                    }
                    if left == 0 {
                        event = Some(Event::Drained);
                    }
                }
                Err(e) => {
                    shared.log_socket_error("flushing a response", &e);
                    event = Some(Event::Failed);
                }
            }
        }
        if event != Some(Event::Failed) && readable && shared.interest(&st).read {
            match st.read_some(scratch) {
                Ok(_) => {
                    if matches!(st.phase, Phase::Lingering | Phase::Flushing(phase::After::Linger)) {
                        st.input.clear();
                    }
                    if st.peer_closed {
                        if let Some(e) = event.take() {
                            let _ = shared.apply(conn, &mut st, e);
                        }
                        event = Some(Event::PeerClosed);
                    } else if event.is_none() {
                        event = Some(Event::Input);
                    }
                }
                Err(e) => {
                    shared.log_socket_error("reading", &e);
                    event = Some(Event::Failed);
                }
            }
        }
        match event {
            Some(e) => {
                if let Some(req) = shared.apply(conn, &mut st, e) {
                    if conn.listener.metrics {
                        shared.answer_metrics(conn, &mut st, &req);
                        return;
                    }
                    drop(st);
                    shared.dispatch(conn.clone(), req);
                }
            }
            // Nothing to do for what fired: the interest the phase does not want is
            // dropped, or it would fire again.
            None => shared.watch(conn, &mut st),
        }
    }

    /// Closes the connections that made no progress for channel_timeout (idle, dribbling
    /// a head, or not reading their response), unless a worker's application is busy.
    fn close_stalled(&self, now: Instant) {
        let shared = self.shared;
        let timeout = shared.cfg.channel_timeout;
        let conns: Vec<Arc<Conn>> = shared.conns.lock().values().cloned().collect();
        for conn in conns {
            let mut st = conn.st.lock();
            let pending = st.output_pending();
            if !phase::stalled(st.phase, pending, &st.clocks, now, timeout) {
                continue;
            }
            if pending {
                log::info!(target: "rswaitress",
                    "Closing the connection from {}: the client accepted none of its response for {} s",
                    conn.remote_addr, timeout.as_secs_f64());
            }
            shared.apply(&conn, &mut st, Event::Stalled);
        }
    }

    /// Closes lingering connections whose deadline has passed.
    fn close_lingering(&self, now: Instant) {
        let expired: Vec<usize> = {
            let mut l = self.shared.lingering.lock();
            if l.is_empty() {
                return;
            }
            let (done, keep): (Vec<_>, Vec<_>) = l.drain(..).partition(|(t, _)| *t <= now);
            *l = keep;
            done.into_iter().map(|(_, k)| k).collect()
        };
        for key in expired {
            let conn = self.shared.conns.lock().get(&key).cloned();
            if let Some(conn) = conn {
                let mut st = conn.st.lock();
                if st.phase == Phase::Lingering {
                    self.shared.apply(&conn, &mut st, Event::LingerOver);
                }
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    //! The reactor over real sockets, with a worker written in Rust (the Response writer
    //! without Python) standing in for the pool.

    use super::*;
    use crate::listener::ListenerInfo;
    use crate::wsgi::response::{Flow, Response, WriteError};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::os::fd::AsRawFd;

    struct Running {
        shared: Arc<Shared>,
        addr: std::net::SocketAddr,
        reactor: Option<std::thread::JoinHandle<io::Result<()>>>,
    }

    impl Running {
        fn start(cfg: Config) -> Running {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let info = ListenerInfo {
                server_port: addr.port().to_string(),
                is_unix: false,
                metrics: false,
                tls: false,
            };
            let listener = Listener::adopt(l.as_raw_fd() as i64, info).unwrap();
            drop(l);
            let shared = Arc::new(Shared::new(cfg, vec![listener]).unwrap());
            let s = shared.clone();
            let reactor = Some(std::thread::spawn(move || run(&s)));
            Running { shared, addr, reactor }
        }

        fn connect(&self) -> TcpStream {
            let c = TcpStream::connect(self.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c
        }

        /// Runs `n` tasks through `handler` on a thread of its own, as a pool thread
        /// would (taking each, serving it, handing the connection back, serving a
        /// pipelined request at once).
        fn worker(
            &self,
            n: usize,
            handler: impl Fn(&mut Response, &Request) -> Result<(), WriteError> + Send + 'static,
        ) -> std::thread::JoinHandle<Vec<Result<(), WriteError>>> {
            let shared = self.shared.clone();
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                let slot = shared.pool.register();
                while outcomes.len() < n {
                    let task = match shared.pool.take(&slot) {
                        crate::pool::Take::Task(task) => task,
                        crate::pool::Take::Stop => break,
                        crate::pool::Take::Empty => match shared.pool.idle_wait(&slot, |wait| wait()) {
                            crate::pool::Take::Task(task) => task,
                            crate::pool::Take::Stop => break,
                            crate::pool::Take::Empty => continue,
                        },
                    };
                    let conn = task.conn;
                    let mut next = {
                        let mut st = conn.st.lock();
                        (st.phase == Phase::Queued).then(|| {
                            shared.apply(&conn, &mut st, Event::Taken);
                            task.req
                        })
                    };
                    while let Some(req) = next.take() {
                        let side = crate::http::response::RequestSide {
                            version: req.head.version,
                            keep_alive: req.head.keep_alive,
                            asked_keep_alive: req.head.asked_keep_alive,
                        };
                        let mut resp = Response::new(shared.clone(), conn.clone(), side, req.head.is_head());
                        let outcome = handler(&mut resp, &req).and_then(|_| resp.finish().map(|_| ()));
                        let close = resp.close || outcome.is_err();
                        outcomes.push(outcome);
                        let mut st = conn.st.lock();
                        next = shared.apply(&conn, &mut st, Event::ResponseDone { close }).inspect(|_| {
                            shared.apply(&conn, &mut st, Event::Taken);
                        });
                    }
                }
                shared.pool.unregister(&slot);
                outcomes
            })
        }

        fn stop(mut self) {
            self.shared.request_stop();
            self.reactor.take().unwrap().join().unwrap().unwrap();
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(r) = self.reactor.take() {
                self.shared.abort();
                let _ = r.join();
            }
        }
    }

    /// Answers with the request path as the body.
    fn echo_path(resp: &mut Response, req: &Request) -> Result<(), WriteError> {
        let body = req.head.uri.clone();
        resp.start(
            "200 OK".into(),
            vec![("Content-Length".into(), body.len().to_string())],
            Some(body.len() as u64),
            false,
        );
        resp.write(&body).map(|_| ())
    }

    fn read_until(c: &mut TcpStream, needle: &[u8], count: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while got.windows(needle.len()).filter(|w| *w == needle).count() < count {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    fn read_to_eof(c: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&got)),
            }
        }
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let r = Running::start(Config::default());
        let w = r.worker(3, echo_path);
        let mut c = r.connect();
        c.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /bb HTTP/1.1\r\nHost: h\r\n\r\nGET /ccc HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        let got = read_until(&mut c, b"HTTP/1.1 200 OK", 3);
        let got = read_until_complete(&mut c, got, b"/ccc");
        let text = String::from_utf8_lossy(&got);
        let a = text.find("\r\n\r\n/a").unwrap();
        let b = text.find("\r\n\r\n/bb").unwrap();
        let cc = text.find("\r\n\r\n/ccc").unwrap();
        assert!(a < b && b < cc, "{text}");
        assert!(w.join().unwrap().iter().all(Result::is_ok));
        r.stop();
    }

    fn read_until_complete(c: &mut TcpStream, mut got: Vec<u8>, end: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; 8192];
        while !got.ends_with(end) {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// No worker runs at all: a malformed request is answered by the reactor, which then
    /// lingers (reading what the client still sends) until the client closes.
    #[test]
    fn refusals_need_no_worker() {
        let r = Running::start(Config::default());
        let mut c = r.connect();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap();
        let got = read_until(&mut c, b"(generated by rswaitress)", 1);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Host header is repeated"), "{text}");
        // Lingering: more input is read and dropped, then our close follows the client's.
        c.write_all(b"more bytes the client was still sending").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_eof(&mut c).is_empty());
        wait_for(|| r.shared.conns.lock().is_empty());
        r.stop();
    }

    fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("condition not reached within 10 s");
    }

    /// A client that requests a large response and reads none of it: the writer blocks
    /// on back-pressure, and the connection is closed after channel_timeout, which
    /// frees the writer (Lost).
    #[test]
    fn slow_reader_is_timed_out_and_its_writer_freed() {
        let cfg = Config {
            channel_timeout: Duration::from_millis(300),
            cleanup_interval: Duration::from_millis(50),
            outbuf_high_watermark: 1 << 16,
            ..Config::default()
        };
        let r = Running::start(cfg);
        let w = r.worker(1, |resp, _| {
            resp.start("200 OK".into(), vec![], None, false);
            let piece = vec![b'x'; 1 << 16];
            loop {
                if resp.write(&piece)? == Flow::Backlogged {
                    resp.wait_drained()?;
                }
            }
        });
        let c = crate::connection::tests::small_receive_buffer(r.addr);
        (&c).write_all(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let outcomes = w.join().unwrap();
        assert_eq!(outcomes, vec![Err(WriteError::Lost)]);
        wait_for(|| r.shared.conns.lock().is_empty());
        r.stop();
    }

    /// A stop with a request in progress: new connections are refused at once, an idle
    /// kept-alive connection is closed, the request in progress finishes with
    /// `Connection: close`, and the loop returns.
    #[test]
    fn graceful_stop_drains() {
        let r = Running::start(Config::default());
        let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
        let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
        let w = r.worker(2, move |resp, req| {
            if req.head.uri == b"/slow" {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            }
            echo_path(resp, req)
        });
        let mut idle = r.connect();
        idle.write_all(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        read_until(&mut idle, b"/first", 1);
        let mut busy = r.connect();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        started_rx.recv().unwrap();
        r.shared.request_stop();
        wait_for(|| TcpStream::connect(r.addr).is_err());
        assert!(read_to_eof(&mut idle).is_empty(), "the idle connection is closed, not answered");
        go_tx.send(()).unwrap();
        let got = read_to_eof(&mut busy);
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("Connection: close\r\n") && text.ends_with("/slow"), "{text}");
        assert!(w.join().unwrap().iter().all(Result::is_ok));
        r.stop();
    }

    #[test]
    fn abort_closes_everything_at_once() {
        let r = Running::start(Config::default());
        let mut c = r.connect();
        c.write_all(b"GET /never-served HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        wait_for(|| !r.shared.pool.is_empty());
        r.shared.abort();
        assert!(read_to_eof(&mut c).is_empty());
        let mut r = r;
        r.reactor.take().unwrap().join().unwrap().unwrap();
        assert!(r.shared.conns.lock().is_empty());
    }

    /// `clients` keep-alive connections each send `each` requests, one at a time, and
    /// check that every answer is 200 with the request's own path as its body.
    fn echo_clients(r: &Running, clients: usize, each: usize) {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let mut s = r.connect();
                std::thread::spawn(move || {
                    for i in 0..each {
                        let path = format!("/client{c}/request{i}");
                        // One write: a request in pieces would wait on Nagle and the
                        // server's delayed ACK.
                        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
                        let got = read_until(&mut s, path.as_bytes(), 1);
                        let text = String::from_utf8_lossy(&got);
                        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
                        assert!(text.ends_with(&format!("\r\n\r\n{path}")), "{text}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// Several clients, one worker that has spent a while on each request: with requests
    /// waiting behind it, the worker leaves its responses for the reactor. Each client
    /// still gets its own answers, whole and in order, and the reactor sent some of them.
    #[test]
    fn responses_left_for_the_reactor_reach_their_clients() {
        const CLIENTS: usize = 6;
        const EACH: usize = 40;
        let r = Running::start(Config::default());
        let shared = r.shared.clone();
        let first = AtomicBool::new(true);
        let worker = r.worker(CLIENTS * EACH, move |resp, req| {
            if first.swap(false, Ordering::SeqCst) {
                // Every other client's first request queues up behind this one.
                while shared.pool.queued() < CLIENTS - 1 {
                    std::thread::yield_now();
                }
            }
            resp.taken_at = Instant::now().checked_sub(Duration::from_millis(1));
            echo_path(resp, req)
        });
        echo_clients(&r, CLIENTS, EACH);
        assert!(worker.join().unwrap().iter().all(|o| o.is_ok()));
        let left = r.shared.deferred.left();
        let changes = r.shared.interest_changes.load(Ordering::Relaxed);
        if cfg!(target_os = "linux") {
            assert!(left > 0, "no response was left for the reactor");
            // A response left keeps the connection's read interest: no poller call.
            assert!(changes < left, "{changes} interest changes for {left} responses left");
        }
        r.stop();
    }

    /// Clients that send their requests three at a time in one write while the worker
    /// leaves responses for the reactor: input arrives for a connection whose response
    /// waits to be sent (its read interest kept), and every answer still comes whole and
    /// in order.
    #[test]
    fn pipelined_requests_beside_responses_left_for_the_reactor() {
        const CLIENTS: usize = 4;
        const BATCHES: usize = 15;
        const PER: usize = 3;
        let r = Running::start(Config::default());
        let worker = r.worker(CLIENTS * BATCHES * PER, move |resp, req| {
            resp.taken_at = Instant::now().checked_sub(Duration::from_millis(1));
            echo_path(resp, req)
        });
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let mut s = r.connect();
                std::thread::spawn(move || {
                    for b in 0..BATCHES {
                        let paths: Vec<String> = (0..PER).map(|i| format!("/c{c}/b{b}/r{i}")).collect();
                        let batch: String =
                            paths.iter().map(|p| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n")).collect();
                        s.write_all(batch.as_bytes()).unwrap();
                        let got = read_until(&mut s, paths[PER - 1].as_bytes(), 1);
                        let text = String::from_utf8_lossy(&got);
                        let mut at = 0;
                        for p in &paths {
                            let found = text[at..]
                                .find(&format!("\r\n\r\n{p}"))
                                .unwrap_or_else(|| panic!("{p} missing or out of order in {text}"));
                            at += found + p.len();
                        }
                        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), PER, "{text}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(worker.join().unwrap().iter().all(|o| o.is_ok()));
        if cfg!(target_os = "linux") {
            assert!(r.shared.deferred.left() > 0, "no response was left for the reactor");
        }
        r.stop();
    }

    /// Requests that take a while, queued behind each other: the reactor sleeps through
    /// naps (socket events wait for the end of each), and every request still gets its
    /// own answer, in order, on its own connection.
    #[test]
    fn requests_that_arrive_while_the_reactor_sleeps_are_all_answered() {
        const CLIENTS: usize = 8;
        const EACH: usize = 30;
        let r = Running::start(Config::default());
        let worker = r.worker(CLIENTS * EACH, move |resp, req| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(300) {
                std::hint::spin_loop();
            }
            resp.taken_at = Some(start);
            echo_path(resp, req)
        });
        echo_clients(&r, CLIENTS, EACH);
        assert!(worker.join().unwrap().iter().all(|o| o.is_ok()));
        if cfg!(target_os = "linux") {
            assert!(r.shared.deferred.left() > 0, "no response was left for the reactor");
            assert!(r.shared.deferred.sleeps() > 0, "the reactor never slept through a nap");
        }
        r.stop();
    }
}
