"""Faults on either side: clients that go away mid-request or mid-response, applications
that raise or break the WSGI contract, and signals to a server process. Every fault is
answered with a 500 (or, once the head went out, a closed connection), the app
iterable's close() is still called, and the server keeps serving."""

import logging
import signal
import socket
import subprocess
import threading
import time

import pytest

import apps
from helpers import WAIT
from procs import PythonChild
from rawhttp import (
    CLOSE,
    RawClient,
    connect,
    get,
    parse_response,
    parse_responses,
    request,
    send_raw,
)


@pytest.fixture(autouse=True)
def _quiet_app_errors(caplog):
    """The apps here fail on purpose; keep their tracebacks out of the output."""
    caplog.set_level(logging.CRITICAL + 1, logger="rswaitress")


def still_serves(addr):
    r = get(addr, "/after")
    assert r.status == 200, r
    return r


class Switch:
    """An app that runs ``faulty`` for paths starting with /fault and hello otherwise."""

    def __init__(self, faulty):
        self.faulty = faulty

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"].startswith("/fault"):
            return self.faulty(environ, start_response)
        return apps.hello(environ, start_response)


# --- clients that go away ---------------------------------------------------------------


def test_disconnect_mid_head(make_server):
    rec = apps.Recorder()
    srv = make_server(rec)
    for tail in (b"GET /half HTTP/1.1\r\nHost: x\r\nX-Cut: ab", b"GET /half HTT", b"G"):
        s = connect(srv.addr)
        s.sendall(tail)
        s.close()
    still_serves(srv.addr)
    assert rec.paths == ["/after"]


@pytest.mark.parametrize("chunked_body", [False, True])
def test_disconnect_mid_body(make_server, chunked_body):
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec, threads=1)
    s = connect(srv.addr)
    if chunked_body:
        s.sendall(b"POST /cut HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"1000\r\n" + b"c" * 100)
    else:
        s.sendall(b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                  + b"c" * 1000)
    time.sleep(0.1)
    s.close()
    still_serves(srv.addr)
    assert rec.paths == ["/after"]  # the incomplete request never reached the app


def _big_closing_app():
    """Yields 64 KiB pieces up to 256 MiB; records close() and how far it got."""
    state = {"closed": threading.Event(), "yielded": 0, "finally": threading.Event()}

    class It:
        def __iter__(self):
            try:
                for _ in range(4096):
                    state["yielded"] += 1
                    yield b"g" * 65536
            finally:
                state["finally"].set()

        def close(self):
            state["closed"].set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(4096 * 65536))])
        return It()

    return app, state


def _gen_closing_app():
    """A plain generator app: close() runs its finally block."""
    state = {"finally": threading.Event(), "yielded": 0}

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            try:
                for _ in range(4096):
                    state["yielded"] += 1
                    yield b"h" * 65536
            finally:
                state["finally"].set()

        return gen()

    return app, state


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_disconnect_mid_response_closes_app_iterable(make_server, reset):
    app, state = _big_closing_app()
    srv = make_server(Switch(app), outbuf_high_watermark=256 * 1024)
    s = connect(srv.addr)
    s.sendall(request(path="/fault"))
    got = 0
    while got < 200000:
        got += len(s.recv(65536))
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    assert state["closed"].wait(WAIT), "close() of the app iterable was not called"
    assert state["yielded"] < 4096  # it was stopped early, not run to the end
    still_serves(srv.addr)


def test_disconnect_mid_response_finalizes_generator(make_server):
    app, state = _gen_closing_app()
    srv = make_server(Switch(app), outbuf_high_watermark=256 * 1024)
    s = connect(srv.addr)
    s.sendall(request(path="/fault"))
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    s.close()
    assert state["finally"].wait(WAIT), "the generator was not finalised"
    assert state["yielded"] < 4096
    still_serves(srv.addr)


def test_write_after_disconnect_raises_in_the_app(make_server, logs):
    """An app pushing output through write() learns that the client left: write()
    raises (an Exception subclass, like Waitress's ClientDisconnected), and that is
    logged as a disconnect, not as an application error."""
    state = {"n": 0, "exc": None, "done": threading.Event()}

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Length", str(4096 * 65536))])
        try:
            for _ in range(4096):
                write(b"w" * 65536)
                state["n"] += 1
        except Exception as e:
            state["exc"] = e
            raise
        finally:
            state["done"].set()
        return []

    srv = make_server(Switch(app), outbuf_high_watermark=256 * 1024)
    s = connect(srv.addr)
    s.sendall(request(path="/fault/w"))
    assert s.recv(1000).startswith(b"HTTP/1.1 200")
    s.close()
    assert state["done"].wait(WAIT), "the app did not finish"
    assert state["n"] < 4096
    assert state["exc"] is not None
    assert type(state["exc"]).__name__ == "ClientDisconnected"
    message = "Client disconnected while serving /fault/w"
    assert any(r.getMessage() == message for r in logs.wait(message))
    assert not logs.find("Exception while serving")
    still_serves(srv.addr)


def test_close_called_on_normal_completion_and_on_error(make_server):
    app, state = apps.make_closing_app(pieces=3, size=10)
    srv = make_server(Switch(app))
    r = get(srv.addr, "/fault")
    assert r.body == b"x" * 30
    assert state.closed.wait(WAIT) and state.calls == 1

    closed = threading.Event()

    class Failing:
        def __iter__(self):
            yield b"one"
            raise apps.BoomError("mid-iteration")

        def close(self):
            closed.set()

    def failing_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Failing()

    srv2 = make_server(Switch(failing_app))
    send_raw(srv2.addr, request(path="/fault", headers=CLOSE))
    assert closed.wait(WAIT), "close() not called after the iterable raised"
    still_serves(srv2.addr)


def test_client_gone_while_app_runs_then_worker_is_free(serve_app):
    addr = serve_app(apps.sleepy, threads=1)
    for _ in range(3):
        s = connect(addr)
        s.sendall(request(path="/?s=0.1"))
        s.close()
    r = get(addr, "/?s=0")
    assert r.body == b"slept 0.0"


# --- application errors -----------------------------------------------------------------


def _raise_before(environ, start_response):
    raise apps.BoomError("before")


def _raise_after_start(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise apps.BoomError("after start")


def _returns_none(environ, start_response):
    start_response("200 OK", [])
    return None


def _returns_int(environ, start_response):
    start_response("200 OK", [])
    return 42


def _returns_str_items(environ, start_response):
    start_response("200 OK", [])
    return ["text, not bytes"]


def _returns_bare_str(environ, start_response):
    start_response("200 OK", [("Content-Length", "4")])
    return "text"


def _start_twice(environ, start_response):
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"no"]


def _never_starts(environ, start_response):
    return [b"body without start_response"]


def _status(status, headers=()):
    def app(environ, start_response):
        start_response(status, list(headers))
        return [b"should not be sent"]

    return app


BEFORE_HEAD = {
    "exception before start_response": _raise_before,
    "exception after start_response": _raise_after_start,
    "returns None": _returns_none,
    "returns int": _returns_int,
    "start_response twice": _start_twice,
    "start_response never called": _never_starts,
    "status int": _status(200),
    "status bytes": _status(b"200 OK"),
    "status with CRLF": _status("200 OK\r\nX-Injected: 1"),
    "status with LF": _status("200 OK\nX-Injected: 1"),
    "header value with CRLF": _status("200 OK", [("X-A", "1\r\nX-Injected: 1")]),
    "header value with LF": _status("200 OK", [("X-A", "1\nX-Injected: 1")]),
    "header name with CRLF": _status("200 OK", [("X-A\r\nX-Injected", "1")]),
    "header value not str": _status("200 OK", [("X-A", 1)]),
    "header name not str": _status("200 OK", [(b"X-A", "1")]),
    "header not a pair": _status("200 OK", [("X-A",)]),
    "headers not a list": _status("200 OK", "X-A: 1"),
    "hop-by-hop Connection": _status("200 OK", [("Connection", "close")]),
    "hop-by-hop Keep-Alive": _status("200 OK", [("Keep-Alive", "timeout=5")]),
    "hop-by-hop Transfer-Encoding": _status("200 OK", [("Transfer-Encoding", "chunked")]),
    "hop-by-hop Upgrade": _status("200 OK", [("Upgrade", "websocket")]),
    "hop-by-hop TE": _status("200 OK", [("TE", "trailers")]),
    "hop-by-hop Trailers": _status("200 OK", [("Trailers", "X")]),
    "hop-by-hop Proxy-Authenticate": _status("200 OK", [("Proxy-Authenticate", "Basic")]),
    "bad Content-Length": _status("200 OK", [("Content-Length", "abc")]),
}


@pytest.mark.parametrize("name", list(BEFORE_HEAD))
def test_app_error_before_head_is_500(make_server, name):
    srv = make_server(Switch(BEFORE_HEAD[name]))
    raw = send_raw(srv.addr, request(path="/fault", headers=CLOSE))
    r = parse_response(raw)
    assert r.status == 500, r
    assert r.header("Connection") == "close"
    assert b"X-Injected" not in raw
    assert b"should not be sent" not in raw
    assert b"Internal Server Error" in r.body
    still_serves(srv.addr)


@pytest.mark.parametrize("name", ["exception before start_response", "returns None",
                                  "hop-by-hop Connection"])
def test_app_error_500_on_keep_alive_connection_then_closed(make_server, name):
    srv = make_server(Switch(BEFORE_HEAD[name]))
    with RawClient(srv.addr) as c:
        c.send(request(path="/ok"))
        assert c.read_response().status == 200
        c.send(request(path="/fault") + request(path="/ok2"))
        assert c.read_response().status == 500
        assert c.peer_closed()  # the pipelined /ok2 is not served
    still_serves(srv.addr)


def _raise_in_generator_cl(environ, start_response):
    start_response("200 OK", [("Content-Length", "100")])

    def gen():
        yield b"first piece"
        raise apps.BoomError("in the generator")

    return gen()


def _raise_in_generator_chunked(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first piece"
        raise apps.BoomError("in the generator")

    return gen()


def _str_after_bytes(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"bytes first"
        yield "then text"

    return gen()


def _write_then_raise(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written")
    raise apps.BoomError("after write")


def _exc_info_after_body(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"already sent")
    try:
        raise apps.BoomError("too late")
    except apps.BoomError:
        import sys

        start_response("500 Internal Server Error", [], sys.exc_info())
    return [b"never"]


AFTER_HEAD = {
    "raise in generator (Content-Length)": _raise_in_generator_cl,
    "raise in generator (chunked)": _raise_in_generator_chunked,
    "str after bytes": _str_after_bytes,
    "write() then raise": _write_then_raise,
    "exc_info after body": _exc_info_after_body,
    # The head goes out before the first piece is found not to be bytes (as in Waitress).
    "str items": _returns_str_items,
    "bare str": _returns_bare_str,
}


@pytest.mark.parametrize("name", list(AFTER_HEAD))
def test_app_error_after_head_closes_connection(make_server, name):
    srv = make_server(Switch(AFTER_HEAD[name]))
    with RawClient(srv.addr) as c:
        # Keep-alive asked for, and another request pipelined: neither is honoured.
        c.send(request(path="/fault") + request(path="/ok"))
        raw = c.read_until_close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    rs = parse_responses(raw)
    assert len(rs) == 1
    assert rs[0].status == 200
    assert not rs[0].complete, "a failed response must not look complete"
    still_serves(srv.addr)


@pytest.mark.parametrize("status, headers", [
    ("200", []),
    ("abc OK", []),
    ("200 OK", [("X-A: b", "1")]),
], ids=["status without reason", "status not a number", "header name with colon"])
def test_lenient_status_and_header_names_as_in_waitress(serve_app, waitress_server, status,
                                                        headers):
    """Waitress does not validate these beyond CR/LF, and neither does rswaitress: the
    app's status line and header go out as given."""
    ours = send_raw(serve_app(_status(status, headers)), request(headers=CLOSE))
    theirs = send_raw(waitress_server(_status(status, headers)), request(headers=CLOSE))
    assert ours.split(b"\r\n")[0] == theirs.split(b"\r\n")[0]
    assert ours.endswith(b"should not be sent") and theirs.endswith(b"should not be sent")
    for name, value in headers:
        assert f"\r\n{name}: {value}\r\n".encode() in ours


def test_exc_info_before_body_replaces_response(serve_app):
    r = get(serve_app(apps.exc_info_before_body))
    assert r.status == 503
    assert r.header("X-Replaced") == "yes" and "X-Dropped" not in r
    assert r.body == b"replacement body"


def test_expose_tracebacks_shows_the_error(serve_app):
    addr = serve_app(Switch(_start_twice), expose_tracebacks=True)
    r = get(addr, "/fault")
    assert r.status == 500
    assert b"Traceback (most recent call last)" in r.body
    assert b"start_response" in r.body
    still_serves(addr)


def test_many_faults_in_a_row_then_still_serving(make_server):
    faults = list(BEFORE_HEAD.values()) + list(AFTER_HEAD.values())
    idx = {"i": 0}

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/fault":
            f = faults[idx["i"] % len(faults)]
            idx["i"] += 1
            return f(environ, start_response)
        return apps.hello(environ, start_response)

    srv = make_server(app, threads=2)
    for _ in range(len(faults)):
        send_raw(srv.addr, request(path="/fault", headers=CLOSE))
    for _ in range(3):
        still_serves(srv.addr)


# --- signals ----------------------------------------------------------------------------


@pytest.mark.posix_signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_after_in_flight_request(subprocess_server, sig):
    s = subprocess_server("announcing_sleepy", threads=2)
    with RawClient(s.addr) as c:
        c.send(request(path="/?s=0.6"))
        s.wait_for_line(lambda line: line.startswith("APP STARTED"))
        s.proc.send_signal(sig)  # while the app sleeps
        r = c.read_response()
        assert r.status == 200 and r.body == b"slept 0.6"
        assert c.peer_closed()
    assert s.wait_exit() == 0
    assert b"RUN RETURNED" in s.stdout.rest()
    err = s.stderr.rest()
    assert b"Traceback" not in err, err.decode(errors="replace")
    with pytest.raises(OSError):
        socket.create_connection(s.addr, timeout=1).close()


@pytest.mark.posix_signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_idle_server_with_open_connections(subprocess_server, sig):
    s = subprocess_server("hello")
    clients = [RawClient(s.addr) for _ in range(3)]
    try:
        for c in clients:
            c.send(request())
            assert c.read_response().status == 200
        half = connect(s.addr)
        half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        s.proc.send_signal(sig)
        assert s.wait_exit() == 0
        for c in clients:
            assert c.peer_closed()
        half.close()
    finally:
        for c in clients:
            c.close()


_CHILD = r"""
import sys, time
import rswaitress

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            for i in range(8):
                time.sleep(0.1)
                yield b"piece%d;" % i
        return gen()
    if path == "/sleep":
        time.sleep(0.5)
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

server = rswaitress.create_server(app, host="127.0.0.1", port=0, threads=int(sys.argv[1]))
print("PORT", server.effective_port, flush=True)
server.run()
print("RUN RETURNED", flush=True)
"""


@pytest.fixture
def child_server():
    """``child_server(threads=2)`` -> (PythonChild running _CHILD, its address)."""
    children = []

    def start(threads=2):
        child = PythonChild(_CHILD, threads)
        children.append(child)
        return child, ("127.0.0.1", child.read_port())

    yield start
    for child in children:
        child.stop()


@pytest.mark.posix_signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_stream_lets_the_response_finish(child_server, sig):
    child, addr = child_server()
    with RawClient(addr) as c:
        c.send(request(path="/stream"))
        c.read_until(b"piece0;")  # the first piece is out, seven more are to come
        child.proc.send_signal(sig)
        r = c.read_response()
        assert r.status == 200 and r.complete
        assert r.body == b"".join(b"piece%d;" % i for i in range(8))
    assert child.proc.wait(WAIT) == 0
    assert b"RUN RETURNED" in child.stdout.rest()


@pytest.mark.posix_signals
def test_sigterm_with_a_queued_request_exits_cleanly(child_server):
    """threads=1: one request runs, another waits in the queue when SIGTERM arrives. The
    running one completes; the queued one is either served or its connection closed
    without a partial response; the process exits 0."""
    child, addr = child_server(threads=1)
    a, b = RawClient(addr), RawClient(addr)
    try:
        a.send(request(path="/sleep"))
        time.sleep(0.1)
        b.send(request(path="/sleep"))
        # Let the "Task queue depth" record be delivered first: a signal arriving while
        # it is delivered is lost (see test_signal_during_log_delivery_is_not_lost).
        time.sleep(0.3)
        child.proc.send_signal(signal.SIGTERM)
        r = a.read_response()
        assert r.status == 200 and r.body == b"ok"
        rest = b.read_until_close()
        if rest:
            rb = parse_response(rest)
            assert rb.status == 200 and rb.body == b"ok"
        assert child.proc.wait(WAIT) == 0
    finally:
        a.close()
        b.close()


_SIGNAL_IN_LOGGING_CHILD = r"""
import logging, os, signal, sys, time
import rswaitress

SIG = getattr(signal, sys.argv[1])


class SignalOnFirstRecord(logging.Handler):
    # Makes the race deterministic: the signal arrives while the reactor thread (the
    # main thread) is handing a core log record to Python logging.
    fired = False

    def emit(self, record):
        if not SignalOnFirstRecord.fired:
            SignalOnFirstRecord.fired = True
            os.kill(os.getpid(), SIG)


logging.getLogger("rswaitress.queue").addHandler(SignalOnFirstRecord())


def app(environ, start_response):
    time.sleep(0.4)
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


server = rswaitress.create_server(app, host="127.0.0.1", port=0, threads=1)
print("PORT", server.effective_port, flush=True)
server.run()
print("RUN RETURNED", flush=True)
"""


@pytest.mark.posix_signals
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_during_log_delivery_is_not_lost(sig):
    child = PythonChild(_SIGNAL_IN_LOGGING_CHILD, sig)
    proc = child.proc
    a = b = None
    try:
        addr = ("127.0.0.1", child.read_port())
        a, b = RawClient(addr), RawClient(addr)
        a.send(request())
        time.sleep(0.1)
        b.send(request())  # queued behind a: "Task queue depth is 1" -> the signal
        try:
            code = proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, f"the server did not stop after the signal (within {WAIT} s)"
    finally:
        for c in (a, b):
            if c is not None:
                c.close()
        child.stop()
