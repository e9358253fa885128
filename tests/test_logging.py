"""What the server logs, on which logger, at which level and in which words (Waitress's):
the "Serving on" banner, application exceptions, clients that go away, the task queue,
the connection limit and the Rust core's warnings about application output.

Records from the Rust core are queued and handed to Python logging a little later (by
the reactor about ten times a second, or by a worker after a request), so tests poll.
"""

import logging
import os
import signal
import socket
import threading
import time

import pytest

import apps
from helpers import WAIT
from procs import PythonChild
from rawhttp import CLOSE, RawClient, connect, get, request, send_raw, wait_until

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


# --- Serving on -------------------------------------------------------------------------


@pytest.mark.posix_signals
def test_serve_prints_serving_on(subprocess_server):
    s = subprocess_server("hello", serve=True)
    # logging.basicConfig's format: LEVEL:logger:message, on stderr
    assert s.serving_line == f"INFO:rswaitress:Serving on http://127.0.0.1:{s.port}"
    assert get(s.addr).status == 200
    s.proc.send_signal(signal.SIGTERM)
    assert s.wait_exit() == 0


_SERVE_LISTEN = r"""
import sys
sys.path.insert(0, sys.argv[1])
import apps, rswaitress
rswaitress.serve(apps.hello, listen=sys.argv[2])
print("SERVE RETURNED", flush=True)
"""


@pytest.mark.posix_signals
def test_serve_prints_serving_on_for_each_listen():
    child = PythonChild(_SERVE_LISTEN, TESTS_DIR, "127.0.0.1:0 127.0.0.1:0")
    proc = child.proc
    try:
        lines = child.stderr.lines(2)
        serving = "INFO:rswaitress:Serving on http://127.0.0.1:"
        assert all(line.startswith(serving) for line in lines), lines
        ports = {int(line.rsplit(":", 1)[1]) for line in lines}
        assert len(ports) == 2
        for port in ports:
            assert get(("127.0.0.1", port)).status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
        assert child.stdout.rest() == b"SERVE RETURNED\n"
    finally:
        child.stop()


def test_print_listen_format(make_server, logs):
    srv = make_server(apps.hello)
    srv.server.print_listen("Listening at {}:{} !")
    recs = logs.find("Listening at")
    assert [r.getMessage() for r in recs] == [f"Listening at 127.0.0.1:{srv.port} !"]
    assert recs[0].levelno == logging.INFO and recs[0].name == "rswaitress"


@pytest.mark.unix_sockets
def test_print_listen_unix(make_server, logs, tmp_path):
    path = str(tmp_path / "l.sock")
    srv = make_server(apps.hello, unix_socket=path)
    srv.server.print_listen("Serving on http://{}:{}")
    assert [r.getMessage() for r in logs.find("Serving on")] == [f"Serving on http://unix:{path}"]


# --- application exceptions -------------------------------------------------------------


@pytest.mark.parametrize("app, path", [
    (apps.raise_before_start, "/before"),
    (apps.raise_after_start, "/after/start"),
    (apps.raise_in_generator, "/in/gen"),
])
def test_app_exception_logged_with_traceback(serve_app, logs, app, path):
    addr = serve_app(app)
    raw = send_raw(addr, request(path=path + "?q=1", headers=CLOSE))
    assert raw.startswith(b"HTTP/1.1 ") or raw == b""
    recs = logs.wait("Exception while serving")
    assert len(recs) == 1, [r.getMessage() for r in recs]
    rec = recs[0]
    assert rec.getMessage() == f"Exception while serving {path}"
    assert rec.name == "rswaitress"
    assert rec.levelno == logging.ERROR
    assert rec.exc_info and rec.exc_info[0] is apps.BoomError
    assert rec.exc_text is None or "BoomError" in rec.exc_text
    text = logging.Formatter().format(rec)
    assert "Traceback (most recent call last)" in text
    assert "apps.py" in text  # the frame where it was raised


@pytest.mark.parametrize("target, logged", [
    (b"/a%20b?x=1", "/a b"),                 # unquoted, no query
    (b"/pre/x%2Fy", "/pre/x/y"),             # url_prefix not stripped in the message
    (b"http://h.example/abs/p?q", "/abs/p"),  # absolute form: the path
])
def test_exception_log_path(serve_app, logs, target, logged):
    addr = serve_app(apps.raise_before_start, url_prefix="/pre")
    send_raw(addr, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    recs = logs.wait("Exception while serving")
    assert [r.getMessage() for r in recs] == [f"Exception while serving {logged}"]


@pytest.mark.parametrize("target", [b"/%FF", b"/caf%C3%A9", b"//double//slash"])
def test_exception_log_path_matches_waitress(serve_app, waitress_server, logs, caplog, target):
    data = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    caplog.set_level(logging.INFO, logger="waitress")
    send_raw(serve_app(apps.raise_before_start), data)
    send_raw(waitress_server(apps.raise_before_start), data)
    ours = logs.wait("Exception while serving")
    theirs = logs.wait("Exception while serving", name_prefix="waitress")
    assert ours and theirs
    assert ours[0].getMessage() == theirs[0].getMessage()


def test_app_exception_logged_once_per_request(serve_app, logs):
    addr = serve_app(apps.raise_before_start)
    for i in range(3):
        assert get(addr, f"/n{i}").status == 500
    wait_until(lambda: len(logs.find("Exception while serving")) >= 3)
    time.sleep(0.2)
    assert sorted(r.getMessage() for r in logs.find("Exception while serving")) == [
        "Exception while serving /n0", "Exception while serving /n1",
        "Exception while serving /n2"]


# --- client disconnected ----------------------------------------------------------------


def test_client_disconnected_mid_response_is_info(serve_app, logs):
    addr = serve_app(apps.big_generator, outbuf_high_watermark=65536)
    s = connect(addr)
    s.sendall(request(path="/gone/away?mb=64"))
    assert s.recv(1000).startswith(b"HTTP/1.1 200 OK")
    # RST rather than FIN, so the server's next write fails at once.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    recs = logs.wait("Client disconnected while serving")
    assert [r.getMessage() for r in recs] == ["Client disconnected while serving /gone/away"]
    assert recs[0].levelno == logging.INFO and recs[0].name == "rswaitress"
    assert not logs.find("Exception while serving")
    assert get(addr, "/?mb=0.1").status == 200


# --- task queue -------------------------------------------------------------------------


def _burst(addr, n, s):
    ts = [threading.Thread(target=get, args=(addr, f"/?s={s}")) for _ in range(n)]
    for t in ts:
        t.start()
    return ts


def test_task_queue_depth_logged(serve_app, logs):
    addr = serve_app(apps.sleepy, threads=1)
    ts = _burst(addr, 4, 0.3)
    recs = logs.wait("Task queue depth is", "rswaitress.queue", timeout=2)
    if not recs:
        # The core logs it at most once a second (another test may just have); try again.
        for t in ts:
            t.join(WAIT)
        time.sleep(1.1)
        ts = _burst(addr, 4, 0.3)
        recs = logs.wait("Task queue depth is", "rswaitress.queue")
    for t in ts:
        t.join(WAIT)
    assert recs, [r.getMessage() for r in logs.records()]
    rec = recs[0]
    assert rec.name == "rswaitress.queue"
    assert rec.levelno == logging.WARNING
    depth = int(rec.getMessage().rsplit(" ", 1)[1])
    assert 1 <= depth <= 4


# --- connection limit -------------------------------------------------------------------


def test_connection_limit_messages(serve_app, logs):
    reached = ("total open connections reached the connection limit, "
               "no longer accepting new connections")
    below = "total open connections dropped below the connection limit, listening again"
    addr = serve_app(apps.hello, connection_limit=1)
    a = RawClient(addr)
    a.send(request())
    assert a.read_response().status == 200
    b = RawClient(addr)
    try:
        b.send(request(headers=CLOSE))
        recs = logs.wait("total open connections reached the connection limit")
        assert [r.getMessage() for r in recs] == [reached]
        assert recs[0].levelno == logging.WARNING and recs[0].name == "rswaitress"
        assert not logs.find("dropped below")
        a.close()
        assert b.read_response().status == 200
        recs = logs.wait("total open connections dropped below the connection limit")
        # (b being taken in and then closing may add another reached/below pair)
        assert recs and {r.getMessage() for r in recs} == {below}
        assert recs[0].levelno == logging.INFO and recs[0].name == "rswaitress"
        msgs = [r.getMessage() for r in logs.records()
                if "total open connections" in r.getMessage()]
        assert msgs[:2] == [reached, below]
        assert all(m != n for m, n in zip(msgs, msgs[1:])), msgs  # strictly alternating
    finally:
        a.close()
        b.close()


# --- Rust-side warnings about application output ----------------------------------------


def test_content_length_exceeded_warning(serve_app, logs):
    addr = serve_app(apps.long_body)
    r = get(addr)
    assert r.body == b"01234"
    recs = logs.wait("application-written content exceeded")
    assert [r.getMessage() for r in recs] == [
        "application-written content exceeded the number of bytes specified by "
        "Content-Length header (5)"]
    assert recs[0].levelno == logging.WARNING and recs[0].name == "rswaitress"


def test_too_few_bytes_warning(serve_app, logs):
    addr = serve_app(apps.short_body)
    raw = send_raw(addr, request(headers=CLOSE))
    assert raw.endswith(b"short")
    recs = logs.wait("application returned too few bytes")
    assert [r.getMessage() for r in recs] == [
        "application returned too few bytes (5) for specified Content-Length (20) "
        "via app_iter"]
    assert recs[0].levelno == logging.WARNING and recs[0].name == "rswaitress"


def test_body_ignored_for_204_warning(serve_app, logs):
    addr = serve_app(apps.status_app)
    r = get(addr, "/?status=204")
    assert r.status == 204 and r.body == b""
    recs = logs.wait("application-written content was ignored")
    assert [r.getMessage() for r in recs] == [
        "application-written content was ignored due to HTTP response that may not "
        "contain a message-body: (204 No Content)"]
    assert recs[0].levelno == logging.WARNING


def test_rust_records_delivered_without_further_requests(serve_app, logs):
    """A record made by the last request arrives without another request to carry it."""
    addr = serve_app(apps.long_body)
    get(addr)
    assert logs.wait("application-written content exceeded"), "the record never arrived"
