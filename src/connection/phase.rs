//! The phases of a connection and the one function that maps (phase, event) to the next
//! phase and the action to take.
//!
//! A connection is in exactly one phase, and the phase says who drives it: the reactor
//! while a request is read and while output is flushed or an error answer lingers, the
//! task queue while a complete request waits for a pool thread, one pool thread while it
//! serves. [`step`] is pure; the reactor and the workers only apply the actions it
//! returns (see `reactor::Shared::apply`), so every transition is listed here, once.

use std::time::{Duration, Instant};

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading a request: its head, then its body (the reader knows which). The reactor's.
    Reading,
    /// A complete request waits in the task queue for a pool thread.
    Queued,
    /// A pool thread runs the application for a request of this connection.
    Serving,
    /// The response is complete and part of it still waits for the socket; the reactor
    /// flushes it, then does `After`.
    Flushing(After),
    /// Half-closed after an error answer: what the client still sends is read and thrown
    /// away until it closes or the linger deadline passes, so that the answer is not
    /// destroyed by the reset a close with unread input would cause.
    Lingering,
    /// The socket is closed; nothing more happens to this connection.
    Closed,
}

/// What follows a flushed response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next request.
    KeepAlive,
    /// Close.
    Close,
    /// Half-close and linger (after an error answer).
    Linger,
}

/// Something that happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Input arrived.
    Input,
    /// The buffered input holds a complete request.
    RequestComplete,
    /// The buffered input is not a whole request yet.
    NeedMore,
    /// The input is refused; its error answer is queued as output.
    Refused,
    /// A pool thread has taken the queued request.
    Taken,
    /// The application's response is complete; `close` when it (or the request) says
    /// the connection ends with it.
    ResponseDone { close: bool },
    /// Every queued output byte has been sent.
    Drained,
    /// The peer will send nothing more (end of stream).
    PeerClosed,
    /// The socket failed (a reset, a write error).
    Failed,
    /// No progress for channel_timeout, as [`stalled`] judges it.
    Stalled,
    /// The linger deadline has passed.
    LingerOver,
    /// The server stops now (the grace period is over, or a second signal).
    Abort,
}

/// What to do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (the event changes nothing in this phase).
    Nothing,
    /// Wait for input.
    AwaitInput,
    /// Wait until the socket takes the pending output.
    AwaitWritable,
    /// Parse the buffered input for the next request.
    ParseNext,
    /// Hand the complete request to the pool (or serve it on the thread that finished
    /// the previous one).
    Dispatch,
    /// Shut the sending side down and read until end of stream or the linger deadline.
    HalfClose,
    /// Close the socket and forget the connection.
    Close,
}

/// What `step` needs to know besides the phase and the event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// Output is waiting for the socket.
    pub output_pending: bool,
    /// The peer has closed its sending side.
    pub peer_closed: bool,
    /// The server is draining: no new requests on kept-alive connections.
    pub stopping: bool,
}

/// The next phase and the action for `event` in `phase`.
pub fn step(phase: Phase, event: Event, f: Facts) -> (Phase, Action) {
    use Action as A;
    use Event as E;
    use Phase as P;
    match (phase, event) {
        (P::Closed, _) => (P::Closed, A::Nothing),
        (_, E::Failed) | (_, E::Abort) => (P::Closed, A::Close),

        (P::Reading, E::RequestComplete) => (P::Queued, A::Dispatch),
        (P::Reading, E::NeedMore) => {
            if f.peer_closed {
                // Nothing more will come: a partial request is dropped, as in Waitress.
                (P::Closed, A::Close)
            } else if f.output_pending {
                // An interim 100 Continue is waiting to go out first.
                (P::Reading, A::AwaitWritable)
            } else {
                (P::Reading, A::AwaitInput)
            }
        }
        (P::Reading, E::Input) => (P::Reading, A::ParseNext),
        // The interim 100 Continue (or a TLS handshake record) went out: parse what
        // arrived meanwhile, or wait for it.
        (P::Reading, E::Drained) => (P::Reading, A::ParseNext),
        (P::Reading, E::Refused) => (P::Flushing(After::Linger), A::AwaitWritable),
        (P::Reading, E::PeerClosed) => (P::Reading, A::ParseNext),
        (P::Reading, E::Stalled) => (P::Closed, A::Close),

        (P::Queued, E::Taken) => (P::Serving, A::Nothing),
        // A client that half-closes after sending its request still gets the answer;
        // the worker learns of a real disconnect when it writes.
        (P::Queued | P::Serving, E::PeerClosed) => (phase, A::Nothing),
        // A slow reader: output has waited channel_timeout without a byte accepted. The
        // worker waiting on back-pressure is woken by the close and the application's
        // iterable is closed.
        (P::Serving, E::Stalled) => (P::Closed, A::Close),

        // While draining, a response that still promised keep-alive (its head went out
        // before the stop began) is followed by reading on: the client may already be
        // sending its next request, which is answered with `Connection: close`; the
        // drain closes the connection once it is quiet.
        (P::Serving, E::ResponseDone { close }) => {
            let after = if close { After::Close } else { After::KeepAlive };
            match (f.output_pending, after) {
                (true, after) => (P::Flushing(after), A::AwaitWritable),
                (false, After::KeepAlive) => (P::Reading, A::ParseNext),
                (false, _) => (P::Closed, A::Close),
            }
        }

        (P::Flushing(after), E::Drained) => match after {
            After::KeepAlive => (P::Reading, A::ParseNext),
            After::Linger if !f.peer_closed && !f.stopping => (P::Lingering, A::HalfClose),
            _ => (P::Closed, A::Close),
        },
        // The peer may still read what it is sent after closing its own side.
        (P::Flushing(_), E::PeerClosed) => (phase, A::Nothing),
        (P::Flushing(_), E::Stalled) => (P::Closed, A::Close),

        (P::Lingering, E::Input) => (P::Lingering, A::AwaitInput),
        (P::Lingering, E::PeerClosed | E::LingerOver | E::Stalled) => (P::Closed, A::Close),

        _ => (phase, A::Nothing),
    }
}

/// The clocks `stalled` reads.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// When input last arrived (or the connection last became ready for a request).
    pub last_input: Instant,
    /// When the first byte of the request head being read arrived.
    pub head_started: Option<Instant>,
    /// When waiting output last made progress (or began to wait).
    pub output_since: Instant,
}

/// Whether a connection has made no progress for `timeout` in a way that ends it:
/// - reading: no input for `timeout`, or a head taking longer than that (slowloris);
/// - serving or flushing with output waiting: no byte accepted by the client for
///   `timeout` (a client that stops reading is an idle client);
/// - queued, or serving with nothing waiting: never (the application's time is its own).
pub fn stalled(phase: Phase, output_pending: bool, c: &Clocks, now: Instant, timeout: Duration) -> bool {
    let over = |t: Instant| now.saturating_duration_since(t) > timeout;
    match phase {
        Phase::Reading => over(c.last_input) || c.head_started.is_some_and(over),
        Phase::Serving | Phase::Flushing(_) => output_pending && over(c.output_since),
        Phase::Queued | Phase::Lingering | Phase::Closed => false,
    }
}

/// While the server drains, a connection that is reading and has been quiet for the
/// drain's idle window is closed: between requests, or with a request begun but not
/// progressing. One whose client is sending is read on (its request is then answered
/// with `Connection: close`), within the grace period.
pub fn closes_while_draining(phase: Phase, output_pending: bool, quiet: bool) -> bool {
    phase == Phase::Lingering || (phase == Phase::Reading && !output_pending && quiet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action as A;
    use Event as E;
    use Phase as P;

    const NONE: Facts = Facts { output_pending: false, peer_closed: false, stopping: false };
    const PENDING: Facts = Facts { output_pending: true, ..NONE };
    const STOPPING: Facts = Facts { stopping: true, ..NONE };
    const EOF: Facts = Facts { peer_closed: true, ..NONE };

    #[test]
    fn keep_alive_round_trip() {
        assert_eq!(step(P::Reading, E::NeedMore, NONE), (P::Reading, A::AwaitInput));
        assert_eq!(step(P::Reading, E::RequestComplete, NONE), (P::Queued, A::Dispatch));
        assert_eq!(step(P::Queued, E::Taken, NONE), (P::Serving, A::Nothing));
        assert_eq!(step(P::Serving, E::ResponseDone { close: false }, NONE), (P::Reading, A::ParseNext));
        assert_eq!(
            step(P::Serving, E::ResponseDone { close: false }, PENDING),
            (P::Flushing(After::KeepAlive), A::AwaitWritable)
        );
        assert_eq!(step(P::Flushing(After::KeepAlive), E::Drained, NONE), (P::Reading, A::ParseNext));
    }

    #[test]
    fn interim_continue_then_body() {
        assert_eq!(step(P::Reading, E::Input, NONE), (P::Reading, A::ParseNext));
        assert_eq!(step(P::Reading, E::NeedMore, PENDING), (P::Reading, A::AwaitWritable));
        assert_eq!(step(P::Reading, E::Drained, NONE), (P::Reading, A::ParseNext));
    }

    #[test]
    fn close_after_response() {
        assert_eq!(step(P::Serving, E::ResponseDone { close: true }, NONE), (P::Closed, A::Close));
        assert_eq!(
            step(P::Serving, E::ResponseDone { close: true }, PENDING),
            (P::Flushing(After::Close), A::AwaitWritable)
        );
        assert_eq!(step(P::Flushing(After::Close), E::Drained, NONE), (P::Closed, A::Close));
        // Draining does not break a keep-alive promise already made: the next request
        // is read (and answered with Connection: close, which the response writer adds).
        assert_eq!(step(P::Serving, E::ResponseDone { close: false }, STOPPING), (P::Reading, A::ParseNext));
        assert_eq!(step(P::Flushing(After::KeepAlive), E::Drained, STOPPING), (P::Reading, A::ParseNext));
    }

    #[test]
    fn refusal_flushes_then_lingers() {
        assert_eq!(step(P::Reading, E::Refused, NONE), (P::Flushing(After::Linger), A::AwaitWritable));
        assert_eq!(step(P::Flushing(After::Linger), E::Drained, NONE), (P::Lingering, A::HalfClose));
        assert_eq!(step(P::Flushing(After::Linger), E::Drained, EOF), (P::Closed, A::Close));
        assert_eq!(step(P::Lingering, E::Input, NONE), (P::Lingering, A::AwaitInput));
        for e in [E::PeerClosed, E::LingerOver, E::Stalled, E::Failed] {
            assert_eq!(step(P::Lingering, e, NONE), (P::Closed, A::Close));
        }
    }

    #[test]
    fn end_of_stream() {
        // Parsed first: a complete request that came before the end is still served.
        assert_eq!(step(P::Reading, E::PeerClosed, NONE), (P::Reading, A::ParseNext));
        assert_eq!(step(P::Reading, E::NeedMore, EOF), (P::Closed, A::Close));
        assert_eq!(step(P::Reading, E::RequestComplete, EOF), (P::Queued, A::Dispatch));
        assert_eq!(step(P::Serving, E::PeerClosed, NONE), (P::Serving, A::Nothing));
        assert_eq!(step(P::Queued, E::PeerClosed, NONE), (P::Queued, A::Nothing));
        assert_eq!(
            step(P::Flushing(After::KeepAlive), E::PeerClosed, NONE),
            (P::Flushing(After::KeepAlive), A::Nothing)
        );
    }

    #[test]
    fn failures_and_aborts_close_from_anywhere() {
        let phases = [
            P::Reading,
            P::Queued,
            P::Serving,
            P::Flushing(After::KeepAlive),
            P::Flushing(After::Close),
            P::Flushing(After::Linger),
            P::Lingering,
        ];
        for p in phases {
            assert_eq!(step(p, E::Failed, NONE), (P::Closed, A::Close), "{p:?}");
            assert_eq!(step(p, E::Abort, NONE), (P::Closed, A::Close), "{p:?}");
        }
        for e in [E::RequestComplete, E::Drained, E::Failed, E::Taken, E::Abort] {
            assert_eq!(step(P::Closed, e, NONE), (P::Closed, A::Nothing));
        }
    }

    #[test]
    fn events_that_do_not_apply_change_nothing() {
        assert_eq!(step(P::Queued, E::Stalled, NONE), (P::Queued, A::Nothing));
        assert_eq!(step(P::Serving, E::Drained, NONE), (P::Serving, A::Nothing));
        assert_eq!(step(P::Serving, E::RequestComplete, NONE), (P::Serving, A::Nothing));
        // Read ahead while serving (channel_request_lookahead) only buffers.
        assert_eq!(step(P::Serving, E::Input, NONE), (P::Serving, A::Nothing));
        assert_eq!(step(P::Queued, E::Input, NONE), (P::Queued, A::Nothing));
        assert_eq!(step(P::Reading, E::Taken, NONE), (P::Reading, A::Nothing));
    }

    #[test]
    fn drain_rules() {
        assert!(closes_while_draining(P::Reading, false, true));
        assert!(!closes_while_draining(P::Reading, false, false), "a client sending its request is read on");
        assert!(!closes_while_draining(P::Reading, true, true), "a 100 Continue goes out first");
        assert!(closes_while_draining(P::Lingering, false, false));
        for p in [P::Queued, P::Serving, P::Flushing(After::KeepAlive), P::Flushing(After::Close)] {
            assert!(!closes_while_draining(p, false, true), "{p:?} finishes first");
        }
    }

    #[test]
    fn stall_rules() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let later = t0 + Duration::from_secs(11);
        let fresh = Clocks { last_input: later, head_started: None, output_since: later };
        let old = Clocks { last_input: t0, head_started: None, output_since: t0 };
        assert!(stalled(P::Reading, false, &old, later, timeout));
        assert!(!stalled(P::Reading, false, &fresh, later, timeout));
        // A head dribbled byte by byte keeps last_input fresh but not head_started.
        let slow_head = Clocks { head_started: Some(t0), ..fresh };
        assert!(stalled(P::Reading, false, &slow_head, later, timeout));
        // Output waiting with no progress: a slow reader, in serving or flushing.
        assert!(stalled(P::Serving, true, &old, later, timeout));
        assert!(stalled(P::Flushing(After::KeepAlive), true, &old, later, timeout));
        assert!(!stalled(P::Serving, true, &fresh, later, timeout));
        // The application's own time is never a stall.
        assert!(!stalled(P::Serving, false, &old, later, timeout));
        assert!(!stalled(P::Queued, true, &old, later, timeout));
    }
}
