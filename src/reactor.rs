//! The poll loop: accepts, reads and parses, hands complete requests to the workers,
//! flushes what workers could not write, enforces timeouts and the connection limit,
//! and shuts down in order. It never runs Python code.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use polling::{Event, Events, Poller};

use crate::config::Config;
use crate::connection::{Conn, ConnState, Parsed, Request};
use crate::http::response::error_response;
use crate::http::{HttpError, Version};
use crate::listener::{peer_strings, Listener};

/// A complete request for a worker.
pub struct Task {
    pub conn: Arc<Conn>,
    pub req: Request,
}

/// How often the loop wakes when idle: the bound on how late a signal, a close() from
/// another thread or a timeout is noticed.
const TICK: Duration = Duration::from_millis(100);
/// Size of the reactor's read buffer, at least.
const RECV_BUFFER: usize = 256 * 1024;
/// How long a connection refused with an error is drained before it is closed.
const LINGER: Duration = Duration::from_secs(2);
/// How long a graceful shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the reactor and the workers share.
pub struct Shared {
    pub cfg: Config,
    pub poller: Poller,
    pub listeners: Vec<Listener>,
    pub conns: Mutex<HashMap<usize, Arc<Conn>>>,
    next_key: AtomicUsize,
    pub tasks_tx: Sender<Option<Task>>,
    pub tasks_rx: Receiver<Option<Task>>,
    pub stopping: AtomicBool,
    /// Workers waiting for a task (for the queue-depth warning).
    pub idle_workers: AtomicUsize,
    accept_paused: AtomicBool,
    /// Connections draining after an error answer, with their deadlines.
    lingering: Mutex<Vec<(Instant, usize)>>,
}

/// What to do with a connection after a response, or after new input.
pub enum Next {
    /// A request is ready to be served.
    Serve(Request),
    /// Waiting for the client (input) or the socket (output); the poller is armed.
    Wait,
    Closed,
}

impl Shared {
    pub fn new(cfg: Config, listeners: Vec<Listener>) -> io::Result<Self> {
        let (tasks_tx, tasks_rx) = crossbeam_channel::unbounded();
        let first_key = listeners.len();
        Ok(Shared {
            cfg,
            poller: Poller::new()?,
            listeners,
            conns: Mutex::new(HashMap::new()),
            next_key: AtomicUsize::new(first_key),
            tasks_tx,
            tasks_rx,
            stopping: AtomicBool::new(false),
            idle_workers: AtomicUsize::new(0),
            accept_paused: AtomicBool::new(false),
            lingering: Mutex::new(Vec::new()),
        })
    }

    /// Asks the loop to stop; safe from any thread.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.poller.notify();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Registers what the connection waits for: writability while output is waiting
    /// (`write`), readability when no worker serves it, or, with
    /// channel_request_lookahead, also while one does (to notice a client that left).
    pub fn arm(&self, conn: &Conn, st: &mut ConnState, write: bool) {
        st.write_armed = write;
        let read = if st.busy {
            self.cfg.channel_request_lookahead > 0 && !st.eof && st.inbuf.len() < self.lookahead_bytes()
        } else {
            !write
        };
        if !read && !write {
            return;
        }
        if let Err(e) = self.poller.modify(&conn.sock, Event::new(conn.key, read, write)) {
            log::debug!(target: "rswaitress", "poller modify failed: {e}");
        }
    }

    /// Input buffered ahead of the request being served, at most.
    fn lookahead_bytes(&self) -> usize {
        self.cfg.recv_bytes.saturating_mul(self.cfg.channel_request_lookahead)
    }

    /// Closes a connection (idempotent). The caller holds its state lock.
    pub fn close_locked(&self, conn: &Conn, st: &mut ConnState) {
        if st.closed {
            return;
        }
        st.closed = true;
        st.out.clear();
        st.inbuf = Vec::new();
        let _ = self.poller.delete(&conn.sock);
        let _ = conn.sock.shutdown(std::net::Shutdown::Both);
        conn.drained.notify_all();
        let remaining = {
            let mut conns = self.conns.lock();
            conns.remove(&conn.key);
            conns.len()
        };
        if self.accept_paused.load(Ordering::Relaxed) && remaining < self.cfg.connection_limit {
            let _ = self.poller.notify();
        }
    }

    pub fn log_socket_error(&self, what: &str, e: &io::Error) {
        if self.cfg.log_socket_errors && !is_disconnect(e) {
            log::warn!(target: "rswaitress", "Socket error while {what}: {e}");
        }
    }

    /// Queues an error answer and closes once it is sent.
    fn refuse(&self, conn: &Conn, st: &mut ConnState, err: &HttpError, version: Version) {
        let body = error_response(err, version, &self.cfg.ident);
        st.close_after_flush = true;
        st.linger = true;
        match st.send(&conn.sock, &[&body]) {
            Ok(0) => {
                self.end(conn, st);
            }
            Ok(_) => self.arm(conn, st, true),
            Err(e) => {
                self.log_socket_error("sending an error response", &e);
                self.close_locked(conn, st);
            }
        }
    }

    /// Ends a connection whose output is all sent: closes it, or after an error answer
    /// half-closes it and drains what the client still sends for up to LINGER.
    fn end(&self, conn: &Conn, st: &mut ConnState) -> Next {
        if st.linger && !st.eof && !self.is_stopping() {
            st.draining = true;
            st.inbuf.clear();
            let _ = conn.sock.shutdown(std::net::Shutdown::Write);
            self.lingering.lock().push((Instant::now() + LINGER, conn.key));
            self.arm(conn, st, false);
            return Next::Wait;
        }
        self.close_locked(conn, st);
        Next::Closed
    }

    /// Decides what a connection that no worker is serving does next: close, serve the
    /// next request already buffered, or wait for more input. The caller holds the lock.
    pub fn advance(&self, conn: &Conn, st: &mut ConnState) -> Next {
        if st.closed {
            return Next::Closed;
        }
        if !st.out.is_empty() {
            self.arm(conn, st, true);
            return Next::Wait;
        }
        if st.draining {
            st.inbuf.clear();
            if st.eof {
                self.close_locked(conn, st);
                return Next::Closed;
            }
            self.arm(conn, st, false);
            return Next::Wait;
        }
        if st.close_after_flush || self.is_stopping() {
            return self.end(conn, st);
        }
        match st.parse(&self.cfg) {
            Parsed::Request(req) => Next::Serve(req),
            Parsed::Error(err, version) => {
                self.refuse(conn, st, &err, version);
                Next::Wait
            }
            Parsed::NeedMore => {
                if st.eof {
                    self.close_locked(conn, st);
                    return Next::Closed;
                }
                if !st.out.is_empty() {
                    // A 100 Continue was queued: send it before reading on.
                    match st.flush(&conn.sock) {
                        Ok(0) => {}
                        Ok(_) => {
                            self.arm(conn, st, true);
                            return Next::Wait;
                        }
                        Err(e) => {
                            self.log_socket_error("sending 100 Continue", &e);
                            self.close_locked(conn, st);
                            return Next::Closed;
                        }
                    }
                }
                self.arm(conn, st, false);
                Next::Wait
            }
        }
    }

    /// Hands a request to the worker pool.
    pub fn dispatch(&self, conn: Arc<Conn>, st: &mut ConnState, req: Request) {
        st.busy = true;
        if self.cfg.channel_request_lookahead > 0 {
            let write = st.write_armed;
            self.arm(&conn, st, write);
        }
        let _ = self.tasks_tx.send(Some(Task { conn, req }));
        let queued = self.tasks_rx.len();
        let idle = self.idle_workers.load(Ordering::Relaxed);
        if queued > idle {
            queue_warning(queued - idle);
        }
    }

    fn new_key(&self) -> usize {
        self.next_key.fetch_add(1, Ordering::Relaxed)
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

/// Runs the loop until a stop is requested (close(), or `tick` returning false) and the
/// requests in progress have finished or the grace period is over. `tick` runs about ten
/// times a second on this thread: it is where signals and log delivery happen.
pub fn run(shared: &Arc<Shared>, mut tick: impl FnMut() -> bool) -> io::Result<()> {
    let poller = &shared.poller;
    for (i, l) in shared.listeners.iter().enumerate() {
        // SAFETY: listeners are deleted from the poller below before this returns, and
        // the Python side closes them only after that.
        unsafe { poller.add(l.socket(), Event::readable(i))? };
    }
    let mut events = Events::with_capacity(std::num::NonZeroUsize::new(1024).unwrap());
    // recv_bytes is Waitress's recv() size; large bodies arrive in far fewer system calls
    // with a bigger landing buffer, so it is taken as a lower bound.
    let mut scratch = vec![0u8; shared.cfg.recv_bytes.max(RECV_BUFFER)];
    let mut last_tick = Instant::now();
    let mut next_cleanup = Instant::now() + shared.cfg.cleanup_interval;
    let mut stop_deadline: Option<Instant> = None;
    let result = loop {
        events.clear();
        if let Err(e) = poller.wait(&mut events, Some(TICK)) {
            if e.kind() != io::ErrorKind::Interrupted {
                break Err(e);
            }
        }
        for ev in events.iter() {
            if ev.key < shared.listeners.len() {
                accept(shared, ev.key, &mut scratch);
            } else {
                let conn = shared.conns.lock().get(&ev.key).cloned();
                if let Some(conn) = conn {
                    on_event(shared, &conn, ev, &mut scratch);
                }
            }
        }
        let now = Instant::now();
        if shared.accept_paused.load(Ordering::Relaxed)
            && shared.conns.lock().len() < shared.cfg.connection_limit
            && stop_deadline.is_none()
        {
            shared.accept_paused.store(false, Ordering::Relaxed);
            log::info!(target: "rswaitress",
                "total open connections dropped below the connection limit, listening again");
            for (i, l) in shared.listeners.iter().enumerate() {
                let _ = poller.modify(l.socket(), Event::readable(i));
            }
        }
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            close_lingering(shared, now);
            if !tick() {
                shared.stopping.store(true, Ordering::SeqCst);
            }
        }
        if now >= next_cleanup {
            next_cleanup = now + shared.cfg.cleanup_interval;
            close_idle(shared, now);
        }
        if shared.is_stopping() {
            let deadline = *stop_deadline.get_or_insert_with(|| {
                for l in &shared.listeners {
                    let _ = poller.delete(l.socket());
                }
                now + SHUTDOWN_GRACE
            });
            if close_quiet(shared) || now >= deadline {
                break Ok(());
            }
        }
    };
    if stop_deadline.is_none() {
        for l in &shared.listeners {
            let _ = poller.delete(l.socket());
        }
    }
    let conns: Vec<Arc<Conn>> = shared.conns.lock().values().cloned().collect();
    for conn in conns {
        let mut st = conn.st.lock();
        shared.close_locked(&conn, &mut st);
    }
    result
}

fn accept(shared: &Arc<Shared>, idx: usize, scratch: &mut [u8]) {
    let listener = &shared.listeners[idx];
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
                let conn = Arc::new(Conn::new(key, sock, listener.info.clone(), peer, &shared.cfg));
                shared.conns.lock().insert(key, conn.clone());
                // Registered with no interest yet: the request usually arrived with the
                // handshake, so it is read at once, and the read decides what to wait for.
                // SAFETY: the socket is deleted from the poller in close_locked before
                // the last reference to the connection (and so the socket) goes away.
                if let Err(e) = unsafe { shared.poller.add(&conn.sock, Event::none(key)) } {
                    log::warn!(target: "rswaitress", "could not watch a new connection: {e}");
                    let mut st = conn.st.lock();
                    shared.close_locked(&conn, &mut st);
                    continue;
                }
                on_event(shared, &conn, Event::readable(key), scratch);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if shared.cfg.log_socket_errors {
                    log::warn!(target: "rswaitress", "server accept() threw an exception: {e}");
                }
                // Out of descriptors and the like: back off until the next event.
                break;
            }
        }
    }
    let _ = shared.poller.modify(listener.socket(), Event::readable(idx));
}

fn on_event(shared: &Arc<Shared>, conn: &Arc<Conn>, ev: Event, scratch: &mut [u8]) {
    let mut st = conn.st.lock();
    if st.closed {
        return;
    }
    if ev.writable && st.write_armed {
        match st.flush(&conn.sock) {
            Ok(left) => {
                if left <= shared.cfg.outbuf_high_watermark as u64 {
                    conn.drained.notify_all();
                }
                st.write_armed = left > 0;
            }
            Err(e) => {
                shared.log_socket_error("flushing a response", &e);
                shared.close_locked(conn, &mut st);
                return;
            }
        }
    }
    if ev.readable && (st.busy || !st.write_armed) {
        if let Err(e) = st.read_some(&conn.sock, scratch) {
            if shared.cfg.log_socket_errors && !is_disconnect(&e) {
                log::warn!(target: "rswaitress", "Socket error while reading: {e}");
            }
            if !st.busy {
                shared.close_locked(conn, &mut st);
                return;
            }
            // The worker finds out when it writes; the request ends the connection.
            st.eof = true;
        }
    }
    if st.busy || st.write_armed {
        // A worker drives the connection, or output is still waiting for the socket.
        let write = st.write_armed;
        shared.arm(conn, &mut st, write);
        return;
    }
    if let Next::Serve(req) = shared.advance(conn, &mut st) {
        shared.dispatch(conn.clone(), &mut st, req);
    }
}

/// Closes connections that have been inactive longer than channel_timeout, or have
/// taken longer than that to send one request head, unless a worker is serving them.
fn close_idle(shared: &Arc<Shared>, now: Instant) {
    let timeout = shared.cfg.channel_timeout;
    let conns: Vec<Arc<Conn>> = shared.conns.lock().values().cloned().collect();
    for conn in conns {
        let mut st = conn.st.lock();
        let idle = now.duration_since(st.last_activity) > timeout;
        let slow_head = st.head_started.is_some_and(|t| now.duration_since(t) > timeout);
        if !st.busy && (idle || slow_head) {
            shared.close_locked(&conn, &mut st);
        }
    }
}

/// Closes draining connections whose linger time is over.
fn close_lingering(shared: &Arc<Shared>, now: Instant) {
    let expired: Vec<usize> = {
        let mut l = shared.lingering.lock();
        if l.is_empty() {
            return;
        }
        let (done, keep): (Vec<_>, Vec<_>) = l.drain(..).partition(|(t, _)| *t <= now);
        *l = keep;
        done.into_iter().map(|(_, k)| k).collect()
    };
    for key in expired {
        let conn = shared.conns.lock().get(&key).cloned();
        if let Some(conn) = conn {
            let mut st = conn.st.lock();
            shared.close_locked(&conn, &mut st);
        }
    }
}

/// During shutdown: closes connections with nothing in progress; true when none is left.
fn close_quiet(shared: &Arc<Shared>) -> bool {
    let conns: Vec<Arc<Conn>> = shared.conns.lock().values().cloned().collect();
    let mut left = 0;
    for conn in conns {
        let mut st = conn.st.lock();
        if !st.busy && st.out.is_empty() {
            shared.close_locked(&conn, &mut st);
        } else {
            left += 1;
        }
    }
    left == 0 && shared.tasks_rx.is_empty()
}
