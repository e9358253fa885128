"""Fixtures that run real servers: rswaitress in-process (a thread runs ``server.run()``),
rswaitress in a subprocess (for signals and ``serve()``), over TCP or a Unix socket, and
Waitress 3.0.2 in-process for side-by-side comparisons.

The raw-socket client and response parser live in ``rawhttp.py``, child processes in
``procs.py``, the platform features and the hang guard (WAIT) in ``helpers.py``; the
test applications in ``apps.py``.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import rswaitress

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from helpers import PLATFORM_FEATURES, WAIT, platform_has  # noqa: E402
from procs import PythonChild  # noqa: E402
from rawhttp import RawClient, parse_response, parse_responses, send_raw, wait_until  # noqa: E402,F401

#: How long a server may take to stop once asked (a guard against a hang).
STOP_TIMEOUT = WAIT


class RunningServer:
    """A server whose run() is going on a daemon thread."""

    def __init__(self, server):
        self.server = server
        self.error = None
        self.thread = threading.Thread(target=self._run, name="test-server", daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.server.run()
        except BaseException as e:  # reported by stop()
            self.error = e

    @property
    def host(self):
        return self.server.effective_host

    @property
    def port(self):
        return int(self.server.effective_port)

    @property
    def addr(self):
        """What rawhttp.connect takes: (host, port), or the Unix socket path."""
        if self.server.family == getattr(socket, "AF_UNIX", None):
            return self.server.effective_port
        return (self.host, self.port)

    def stop(self):
        if self.thread.is_alive():
            self.server.close()
            self.thread.join(STOP_TIMEOUT)
        assert not self.thread.is_alive(), "server.run() did not return after close()"
        if self.error is not None:
            raise self.error


@pytest.fixture
def make_server():
    """``make_server(app, **kw)`` -> RunningServer; TCP on 127.0.0.1 and a free port
    unless ``listen``, ``unix_socket``, ``sockets`` or ``host``/``port`` say otherwise.
    Every server made is stopped at teardown (and must stop)."""
    running = []

    def factory(app, **kw):
        if not {"listen", "unix_socket", "sockets"} & kw.keys():
            kw.setdefault("host", "127.0.0.1")
            kw.setdefault("port", 0)
        server = rswaitress.create_server(app, **kw)
        r = RunningServer(server)
        running.append(r)
        return r

    yield factory
    errors = []
    for r in running:
        try:
            r.stop()
        except BaseException as e:
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def serve_app(make_server):
    """``serve_app(app, **kw)`` -> (host, port): the in-process style in short."""

    def factory(app, **kw):
        return make_server(app, **kw).addr

    return factory


@pytest.fixture
def echo_addr(serve_app):
    import apps

    return serve_app(apps.echo_environ)


@pytest.fixture
def unix_server(make_server, tmp_path, request):
    """``unix_server(app, **kw)`` -> RunningServer listening on tmp_path/"s.sock"
    (for tests marked unix_sockets)."""
    _require_marker(request, "unix_sockets")

    def factory(app, **kw):
        return make_server(app, unix_socket=str(tmp_path / "s.sock"), **kw)

    return factory


@pytest.fixture
def logs(caplog):
    """caplog at INFO for the rswaitress loggers. ``logs.find(text)``: the records so far
    whose message contains ``text``; ``logs.wait(text)`` polls until there is one (the
    Rust core's records reach Python logging a little after the fact)."""
    caplog.set_level(logging.INFO, logger="rswaitress")

    class Logs:
        @staticmethod
        def records(name_prefix="rswaitress"):
            return [r for r in list(caplog.records) if r.name.startswith(name_prefix)]

        @classmethod
        def find(cls, text, name_prefix="rswaitress"):
            return [r for r in cls.records(name_prefix) if text in r.getMessage()]

        @classmethod
        def wait(cls, text, name_prefix="rswaitress", timeout=WAIT):
            wait_until(lambda: cls.find(text, name_prefix), timeout=timeout)
            return cls.find(text, name_prefix)

    return Logs


# --- Waitress 3.0.2, for comparisons ---------------------------------------------------


class _WaitressStopper:
    """Sits in a Waitress socket map; once ``stop`` is set, its readable() (called by the
    loop thread) raises SystemExit, which Waitress's run() takes as the signal to stop."""

    accepting = False

    def __init__(self):
        self.stop = False

    def readable(self):
        if self.stop:
            raise SystemExit(0)
        return False

    def writable(self):
        return False


@pytest.fixture
def waitress_server():
    """``waitress_server(app, **kw)`` -> (host, port) (or the Unix socket path) of a
    Waitress 3.0.2 server running in a thread (stopped at teardown)."""
    waitress = pytest.importorskip("waitress")
    started = []

    def factory(app, **kw):
        if "unix_socket" not in kw:
            kw.setdefault("host", "127.0.0.1")
            kw.setdefault("port", 0)
        kw.setdefault("threads", 2)
        kw.setdefault("asyncore_loop_timeout", 0.05)
        server = waitress.create_server(app, **kw)
        stopper = _WaitressStopper()
        server._map[-1] = stopper
        t = threading.Thread(target=server.run, daemon=True)
        t.start()
        started.append((server, stopper, t))
        if "unix_socket" in kw:
            return server.effective_port
        return (server.effective_host, int(server.effective_port))

    yield factory
    for server, stopper, t in started:
        stopper.stop = True
        t.join(STOP_TIMEOUT)
        assert not t.is_alive(), "the Waitress server did not stop"
        server._map.pop(-1, None)
        for ch in list(server._map.values()):
            ch.close()


# --- rswaitress in a subprocess --------------------------------------------------------

_RUNNER = r"""
import faulthandler, json, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # stack dump for a hung child
sys.path.insert(0, sys.argv[1])
spec = json.loads(sys.argv[2])
import apps, rswaitress
app = getattr(apps, spec["app"])
kw = spec["kw"]
if spec.get("serve"):
    rswaitress.serve(app, **kw)
else:
    server = rswaitress.create_server(app, **kw)
    print("PORT", server.effective_port, flush=True)
    server.run()
print("RUN RETURNED", flush=True)
"""


class SubprocessServer(PythonChild):
    """_RUNNER in a child process: ``proc``, ``stdout`` and ``stderr`` (procs.Lines),
    ``addr`` once started."""

    def __init__(self, spec):
        super().__init__(_RUNNER, TESTS_DIR, spec)
        self.port = None
        self.host = "127.0.0.1"
        self.unix_socket = None

    @property
    def addr(self):
        if self.unix_socket:
            return self.unix_socket
        return (self.host, self.port)

    def wait_for_line(self, predicate, stream="stdout", timeout=WAIT):
        """Reads lines of ``stream`` until one satisfies ``predicate``; returns it."""
        return getattr(self, stream).wait_for(predicate, timeout)

    def wait_exit(self, timeout=WAIT):
        """Waits for the child to exit and returns its code; if it does not, fails with
        a dump of its threads' stacks."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            self.proc.kill()
            self.proc.wait(5)
            err = self.stderr.rest().decode("utf-8", "replace")
            raise AssertionError(f"server process still running after {timeout}s; "
                                 f"stacks:\n{err[-6000:]}") from None


@pytest.fixture
def subprocess_server(request):
    """``subprocess_server(app_name, serve=False, **kw)`` -> SubprocessServer with
    ``port`` known. With ``serve=True`` the child calls ``rswaitress.serve()`` and the
    port is read off its "Serving on" log line (stderr); otherwise it calls
    create_server, prints "PORT n" and runs. For tests marked posix_signals: the
    tests signal the child, and the child dumps its stacks on SIGUSR1."""
    _require_marker(request, "posix_signals")
    procs = []

    def factory(app_name, serve=False, **kw):
        if "unix_socket" not in kw:
            kw.setdefault("host", "127.0.0.1")
            kw.setdefault("port", 0)
        s = SubprocessServer(json.dumps({"app": app_name, "kw": kw, "serve": serve}))
        procs.append(s)
        if serve:
            line = s.wait_for_line(lambda line: "Serving on http://" in line, "stderr")
            s.serving_line = line
            s.port = int(line.rsplit(":", 1)[1])
        else:
            line = s.wait_for_line(lambda line: line.startswith("PORT "))
            if "unix_socket" in kw:
                s.unix_socket = line.split(" ", 1)[1]
            else:
                s.port = int(line.split()[1])
        return s

    yield factory
    for s in procs:
        s.stop()


@pytest.fixture
def ipv6_loopback():
    """Skips unless ::1 can be bound here."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
    except OSError:
        pytest.skip("::1 cannot be bound here")
    return "::1"


# --- platform features -----------------------------------------------------------------


def pytest_collection_modifyitems(config, items):
    """Skips the tests marked with a platform feature (helpers.PLATFORM_FEATURES) that
    the platform lacks, or that RSWAITRESS_TESTS_PRETEND_MISSING says to treat as
    missing."""
    try:
        missing = {name: why for name, (_, why) in PLATFORM_FEATURES.items()
                   if not platform_has(name)}
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    if not missing:
        return
    for item in items:
        lacking = [name for name in missing if item.get_closest_marker(name) is not None]
        if lacking:
            what = "; ".join(f"{missing[name]} (marked {name})" for name in lacking)
            item.add_marker(pytest.mark.skip(reason=f"not on this platform: {what}"))


def _require_marker(request, name):
    """Fails a test that uses a fixture needing platform feature ``name`` without
    carrying the marker, so that no such test escapes the platform skips."""
    if request.node.get_closest_marker(name) is None:
        pytest.fail(f"{request.node.nodeid} uses {request.fixturename}, which needs "
                    f"@pytest.mark.{name}", pytrace=False)
