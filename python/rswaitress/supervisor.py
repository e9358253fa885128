"""Worker processes and their master.

With ``workers=N`` (or ``max_requests``, or ``touch_reload``), ``create_server()`` returns a
``Supervisor``: the master. It binds every listening socket once and shares the same
sockets with N worker processes, so that a worker that exits loses nothing from the
listen queue (the master keeps the sockets open; the other workers, or the replacement,
accept what waits there). The master never runs the application.

- Unix: workers are forked after the sockets are bound. An application given as an object
  (``serve(app, workers=4)``) is inherited by every worker; one given by import path
  (``rswaitress-serve --workers=4 module:app``) is imported by each worker after the fork,
  so that a reload runs new code.
- Windows: workers are spawned (``multiprocessing``'s spawn method). They receive the
  sockets through ``socket.share()`` and import the application by its import path: the
  module that calls ``serve(app, workers=N)`` is imported again in each worker, so the call
  must be under ``if __name__ == "__main__":``, as with ``multiprocessing``.

Supervision: a worker that dies (any exit status, any signal) is replaced at once; one
that fails while booting, or dies within a second of it, is replaced after a delay that
doubles each time (0.1 s to 10 s) so that a broken application does not make the master
spin. If no worker of the first generation ever boots, the master stops and ``run()``
raises ``WorkerBootError``.

Signals (to the master): SIGTERM, SIGINT (Ctrl-C), SIGBREAK (Ctrl-Break on Windows):
graceful stop, every worker drains (see the README), then the master exits; a second one
stops at once. SIGHUP (or a change of the ``touch_reload`` file, the way on Windows):
zero-downtime reload, a new generation of workers starts, and once all of it is ready the
old one drains. SIGTTIN / SIGTTOU: one worker more / fewer. Workers ignore SIGINT and SIGHUP
(the master relays what it gets); a SIGTERM sent to a worker directly makes it drain.

The master talks to each worker over a pipe: the worker says ``ready`` once it serves and
``recycle`` when max_requests has started its drain; the master says ``stop`` (drain) or
``abort``. A worker whose pipe ends (its master is gone, even by SIGKILL) drains and exits,
so no worker outlives its master.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from socket import AddressFamily

    from _typeshed.wsgi import WSGIApplication

    from rswaitress.adjustments import Adjustments
    from rswaitress.server import _Listening

logger = logging.getLogger("rswaitress")

#: Exit status of a worker that could not load the application or start serving.
BOOT_ERROR = 3
#: Exit status of a worker whose master went away.
ORPHANED = 4

_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 10.0
#: A worker that dies sooner than this after booting counts as failing to boot.
_SHORT_LIFE = 1.0
#: Seconds the master waits for workers to exit after the graceful timeout, once they
#: have been told to abort, before killing them.
_KILL_AFTER = 5.0
#: Environment variable: "spawn" makes workers start as they do on Windows (spawned,
#: importing the application by path) on any platform, which lets that path be tested.
START_METHOD_ENV = "RSWAITRESS_WORKER_START"


class WorkerBootError(RuntimeError):
    """No worker of the first generation could start serving."""


class AppRef:
    """An application named by import path (``module:attribute``), loaded where it runs:
    in each worker, so that a reload runs the code as it is then. With ``call``, the
    attribute is a factory called once per worker (``--call``)."""

    def __init__(self, spec: str, call: bool = False) -> None:
        self.spec = spec
        self.call = call

    def load(self) -> WSGIApplication:
        import pkgutil

        obj: Any = pkgutil.resolve_name(self.spec)
        return obj() if self.call else obj  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"AppRef({self.spec!r}, call={self.call})"


def _start_method() -> str:
    wanted = os.environ.get(START_METHOD_ENV, "")
    if wanted in ("fork", "spawn"):
        if wanted == "fork" and not hasattr(os, "fork"):
            raise ValueError(f"{START_METHOD_ENV}=fork: this platform cannot fork")
        return wanted
    if wanted:
        raise ValueError(f"{START_METHOD_ENV} must be 'fork' or 'spawn', not {wanted!r}")
    return "fork" if hasattr(os, "fork") else "spawn"


def _importable(app: Any) -> AppRef:
    """For a spawned worker: the import path of an application object, found as a
    module-level name of the module that defines or holds it."""
    if isinstance(app, AppRef):
        return app
    candidates = []
    module_name = getattr(app, "__module__", None)
    if isinstance(module_name, str):
        candidates.append(module_name)
    candidates.append("__main__")
    for name in candidates:
        module = sys.modules.get(name)
        if module is None:
            continue
        for attr, value in vars(module).items():
            if value is app and not attr.startswith("__"):
                return AppRef(f"{name}:{attr}")
    raise ValueError(
        "spawned worker processes import the application by name, and this one is not a "
        "module-level name of its module: assign it to one (app = ...), or give it by "
        "import path (rswaitress-serve --workers=N module:app)"
    )


class _MetricsBlock:
    """Memory shared by the master and one worker, holding that worker's metrics: an
    anonymous shared mapping inherited by a forked worker, or a named shared memory block
    a spawned worker attaches to."""

    def __init__(self, method: str) -> None:
        from rswaitress import _core

        self.size = int(_core.METRICS_SIZE)
        self.method = method
        self.mapping: Any
        self.name: str | None = None
        if method == "fork":
            import mmap

            self.mapping = mmap.mmap(-1, self.size)
        else:
            from multiprocessing import shared_memory

            self.mapping = shared_memory.SharedMemory(create=True, size=self.size)
            self.name = self.mapping.name

    def _buffer(self) -> Any:
        return self.mapping if self.method == "fork" else self.mapping.buf

    def view(self) -> tuple[int, int, object]:
        """(address, size, keep) for the core: ``keep`` holds the mapping (and a ctypes
        view of it, which also stops the mapping from being closed while in use)."""
        import ctypes

        array = (ctypes.c_char * self.size).from_buffer(self._buffer())
        return ctypes.addressof(array), self.size, (self.mapping, array)

    def clear(self) -> None:
        """Zeroes the block for a new worker (its counters start again)."""
        self._buffer()[: self.size] = bytes(self.size)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned worker gets the name of the block and attaches to it.
        return {"size": self.size, "method": self.method, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from multiprocessing import shared_memory

        self.size, self.method, self.name = state["size"], state["method"], state["name"]
        # (A spawned worker shares its master's resource tracker, which the master's own
        # unlink at its end keeps in order: nothing to unregister here.)
        self.mapping = shared_memory.SharedMemory(name=self.name)

    def close(self) -> None:
        try:
            self.mapping.close()
            if self.method != "fork":
                self.mapping.unlink()
        except (OSError, BufferError):
            pass


class _Boot:
    """What a worker needs to start serving."""

    def __init__(self, app: Any, adj: Adjustments,
                 listening: list[tuple[socket.socket, str, str, bool]], control: Any,
                 generation: int, configure_logging: bool, close_in_child: list[Any],
                 metrics: _MetricsBlock | None = None) -> None:
        self.app = app
        self.adj = adj
        self.listening = listening
        self.control = control
        self.generation = generation
        self.configure_logging = configure_logging
        self.metrics = metrics
        #: Descriptors of the master's that a forked worker must not keep (pipes of the
        #: other workers, the master's wakeup socket): not sent to spawned workers.
        self.close_in_child = close_in_child

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["close_in_child"] = []
        return state


def _ignore_master_signals() -> None:
    for name in ("SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError):
                pass
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # run() installs its drain handler
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass


def _worker_main(boot: _Boot) -> None:
    """The body of a worker process."""
    _ignore_master_signals()
    for each in boot.close_in_child:
        try:
            each.close()
        except OSError:
            pass
    if boot.configure_logging:
        logging.basicConfig()
        if logging.getLogger("rswaitress").level == logging.NOTSET:
            logging.getLogger("rswaitress").setLevel(logging.INFO)
    control = boot.control
    try:
        app = boot.app.load() if isinstance(boot.app, AppRef) else boot.app
        from rswaitress.server import BaseWSGIServer, _Listening

        listening = [_Listening(sock, host, port, is_unix)
                     for sock, host, port, is_unix in boot.listening]
        block = boot.metrics.view() if boot.metrics is not None else None
        server = BaseWSGIServer(app, boot.adj, listening, _metrics_block=block)
    except BaseException as exc:
        if isinstance(boot.app, AppRef):
            from rswaitress.runner import describe_import_failure

            print(f"Error: {exc}", file=sys.stderr)
            describe_import_failure(sys.stderr, exc)
        logger.exception("Worker %d failed to boot", os.getpid())
        sys.stderr.flush()
        os._exit(BOOT_ERROR)

    def on_stop() -> None:
        if server._core.recycling:
            _send(control, b"recycle")

    server.on_stop.append(on_stop)

    def listen_to_master() -> None:
        while True:
            try:
                message = control.recv_bytes()
            except (EOFError, OSError):
                logger.warning("Worker %d: the master is gone; stopping", os.getpid())
                server.close()
                return
            if message == b"stop":
                server.close()
            elif message == b"abort":
                server._core.abort()

    threading.Thread(target=listen_to_master, name="rswaitress-master-link", daemon=True).start()
    _send(control, b"ready")
    server.run()
    sys.stdout.flush()
    sys.stderr.flush()


def _send(conn: Any, message: bytes) -> None:
    try:
        conn.send_bytes(message)
    except (OSError, ValueError):
        pass


class _Worker:
    """The master's record of one worker process."""

    def __init__(self, process: Any, control: Any, generation: int, slot: str) -> None:
        self.process = process
        self.control = control
        self.generation = generation
        #: The worker's metrics slot (the `worker` label).
        self.slot = slot
        self.started = time.monotonic()
        self.ready_at: float | None = None
        #: Told to drain (retired by a reload, a recycle, a scale-down or a stop): its
        #: exit is expected and not replaced.
        self.retiring = False

    @property
    def pid(self) -> int:
        return int(self.process.pid)


class Supervisor:
    """The master of a server with worker processes. It has the attributes Waitress users
    read off a server (``run()``, ``close()``, ``print_listen()``, ``effective_host``,
    ``effective_port``, ``socket``, ``adj``)."""

    def __init__(self, application: Any, adj: Adjustments, listening: list[_Listening]) -> None:
        if application is None:
            raise ValueError(
                'The "app" passed to ``create_server`` was ``None``.  You forgot '
                "to return a WSGI app within your application."
            )
        self.application = application
        self.adj = adj
        self._listening = listening
        self.server_name = adj.server_name
        self._method = _start_method()
        if self._method == "spawn":
            self.application = _importable(application)
        self._context: Any = multiprocessing.get_context(self._method)
        self._workers: dict[int, _Worker] = {}
        self._target = adj.workers
        self._generation = 1
        self._ever_ready = False
        self._failures = 0
        self._next_spawn = 0.0
        self._stopping = False
        self._aborting = False
        self._stop_deadline: float | None = None
        self._lock = threading.Lock()
        self._requests: list[str] = []  # stop, abort, reload, more, fewer (from signals, close())
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closed = False
        self._running = False
        self._configure_logging = logging.getLogger("rswaitress").level != logging.NOTSET
        self._reload_mtime = self._touch_mtime()
        # Metrics: the master's listener, and a shared block per worker slot.
        self._metrics: Any = None
        self._metrics_listening: _Listening | None = None
        self._blocks: dict[str, _MetricsBlock] = {}
        self._starts: dict[str, int] = {}
        self._free_slots: list[str] = []
        if adj.metrics_address is not None:
            from rswaitress.server import _tcp_listening

            self._metrics_listening = _tcp_listening(adj.metrics_address, adj)

    # --- what a server object offers ---------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        return self._listening[0].socket

    @property
    def effective_host(self) -> str:
        return self._listening[0].effective_host

    @property
    def effective_port(self) -> str:
        return self._listening[0].effective_port

    @property
    def effective_listen(self) -> list[tuple[str, str]]:
        return [(each.effective_host, each.effective_port) for each in self._listening]

    @property
    def family(self) -> AddressFamily:
        return self.socket.family

    @property
    def worker_pids(self) -> list[int]:
        """The pids of the workers alive now (those draining included)."""
        with self._lock:
            return [w.pid for w in self._workers.values()]

    @property
    def metrics_address(self) -> tuple[str, str] | None:
        """(host, port) of the metrics listener, when there is one."""
        if self._metrics_listening is None:
            return None
        return (self._metrics_listening.effective_host, self._metrics_listening.effective_port)

    def print_listen(self, format_str: str) -> None:
        for host, port in self.effective_listen:
            if ":" in host:
                host = f"[{host}]"
            logger.info(format_str.format(host, port))

    def close(self) -> None:
        """Stops a running master gracefully (from any thread), or releases the sockets
        of one that never ran."""
        if self._running:
            self._ask("stop")
        else:
            self._close_sockets()

    def reload(self) -> None:
        """Starts a zero-downtime reload, as SIGHUP does (from any thread)."""
        self._ask("reload")

    def _ask(self, what: str) -> None:
        with self._lock:
            self._requests.append(what)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # --- run ---------------------------------------------------------------------------

    def run(self) -> None:
        """Starts the workers and supervises them until a stop; returns once they have all
        exited (or been killed past the graceful timeout)."""
        if self._closed:
            raise RuntimeError("this server was closed")
        self._running = True
        restore = self._install_signals()
        if self._metrics_listening is not None:
            from rswaitress import _core

            self._metrics = _core.MetricsServer(self._metrics_listening.socket.fileno(), self.adj)
            self._metrics.start()
        try:
            logger.info("Starting %d worker process(es), %d thread(s) each (%s)",
                        self._target, self.adj.threads, self._method)
            self._loop()
        finally:
            for sig, handler in restore:
                signal.signal(sig, handler)
            if restore:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError):
                    pass
            self._kill_all()
            self._close_sockets()
            if self._metrics is not None:
                self._metrics.close()
            if self._metrics_listening is not None:
                self._metrics_listening.socket.close()
            for block in self._blocks.values():
                block.close()
            self._wake_r.close()
            self._wake_w.close()
            self._running = False

    def _install_signals(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        actions = {"SIGTERM": "stop", "SIGINT": "stop", "SIGBREAK": "stop", "SIGHUP": "reload",
                   "SIGTTIN": "more", "SIGTTOU": "fewer"}
        restore = []
        for name, what in actions.items():
            sig = getattr(signal, name, None)
            if sig is None:
                continue

            def handler(signum: int, frame: Any, what: str = what) -> None:
                with self._lock:
                    self._requests.append(what)

            try:
                restore.append((sig, signal.signal(sig, handler)))
            except (OSError, ValueError):
                pass
        try:
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            pass
        return restore

    def _loop(self) -> None:
        while True:
            self._handle_requests()
            self._reap()
            if self._metrics is not None:
                reloading = any(w.generation < self._generation for w in self._workers.values())
                self._metrics.set_master(self._target, not (self._stopping or reloading))
            if self._stopping:
                if not self._workers:
                    logger.info("All workers have exited")
                    return
                self._enforce_deadline()
            else:
                self._check_touch_reload()
                self._reconcile()
            self._wait()

    def _wait(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        objects: list[Any] = [self._wake_r]
        for w in workers:
            objects.append(w.process.sentinel)
            objects.append(w.control)
        timeout = 1.0
        now = time.monotonic()
        if self._next_spawn > now:
            timeout = min(timeout, self._next_spawn - now)
        if self._stop_deadline is not None:
            timeout = min(timeout, max(0.0, self._stop_deadline - now))
        if self.adj.touch_reload:
            timeout = min(timeout, 0.5)
        if os.name == "nt":
            timeout = min(timeout, 0.2)  # Ctrl-C handlers run between waits
        ready = multiprocessing.connection.wait(objects, timeout)
        for obj in ready:
            if obj is self._wake_r:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except OSError:
                    pass
        for w in workers:
            if w.control in ready:
                self._read_messages(w)

    def _read_messages(self, w: _Worker) -> None:
        while True:
            try:
                if not w.control.poll():
                    return
                message = w.control.recv_bytes()
            except (EOFError, OSError):
                return
            if message == b"ready":
                w.ready_at = time.monotonic()
                self._failures = 0
                self._ever_ready = True
                logger.info("Worker %d (generation %d) is serving", w.pid, w.generation)
                self._retire_old_generations()
            elif message == b"recycle":
                if not w.retiring:
                    w.retiring = True
                    logger.info("Worker %d reached max_requests; starting its replacement", w.pid)

    def _handle_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for what in requests:
            if what in ("stop", "abort"):
                if self._stopping or what == "abort":
                    self._abort()
                else:
                    self._begin_stop()
            elif self._stopping:
                continue
            elif what == "reload":
                self._reload("SIGHUP" if not self.adj.touch_reload else "a reload request")
            elif what == "more":
                self._target += 1
                logger.info("Increasing the number of workers to %d", self._target)
            elif what == "fewer":
                if self._target > 1:
                    self._target -= 1
                    logger.info("Decreasing the number of workers to %d", self._target)

    def _begin_stop(self) -> None:
        logger.info("Stopping: the workers finish the requests in progress "
                    "(at most %g s)", self.adj.graceful_timeout)
        self._stopping = True
        # No new connections: the sockets close here, and in each worker as it drains.
        self._close_sockets()
        self._stop_deadline = time.monotonic() + self.adj.graceful_timeout + 1.0
        for w in list(self._workers.values()):
            w.retiring = True
            _send(w.control, b"stop")

    def _abort(self) -> None:
        if self._aborting:
            return
        logger.info("Stopping now")
        self._stopping = self._aborting = True
        self._close_sockets()
        self._stop_deadline = time.monotonic() + _KILL_AFTER
        for w in list(self._workers.values()):
            w.retiring = True
            _send(w.control, b"abort")

    def _enforce_deadline(self) -> None:
        if self._stop_deadline is None or time.monotonic() < self._stop_deadline:
            return
        if not self._aborting:
            logger.warning("Graceful stop timed out; telling %d worker(s) to stop now",
                           len(self._workers))
            self._aborting = True
            self._stop_deadline = time.monotonic() + _KILL_AFTER
            for w in self._workers.values():
                _send(w.control, b"abort")
            return
        self._kill_all()

    def _kill_all(self) -> None:
        for w in list(self._workers.values()):
            if w.process.is_alive():
                logger.warning("Killing worker %d", w.pid)
                w.process.kill()
        for w in list(self._workers.values()):
            w.process.join(5)
            self._forget(w)

    def _reload(self, why: str) -> None:
        if self.adj.ssl_certfile is not None:
            # New workers would fail to start on a certificate that cannot be loaded:
            # the workers serving keep the one they have.
            from rswaitress import _core

            try:
                _core.check_tls(self.adj)
            except ValueError as exc:
                logger.error("Not reloading (%s): %s", why, exc)
                return
        self._generation += 1
        logger.info("Reloading (%s): starting generation %d", why, self._generation)
        # The new generation is started by _reconcile; the old one is retired once all of
        # the new one serves.

    def _check_touch_reload(self) -> None:
        if not self.adj.touch_reload:
            return
        mtime = self._touch_mtime()
        if mtime != self._reload_mtime:
            self._reload_mtime = mtime
            self._reload(f"{self.adj.touch_reload} changed")

    def _touch_mtime(self) -> float | None:
        path = self.adj.touch_reload
        if not path:
            return None
        try:
            return os.stat(path).st_mtime
        except OSError:
            return None

    def _current(self) -> list[_Worker]:
        return [w for w in self._workers.values()
                if w.generation == self._generation and not w.retiring]

    def _retire_old_generations(self) -> None:
        current = self._current()
        if len([w for w in current if w.ready_at is not None]) < self._target:
            return
        for w in self._workers.values():
            if w.generation < self._generation and not w.retiring:
                w.retiring = True
                _send(w.control, b"stop")

    def _reconcile(self) -> None:
        """Starts workers until the current generation has the target number (after the
        crash back-off), and retires the newest extra ones after a scale-down."""
        current = self._current()
        extra = len(current) - self._target
        for w in sorted(current, key=lambda w: w.started, reverse=True)[:max(0, extra)]:
            w.retiring = True
            _send(w.control, b"stop")
        missing = self._target - len(current)
        while missing > 0 and time.monotonic() >= self._next_spawn:
            if not self._spawn():
                break
            missing -= 1
        self._retire_old_generations()

    def _spawn(self) -> bool:
        master_end, worker_end = self._context.Pipe(duplex=True)
        adj = copy.copy(self.adj)
        adj.sockets = []
        if adj.max_requests and adj.max_requests_jitter:
            adj.max_requests += random.randint(0, adj.max_requests_jitter)
        listening = [(each.socket, each.effective_host, str(each.effective_port), each.is_unix)
                     for each in self._listening]
        others = [w.control for w in self._workers.values()]
        others += [master_end, self._wake_r, self._wake_w]
        if self._metrics_listening is not None:
            others.append(self._metrics_listening.socket)
        slot, block = self._take_slot()
        boot = _Boot(self.application, adj, listening, worker_end, self._generation,
                     self._configure_logging, others, block)
        process = self._context.Process(target=_worker_main, args=(boot,),
                                        name=f"rswaitress-worker-g{self._generation}")
        try:
            process.start()
        except OSError as exc:
            logger.error("Could not start a worker process: %s", exc)
            master_end.close()
            worker_end.close()
            self._free_slots.append(slot)
            self._back_off()
            return False
        worker_end.close()
        w = _Worker(process, master_end, self._generation, slot)
        with self._lock:
            self._workers[w.pid] = w
        logger.info("Booting worker %d (generation %d)", w.pid, w.generation)
        return True

    def _take_slot(self) -> tuple[str, _MetricsBlock | None]:
        """A metrics slot for a new worker (the lowest free one), its block zeroed and
        shown by the master's listener."""
        if self._free_slots:
            self._free_slots.sort(key=int)
            slot = self._free_slots.pop(0)
        else:
            slot = str(len(self._starts))
        self._starts[slot] = self._starts.get(slot, 0) + 1
        if self._metrics is None:
            return slot, None
        block = self._blocks.get(slot)
        if block is None:
            block = self._blocks[slot] = _MetricsBlock(self._method)
        else:
            block.clear()
        address, size, keep = block.view()
        self._metrics.attach(slot, address, size, keep, self._starts[slot] - 1)
        return slot, block

    def _back_off(self) -> None:
        self._failures += 1
        delay = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (self._failures - 1))
        self._next_spawn = time.monotonic() + delay

    def _reap(self) -> None:
        for w in list(self._workers.values()):
            if w.process.is_alive():
                continue
            w.process.join()
            self._read_messages(w)
            self._forget(w)
            reason = _exit_reason(w.process.exitcode)
            if w.retiring or self._stopping:
                logger.info("Worker %d exited (%s)", w.pid, reason)
                continue
            lived = time.monotonic() - (w.ready_at or w.started)
            if w.ready_at is None or lived < _SHORT_LIFE:
                self._back_off()
                stage = "while booting" if w.ready_at is None else f"{lived:.1f} s after booting"
                logger.error("Worker %d died %s (%s); next attempt in %.1f s",
                             w.pid, stage, reason, self._next_spawn - time.monotonic())
                if not self._ever_ready and w.generation == 1 and w.process.exitcode == BOOT_ERROR:
                    self._begin_stop()
                    raise WorkerBootError(f"worker {w.pid} could not boot ({reason})")
            else:
                logger.warning("Worker %d died (%s); replacing it", w.pid, reason)

    def _forget(self, w: _Worker) -> None:
        with self._lock:
            if self._workers.pop(w.pid, None) is None:
                return
        if self._metrics is not None:
            self._metrics.detach(w.slot)
        self._free_slots.append(w.slot)
        try:
            w.control.close()
        except OSError:
            pass

    def _close_sockets(self) -> None:
        if self._closed:
            return
        self._closed = True
        for each in self._listening:
            each.socket.close()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by {name}"
    if code == BOOT_ERROR:
        return "boot error"
    return f"exit status {code}"
