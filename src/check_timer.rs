//! The deadline of the pool's stall check, as a timer the reactor's poller watches.
//!
//! The poller takes a timeout on each wait and programs a timer for it every time. A
//! timeout shorter than the scheduler tick (the stall check's are 0.2-5 ms) reprograms
//! the timer hardware on every wait, which on a virtual machine is a trap to the
//! hypervisor: under keep-alive load, with tens of thousands of waits a second, that was
//! a third of the reactor's CPU time. On Linux the stall check gets a timerfd of its own,
//! set only when its deadline changes (about once a millisecond under load); the wait's
//! own timeout stays long. Elsewhere the deadline goes into the wait's timeout.

use std::io;
use std::time::{Duration, Instant};

use polling::Poller;

/// The poller key of the timer (polling reserves `usize::MAX` for its own notifier).
pub const KEY: usize = usize::MAX - 1;

pub struct CheckTimer {
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::OwnedFd>,
    /// The deadline the timer is set to.
    armed: Option<Instant>,
}

impl CheckTimer {
    /// A timer watched by `poller` under [`KEY`]; without one (not Linux, or the system
    /// refused), [`CheckTimer::timeout`] folds the deadline into the wait's timeout.
    pub fn new(poller: &Poller) -> Self {
        #[cfg(target_os = "linux")]
        {
            CheckTimer { fd: linux::create(poller).ok(), armed: None }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = poller;
            CheckTimer { armed: None }
        }
    }

    /// Sets the timer to `deadline` (None: off) and returns the timeout for the next wait,
    /// at most `max`.
    pub fn timeout(&mut self, deadline: Option<Instant>, max: Duration) -> Duration {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            if self.armed != deadline {
                let after = deadline.map(|at| at.saturating_duration_since(Instant::now()));
                if linux::set(fd, after).is_ok() {
                    self.armed = deadline;
                    return max;
                }
            } else {
                return max;
            }
        }
        self.armed = deadline;
        match deadline {
            Some(at) => at.saturating_duration_since(Instant::now()).min(max),
            None => max,
        }
    }

    /// The timer fired: it is read, so that the poller stops reporting it.
    pub fn fired(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            linux::clear(fd);
        }
        self.armed = None;
    }

    /// The timer leaves the poller (before the descriptor closes).
    pub fn remove(&mut self, poller: &Poller) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.fd.take() {
            poller.delete(&fd)?;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = poller;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    use polling::{Event, PollMode, Poller};

    pub fn create(poller: &Poller) -> io::Result<OwnedFd> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let raw =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just created and is owned here alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the descriptor is deleted from the poller (CheckTimer::remove) before
        // it is closed.
        unsafe { poller.add_with_mode(fd.as_raw_fd(), Event::readable(super::KEY), PollMode::Level)? };
        Ok(fd)
    }

    /// Arms the timer to fire once `after` from now (None: disarms it).
    pub fn set(fd: &OwnedFd, after: Option<Duration>) -> io::Result<()> {
        let value = match after {
            // Zero would disarm it: the shortest wait is a nanosecond.
            Some(d) => libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: (d.subsec_nanos().max(u32::from(d.as_secs() == 0))) as libc::c_long,
            },
            None => libc::timespec { tv_sec: 0, tv_nsec: 0 },
        };
        let spec =
            libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        // SAFETY: `fd` is a timerfd; `spec` is a valid itimerspec, and a null old value
        // is allowed.
        let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the expiry count, which makes the descriptor unreadable until it fires again.
    pub fn clear(fd: &OwnedFd) {
        let mut count = [0u8; 8];
        // SAFETY: `count` is 8 writable bytes, the size a timerfd read needs; the
        // descriptor is non-blocking, so an unfired timer returns EAGAIN at once.
        let _ = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polling::Events;

    #[test]
    fn fires_once_at_its_deadline_and_not_when_off() {
        let poller = Poller::new().unwrap();
        let mut timer = CheckTimer::new(&poller);
        let mut events = Events::new();
        // Off: the wait times out with nothing.
        let t = timer.timeout(None, Duration::from_millis(20));
        poller.wait(&mut events, Some(t)).unwrap();
        assert!(events.iter().all(|e| e.key != KEY));
        // Set 5 ms ahead: reported under KEY (or, without a timerfd, the wait's timeout
        // ends at the deadline).
        let at = Instant::now() + Duration::from_millis(5);
        let mut woke_at = None;
        for _ in 0..100 {
            events.clear();
            let t = timer.timeout(Some(at), Duration::from_secs(5));
            poller.wait(&mut events, Some(t)).unwrap();
            if events.iter().any(|e| e.key == KEY) {
                timer.fired();
                woke_at = Some(Instant::now());
                break;
            }
            if Instant::now() >= at {
                woke_at = Some(Instant::now());
                break;
            }
        }
        let woke_at = woke_at.expect("the timer never fired");
        assert!(woke_at >= at);
        // Read: no longer reported.
        events.clear();
        let t = timer.timeout(None, Duration::from_millis(10));
        poller.wait(&mut events, Some(t)).unwrap();
        assert!(events.iter().all(|e| e.key != KEY));
        timer.remove(&poller).unwrap();
    }
}
