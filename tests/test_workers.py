"""Worker processes and their master (``workers=N``), over real processes and sockets.

The master runs in a child process (``serve(app, workers=N)``, or ``rswaitress-serve``
when the application is given by import path); its log lines (stderr) say which worker
pids boot, serve and exit. Each answer of ``apps.worker_info`` names the pid that served
it.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from helpers import WAIT
from procs import PythonChild, stop_processes
from rawhttp import wait_until

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

_MASTER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import apps, rswaitress
spec = json.loads(sys.argv[2])
if __name__ == "__main__":
    rswaitress.serve(getattr(apps, spec["app"]), **spec["kw"])
    print("SERVE RETURNED", flush=True)
"""


class Master(PythonChild):
    """A master process: ``port``, and its stderr lines (the log) read as they come."""

    def __init__(self, app="worker_info", env=None, **kw):
        kw.setdefault("listen", "127.0.0.1:0")
        super().__init__(_MASTER, TESTS_DIR, json.dumps({"app": app, "kw": kw}), env=env)
        line = self.stderr.wait_for(lambda line: "Serving on http" in line)
        self.port = int(line.rsplit(":", 1)[1])

    def wait_log(self, text, count=1):
        """Waits until ``count`` lines containing ``text`` have been logged; returns them."""
        found = [line for line in self.stderr.seen if text in line]
        while len(found) < count:
            found.append(self.stderr.wait_for(lambda line: text in line))
        return found

    def serving(self, count):
        """The pids of the first ``count`` "is serving" lines."""
        lines = self.wait_log("is serving", count)
        return [int(line.split("Worker ")[1].split()[0]) for line in lines]

    def get(self, path="/"):
        return get(self.port, path)


def get(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture
def master():
    started = []

    def factory(**kw):
        m = Master(**kw)
        started.append(m)
        return m

    yield factory
    for m in started:
        if m.proc.poll() is None:
            m.proc.kill()
    stop_processes([m.proc for m in started])


class Load:
    """Clients on keep-alive connections sending requests in a loop until stopped;
    ``pids`` answered, ``failures`` (anything but a 200 with a JSON body). ``sent``
    counts requests as they are sent; each answer is kept with its request's number."""

    def __init__(self, port, clients=4, path="/"):
        self.port = port
        self.path = path
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.pids = []
        self.failures = []
        self.count = 0
        self.sent = 0
        self.answers = []  # (request number, pid)
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        while not self.stop.is_set():
            with self.lock:
                number = self.sent
                self.sent += 1
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise AssertionError(f"status {resp.status}: {body!r}")
                pid = json.loads(body)["pid"]
                with self.lock:
                    self.pids.append(pid)
                    self.answers.append((number, pid))
                    self.count += 1
                if resp.will_close:
                    conn.close()
            except Exception as e:  # every failure is reported by the test
                with self.lock:
                    self.failures.append(repr(e))
                conn.close()
        conn.close()

    def answered_after(self, n):
        """The pids that answered requests sent after the first ``n``."""
        with self.lock:
            return {pid for number, pid in self.answers if number >= n}

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(WAIT)


def test_workers_serve_with_multiprocess_set(master):
    m = master(workers=2)
    pids = m.serving(2)
    assert len(set(pids)) == 2 and m.proc.pid not in pids
    status, info = m.get()
    assert status == 200
    assert info["multiprocess"] is True
    assert info["pid"] in pids, "the master never runs the application"
    # One "Serving on" line, from the master.
    assert len([line for line in m.stderr.seen if "Serving on" in line]) == 1


@pytest.mark.posix_signals
def test_a_crashed_worker_is_replaced(master):
    m = master(workers=2)
    first = m.serving(2)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        m.get("/crash")
    died = m.wait_log("died")[0]
    assert "exit status 17" in died
    crashed = int(died.split("Worker ")[1].split()[0])
    assert crashed in first and not alive(crashed)
    replacement = m.serving(3)[2]
    assert replacement not in first
    # The next requests succeed, on new connections each, whichever worker takes them.
    for _ in range(20):
        status, info = m.get()
        assert status == 200 and info["pid"] != crashed


@pytest.mark.posix_signals
def test_sighup_under_load_replaces_every_worker_without_a_failed_request(master):
    m = master(workers=2)
    old = set(m.serving(2))
    load = Load(m.port, clients=4)
    try:
        assert wait_until(lambda: load.count >= 200)
        m.proc.send_signal(signal.SIGHUP)
        new = set(m.serving(4)[2:])
        assert not new & old
        for pid in old:
            m.wait_log(f"Worker {pid} exited")
        mark = load.sent
        assert wait_until(lambda: load.count >= mark + 200)
        # Once the old workers are gone, every request sent is answered by a new one
        # (answers to earlier requests may still be on their way to the clients).
        assert load.answered_after(mark) <= new
    finally:
        load.finish()
    assert load.failures == []
    assert not any(alive(p) for p in old)


@pytest.mark.posix_signals
def test_sigterm_lets_requests_in_flight_finish(master):
    m = master(workers=2, threads=2)
    m.serving(2)
    results = []

    def slow():
        results.append(get(m.port, "/slow?s=1"))

    clients = [threading.Thread(target=slow) for _ in range(4)]
    for t in clients:
        t.start()
    # The four requests are in the applications (2 workers x 2 threads) before the signal.
    for _ in range(4):
        m.stdout.wait_for(lambda line: line == "SLOW")
    m.proc.send_signal(signal.SIGTERM)
    m.wait_log("Stopping")
    # New connections are refused once the stop has begun (sockets closed everywhere).
    assert wait_until(lambda: _refused(m.port))
    for t in clients:
        t.join(WAIT)
    assert [status for status, _ in results] == [200] * 4
    assert m.proc.wait(WAIT) == 0
    m.stdout.wait_for(lambda line: line == "SERVE RETURNED")


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.posix_signals
def test_max_requests_recycles_workers_without_a_failed_request(master):
    m = master(workers=2, max_requests=40, max_requests_jitter=10)
    first = set(m.serving(2))
    load = Load(m.port, clients=4)
    try:
        assert wait_until(lambda: load.count >= 400)
    finally:
        load.finish()
    assert load.failures == []
    assert m.wait_log("reached max_requests")
    assert set(load.pids) - first, "no replacement served"
    assert wait_until(lambda: not any(alive(p) for p in first)), "recycled workers still running"


@pytest.mark.posix_signals
def test_no_worker_outlives_a_killed_master(master):
    m = master(workers=2)
    pids = m.serving(2)
    m.proc.kill()
    m.proc.wait(WAIT)
    assert wait_until(lambda: not any(alive(p) for p in pids)), "orphaned workers"


@pytest.mark.posix_signals
def test_ttin_and_ttou_add_and_remove_a_worker(master):
    m = master(workers=2)
    first = m.serving(2)
    m.proc.send_signal(signal.SIGTTIN)
    added = m.serving(3)[2]
    assert added not in first
    m.wait_log("Increasing the number of workers to 3")
    m.proc.send_signal(signal.SIGTTOU)
    m.wait_log("Decreasing the number of workers to 2")
    # The newest worker is the one retired.
    m.wait_log(f"Worker {added} exited")
    assert all(alive(p) for p in first)
    assert m.get()[0] == 200


def _cli(tmp_path, *args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "rswaitress", "--listen=127.0.0.1:0", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.posix_signals
def test_reload_by_import_path_runs_new_code(tmp_path):
    module = tmp_path / "versioned.py"
    module.write_text(_VERSIONED.format(version=1))
    proc = _cli(tmp_path, "--workers=2", "versioned:app")
    from procs import Lines

    err = Lines(proc.stderr, "stderr")
    try:
        port = int(err.wait_for(lambda line: "Serving on" in line).rsplit(":", 1)[1])
        err.wait_for(lambda line: "is serving" in line)
        assert get(port)[1]["version"] == 1
        module.write_text(_VERSIONED.format(version=2))
        proc.send_signal(signal.SIGHUP)
        err.wait_for(lambda line: "generation 2) is serving" in line)
        assert wait_until(lambda: get(port)[1]["version"] == 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        stop_processes([proc])


_VERSIONED = '''
import json, os
VERSION = {version}
def app(environ, start_response):
    body = json.dumps({{"pid": os.getpid(), "version": VERSION}}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''


def test_an_application_that_cannot_boot_stops_the_master(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('cannot start')\napp = None\n")
    proc = _cli(tmp_path, "--workers=2", "broken:app")
    try:
        out, err = proc.communicate(timeout=WAIT)
    finally:
        stop_processes([proc])
    assert proc.returncode == 1
    text = err.decode()
    assert "cannot start" in text
    assert "while booting (boot error)" in text


def test_a_missing_module_fails_at_once(tmp_path):
    proc = _cli(tmp_path, "--workers=2", "no_such_module:app")
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 1
    assert "No module named 'no_such_module'" in err.decode()
    assert "Booting worker" not in err.decode()


def test_spawned_workers_as_on_windows(master):
    """Workers started the way Windows starts them (spawned, the application imported by
    name, the sockets passed to each): serve, then stop on request."""
    m = master(workers=2, env={"RSWAITRESS_WORKER_START": "spawn"})
    pids = m.serving(2)
    assert "(spawn)" in m.wait_log("Starting 2 worker process(es)")[0]
    status, info = m.get()
    assert status == 200 and info["pid"] in pids
    _graceful_stop(m.proc)
    assert m.proc.wait(WAIT) == 0


def test_touch_reload(master, tmp_path):
    trigger = tmp_path / "reload.trigger"
    trigger.write_text("")
    m = master(workers=1, touch_reload=str(trigger))
    first = m.serving(1)[0]
    st = os.stat(trigger)
    os.utime(trigger, (st.st_atime + 5, st.st_mtime + 5))
    second = m.serving(2)[1]
    assert second != first
    m.wait_log(f"Worker {first} exited")
    assert m.get()[1]["pid"] == second
    _graceful_stop(m.proc)
    assert m.proc.wait(WAIT) == 0


def _graceful_stop(proc):
    if sys.platform == "win32":
        proc.send_signal(signal.CTRL_BREAK_EVENT)
    else:
        proc.send_signal(signal.SIGTERM)
