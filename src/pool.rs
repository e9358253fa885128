//! The task queue and the pool threads that wait on it: which thread a request wakes.
//!
//! A pool thread that finishes a response takes the next queued request itself, still
//! holding the GIL. Another thread is woken only when no pool thread is serving, or when
//! the threads that are serving are all stuck: no request taken or finished for
//! [`WAKE_AFTER`], and (where the OS tells a thread's CPU time) together running less
//! than half the time since, none of them running or waiting for a CPU at the time. The
//! CPU times are read from the threads' CPU-time clocks (a system call each, no file);
//! a thread's state costs a file read, taken only when the CPU times leave it open. A
//! request queued while every serving thread has been on its request for WAKE_AFTER and
//! none of them is running (asleep, waiting on I/O: the OS tells a thread's state) wakes
//! an idle thread at once, with no stall check to wait for.
//! So an application whose requests hold the GIL is served by one thread at a time, as
//! with threads=1 (threads that wake only to wait for the GIL cost hand-offs and context
//! switches), while a request that sleeps or waits on I/O holds the others back for no
//! longer than WAKE_AFTER. Idle threads are woken most recently idle first (warm caches).
//! Threads that came to serve beside others step back when they are not needed: a
//! thread that spent more than a third of its last [`JUDGE_WINDOW`] of serving neither
//! running nor waiting for a CPU, while another serving thread runs (it waited for the
//! GIL that one holds), goes idle after its response instead of taking the next
//! request, unless it is the last thread serving; so a burst of blocking that woke
//! threads does not leave them all fighting for the GIL once it is over.
//! Without a GIL (free-threaded CPython) threads do run at once: every queued request
//! wakes an idle thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex};

/// How long queued requests wait, with no request taken or finished meanwhile, before
/// another pool thread is woken for them.
pub const WAKE_AFTER: Duration = Duration::from_micros(200);
/// How much serving time a thread beside others is judged over (see the module doc);
/// one reading of its CPU time per window, only while more than one thread serves.
const JUDGE_WINDOW: Duration = Duration::from_millis(1);
/// How old the stall check's reading of a thread's CPU time may be for a request queued
/// to judge by it whether the thread has been running since (see `all_blocked`).
const READING_MAX_AGE: Duration = Duration::from_millis(2);
/// No reading yet in `Slot::window_cpu`.
const UNKNOWN: u64 = u64::MAX;
/// The stall check runs every WAKE_AFTER after a stall, and backs off (doubling) while
/// the threads serving keep making progress, to this: a busy server that never blocks is
/// not woken thousands of times a second to find that out...
const CHECK_BACKOFF_PROGRESS: Duration = Duration::from_millis(1);
/// ...and to this while a serving thread runs one long request (CPU time advancing): a
/// request that holds the GIL for milliseconds is not helped by another thread.
const CHECK_BACKOFF_RUNNING: Duration = Duration::from_millis(5);

/// One pool thread, as the pool sees it.
pub struct Slot {
    woken: Mutex<bool>,
    wake: Condvar,
    /// Between taking a request and going idle.
    serving: AtomicBool,
    cpu: ThreadCpu,
    /// The stall check's last reading of the thread's CPU time: when (ns since the
    /// pool's epoch) and the CPU time then (ns). Written by the reactor only.
    reading: Mutex<Option<(u64, u64)>>,
    /// When (ns since the pool's epoch) the thread last took or finished a request, or
    /// was woken.
    since: AtomicU64,
    /// Start (ns since the epoch) and the thread's running-or-runnable time at the start
    /// (UNKNOWN: none yet) of its current judge window.
    window_start: AtomicU64,
    window_cpu: AtomicU64,
    /// Set when the thread is to step back: its next take finds nothing.
    step_back: AtomicBool,
}

pub struct Pool<T> {
    tx: Sender<Option<T>>,
    rx: Receiver<Option<T>>,
    /// Idle threads, the most recently idle last.
    idle: Mutex<Vec<Arc<Slot>>>,
    idle_count: AtomicUsize,
    slots: Mutex<Vec<Arc<Slot>>>,
    serving: AtomicUsize,
    epoch: Instant,
    /// When (ns since `epoch`) a request was last taken or finished.
    progress: AtomicU64,
    /// When (ns since `epoch`) the stall check last read the serving threads' CPU times.
    last_check: AtomicU64,
    /// Current interval (ns) between stall checks.
    interval: AtomicU64,
    /// Whether the interpreter runs with a GIL. Without one (free-threaded CPython) a
    /// request running Python does not hold the other threads back, so a queued request
    /// wakes an idle thread at once instead of waiting for the serving ones.
    gil: AtomicBool,
    /// Stop markers in the queue.
    stops: AtomicUsize,
    /// Requests taken from the queue so far.
    taken: AtomicU64,
}

/// What reading the serving threads' CPU times told.
enum Probe {
    /// First reading of a stall: nothing to compare yet.
    Started,
    /// They are running (together, at least half the time since the last reading).
    Running,
    /// They ran for less than half the time since the last reading.
    Stuck,
    /// The OS does not tell.
    Unknown,
}

/// What `take` found.
pub enum Take<T> {
    Task(T),
    /// The pool is stopping: the thread returns.
    Stop,
    Empty,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Pool<T> {
    pub fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Pool {
            tx,
            rx,
            idle: Mutex::new(Vec::new()),
            idle_count: AtomicUsize::new(0),
            slots: Mutex::new(Vec::new()),
            serving: AtomicUsize::new(0),
            epoch: Instant::now(),
            progress: AtomicU64::new(0),
            last_check: AtomicU64::new(0),
            interval: AtomicU64::new(WAKE_AFTER.as_nanos() as u64),
            gil: AtomicBool::new(true),
            stops: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
        }
    }

    /// Tells the pool whether Python runs with a GIL (see `gil`).
    pub fn set_gil(&self, enabled: bool) {
        self.gil.store(enabled, Ordering::Relaxed);
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Requests waiting for a thread.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// Requests taken from the queue so far.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Whether requests wait in the queue (stop markers aside).
    pub fn has_gil(&self) -> bool {
        self.gil.load(Ordering::Relaxed)
    }

    pub fn requests_wait(&self) -> bool {
        self.rx.len() > self.stops.load(Ordering::SeqCst)
    }

    pub fn idle(&self) -> usize {
        self.idle_count.load(Ordering::Relaxed)
    }

    /// Threads serving (or woken to serve).
    pub fn serving(&self) -> usize {
        self.serving.load(Ordering::Relaxed)
    }

    /// Queues a request and wakes a thread for it if none is serving, or if the ones
    /// serving are all blocked (see `all_blocked`).
    pub fn push(&self, task: T) {
        let _ = self.tx.send(Some(task));
        if self.serving.load(Ordering::SeqCst) == 0
            || !self.gil.load(Ordering::Relaxed)
            || (self.idle() > 0 && self.all_blocked())
        {
            self.wake_one();
        }
    }

    /// Whether every serving thread has been on its request for at least WAKE_AFTER and
    /// none of them is running or waiting for a CPU: they sleep or wait on I/O (or for
    /// the GIL, which then no running thread holds), and the request just queued would
    /// otherwise wait for the stall check. False where the OS does not tell a thread's
    /// state. A thread that took or finished a request within WAKE_AFTER is taken to
    /// be going on to the next one (no system call then: the common case under load).
    fn all_blocked(&self) -> bool {
        let now = self.now_ns();
        let wake_after = WAKE_AFTER.as_nanos() as u64;
        let slots = self.slots.lock();
        let serving = || slots.iter().filter(|s| s.serving.load(Ordering::Relaxed));
        if serving().any(|s| now.saturating_sub(s.since.load(Ordering::Relaxed)) < wake_after) {
            return false;
        }
        let mut any = false;
        for slot in serving() {
            // Cheap first: a thread whose CPU time grew by at least half the time since
            // the stall check last read it has been running, and is taken to run on
            // (if it has just blocked, the stall check finds it). Only the others cost
            // a look at their state.
            let reading = *slot.reading.lock();
            if let Some((at, before)) = reading {
                let age = now.saturating_sub(at);
                let usable = age >= wake_after / 2 && age <= READING_MAX_AGE.as_nanos() as u64;
                if usable && slot.cpu.cpu_time().is_some_and(|cpu| cpu.saturating_sub(before) * 2 >= age) {
                    return false;
                }
            }
            match slot.cpu.running() {
                Some(false) => any = true,
                Some(true) | None => return false,
            }
        }
        any
    }

    /// Tells `count` threads to return once the requests before are served.
    pub fn stop(&self, count: usize) {
        self.stops.fetch_add(count, Ordering::SeqCst);
        for _ in 0..count {
            let _ = self.tx.send(None);
        }
        for _ in 0..count {
            self.wake_one();
        }
    }

    /// Wakes the most recently idle thread; false if none is idle.
    fn wake_one(&self) -> bool {
        let slot = {
            let mut idle = self.idle.lock();
            let slot = idle.pop();
            if slot.is_some() {
                self.idle_count.fetch_sub(1, Ordering::Relaxed);
            }
            slot
        };
        match slot {
            Some(slot) => {
                // Serving from now on: until it runs, further requests must not wake
                // yet another thread for the same work.
                slot.since.store(self.now_ns(), Ordering::Relaxed);
                if !slot.serving.swap(true, Ordering::SeqCst) {
                    self.serving.fetch_add(1, Ordering::SeqCst);
                }
                *slot.woken.lock() = true;
                slot.wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// The stall check, run by the reactor: when requests wait and threads are idle but
    /// nothing has been taken or finished for WAKE_AFTER, and no serving thread is
    /// running (judged from their CPU times, where the OS tells them: at the first look,
    /// against an earlier check's reading, when that shows they ran at least half the
    /// stall; otherwise over a second WAKE_AFTER), one more thread is woken. Returns when
    /// to check again (None: nothing waits for a thread, or none is idle). Cheap until a
    /// stall begins: no system call.
    pub fn check(&self) -> Option<Instant> {
        if self.rx.is_empty() || self.idle() == 0 {
            return None;
        }
        let now = self.now_ns();
        let wake_after = WAKE_AFTER.as_nanos() as u64;
        let progress = self.progress.load(Ordering::SeqCst);
        let since = now.saturating_sub(progress);
        if since < wake_after {
            return Some(self.at(now + self.back_off(CHECK_BACKOFF_PROGRESS)));
        }
        let probe_at = self.last_check.load(Ordering::SeqCst);
        let same_stall = probe_at > progress;
        match self.snapshot_cpu(now, progress, same_stall) {
            // The first look since the stall began, not conclusive: CPU times noted,
            // decided next time.
            Probe::Started => {
                self.last_check.store(now, Ordering::SeqCst);
                self.interval.store(wake_after, Ordering::Relaxed);
                return Some(self.at(now + wake_after));
            }
            // A serving thread is running Python: the GIL is busy, another thread would
            // only wait for it. Checks back off further during one long request than
            // while requests are being finished between them.
            Probe::Running => {
                self.last_check.store(now, Ordering::SeqCst);
                let max = if same_stall { CHECK_BACKOFF_RUNNING } else { CHECK_BACKOFF_PROGRESS };
                return Some(self.at(now + self.back_off(max)));
            }
            Probe::Stuck | Probe::Unknown => {}
        }
        self.wake_one();
        // The woken thread takes a request (progress) or finds none; either way the
        // next wake waits another WAKE_AFTER.
        self.progress.store(now, Ordering::SeqCst);
        self.last_check.store(0, Ordering::SeqCst);
        self.interval.store(wake_after, Ordering::Relaxed);
        Some(self.at(now + wake_after))
    }

    /// Doubles the interval between stall checks, up to `max`; returns it.
    fn back_off(&self, max: Duration) -> u64 {
        let max = max.as_nanos() as u64;
        let next = (self.interval.load(Ordering::Relaxed) * 2).min(max);
        self.interval.store(next, Ordering::Relaxed);
        next
    }

    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// Reads each serving thread's CPU time (a clock read, no file) during a stall that
    /// began at `progress`, and says whether they ran, together, at least half of it
    /// (threads taking turns at the GIL run one at a time, each for a part of it, and
    /// one more thread would only join the turns): exactly, from readings taken during
    /// the stall; from a reading taken before it, by the least the thread can have run
    /// since the stall began (what it ran beyond the time from that reading to the
    /// stall's start). Otherwise, with `compare` (readings from earlier in this stall),
    /// whether one of them is running or waiting for a CPU now (preempted on a busy
    /// machine: another thread would compete for the same CPU and GIL).
    fn snapshot_cpu(&self, now: u64, progress: u64, compare: bool) -> Probe {
        let slots = self.slots.lock();
        let mut any_clock = false;
        // Sum of each thread's share of its window, in thousandths.
        let mut share = 0u64;
        for slot in slots.iter().filter(|s| s.serving.load(Ordering::Relaxed)) {
            let Some(cpu) = slot.cpu.cpu_time() else { continue };
            any_clock = true;
            if let Some((at, before)) = slot.reading.lock().replace((now, cpu)) {
                let ran = cpu.saturating_sub(before);
                let (ran, window) = if at >= progress {
                    (ran, now.saturating_sub(at))
                } else {
                    (ran.saturating_sub(progress - at), now.saturating_sub(progress))
                };
                share = share.saturating_add(ran.saturating_mul(1000).checked_div(window).unwrap_or(0));
            }
        }
        match (any_clock, compare) {
            (false, _) => Probe::Unknown,
            (true, _) if share >= 500 => Probe::Running,
            (true, false) => Probe::Started,
            (true, true) if one_runs(&slots, None) => Probe::Running,
            (true, true) => Probe::Stuck,
        }
    }

    /// Registers the calling thread as a pool thread.
    pub fn register(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            woken: Mutex::new(false),
            wake: Condvar::new(),
            serving: AtomicBool::new(true),
            cpu: ThreadCpu::current(),
            reading: Mutex::new(None),
            since: AtomicU64::new(self.now_ns()),
            window_start: AtomicU64::new(0),
            window_cpu: AtomicU64::new(UNKNOWN),
            step_back: AtomicBool::new(false),
        });
        self.serving.fetch_add(1, Ordering::SeqCst);
        self.slots.lock().push(slot.clone());
        slot
    }

    /// The calling thread leaves the pool.
    pub fn unregister(&self, slot: &Arc<Slot>) {
        if slot.serving.swap(false, Ordering::SeqCst) {
            self.serving.fetch_sub(1, Ordering::SeqCst);
        }
        self.slots.lock().retain(|s| !Arc::ptr_eq(s, slot));
        let mut idle = self.idle.lock();
        let before = idle.len();
        idle.retain(|s| !Arc::ptr_eq(s, slot));
        if idle.len() < before {
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The next request for the serving thread `slot`, if one waits (Empty when the
    /// thread is to step back, see the module doc).
    pub fn take(&self, slot: &Slot) -> Take<T> {
        if slot.step_back.swap(false, Ordering::Relaxed) && self.try_step_back(slot) {
            return Take::Empty;
        }
        match self.rx.try_recv() {
            Ok(Some(task)) => {
                let now = self.now_ns();
                slot.since.store(now, Ordering::Relaxed);
                self.progress.store(now, Ordering::SeqCst);
                self.taken.fetch_add(1, Ordering::Relaxed);
                Take::Task(task)
            }
            Ok(None) => {
                self.stops.fetch_sub(1, Ordering::SeqCst);
                Take::Stop
            }
            Err(TryRecvError::Empty) => Take::Empty,
            Err(TryRecvError::Disconnected) => Take::Stop,
        }
    }

    /// `slot`'s thread completed a response (progress, for the stall check); where more
    /// than one thread serves, judges whether this one is needed (see the module doc).
    pub fn finished(&self, slot: &Slot) {
        let now = self.now_ns();
        slot.since.store(now, Ordering::Relaxed);
        self.progress.store(now, Ordering::SeqCst);
        if !self.gil.load(Ordering::Relaxed) || self.serving.load(Ordering::Relaxed) <= 1 {
            slot.window_cpu.store(UNKNOWN, Ordering::Relaxed);
            return;
        }
        let start = slot.window_cpu.load(Ordering::Relaxed);
        let started = slot.window_start.load(Ordering::Relaxed);
        if start != UNKNOWN && now.saturating_sub(started) < JUDGE_WINDOW.as_nanos() as u64 {
            return;
        }
        let Some(cpu) = slot.cpu.now() else { return };
        slot.window_cpu.store(cpu, Ordering::Relaxed);
        slot.window_start.store(now, Ordering::Relaxed);
        if start == UNKNOWN {
            return;
        }
        let wall = now.saturating_sub(started);
        if cpu.saturating_sub(start) * 3 < wall * 2 && self.another_runs(slot) {
            slot.step_back.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `slot`'s thread is to step back after this response (see the module doc).
    pub fn stepping_back(&self, slot: &Slot) -> bool {
        slot.step_back.load(Ordering::Relaxed)
    }

    /// Whether a serving thread other than `slot` is running or waiting for a CPU.
    fn another_runs(&self, slot: &Slot) -> bool {
        one_runs(&self.slots.lock(), Some(slot))
    }

    /// Stops counting `slot` as serving unless it is the last serving thread; whether it
    /// did.
    fn try_step_back(&self, slot: &Slot) -> bool {
        let counted_down =
            self.serving.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > 1).then(|| n - 1)).is_ok();
        if counted_down {
            slot.serving.store(false, Ordering::SeqCst);
        }
        counted_down
    }

    /// The calling thread found nothing to do: it goes idle and waits to be woken
    /// (`wait` runs the blocking part, so that the caller can release the GIL for it),
    /// unless a request arrived meanwhile. Returns what there is to do then.
    pub fn idle_wait(&self, slot: &Arc<Slot>, wait: impl FnOnce(&(dyn Fn() + Sync))) -> Take<T> {
        {
            let mut idle = self.idle.lock();
            idle.push(slot.clone());
            self.idle_count.fetch_add(1, Ordering::Relaxed);
        }
        // A thread no longer serving here stepped back: it was counted down while another
        // serves, and that one takes what is queued.
        if slot.serving.swap(false, Ordering::SeqCst) {
            self.serving.fetch_sub(1, Ordering::SeqCst);
            // A request queued between the caller's take() and the line above saw this
            // thread still serving and woke nobody: look again before sleeping.
            let found = self.take(slot);
            if !matches!(found, Take::Empty) {
                self.leave_idle(slot);
                return found;
            }
        }
        wait(&|| {
            let mut woken = slot.woken.lock();
            while !*woken {
                slot.wake.wait(&mut woken);
            }
            *woken = false;
        });
        self.leave_idle(slot);
        self.take(slot)
    }

    fn leave_idle(&self, slot: &Arc<Slot>) {
        {
            let mut idle = self.idle.lock();
            let before = idle.len();
            idle.retain(|s| !Arc::ptr_eq(s, slot));
            if idle.len() < before {
                self.idle_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        *slot.woken.lock() = false;
        // Time idle is not judged.
        slot.window_cpu.store(UNKNOWN, Ordering::Relaxed);
        if !slot.serving.swap(true, Ordering::SeqCst) {
            self.serving.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Whether one of the serving `slots` (other than `except`) is running or waiting for a
/// CPU (state R), where the OS tells.
fn one_runs(slots: &[Arc<Slot>], except: Option<&Slot>) -> bool {
    slots
        .iter()
        .filter(|s| except.is_none_or(|e| !std::ptr::eq(&***s, e)) && s.serving.load(Ordering::Relaxed))
        .any(|s| s.cpu.running() == Some(true))
}

/// A thread's CPU-time clock, readable from other threads (Linux).
struct ThreadCpu {
    /// This thread's /proc/self/task/TID/schedstat: its first two fields are the time the
    /// thread has run and the time it has waited, runnable, for a CPU. Opened for each
    /// reading (once per JUDGE_WINDOW while more than one thread serves), so that no
    /// descriptor is held for it.
    #[cfg(target_os = "linux")]
    schedstat: Option<String>,
    #[cfg(target_os = "linux")]
    clock: Option<libc::clockid_t>,
    /// /proc/self/task/TID/stat, whose third field is the thread's state.
    #[cfg(target_os = "linux")]
    stat: String,
}

impl ThreadCpu {
    #[cfg(target_os = "linux")]
    fn current() -> Self {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let schedstat = Some(format!("/proc/self/task/{tid}/schedstat"));
        let stat = format!("/proc/self/task/{tid}/stat");
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self() is the calling thread, alive for the call; `clock` is a
        // valid place for the result.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        let cpu = ThreadCpu { schedstat, clock: (rc == 0).then_some(clock), stat };
        if cpu.read_schedstat().is_some() {
            cpu
        } else {
            ThreadCpu { schedstat: None, ..cpu }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn current() -> Self {
        ThreadCpu {}
    }

    #[cfg(target_os = "linux")]
    fn read_schedstat(&self) -> Option<u64> {
        use std::io::Read;
        let mut file = std::fs::File::open(self.schedstat.as_ref()?).ok()?;
        let mut buf = [0u8; 128];
        let n = file.read(&mut buf).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
        let (ran, waited) = (fields.next()??, fields.next()??);
        Some(ran + waited)
    }

    /// Time (ns) the thread has been running or runnable, where the OS tells: a thread
    /// that is only waiting for a CPU (preempted on a busy machine) is not stuck, and
    /// another thread woken for its requests would compete for the same CPU and GIL.
    /// (schedstat counts a wait for a CPU once it ends: one going on shows as state R,
    /// see `running`.) Without schedstat, the CPU time alone.
    #[cfg(target_os = "linux")]
    fn now(&self) -> Option<u64> {
        if self.schedstat.is_some() {
            return self.read_schedstat();
        }
        self.cpu_time()
    }

    #[cfg(not(target_os = "linux"))]
    fn now(&self) -> Option<u64> {
        None
    }

    /// CPU time (ns) the thread has run, from its CPU-time clock: one system call, no
    /// file (the stall check's reading, taken while threads serve and others are idle).
    #[cfg(target_os = "linux")]
    fn cpu_time(&self) -> Option<u64> {
        let clock = self.clock?;
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid place for the result; the clock belongs to a pool
        // thread registered in the pool, which unregisters before it exits, so the
        // clock names a live thread (a stale one would only make the call fail).
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    #[cfg(not(target_os = "linux"))]
    fn cpu_time(&self) -> Option<u64> {
        None
    }

    /// Whether the thread is running or waiting for a CPU (state R), where the OS tells.
    #[cfg(target_os = "linux")]
    fn running(&self) -> Option<bool> {
        use std::io::Read;
        let mut file = std::fs::File::open(&self.stat).ok()?;
        let mut buf = [0u8; 512];
        let n = file.read(&mut buf).ok()?;
        // "TID (name) S ...": the name may hold spaces and parentheses, the state
        // follows the last ')'.
        let rest = &buf[buf[..n].iter().rposition(|&b| b == b')')? + 1..n];
        let state = *rest.iter().find(|b| !b.is_ascii_whitespace())?;
        Some(state == b'R')
    }

    #[cfg(not(target_os = "linux"))]
    fn running(&self) -> Option<bool> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A pool thread's loop, as the worker runs it: `serve` is called for each request.
    fn pool_thread(
        pool: &Arc<Pool<u32>>,
        mut serve: impl FnMut(u32) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let slot = pool.register();
            loop {
                let t = match pool.take(&slot) {
                    Take::Task(t) => t,
                    Take::Stop => break,
                    Take::Empty => match pool.idle_wait(&slot, |wait| wait()) {
                        Take::Task(t) => t,
                        Take::Stop => break,
                        Take::Empty => continue,
                    },
                };
                serve(t);
                pool.finished(&slot);
            }
            pool.unregister(&slot);
        })
    }

    /// A pool thread that records which requests it served, and can be told to block.
    fn thread(
        pool: &Arc<Pool<u32>>,
        served: &Arc<Mutex<Vec<(usize, u32)>>>,
        id: usize,
        block_on: Option<u32>,
        release: Arc<(Mutex<bool>, Condvar)>,
    ) -> std::thread::JoinHandle<()> {
        let served = served.clone();
        pool_thread(pool, move |t| {
            served.lock().push((id, t));
            if Some(t) == block_on {
                let (lock, cv) = &*release;
                let mut go = lock.lock();
                while !*go {
                    cv.wait(&mut go);
                }
            }
        })
    }

    type Served = Arc<Mutex<Vec<(usize, u32)>>>;
    type Release = Arc<(Mutex<bool>, Condvar)>;
    type Threads = Vec<std::thread::JoinHandle<()>>;

    /// A pool of two idle threads (as `thread`) whose request 0 blocks until released.
    fn two_threads_blocking_on_0() -> (Arc<Pool<u32>>, Served, Release, Threads) {
        let pool = Arc::new(Pool::<u32>::new());
        let served = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let threads: Vec<_> = (0..2).map(|i| thread(&pool, &served, i, Some(0), release.clone())).collect();
        wait_for(|| pool.idle() == 2);
        (pool, served, release, threads)
    }

    /// Lets the blocked requests go on, then stops the pool and joins its threads.
    fn release_and_stop(pool: &Pool<u32>, release: &(Mutex<bool>, Condvar), threads: Threads) {
        let (lock, cv) = release;
        *lock.lock() = true;
        cv.notify_all();
        pool.stop(threads.len());
        for t in threads {
            t.join().unwrap();
        }
    }

    fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..2000 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("condition not reached within 10 s");
    }

    #[test]
    fn one_thread_serves_while_it_keeps_up() {
        let pool = Arc::new(Pool::<u32>::new());
        let served = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new((Mutex::new(true), Condvar::new()));
        let threads: Vec<_> = (0..4).map(|i| thread(&pool, &served, i, None, release.clone())).collect();
        wait_for(|| pool.idle() == 4);
        for t in 0..200 {
            pool.push(t);
            if t % 10 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        wait_for(|| served.lock().len() == 200);
        // Requests that never wait long are served by whichever thread was woken last
        // (most recently idle), without a check ever waking more: one thread.
        let ids: std::collections::HashSet<usize> = served.lock().iter().map(|(i, _)| *i).collect();
        assert!(ids.len() <= 2, "threads used: {ids:?}");
        pool.stop(4);
        for t in threads {
            t.join().unwrap();
        }
    }

    /// A serving thread that blocks (not running, no progress) leaves queued requests to
    /// another thread, woken by the stall check.
    #[test]
    fn a_blocked_thread_is_covered_by_another() {
        let (pool, served, release, threads) = two_threads_blocking_on_0();
        pool.push(0); // blocks the thread that takes it
        wait_for(|| served.lock().len() == 1);
        for t in 1..=5 {
            pool.push(t);
        }
        let checks = AtomicUsize::new(0);
        wait_for(|| {
            checks.fetch_add(1, Ordering::Relaxed);
            pool.check();
            served.lock().len() == 6
        });
        let blocked_on = served.lock()[0].0;
        assert!(served.lock()[1..].iter().all(|(i, _)| *i != blocked_on));
        release_and_stop(&pool, &release, threads);
    }

    /// A thread that ran its last request on the CPU and then blocked on its next: the
    /// stall check does not count the running it read before the stall began as running
    /// during the stall, and wakes the other thread at its second look.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_that_ran_then_blocked_is_covered_after_two_checks() {
        let pool = Arc::new(Pool::<u32>::new());
        let served = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let threads: Vec<_> = (0..2)
            .map(|id| {
                let (served, release) = (served.clone(), release.clone());
                pool_thread(&pool, move |t| {
                    served.lock().push((id, t));
                    if t == 0 {
                        let until = Instant::now() + Duration::from_millis(20);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    } else if t == 1 {
                        let (lock, cv) = &*release;
                        let mut go = lock.lock();
                        while !*go {
                            cv.wait(&mut go);
                        }
                    }
                })
            })
            .collect();
        wait_for(|| pool.idle() == 2);
        for t in 0..6 {
            pool.push(t); // 0 wakes a thread; the rest wait for it
        }
        while served.lock().is_empty() {
            std::thread::yield_now();
        }
        // Two looks early in request 0: its CPU time read while it runs.
        for _ in 0..2 {
            std::thread::sleep(WAKE_AFTER + WAKE_AFTER / 2);
            pool.check();
        }
        wait_for(|| served.lock().len() == 2);
        let blocked = served.lock()[1].0;
        std::thread::sleep(WAKE_AFTER * 2);
        // The stall's first look: the reading from request 0 shows no running since the
        // stall began, so the next look comes WAKE_AFTER later (not put off as it would
        // be for a thread running).
        let next = pool.check().expect("requests wait and a thread is idle");
        assert!(next <= Instant::now() + WAKE_AFTER, "the next look was put off");
        std::thread::sleep(WAKE_AFTER);
        pool.check(); // nothing ran since: the other thread is woken
        wait_for(|| served.lock().len() == 6);
        let got = served.lock().clone();
        assert!(got[2..].iter().all(|&(id, _)| id != blocked), "{got:?}");
        release_and_stop(&pool, &release, threads);
    }

    /// A request queued while the only serving thread sleeps in its request wakes an
    /// idle thread at once: no stall check runs in this test.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_request_queued_beside_a_sleeping_thread_wakes_another() {
        let (pool, served, release, threads) = two_threads_blocking_on_0();
        pool.push(0); // sleeps on a condvar in the thread that takes it
        wait_for(|| served.lock().len() == 1);
        std::thread::sleep(WAKE_AFTER * 5);
        pool.push(1);
        wait_for(|| served.lock().len() == 2);
        let got = served.lock().clone();
        assert_ne!(got[0].0, got[1].0, "{got:?}");
        release_and_stop(&pool, &release, threads);
    }

    /// The same once the stall check has read the sleeping thread's CPU time (the cheap
    /// look at a request queued): its CPU time has not grown, so its state is read, and
    /// the request wakes an idle thread at once.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_request_queued_after_a_stall_check_read_a_sleeping_thread_wakes_another() {
        let (pool, served, release, threads) = two_threads_blocking_on_0();
        pool.push(0);
        pool.push(1); // the thread woken for 0 has just been woken: 1 waits for it
        wait_for(|| !served.lock().is_empty());
        let sleeper = served.lock()[0].0;
        // Stall checks until one wakes the other thread for request 1: they read the
        // sleeping thread's CPU time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while served.lock().len() < 2 {
            assert!(Instant::now() < deadline, "no stall check woke a thread");
            pool.check();
            std::thread::sleep(WAKE_AFTER);
        }
        // Soon after (the reading is fresh enough to be used), no stall check from here on.
        while pool.idle() < 1 {
            assert!(Instant::now() < deadline, "the thread woken never went idle");
            std::thread::yield_now();
        }
        std::thread::sleep(WAKE_AFTER);
        pool.push(2);
        wait_for(|| served.lock().len() == 3);
        let got = served.lock().clone();
        assert!(got[1..].iter().all(|&(id, _)| id != sleeper), "{got:?}");
        release_and_stop(&pool, &release, threads);
    }

    /// A pool thread whose request 0 spins (holding a CPU, as a request holding the GIL
    /// does) until `spin` is cleared.
    fn spinner(
        pool: &Arc<Pool<u32>>,
        served: &Arc<Mutex<Vec<(usize, u32)>>>,
        id: usize,
        spin: &Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let (spin, served) = (spin.clone(), served.clone());
        pool_thread(pool, move |t| {
            served.lock().push((id, t));
            while t == 0 && spin.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    }

    /// ...while one queued beside a thread that runs (a request holding the GIL, here a
    /// spin) waits for that thread: waking another would only make it wait for the GIL.
    /// `stall_checks`: the reactor's stall check runs meanwhile, as often as it would.
    #[cfg(target_os = "linux")]
    fn queued_beside_a_running_thread(stall_checks: usize) {
        let pool = Arc::new(Pool::<u32>::new());
        let spin = Arc::new(AtomicBool::new(true));
        let served = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..2).map(|id| spinner(&pool, &served, id, &spin)).collect();
        wait_for(|| pool.idle() == 2);
        pool.push(0);
        wait_for(|| served.lock().len() == 1);
        std::thread::sleep(WAKE_AFTER * 5);
        pool.push(1);
        if stall_checks == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..stall_checks {
            pool.check();
            std::thread::sleep(WAKE_AFTER);
        }
        assert_eq!(served.lock().len(), 1, "another thread was woken beside a running one");
        spin.store(false, Ordering::Relaxed);
        wait_for(|| served.lock().len() == 2);
        let got = served.lock().clone();
        assert_eq!(got[0].0, got[1].0, "{got:?}");
        pool.stop(2);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_request_queued_beside_a_running_thread_waits_for_it() {
        queued_beside_a_running_thread(0);
    }

    /// The stall check leaves alone a serving thread that waits for a CPU: here every
    /// thread of the test shares one CPU with a busy loop, so the spinning request is
    /// preempted for whole time slices (schedstat counts such a wait only once it ends).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_stall_check_leaves_a_preempted_thread_alone() {
        // SAFETY: sched_getcpu has no preconditions; the set is a plain bit mask,
        // zeroed, then one CPU set, and applied to the calling thread (pid 0) only.
        let cpu = unsafe { libc::sched_getcpu() }.max(0) as usize;
        let pin = move || unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        };
        let busy = Arc::new(AtomicBool::new(true));
        let hog = {
            let busy = busy.clone();
            std::thread::spawn(move || {
                pin();
                while busy.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        // Threads spawned from here on inherit the pinning.
        let test_thread = std::thread::spawn(move || {
            pin();
            queued_beside_a_running_thread(300);
        });
        let result = test_thread.join();
        busy.store(false, Ordering::Relaxed);
        hog.join().unwrap();
        result.unwrap();
    }

    /// Two threads that both serve, taking turns at one lock held through each request
    /// (as at the GIL): one of them steps back, and the other serves the rest alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_taking_turns_at_a_held_lock_steps_back() {
        const TASKS: u32 = 400;
        let pool = Arc::new(Pool::<u32>::new());
        for t in 0..TASKS {
            pool.push(t);
        }
        let gil = Arc::new(Mutex::new(()));
        let served = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..2)
            .map(|id| {
                let (gil, served) = (gil.clone(), served.clone());
                pool_thread(&pool, move |t| {
                    let held = gil.lock();
                    let until = Instant::now() + Duration::from_micros(300);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    served.lock().push((id, t));
                    // Handed to the thread waiting, if one is: strict turns.
                    parking_lot::MutexGuard::unlock_fair(held);
                })
            })
            .collect();
        wait_for(|| served.lock().len() == TASKS as usize);
        let got = served.lock().clone();
        let mut order: Vec<u32> = got.iter().map(|&(_, t)| t).collect();
        order.sort_unstable();
        assert_eq!(order, (0..TASKS).collect::<Vec<_>>(), "a request lost or served twice");
        let last = &got[got.len() - 100..];
        assert!(last.iter().all(|&(id, _)| id == last[0].0), "both threads still serving: {last:?}");
        wait_for(|| pool.idle() == 2);
        pool.stop(2);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn nothing_to_check_without_queued_requests_or_idle_threads() {
        let pool = Pool::<u32>::new();
        assert!(pool.check().is_none());
        pool.push(1);
        assert!(pool.check().is_none(), "no idle thread to wake");
    }
}
