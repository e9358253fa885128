//! Responses a pool thread leaves for the reactor to send, and the reactor's naps.
//!
//! On loopback a send also runs the receiving side's TCP input and wakes the client:
//! under Flask hello that was 13% of the pool thread's time, about 15 µs a request, taken
//! from the one thread that can run Python while the GIL is held. So when requests wait
//! for the pool and a thread has spent a while on its request, it puts a small response
//! in the connection's output buffer instead and goes on with the next request; the
//! reactor sends it (see `Shared::defer` for the conditions).
//!
//! Waking the reactor for that would cost the pool thread about what the send does, so
//! the reactor is not woken. While output is being left, it naps: its wait has a short
//! timeout, about the time between two responses left ([`NAP_MIN`]..[`NAP_MAX`]), and each
//! pass sends what it finds. A thread leaves output only while the reactor naps, so
//! nothing waits longer than one nap (or one pass of the loop); the first thread that
//! would have left output asks for naps instead, and the reactor stops napping after
//! [`NAP_EMPTY_PASSES`] passes that found nothing.
//!
//! A nap in the poller ends at the first socket event: under load, each request read
//! ended one, so the reactor woke about one and a half times a request, and on a virtual
//! machine a wake-up is dear (Django hello: 37 µs of reactor CPU a request, 60% of it
//! in the scheduler). While at least two requests wait for the pool, which then has work
//! for longer than the nap, the nap is a sleep instead: socket events wait for its end
//! (at most [`NAP_MAX`]) and are all taken in one pass, and the sleep lasts up to
//! [`SLEEP_SPAN`] intervals between responses, never more than half of what the queued
//! requests take to serve, so the pool does not run dry while the reactor sleeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::connection::Conn;

/// The shortest and longest nap.
pub const NAP_MIN: Duration = Duration::from_micros(100);
pub const NAP_MAX: Duration = Duration::from_millis(1);
/// Passes in a row that find nothing left before the reactor stops napping.
pub const NAP_EMPTY_PASSES: u32 = 4;
/// A sleep lasts at most this many intervals between responses left.
pub const SLEEP_SPAN: u64 = 4;

/// What the pool threads and the reactor share.
pub struct Deferred {
    inner: Mutex<Inner>,
    /// Responses left so far.
    left: AtomicU64,
    /// Naps the reactor slept through so far (see `Naps::sleep`).
    sleeps: AtomicU64,
}

struct Inner {
    conns: Vec<Arc<Conn>>,
    /// The reactor's next wait is a nap: output left now is sent soon.
    napping: bool,
    /// A thread would have left output: the reactor naps from its next pass on.
    wanted: bool,
}

impl Default for Deferred {
    fn default() -> Self {
        Self::new()
    }
}

impl Deferred {
    pub fn new() -> Self {
        Deferred {
            inner: Mutex::new(Inner { conns: Vec::new(), napping: false, wanted: false }),
            left: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
        }
    }

    /// Leaves `conn`'s output for the reactor if it naps (true); otherwise asks it to nap
    /// from its next pass on, and the caller sends the output itself.
    pub fn offer(&self, conn: &Arc<Conn>) -> bool {
        let mut d = self.inner.lock();
        if !d.napping {
            d.wanted = true;
            return false;
        }
        d.conns.push(conn.clone());
        self.left.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// For the reactor's pass: the connections whose output was left, and whether the
    /// next wait is a nap. Decided under the same lock as `offer`, so that output is never
    /// left for a reactor about to wait long.
    pub fn take(&self, naps: &mut Naps) -> (Vec<Arc<Conn>>, bool) {
        let mut d = self.inner.lock();
        let conns = std::mem::take(&mut d.conns);
        let nap = naps.pass(!conns.is_empty() || d.wanted);
        d.wanted = false;
        d.napping = nap;
        (conns, nap)
    }

    /// The reactor stops: nothing more may be left for it.
    pub fn close(&self) -> Vec<Arc<Conn>> {
        let mut d = self.inner.lock();
        d.napping = false;
        std::mem::take(&mut d.conns)
    }

    /// Responses left so far.
    pub fn left(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }

    /// The reactor sleeps through a nap.
    pub fn sleep(&self, length: Duration) {
        self.sleeps.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(length);
    }

    /// Naps slept through so far.
    pub fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::Relaxed)
    }
}

/// A nap of the reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nap {
    /// A wait in the poller, which the first socket event ends.
    Poll(Duration),
    /// A sleep; the socket events are taken after it, all at once.
    Sleep(Duration),
}

/// The reactor's side: whether it naps, and for how long.
pub struct Naps {
    /// Passes in a row that found nothing left (and no thread asking).
    empty_passes: u32,
    /// When a pass last found output left.
    last_found: Option<Instant>,
    /// Average time (ns) between two responses left, as the passes saw them.
    interval_ns: u64,
    /// The pool's count of requests taken, and when it was read (every SERVICE_WINDOW).
    last_taken: Option<(u64, Instant)>,
    /// Average time (ns) between two requests the pool took: how long one takes to serve.
    service_ns: u64,
}

/// How often the pool's rate of taking requests is read.
const SERVICE_WINDOW: Duration = Duration::from_millis(2);

impl Default for Naps {
    fn default() -> Self {
        Self::new()
    }
}

impl Naps {
    pub fn new() -> Self {
        Naps { empty_passes: u32::MAX, last_found: None, interval_ns: 0, last_taken: None, service_ns: 0 }
    }

    /// Counts a pass; whether the next wait is a nap.
    fn pass(&mut self, busy: bool) -> bool {
        self.empty_passes = if busy { 0 } else { self.empty_passes.saturating_add(1) };
        self.empty_passes <= NAP_EMPTY_PASSES
    }

    /// A pass found `n` responses left at `now`: the average interval follows.
    pub fn found(&mut self, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        if let Some(last) = self.last_found {
            let each = now.saturating_duration_since(last).as_nanos() as u64 / n as u64;
            self.interval_ns = (self.interval_ns * 7 + each) / 8;
        }
        self.last_found = Some(now);
    }

    /// A pass that does not read the pool's pace: the window it was in ends.
    pub fn unwatched(&mut self) {
        self.last_taken = None;
    }

    /// The pool had taken `taken` requests by `now`, with `queued` waiting: once a window
    /// during which requests waited throughout (the pool was never short of work), the
    /// average time between two takes follows. A pass with none queued ends the window.
    pub fn pool_taken(&mut self, taken: u64, queued: usize, now: Instant) {
        if queued == 0 {
            self.unwatched();
            return;
        }
        match self.last_taken {
            Some((before, at)) => {
                let elapsed = now.saturating_duration_since(at);
                if elapsed < SERVICE_WINDOW {
                    return;
                }
                if taken > before {
                    let each = elapsed.as_nanos() as u64 / (taken - before);
                    self.service_ns =
                        if self.service_ns == 0 { each } else { (self.service_ns * 3 + each) / 4 };
                }
                self.last_taken = Some((taken, now));
            }
            None => self.last_taken = Some((taken, now)),
        }
    }

    /// How long the next nap lasts: about the time between two responses left, so that a
    /// nap usually finds one, bounded by NAP_MIN and NAP_MAX.
    pub fn length(&self) -> Duration {
        Duration::from_nanos(self.interval_ns).clamp(NAP_MIN, NAP_MAX)
    }

    /// The next nap, with `queued` requests waiting for the pool: a sleep where
    /// [`Naps::sleep`] allows one, else a wait in the poller for [`Naps::length`].
    pub fn next(&self, queued: usize) -> Nap {
        match self.sleep(queued) {
            Some(sleep) => Nap::Sleep(sleep),
            None => Nap::Poll(self.length()),
        }
    }

    /// Whether the next nap may be a sleep that no socket event ends, and how long, with
    /// `queued` requests waiting for the pool: only while most responses are left (they
    /// come no further apart than two requests' service time) and for at most half of
    /// what the queued requests take to serve, SLEEP_SPAN intervals and NAP_MAX.
    pub fn sleep(&self, queued: usize) -> Option<Duration> {
        if self.service_ns == 0 || self.interval_ns > 2 * self.service_ns {
            return None;
        }
        let for_queue = self.service_ns.saturating_mul(queued as u64) / 2;
        let sleep = self.interval_ns.saturating_mul(SLEEP_SPAN).min(for_queue);
        let sleep = Duration::from_nanos(sleep).min(NAP_MAX);
        (sleep >= NAP_MIN).then_some(sleep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_conn() -> (Arc<Conn>, std::net::TcpStream) {
        let (server, client) = crate::connection::tests::socket_pair();
        (crate::connection::tests::plain_conn(1, server, &crate::config::Config::default()), client)
    }

    #[test]
    fn naps_start_when_asked_and_stop_after_empty_passes() {
        let d = Deferred::new();
        let mut naps = Naps::new();
        assert!(!d.take(&mut naps).1, "no nap before anyone asks");
        let conn = test_conn().0;
        assert!(!d.offer(&conn), "not napping: the thread sends itself");
        let (found, nap) = d.take(&mut naps);
        assert!(found.is_empty() && nap, "asked: the next wait is a nap");
        assert!(d.offer(&conn), "napping: the output is left");
        let (found, nap) = d.take(&mut naps);
        assert_eq!(found.len(), 1);
        assert!(nap);
        assert_eq!(d.left(), 1);
        for i in 0..NAP_EMPTY_PASSES {
            assert!(d.take(&mut naps).1, "empty pass {i} still naps");
        }
        assert!(!d.take(&mut naps).1, "it stops napping after {NAP_EMPTY_PASSES} empty passes");
        assert!(!d.offer(&conn));
    }

    #[test]
    fn closing_ends_the_naps_and_hands_back_what_was_left() {
        let d = Deferred::new();
        let mut naps = Naps::new();
        let conn = test_conn().0;
        d.offer(&conn);
        d.take(&mut naps);
        assert!(d.offer(&conn));
        assert_eq!(d.close().len(), 1);
        assert!(!d.offer(&conn), "nothing is left for a reactor that stopped");
    }

    #[test]
    fn nap_length_follows_the_time_between_responses() {
        let mut naps = Naps::new();
        assert_eq!(naps.length(), NAP_MIN);
        let t0 = Instant::now();
        for i in 0..64 {
            naps.found(1, t0 + Duration::from_micros(300) * i);
        }
        let len = naps.length();
        assert!(len > Duration::from_micros(280) && len <= Duration::from_micros(300), "{len:?}");
        // Two responses a pass: half the time each.
        for i in 0..64 {
            naps.found(2, t0 + Duration::from_micros(300) * (64 + i));
        }
        let len = naps.length();
        assert!(len > Duration::from_micros(140) && len < Duration::from_micros(160), "{len:?}");
        for i in 0..64 {
            naps.found(1, t0 + Duration::from_millis(100) + Duration::from_millis(5) * i);
        }
        assert_eq!(naps.length(), NAP_MAX);
    }

    #[test]
    fn a_nap_sleeps_only_while_most_responses_are_left_and_the_queue_outlasts_it() {
        let mut naps = Naps::new();
        let t0 = Instant::now();
        let us = Duration::from_micros;
        // The pool takes a request every 100 µs; a response is left every 150 µs.
        for i in 0..20u32 {
            naps.pool_taken(u64::from(i) * 20, 10, t0 + us(2000) * i);
        }
        assert_eq!(naps.sleep(100), None, "no response left yet");
        // A window with the queue empty at one end does not count: it held idle time.
        naps.pool_taken(381, 0, t0 + us(48_000));
        naps.pool_taken(381, 10, t0 + us(58_000));
        naps.pool_taken(401, 10, t0 + us(60_000));
        for i in 0..64 {
            naps.found(1, t0 + us(150) * i);
        }
        assert_eq!(naps.sleep(0), None, "nothing queued: socket events must end the nap");
        assert_eq!(naps.sleep(1), None, "one request queued lasts 100 µs: half is below NAP_MIN");
        let four = naps.sleep(4).unwrap();
        assert!(four > us(195) && four <= us(200), "half of 4 x 100 µs: {four:?}");
        let most = naps.sleep(1000).unwrap();
        assert!(most > us(140) * SLEEP_SPAN as u32 && most <= us(150) * SLEEP_SPAN as u32, "{most:?}");
        // Responses left every 300 µs while the pool takes one every 100: most are sent
        // by their threads, and the pool may run dry in a sleep.
        for i in 0..64 {
            naps.found(1, t0 + us(10_000) + us(300) * i);
        }
        assert_eq!(naps.sleep(1000), None);
    }
}
