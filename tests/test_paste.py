"""rswaitress as a PasteDeploy server: ``use = egg:rswaitress#main`` in a real .ini,
loaded with paste.deploy in a child process, every setting arriving as a string."""

import importlib.metadata
import json
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import WAIT
from procs import SIGINT_DEFAULT, PythonChild, free_port, wait_listening
from rawhttp import RawClient, get, request

pytest.importorskip("paste.deploy")

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
import sys
sys.path.insert(0, sys.argv[2])
from paste.deploy import loadapp, loadserver
uri = "config:" + sys.argv[1]
app = loadapp(uri)
server = loadserver(uri)
result = server(app)
print("SERVER RETURNED", result, flush=True)
"""


@pytest.fixture
def paste_server(tmp_path):
    """``paste_server(server_settings)`` -> (port, PythonChild): writes app module + .ini,
    starts the child, waits until it listens. Killed at teardown if still running."""
    children = []

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
        child = PythonChild(CHILD, ini, tmp_path)
        children.append(child)
        wait_listening(port, child.proc,
                       lambda: child.stderr.rest().decode(errors="replace")[-3000:])
        return port, child

    yield start
    for child in children:
        child.stop()


def get_json(port, path="/"):
    r = get(("127.0.0.1", port), path)
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
    port, child = paste_server()
    r, body = get_json(port, "/some/path")
    assert body["greeting"] == "bonjour"
    assert body["path"] == "/some/path"
    assert "site_setting" in body["global_conf_keys"]
    assert body["multithread"] is True
    assert r.header("Server") == "rswaitress"
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(WAIT) == 0
    assert b"SERVER RETURNED 0" in child.stdout.rest()
    assert f"Serving on http://127.0.0.1:{port}".encode() in child.stderr.rest()


@pytest.mark.posix_signals
def test_paste_string_settings_are_coerced(paste_server):
    """threads = 2 (a string) really gives two workers: two slow requests overlap; and
    string values of other settings take effect."""
    port, child = paste_server(extra_server=textwrap.dedent("""\
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
    child.proc.send_signal(signal.SIGINT)
    assert child.proc.wait(WAIT) == 0


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
    proc = subprocess.run([sys.executable, "-c", SIGINT_DEFAULT + CHILD, str(ini), str(tmp_path)],
                          capture_output=True, timeout=WAIT)
    assert proc.returncode != 0
    assert b"ValueError" in proc.stderr
    assert b"SERVER RETURNED" not in proc.stdout
