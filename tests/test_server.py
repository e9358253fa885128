"""The server objects and their lifecycle: create_server's attributes, print_listen,
Unix sockets, several listening sockets, close() from another thread, signals to a
server in a subprocess, serve()'s banner, and robustness against clients that go away."""

import json
import logging
import os
import signal
import socket
import stat
import threading
import time

import pytest

import apps
import rswaitress
from helpers import WAIT
from rawhttp import CLOSE, RawClient, connect, get, parse_response, request, send_raw


def get_ok(addr, path="/"):
    r = get(addr, path)
    assert r.status == 200, r
    return r


# --- create_server ----------------------------------------------------------------------


def test_create_server_attributes(make_server):
    srv = make_server(apps.hello)
    server = srv.server
    assert server.effective_host == "127.0.0.1"
    assert int(server.effective_port) > 0
    assert server.socket.getsockname() == ("127.0.0.1", int(server.effective_port))
    assert server.socket.family == socket.AF_INET
    assert server.adj.host == "127.0.0.1"
    assert type(server).__name__ == "TcpWSGIServer"
    assert get_ok(srv.addr).body == b"Hello, world!\n"


def test_effective_port_type_matches_waitress():
    import waitress

    ours = rswaitress.create_server(apps.hello, host="127.0.0.1", port=0)
    theirs = waitress.create_server(apps.hello, host="127.0.0.1", port=0)
    try:
        assert type(ours.effective_port) is type(theirs.effective_port)
        assert type(ours.effective_host) is type(theirs.effective_host)
    finally:
        ours.close()
        theirs.close()


def test_port_zero_gives_distinct_real_ports(make_server):
    a = make_server(apps.hello)
    b = make_server(apps.hello)
    assert a.port != b.port
    assert a.port != 0 and b.port != 0
    get_ok(a.addr)
    get_ok(b.addr)


def test_port_is_bound_before_run():
    server = rswaitress.create_server(apps.hello, host="127.0.0.1", port=0)
    try:
        s = socket.create_connection(("127.0.0.1", int(server.effective_port)), timeout=2)
        s.close()  # the backlog accepts it though run() was never called
    finally:
        server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(server.effective_port)), timeout=2)


def test_address_in_use_fails_at_create():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        with pytest.raises(OSError):
            rswaitress.create_server(apps.hello, host="127.0.0.1",
                                     port=blocker.getsockname()[1])
    finally:
        blocker.close()


def test_app_none_is_refused():
    with pytest.raises(ValueError):
        rswaitress.create_server(None, host="127.0.0.1", port=0)


def test_print_listen(make_server, caplog):
    srv = make_server(apps.hello)
    with caplog.at_level(logging.INFO, logger="rswaitress"):
        srv.server.print_listen("Serving on http://{}:{}")
    msgs = [r.getMessage() for r in caplog.records if r.name == "rswaitress"]
    assert msgs == [f"Serving on http://127.0.0.1:{srv.port}"]


def test_print_listen_brackets_ipv6(make_server, caplog, ipv6_loopback):
    srv = make_server(apps.hello, listen="[::1]:0")
    assert srv.server.effective_host == "::1"
    with caplog.at_level(logging.INFO, logger="rswaitress"):
        srv.server.print_listen("at {}:{}")
    assert [r.getMessage() for r in caplog.records] == [f"at [::1]:{srv.port}"]
    get_ok(("::1", srv.port))


# --- Unix sockets -----------------------------------------------------------------------


@pytest.mark.unix_sockets
def test_unix_socket_serves(unix_server, tmp_path):
    srv = unix_server(apps.echo_environ)
    path = str(tmp_path / "s.sock")
    assert srv.server.effective_host == "unix"
    assert srv.server.effective_port == path
    assert type(srv.server).__name__ == "UnixWSGIServer"
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    r = get_ok(path, "/over/unix")
    env = json.loads(r.body)
    assert env["PATH_INFO"] == "/over/unix"
    assert env["REMOTE_ADDR"] == "localhost"


@pytest.mark.unix_sockets
def test_unix_socket_environ_matches_waitress(unix_server, waitress_server, tmp_path):
    srv = unix_server(apps.echo_environ)
    ours = json.loads(get_ok(srv.addr).body)
    wpath = waitress_server(apps.echo_environ, unix_socket=str(tmp_path / "w.sock"))
    theirs = json.loads(get_ok(wpath).body)
    for key in ("REMOTE_ADDR", "REMOTE_HOST", "REMOTE_PORT", "SERVER_NAME"):
        assert ours[key] == theirs[key], key
    assert ours["SERVER_PORT"] == srv.addr
    assert theirs["SERVER_PORT"] == wpath


@pytest.mark.unix_sockets
def test_unix_socket_perms(make_server, tmp_path):
    path = str(tmp_path / "p.sock")
    make_server(apps.hello, unix_socket=path, unix_socket_perms="600")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.unix_sockets
def test_unix_socket_stale_file_replaced(make_server, tmp_path):
    path = str(tmp_path / "stale.sock")
    old = socket.socket(socket.AF_UNIX)
    old.bind(path)
    old.close()  # leaves the socket file behind
    srv = make_server(apps.hello, unix_socket=path)
    get_ok(srv.addr)


@pytest.mark.unix_sockets
def test_unix_socket_keep_alive_and_pipelining(unix_server):
    srv = unix_server(apps.echo_body)
    with RawClient(srv.addr) as c:
        c.send(request("POST", "/1", body=b"a") + request("POST", "/2", body=b"bb"))
        assert c.read_response().body == b"a"
        assert c.read_response().body == b"bb"


# --- several listening sockets ----------------------------------------------------------


def test_multiple_listen_ipv4(make_server, caplog):
    srv = make_server(apps.echo_environ, listen="127.0.0.1:0 127.0.0.1:0")
    server = srv.server
    assert type(server).__name__ == "MultiSocketServer"
    listen = server.effective_listen
    assert len(listen) == 2
    ports = [int(p) for _, p in listen]
    assert ports[0] != ports[1]
    for port in ports:
        env = json.loads(get_ok(("127.0.0.1", port)).body)
        assert env["SERVER_PORT"] == str(port)
    with caplog.at_level(logging.INFO, logger="rswaitress"):
        server.print_listen("Serving on http://{}:{}")
    assert [r.getMessage() for r in caplog.records] == [
        f"Serving on http://127.0.0.1:{p}" for p in ports]


def test_multiple_listen_ipv4_and_ipv6(make_server, ipv6_loopback):
    srv = make_server(apps.echo_environ, listen="127.0.0.1:0 [::1]:0")
    server = srv.server
    assert type(server).__name__ == "MultiSocketServer"
    hosts = dict(server.effective_listen)
    assert set(hosts) == {"127.0.0.1", "::1"}
    env4 = json.loads(get_ok(("127.0.0.1", int(hosts["127.0.0.1"]))).body)
    env6 = json.loads(get_ok(("::1", int(hosts["::1"]))).body)
    assert env4["REMOTE_ADDR"] == "127.0.0.1"
    assert env6["REMOTE_ADDR"] == "::1"
    assert env6["SERVER_PORT"] == hosts["::1"]


# --- stopping ---------------------------------------------------------------------------


def test_close_from_another_thread_stops_run(make_server):
    srv = make_server(apps.hello)
    get_ok(srv.addr)
    srv.server.close()
    srv.thread.join(WAIT)
    assert not srv.thread.is_alive(), "run() did not return after close()"
    with pytest.raises(OSError):
        socket.create_connection(srv.addr, timeout=2).close()


def test_close_with_idle_keep_alive_connection(make_server):
    srv = make_server(apps.hello)
    with RawClient(srv.addr) as c:
        c.send(request())
        assert c.read_response().status == 200
        srv.server.close()
        srv.thread.join(WAIT)
        assert not srv.thread.is_alive(), "run() did not return after close()"
        assert c.peer_closed()


def test_close_lets_request_in_progress_finish(make_server):
    app = apps.Started(apps.sleepy)
    srv = make_server(app)
    with RawClient(srv.addr) as c:
        c.send(request(path="/?s=0.5"))
        assert app.event.wait(WAIT), "the request never reached the app"
        srv.server.close()  # while the app sleeps
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"slept 0.5"
    srv.thread.join(WAIT)
    assert not srv.thread.is_alive(), "run() did not return after close()"


def test_close_before_run_releases_socket():
    server = rswaitress.create_server(apps.hello, host="127.0.0.1", port=0)
    port = int(server.effective_port)
    server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.posix_signals
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_subprocess_server(subprocess_server, sig):
    s = subprocess_server("hello")
    get_ok(s.addr)
    s.proc.send_signal(sig)
    code = s.wait_exit()
    assert code == 0
    out = s.stdout.rest().decode()
    assert "RUN RETURNED" in out  # run() returned normally, no traceback escaped
    with pytest.raises(OSError):
        socket.create_connection(s.addr, timeout=1).close()


@pytest.mark.posix_signals
def test_sigterm_lets_request_in_progress_finish(subprocess_server):
    s = subprocess_server("announcing_sleepy")
    with RawClient(s.addr) as c:
        c.send(request(path="/?s=0.6"))
        s.wait_for_line(lambda line: line.startswith("APP STARTED"))
        s.proc.send_signal(signal.SIGTERM)  # while the app sleeps
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"slept 0.6"
    assert s.wait_exit() == 0


@pytest.mark.posix_signals
def test_sigterm_with_open_connection(subprocess_server):
    s = subprocess_server("hello")
    with RawClient(s.addr) as c:
        c.send(request())
        assert c.read_response().status == 200
        s.proc.send_signal(signal.SIGTERM)
        assert s.wait_exit() == 0
        assert c.peer_closed()


@pytest.mark.posix_signals
def test_serve_logs_serving_on(subprocess_server):
    s = subprocess_server("hello", serve=True)
    assert s.serving_line == f"INFO:rswaitress:Serving on http://127.0.0.1:{s.port}"
    assert get_ok(s.addr).body == b"Hello, world!\n"
    s.proc.send_signal(signal.SIGINT)
    assert s.wait_exit() == 0


@pytest.mark.unix_sockets
@pytest.mark.posix_signals
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_unix_subprocess_server(subprocess_server, tmp_path, sig):
    path = str(tmp_path / "sub.sock")
    s = subprocess_server("hello", unix_socket=path)
    assert s.addr == path
    assert get_ok(path).body == b"Hello, world!\n"
    s.proc.send_signal(sig)
    assert s.wait_exit() == 0


# --- clients that go away ---------------------------------------------------------------


def test_disconnect_mid_head(serve_app):
    addr = serve_app(apps.hello)
    for _ in range(5):
        s = connect(addr)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        s.close()
    get_ok(addr)


def test_disconnect_mid_body(make_server):
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec)
    for _ in range(5):
        s = connect(srv.addr)
        s.sendall(b"POST /partial HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                  + b"x" * 5000)
        s.close()
    s = connect(srv.addr)
    s.sendall(b"POST /partial HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"100\r\n" + b"y" * 100)
    s.close()
    get_ok(srv.addr, "/after")
    assert rec.paths == ["/after"]


def test_reset_mid_body(serve_app):
    addr = serve_app(apps.echo_body)
    s = connect(addr)
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    # SO_LINGER 0: close() sends a RST instead of a FIN.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    get_ok(addr)


def test_disconnect_while_app_runs(serve_app):
    addr = serve_app(apps.sleepy, threads=1)
    s = connect(addr)
    s.sendall(request(path="/?s=0.3"))
    s.close()
    # The only worker finishes the abandoned request, then serves this one.
    r = parse_response(send_raw(addr, request(path="/?s=0", headers=CLOSE)))
    assert r.body == b"slept 0.0"


def test_disconnect_mid_response_many_times(serve_app):
    addr = serve_app(apps.big_generator, outbuf_high_watermark=128 * 1024)
    for _ in range(5):
        s = connect(addr)
        s.sendall(request(path="/?mb=8"))
        s.recv(100)
        s.close()
    r = parse_response(send_raw(addr, request(path="/?mb=0.5", headers=CLOSE)))
    assert len(r.body) == 512 * 1024


def test_half_closed_client_still_gets_response(serve_app):
    addr = serve_app(apps.echo_body)
    raw = send_raw(addr, request("POST", body=b"half"), shut_write=True)
    r = parse_response(raw)
    assert r.status == 200
    assert r.body == b"half"


# --- limits and concurrency -------------------------------------------------------------


def test_threads_serve_concurrently(serve_app):
    # Each request waits in the app until all three are there at once: with fewer than
    # three workers serving at the same time the barrier breaks and they get 500s.
    barrier = threading.Barrier(3)

    def app(environ, start_response):
        barrier.wait(WAIT)
        return apps.hello(environ, start_response)

    addr = serve_app(app, threads=3)
    results = []

    def one():
        results.append(parse_response(send_raw(addr, request(headers=CLOSE))).status)

    ts = [threading.Thread(target=one) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT)
    assert not barrier.broken, "the three requests were not in the app at the same time"
    assert results == [200, 200, 200]


def test_connection_limit(serve_app):
    addr = serve_app(apps.hello, connection_limit=1)
    with RawClient(addr) as first:
        first.send(request())
        assert first.read_response().status == 200
        second = RawClient(addr)  # the kernel accepts it; the server does not yet
        try:
            second.send(request(headers=CLOSE))
            with pytest.raises(socket.timeout):
                second.read_response(timeout=0.5)
            first.close()
            r = second.read_response()
            assert r.status == 200
        finally:
            second.close()


def test_idle_connection_closed_after_channel_timeout(serve_app):
    addr = serve_app(apps.hello, channel_timeout=1, cleanup_interval=1)
    with RawClient(addr) as c:
        c.send(request())
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.peer_closed(), "the idle connection was never closed"
        assert time.monotonic() - t0 >= 0.5  # not before channel_timeout (give or take)
