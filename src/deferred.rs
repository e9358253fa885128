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

/// What the pool threads and the reactor share.
pub struct Deferred {
    inner: Mutex<Inner>,
    /// Responses left so far.
    left: AtomicU64,
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
}

/// The reactor's side: whether it naps, and for how long.
pub struct Naps {
    /// Passes in a row that found nothing left (and no thread asking).
    empty_passes: u32,
    /// When a pass last found output left.
    last_found: Option<Instant>,
    /// Average time (ns) between two responses left, as the passes saw them.
    interval_ns: u64,
}

impl Default for Naps {
    fn default() -> Self {
        Self::new()
    }
}

impl Naps {
    pub fn new() -> Self {
        Naps { empty_passes: u32::MAX, last_found: None, interval_ns: 0 }
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

    /// How long the next nap lasts: about the time between two responses left, so that a
    /// nap usually finds one, bounded by NAP_MIN and NAP_MAX.
    pub fn length(&self) -> Duration {
        Duration::from_nanos(self.interval_ns).clamp(NAP_MIN, NAP_MAX)
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
}
