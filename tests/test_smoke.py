"""The smoke subset: a handful of fast end-to-end checks that the installed package works
on a given Python. `.ci/run` installs the built wheel into a fresh virtualenv for every
CPython it finds and runs ``python -m pytest -m smoke tests/test_smoke.py`` there, so
these tests need nothing but the standard library, pytest and rswaitress itself.

They cover create_server and serve(), keep-alive, a POST, a chunked request body, a
chunked response, wsgi.file_wrapper and the command line, including the way the
example Dockerfile runs it (rswaitress-serve as the entry point, stopped by SIGTERM after
finishing the request in progress).
"""

import hashlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import threading

import pytest

import rswaitress
from helpers import WAIT  # a guard against a hang, not a speed requirement


class Child:
    """A child process whose stdout and stderr are read line by line by threads, so that
    a test can wait for a line without losing any (select() on a buffered pipe can miss
    lines that arrived together)."""

    def __init__(self, argv, **popen):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, **popen,
        )
        self.lines = {"stdout": [], "stderr": []}
        self._next = {"stdout": 0, "stderr": 0}  # where wait_for_line goes on from
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True)
            for name in self.lines
        ]
        for t in self._readers:
            t.start()

    @property
    def pid(self):
        return self.proc.pid

    def _read(self, name):
        for raw in getattr(self.proc, name):
            with self._changed:
                self.lines[name].append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines[name].append(None)  # end of stream
            self._changed.notify_all()

    def wait_for_line(self, predicate, stream="stderr", timeout=WAIT):
        """The next line of ``stream`` (after those already returned or passed over)
        that satisfies ``predicate``."""
        with self._changed:
            while True:
                lines = self.lines[stream]
                while self._next[stream] < len(lines):
                    line = lines[self._next[stream]]
                    if line is None:
                        raise AssertionError(f"{stream} ended; it said {self.text(stream)!r}")
                    self._next[stream] += 1
                    if predicate(line):
                        return line
                if not self._changed.wait(timeout):
                    raise AssertionError(f"no such line on {stream}; got {self.text(stream)!r}")

    def wait_exit(self, timeout=WAIT):
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        return code

    def text(self, stream="stderr"):
        with self._changed:
            return "\n".join(line for line in self.lines[stream] if line is not None)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait_exit()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def serving_port(child):
    line = child.wait_for_line(lambda line: "Serving on http://" in line)
    return int(line.rsplit(":", 1)[1])


def stop_gracefully(child):
    """What ``docker stop`` and ``systemctl stop`` do first (SIGTERM on POSIX)."""
    if sys.platform == "win32":
        child.proc.kill()
        child.wait_exit()
        return None
    child.proc.send_signal(signal.SIGTERM)
    return child.wait_exit()


@pytest.fixture
def children():
    started = []

    def start(argv, **popen):
        c = Child(argv, **popen)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def server():
    """``server(app, **kw)`` -> (host, port) of create_server(app, **kw) running in a
    thread of this process, on 127.0.0.1 and a free port; stopped at teardown."""
    running = []

    def start(app, **kw):
        srv = rswaitress.create_server(app, host="127.0.0.1", port=0, **kw)
        t = threading.Thread(target=srv.run, daemon=True)
        t.start()
        running.append((srv, t))
        return srv.effective_host, int(srv.effective_port)

    yield start
    for srv, t in running:
        srv.close()
        t.join(WAIT)
        assert not t.is_alive(), "run() did not return after close()"


def hello(environ, start_response):
    body = b"Hello from " + environ["SERVER_SOFTWARE"].encode() + b"\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def digest(environ, start_response):
    """Reads the whole body and answers with its length and sha256."""
    data = environ["wsgi.input"].read()
    body = f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    start_response("200 OK", [("Content-Length", str(len(body))),
                              ("X-Content-Length", environ.get("CONTENT_LENGTH", "-"))])
    return [body]


def get(addr, path="/", **kw):
    conn = http.client.HTTPConnection(*addr, timeout=WAIT)
    try:
        conn.request("GET", path, **kw)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


pytestmark = pytest.mark.smoke


def test_create_server_serves(server):
    addr = server(hello)
    status, headers, body = get(addr)
    assert status == 200
    assert body == b"Hello from rswaitress\n"
    assert headers["Server"] == "rswaitress"


def test_serve_in_a_process(children, tmp_path):
    code = textwrap.dedent("""
        import sys
        from rswaitress import serve

        def app(environ, start_response):
            start_response("200 OK", [("Content-Length", "3")])
            return [b"ok\\n"]

        serve(app, listen="127.0.0.1:0", threads="2")
    """)
    c = children([sys.executable, "-c", code])
    port = serving_port(c)
    assert get(("127.0.0.1", port))[2] == b"ok\n"
    if sys.platform != "win32":
        assert stop_gracefully(c) == 0


def test_keep_alive(server):
    addr = server(hello)
    conn = http.client.HTTPConnection(*addr, timeout=WAIT)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        assert first.read() == b"Hello from rswaitress\n"
        sock = conn.sock
        for _ in range(3):
            conn.request("GET", "/again")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"Hello from rswaitress\n"
            assert conn.sock is sock  # the same connection each time
    finally:
        conn.close()


def test_post_body(server):
    addr = server(digest)
    data = os.urandom(300_000)
    conn = http.client.HTTPConnection(*addr, timeout=WAIT)
    try:
        conn.request("POST", "/upload", body=data,
                     headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        assert r.status == 200
        assert r.read().decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    finally:
        conn.close()


def test_chunked_request_body(server):
    addr = server(digest)
    pieces = [b"a" * 10, b"b" * 70_000, b"c"]
    conn = http.client.HTTPConnection(*addr, timeout=WAIT)
    try:
        conn.request("POST", "/", body=iter(pieces), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        data = b"".join(pieces)
        assert r.read().decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
        # As in Waitress, the application sees the decoded body and its length.
        assert r.getheader("X-Content-Length") == str(len(data))
    finally:
        conn.close()


def test_chunked_response(server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"piece %d\n" % i for i in range(100))

    status, headers, body = get(server(app))
    assert status == 200
    assert headers.get("Transfer-Encoding") == "chunked"
    assert body == b"".join(b"piece %d\n" % i for i in range(100))


def test_file_wrapper(server, tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom(1 << 20)
    path.write_bytes(data)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 65536)

    status, headers, body = get(server(app))
    assert status == 200
    assert headers["Content-Length"] == str(len(data))
    assert body == data


# --- the command line -----------------------------------------------------------------

_CLI_APP = """
import os, time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        # Tells the test it is running, then waits to be released.
        open(os.environ["SMOKE_ENTERED"], "w").close()
        while not os.path.exists(os.environ["SMOKE_RELEASE"]):
            time.sleep(0.01)
    body = b"served " + environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def rswaitress_serve():
    """The rswaitress-serve console script of this interpreter's installation."""
    name = "rswaitress-serve.exe" if sys.platform == "win32" else "rswaitress-serve"
    path = os.path.join(sysconfig.get_path("scripts"), name)
    if not os.path.exists(path):
        pytest.skip(f"no {name} beside this Python")
    return path


@pytest.fixture
def cli_app(tmp_path):
    (tmp_path / "cliapp.py").write_text(_CLI_APP)
    env = dict(os.environ,
               SMOKE_ENTERED=str(tmp_path / "entered"),
               SMOKE_RELEASE=str(tmp_path / "release"))
    return tmp_path, env


def test_cli_serves(children, cli_app):
    cwd, env = cli_app
    c = children([rswaitress_serve(), "--listen=127.0.0.1:0", "--threads=2", "cliapp:app"],
                 cwd=str(cwd), env=env)
    port = serving_port(c)
    status, headers, body = get(("127.0.0.1", port), "/x")
    assert (status, body) == (200, b"served /x")
    assert headers["Server"] == "rswaitress"
    if sys.platform != "win32":
        assert stop_gracefully(c) == 0


def drain_in_flight(c, env, server_pid, port):
    """With ``c`` serving cliapp:app: sends a request that blocks in the application,
    sends SIGTERM to ``server_pid`` while it is in flight, then lets it finish. The
    response must arrive whole and the process exit 0."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", "/slow")
        pause = threading.Event()  # never set: its wait() is a sleep
        while not os.path.exists(env["SMOKE_ENTERED"]):  # the application runs it now
            assert c.proc.poll() is None, c.text()
            pause.wait(0.01)
        os.kill(server_pid, signal.SIGTERM)
        # Give the server a few of its signal checks (every 0.1 s) to take the signal in
        # while the request is still running; the outcome must be the same either way.
        pause.wait(0.5)
        assert c.proc.poll() is None, "the server exited with a request in flight"
        open(env["SMOKE_RELEASE"], "w").close()
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"served /slow")
    finally:
        conn.close()
    assert c.wait_exit() == 0
    assert "Traceback" not in c.text(), c.text()


@pytest.mark.posix_signals
def test_cli_sigterm_finishes_in_flight_request(children, cli_app):
    """rswaitress-serve run as the example Dockerfile's exec-form ENTRYPOINT runs it:
    the console script itself is the process that `docker stop` signals."""
    cwd, env = cli_app
    c = children([rswaitress_serve(), "--listen=127.0.0.1:0", "--threads=2", "cliapp:app"],
                 cwd=str(cwd), env=env)
    drain_in_flight(c, env, c.pid, serving_port(c))


def _pid_namespaces_usable():
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "true"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@pytest.mark.posix_signals
@pytest.mark.procfs
@pytest.mark.skipif(not _pid_namespaces_usable(), reason="needs unshare --pid (Linux, root)")
def test_cli_as_pid_1_sigterm_finishes_in_flight_request(children, cli_app):
    """As in a container: rswaitress-serve is PID 1 of its own PID namespace, where the
    kernel drops every signal that has no handler installed. SIGTERM, sent from the
    parent namespace as ``docker stop`` does, must still drain and exit 0."""
    cwd, env = cli_app
    argv = ["unshare", "--pid", "--fork", "--kill-child",
            rswaitress_serve(), "--listen=127.0.0.1:0", "--threads=2", "cliapp:app"]
    c = children(argv, cwd=str(cwd), env=env)
    port = serving_port(c)
    # The server is unshare's only child: that is the process to signal.
    with open(f"/proc/{c.pid}/task/{c.pid}/children") as f:
        (server_pid,) = [int(p) for p in f.read().split()]
    with open(f"/proc/{server_pid}/status") as f:
        nspid = [line.split()[1:] for line in f if line.startswith("NSpid:")][0]
    assert nspid[-1] == "1", nspid  # PID 1 inside its namespace
    drain_in_flight(c, env, server_pid, port)  # unshare exits with its child's status


# --- the example Dockerfile -------------------------------------------------------------

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def dockerfile_runtime_stage():
    """The instructions of the last stage of examples/Dockerfile, as {NAME: [args...]}
    (continuation lines joined, comments dropped)."""
    path = os.path.join(EXAMPLES, "Dockerfile")
    if not os.path.exists(path):
        pytest.skip("examples/Dockerfile is not beside the tests")
    logical, pending = [], ""
    for raw in open(path, encoding="utf-8"):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages = []
    for line in logical:
        name, _, args = line.partition(" ")
        if name.upper() == "FROM":
            stages.append({})
        stages[-1].setdefault(name.upper(), []).append(args.strip())
    return stages[-1]


def test_dockerfile_entrypoint_serves_and_stops_on_sigterm(children, tmp_path):
    """The runtime stage: python:3.12-slim, a non-root user, SIGTERM as the stop signal,
    and rswaitress-serve in exec form. Its ENTRYPOINT + CMD, run here as the container
    runs them (on loopback instead of 0.0.0.0:8080, from a directory holding what the
    Dockerfile copies to WORKDIR), serve and stop cleanly on SIGTERM."""
    import json

    stage = dockerfile_runtime_stage()
    assert stage["FROM"] == ["python:3.12-slim"]
    (user,) = stage["USER"]
    assert user.split(":")[0] not in ("root", "0"), user
    assert stage["STOPSIGNAL"] == ["SIGTERM"]
    entrypoint = json.loads(stage["ENTRYPOINT"][0])  # exec form: a JSON array
    cmd = json.loads(stage["CMD"][0])
    assert entrypoint[0] == "rswaitress-serve"
    assert "--listen=0.0.0.0:8080" in entrypoint
    for copy in stage["COPY"]:
        source, _dest = copy.split()
        shutil.copy(os.path.join(os.path.dirname(EXAMPLES), source), tmp_path)
    argv = [rswaitress_serve()] + [
        "--listen=127.0.0.1:0" if arg == "--listen=0.0.0.0:8080" else arg
        for arg in entrypoint[1:]
    ] + cmd
    c = children(argv, cwd=str(tmp_path))
    status, _, body = get(("127.0.0.1", serving_port(c)))
    assert (status, body) == (200, b"Hello, World!\n")
    if sys.platform != "win32":
        assert stop_gracefully(c) == 0
        assert "Traceback" not in c.text(), c.text()


FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded CPython (3.13t, 3.14t)")
def test_gil_stays_disabled_while_serving(children):
    """A free-threaded interpreter keeps the GIL off after importing the core and serving
    requests on several pool threads at once: the extension declares itself
    GIL-independent (an undeclared extension would turn the GIL back on at import, with
    a RuntimeWarning). Run in a fresh interpreter with PYTHON_GIL unset."""
    code = textwrap.dedent("""
        import http.client, sys, threading
        import rswaitress

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(sys._is_gil_enabled()).encode()]

        srv = rswaitress.create_server(app, host="127.0.0.1", port=0, threads=4)
        t = threading.Thread(target=srv.run, daemon=True)
        t.start()
        answers = []

        def client():
            conn = http.client.HTTPConnection("127.0.0.1", int(srv.effective_port), timeout=30)
            for _ in range(20):
                conn.request("GET", "/")
                answers.append(conn.getresponse().read())
            conn.close()

        clients = [threading.Thread(target=client) for _ in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        srv.close()
        t.join(30)
        print(sorted(set(answers)), sys._is_gil_enabled())
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    c = children([sys.executable, "-W", "error::RuntimeWarning", "-c", code], env=env)
    assert c.wait_exit() == 0, c.text()
    assert c.text("stdout") == "[b'False'] False", (c.text("stdout"), c.text())
