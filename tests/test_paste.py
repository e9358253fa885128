"""rswaitress as a PasteDeploy server: ``use = egg:rswaitress#main`` in a real .ini,
loaded with paste.deploy in a child process, every setting arriving as a string."""

import importlib.metadata
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import WAIT
from procs import stop_processes
from rawhttp import RawClient, parse_response, request, send_raw

pytest.importorskip("paste.deploy")

CLOSE = [("Connection", "close")]

APP_MODULE = '''
import json
import threading

# Two requests for /slow wait here for each other: they pass only if two workers serve
# them at the same time.
both_in = threading.Barrier(2)


def make_app(global_conf, greeting="hello", **kw):
    def app(environ, start_response):
        overlapped = None
        if environ["PATH_INFO"].endswith("/slow"):
            try:
                both_in.wait(30)  # helpers.WAIT
                overlapped = True
            except threading.BrokenBarrierError:
                overlapped = False
        body = json.dumps({
            "greeting": greeting,
            "global_conf_keys": sorted(global_conf),
            "extra": kw,
            "path": environ["PATH_INFO"],
            "script_name": environ["SCRIPT_NAME"],
            "url_scheme": environ["wsgi.url_scheme"],
            "thread": threading.current_thread().name,
            "multithread": environ["wsgi.multithread"],
            "overlapped": overlapped,
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return app
'''

CHILD = r"""
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[2])
from paste.deploy import loadapp, loadserver
uri = "config:" + sys.argv[1]
app = loadapp(uri)
server = loadserver(uri)
result = server(app)
print("SERVER RETURNED", result, flush=True)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: "
                                 f"{proc.stderr.read().decode(errors='replace')[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the paste server did not start listening")


def read_available(f, timeout=WAIT):
    fd = f.fileno()
    out = b""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            data = os.read(fd, 65536)
            if not data:
                break
            out += data
    finally:
        sel.close()
    return out.decode(errors="replace")


@pytest.fixture
def paste_server(tmp_path):
    """``paste_server(server_settings)`` -> (port, proc): writes app module + .ini, starts
    the child, waits until it listens. Killed at teardown if still running."""
    procs = []

    def start(extra_server="", extra_app=""):
        (tmp_path / "pasteapp_mod.py").write_text(APP_MODULE)
        port = free_port()
        ini = tmp_path / "site.ini"
        ini.write_text(textwrap.dedent(f"""\
            [DEFAULT]
            site_setting = from-default

            [app:main]
            paste.app_factory = pasteapp_mod:make_app
            greeting = bonjour
            {extra_app}

            [server:main]
            use = egg:rswaitress#main
            host = 127.0.0.1
            port = {port}
            threads = 2
            {extra_server}
            """))
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ini), str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        procs.append(proc)
        wait_listening(port, proc)
        return port, proc

    yield start
    stop_processes(procs)


def get_json(port, path="/"):
    r = parse_response(send_raw(("127.0.0.1", port), request(path=path, headers=CLOSE)))
    assert r.status == 200, r
    return r, json.loads(r.body)


def test_entry_point_registered():
    eps = importlib.metadata.entry_points(group="paste.server_runner")
    ours = [ep for ep in eps if ep.name == "main" and ep.value.startswith("rswaitress")]
    assert len(ours) == 1
    assert ours[0].value == "rswaitress:serve_paste"
    import rswaitress

    assert ours[0].load() is rswaitress.serve_paste


@pytest.mark.posix_signals
def test_paste_ini_serves_app(paste_server):
    port, proc = paste_server()
    r, body = get_json(port, "/some/path")
    assert body["greeting"] == "bonjour"
    assert body["path"] == "/some/path"
    assert "site_setting" in body["global_conf_keys"]
    assert body["multithread"] is True
    assert r.header("Server") == "rswaitress"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0
    assert "SERVER RETURNED 0" in read_available(proc.stdout)
    assert f"Serving on http://127.0.0.1:{port}" in read_available(proc.stderr)


@pytest.mark.posix_signals
def test_paste_string_settings_are_coerced(paste_server):
    """threads = 2 (a string) really gives two workers: two slow requests overlap; and
    string values of other settings take effect."""
    port, proc = paste_server(extra_server=textwrap.dedent("""\
        url_scheme = https
        url_prefix = /mount/
        ident = paste-ident
        expose_tracebacks = false
        channel_timeout = 60
        """).replace("\n", "\n            "))
    r, body = get_json(port, "/mount/x")
    assert body["script_name"] == "/mount"
    assert body["path"] == "/x"
    assert body["url_scheme"] == "https"
    assert r.header("Server") == "paste-ident"
    # threads = "2": two slow requests run side by side, in two worker threads.
    a, b = RawClient(("127.0.0.1", port)), RawClient(("127.0.0.1", port))
    try:
        a.send(request(path="/mount/slow"))
        b.send(request(path="/mount/slow"))
        got = [json.loads(c.read_response().body) for c in (a, b)]
    finally:
        a.close()
        b.close()
    assert [g["overlapped"] for g in got] == [True, True], "the two were not served at once"
    assert {g["thread"] for g in got} == {"rswaitress-0", "rswaitress-1"}
    proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT) == 0


def test_paste_bad_setting_fails_to_start(tmp_path):
    (tmp_path / "pasteapp_mod.py").write_text(APP_MODULE)
    ini = tmp_path / "bad.ini"
    ini.write_text(textwrap.dedent("""\
        [app:main]
        paste.app_factory = pasteapp_mod:make_app

        [server:main]
        use = egg:rswaitress#main
        host = 127.0.0.1
        port = 0
        threads = lots
        """))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ini), str(tmp_path)],
                          capture_output=True, timeout=WAIT)
    assert proc.returncode != 0
    assert b"ValueError" in proc.stderr
    assert b"SERVER RETURNED" not in proc.stdout
