"""Every adjustment (Waitress 3.0.2's docs/arguments.rst) changes what a real server does
over real sockets the way the docs say; the ones documented as no-ops are accepted and
leave the server working.

test_adjustments.py covers parsing and defaults; this file covers the effects.
"""

import hashlib
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import threading
import time
import warnings

import pytest

import apps
import rswaitress
from helpers import WAIT
from procs import PythonChild
from rawhttp import (
    CLOSE,
    RawClient,
    chunked,
    connect,
    get,
    parse_response,
    parse_responses,
    recv_until_close,
    request,
    send_raw,
    wait_until,
)


def get_env(addr, path="/", headers=(), version="HTTP/1.1"):
    r = get(addr, path, headers, version=version)
    assert r.status == 200, r
    return json.loads(r.body)


def free_port(v6_too=False):
    """A TCP port free on 0.0.0.0 (and on [::] when ``v6_too``) right now."""
    for _ in range(50):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s4.bind(("0.0.0.0", 0))
            port = s4.getsockname()[1]
            if not v6_too:
                return port
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s6.bind(("::", port))
                return port
            except OSError:
                continue
            finally:
                s6.close()
        finally:
            s4.close()
    raise AssertionError("no free port")


def families(server):
    return sorted(listener.socket.family for listener in server._listening)


def can_connect(addr, timeout=1.0):
    try:
        s = connect(addr, timeout)
    except OSError:
        return False
    s.close()
    return True


# --- host / port / listen ---------------------------------------------------------------


def test_host_and_port(make_server):
    port = free_port()
    srv = make_server(apps.echo_environ, host="127.0.0.1", port=port)
    assert int(srv.server.effective_port) == port
    env = get_env(("127.0.0.1", port))
    assert env["SERVER_PORT"] == str(port)
    # host=127.0.0.1 binds only the loopback address given, nothing else.
    assert srv.server.socket.getsockname() == ("127.0.0.1", port)


def test_port_as_string(make_server):
    port = free_port()
    srv = make_server(apps.hello, host="127.0.0.1", port=str(port))
    assert get(("127.0.0.1", port)).status == 200
    assert int(srv.server.effective_port) == port


def test_listen_several_addresses(make_server):
    p1, p2 = free_port(), free_port()
    srv = make_server(apps.echo_environ, listen=f"127.0.0.1:{p1} 127.0.0.1:{p2}")
    assert sorted(int(p) for _, p in srv.server.effective_listen) == sorted([p1, p2])
    for p in (p1, p2):
        assert get_env(("127.0.0.1", p))["SERVER_PORT"] == str(p)


def test_listen_wildcard_port(make_server, ipv6_loopback):
    port = free_port(v6_too=True)
    srv = make_server(apps.echo_environ, listen=f"*:{port}")
    assert families(srv.server) == [socket.AF_INET, socket.AF_INET6]
    assert {h for h, _ in srv.server.effective_listen} == {"0.0.0.0", "::"}
    assert get_env(("127.0.0.1", port))["REMOTE_ADDR"] == "127.0.0.1"
    assert get_env(("::1", port))["REMOTE_ADDR"] == "::1"


def test_listen_wildcard_port_ipv4_only_host(make_server):
    port = free_port()
    srv = make_server(apps.hello, listen=f"*:{port}", ipv6=False)
    assert families(srv.server) == [socket.AF_INET]
    assert get(("127.0.0.1", port)).status == 200


def test_listen_ipv6_loopback_port_zero(make_server, ipv6_loopback):
    srv = make_server(apps.echo_environ, listen="[::1]:0")
    assert srv.server.socket.family == socket.AF_INET6
    assert srv.server.effective_host == "::1"
    env = get_env(("::1", srv.port))
    assert env["REMOTE_ADDR"] == "::1"
    assert env["SERVER_PORT"] == str(srv.port)
    assert not can_connect(("127.0.0.1", srv.port))


# --- ipv4 / ipv6 ------------------------------------------------------------------------


def test_ipv6_false_gives_only_ipv4_sockets(make_server, ipv6_loopback):
    port = free_port(v6_too=True)
    srv = make_server(apps.hello, listen=f"*:{port} localhost:0", ipv6=False)
    assert set(families(srv.server)) == {socket.AF_INET}
    assert get(("127.0.0.1", port)).status == 200
    assert not can_connect(("::1", port))


def test_ipv4_false_gives_only_ipv6_sockets(make_server, ipv6_loopback):
    port = free_port(v6_too=True)
    srv = make_server(apps.hello, listen=f"*:{port}", ipv4=False)
    assert families(srv.server) == [socket.AF_INET6]
    assert get(("::1", port)).status == 200
    assert not can_connect(("127.0.0.1", port))


@pytest.mark.parametrize("kw", [dict(listen="127.0.0.1:0", ipv4=False),
                                dict(listen="[::1]:0", ipv6=False)])
def test_disabled_family_with_only_that_family_is_an_error(kw):
    with pytest.raises(ValueError, match="Invalid host/port specified"):
        rswaitress.create_server(apps.hello, **kw)


# --- unix_socket / unix_socket_perms / sockets ------------------------------------------


@pytest.mark.unix_sockets
def test_unix_socket(make_server, tmp_path):
    path = str(tmp_path / "u.sock")
    srv = make_server(apps.echo_environ, unix_socket=path)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert srv.server.socket.family == socket.AF_UNIX
    r = get(path)
    assert r.status == 200
    assert json.loads(r.body)["wsgi.url_scheme"] == "http"


@pytest.mark.unix_sockets
@pytest.mark.parametrize("perms, mode", [(None, 0o600), ("660", 0o660), ("644", 0o644)])
def test_unix_socket_perms(make_server, tmp_path, perms, mode):
    path = str(tmp_path / "p.sock")
    kw = {} if perms is None else {"unix_socket_perms": perms}
    make_server(apps.hello, unix_socket=path, **kw)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert get(path).status == 200


def test_sockets_prebound_tcp(make_server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = make_server(apps.echo_environ, sockets=[sock])
    assert srv.server.socket is sock
    assert int(srv.server.effective_port) == port
    assert get_env(("127.0.0.1", port))["SERVER_PORT"] == str(port)


def test_sockets_prebound_several(make_server):
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    make_server(apps.hello, sockets=socks)
    for p in ports:
        assert get(("127.0.0.1", p)).status == 200


@pytest.mark.unix_sockets
def test_sockets_mixed_families_refused(tmp_path):
    inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        inet.bind(("127.0.0.1", 0))
        unix.bind(str(tmp_path / "mixed.sock"))
        with pytest.raises(ValueError, match="may not be mixed"):
            rswaitress.create_server(apps.hello, sockets=[inet, unix])
    finally:
        inet.close()
        unix.close()


@pytest.mark.unix_sockets
def test_sockets_prebound_unix(make_server, tmp_path):
    path = str(tmp_path / "pre.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    srv = make_server(apps.hello, sockets=[sock])
    assert srv.server.effective_host == "unix"
    r = get(path)
    assert r.status == 200 and r.body == b"Hello, world!\n"


# --- threads ----------------------------------------------------------------------------


def _start_requests(addr, n):
    """``n`` GETs, each on its own connection from its own thread; returns (threads,
    statuses), the statuses appended as the responses come."""
    statuses = []

    def one():
        statuses.append(get(addr).status)

    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts:
        t.start()
    return ts, statuses


def _join(ts):
    for t in ts:
        t.join(WAIT)
    assert not any(t.is_alive() for t in ts), "a request was never answered"


def test_threads(serve_app):
    # threads=4: four requests are in the app at the same time (each waits there for the
    # other three; with fewer workers the barrier breaks).
    four = threading.Barrier(4)

    def meet(environ, start_response):
        four.wait(WAIT)
        return apps.hello(environ, start_response)

    ts, statuses = _start_requests(serve_app(meet, threads=4), 4)
    _join(ts)
    assert not four.broken, "the four requests were not in the app at the same time"
    assert statuses == [200] * 4

    # threads=2: two requests are held in the app; the other two wait for a worker.
    lock = threading.Lock()
    inside, most = [0], [0]
    two_in, release = threading.Event(), threading.Event()

    def hold(environ, start_response):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            if inside[0] == 2:
                two_in.set()
        release.wait(WAIT)
        with lock:
            inside[0] -= 1
        return apps.hello(environ, start_response)

    ts, statuses = _start_requests(serve_app(hold, threads=2), 4)
    try:
        assert two_in.wait(WAIT), "two requests were never in the app at the same time"
        time.sleep(0.5)  # a third worker, if there were one, would take a request now
        assert most[0] == 2, most[0]
    finally:
        release.set()
    _join(ts)
    assert statuses == [200] * 4
    assert most[0] == 2, most[0]


# --- trusted_proxy and co ---------------------------------------------------------------

XFF = [("X-Forwarded-For", "192.0.2.1, 198.51.100.2"), ("X-Forwarded-Proto", "https"),
       ("X-Forwarded-Host", "example.com:8443")]


def test_trusted_proxy_headers_are_applied(serve_app):
    addr = serve_app(apps.echo_environ, trusted_proxy="127.0.0.1",
                     trusted_proxy_headers="x-forwarded-for x-forwarded-proto")
    env = get_env(addr, headers=XFF)
    assert env["REMOTE_ADDR"] == "198.51.100.2"
    assert env["wsgi.url_scheme"] == "https"
    # Not trusted, so removed (clear_untrusted_proxy_headers defaults to True).
    assert "HTTP_X_FORWARDED_HOST" not in env


@pytest.mark.unix_sockets
def test_trusted_proxy_localhost_on_unix_socket(make_server, tmp_path):
    """For Unix sockets the peer is "localhost", which trusted_proxy names."""
    path = str(tmp_path / "proxy.sock")
    make_server(apps.echo_environ, unix_socket=path, trusted_proxy="localhost",
                trusted_proxy_headers="x-forwarded-for x-forwarded-proto")
    env = get_env(path, headers=XFF)
    assert env["REMOTE_ADDR"] == "198.51.100.2"
    assert env["wsgi.url_scheme"] == "https"
    plain = str(tmp_path / "plain.sock")
    make_server(apps.echo_environ, unix_socket=plain)
    env = get_env(plain, headers=XFF)
    assert env["REMOTE_ADDR"] == "localhost"
    assert env["wsgi.url_scheme"] == "http"
    assert "HTTP_X_FORWARDED_FOR" not in env


def test_untrusted_peer_proxy_headers_ignored(serve_app):
    addr = serve_app(apps.echo_environ, trusted_proxy="192.0.2.200",
                     trusted_proxy_headers="x-forwarded-for x-forwarded-proto")
    env = get_env(addr, headers=XFF)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"


def test_trusted_proxy_count(serve_app):
    addr = serve_app(apps.echo_environ, trusted_proxy="127.0.0.1", trusted_proxy_count=2,
                     trusted_proxy_headers="x-forwarded-for")
    assert get_env(addr, headers=XFF)["REMOTE_ADDR"] == "192.0.2.1"


def test_trusted_proxy_headers_host(serve_app):
    addr = serve_app(apps.echo_environ, trusted_proxy="*",
                     trusted_proxy_headers="x-forwarded-host x-forwarded-proto")
    env = get_env(addr, headers=XFF)
    assert env["HTTP_HOST"] == "example.com:8443"
    assert env["SERVER_NAME"] == "example.com"
    assert env["SERVER_PORT"] == "8443"


def test_clear_untrusted_proxy_headers_false_keeps_them(serve_app):
    addr = serve_app(apps.echo_environ, trusted_proxy="127.0.0.1",
                     trusted_proxy_headers="x-forwarded-for",
                     clear_untrusted_proxy_headers=False)
    env = get_env(addr, headers=XFF)
    assert env["HTTP_X_FORWARDED_HOST"] == "example.com:8443"
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"
    assert env["wsgi.url_scheme"] == "http"


def test_log_untrusted_proxy_headers(serve_app, caplog):
    addr = serve_app(apps.echo_environ, trusted_proxy="127.0.0.1",
                     trusted_proxy_headers="x-forwarded-for",
                     log_untrusted_proxy_headers=True)
    with caplog.at_level(logging.WARNING, logger="rswaitress"):
        env = get_env(addr, headers=XFF)
    assert "HTTP_X_FORWARDED_HOST" not in env
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("rswaitress")]
    assert any(m.startswith("Removed untrusted headers (") and "X-Forwarded-Host" in m
               and "X-Forwarded-Proto" in m for m in msgs), msgs


# --- url_scheme / url_prefix / ident / server_name --------------------------------------


def test_url_scheme(serve_app):
    assert get_env(serve_app(apps.echo_environ))["wsgi.url_scheme"] == "http"
    assert get_env(serve_app(apps.echo_environ, url_scheme="https"))["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("path, script_name, path_info", [
    ("/app/x/y", "/app", "/x/y"),
    ("/app", "/app", ""),
    ("/app/", "/app", "/"),
    ("/application", "/app", "/application"),
    ("/other", "/app", "/other"),
])
def test_url_prefix(serve_app, path, script_name, path_info):
    addr = serve_app(apps.echo_environ, url_prefix="/app/")
    env = get_env(addr, path)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script_name, path_info)


def test_ident(serve_app):
    assert get(serve_app(apps.hello)).header("Server") == "rswaitress"
    assert get(serve_app(apps.hello, ident="MyServer/2.0")).header("Server") == "MyServer/2.0"
    r = get(serve_app(apps.hello, ident=""))
    assert r.status == 200 and "Server" not in r
    # Error pages carry it too.
    r = parse_response(send_raw(serve_app(apps.hello, ident="X1"), b"get / HTTP/1.1\r\n\r\n"))
    assert r.status == 400 and r.header("Server") == "X1"


def test_server_name(serve_app):
    default = serve_app(apps.echo_environ)
    named = serve_app(apps.echo_environ, server_name="example.test")
    # SERVER_NAME is always server_name (as in Waitress); the docs' "only used for an
    # HTTP/1.0 request without Host" is about URL reconstruction, where HTTP_HOST wins.
    assert get_env(default, version="HTTP/1.0")["SERVER_NAME"] == "waitress.invalid"
    env = get_env(named, version="HTTP/1.0")
    assert env["SERVER_NAME"] == "example.test" and "HTTP_HOST" not in env
    env = get_env(named, headers=[("Host", "h.example:81")])
    assert env["SERVER_NAME"] == "example.test" and env["HTTP_HOST"] == "h.example:81"


# --- backlog ----------------------------------------------------------------------------


def _ss_listen_queue(port):
    """The Send-Q column ss shows for a listening socket: its backlog."""
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0] == "LISTEN" and cols[3].endswith(f":{port}"):
            return int(cols[2])
    return None


def test_backlog_is_passed_to_listen(make_server):
    srv = make_server(apps.hello, backlog=7)
    got = _ss_listen_queue(srv.port)
    if got is None:
        pytest.skip("ss cannot show the listen queue here")
    assert got == 7
    other = make_server(apps.hello)
    assert _ss_listen_queue(other.port) == 1024


def test_backlog_one_still_serves_a_burst(serve_app):
    addr = serve_app(apps.hello, backlog=1)
    socks = [connect(addr) for _ in range(8)]
    try:
        for s in socks:
            s.sendall(request(headers=CLOSE))
        for s in socks:
            r = parse_response(recv_until_close(s))
            assert r.status == 200
    finally:
        for s in socks:
            s.close()


# --- recv_bytes / send_bytes ------------------------------------------------------------


def test_recv_bytes_small_body_intact(serve_app):
    addr = serve_app(apps.input_methods, recv_bytes=512)
    body = os.urandom(1 << 20)
    r = get(addr, "/?mode=digest", method="POST", body=body)
    res = json.loads(r.body)
    assert res["len"] == len(body)
    assert res["sha256"] == hashlib.sha256(body).hexdigest()


def test_send_bytes_deprecated_no_effect(make_server):
    with pytest.warns(DeprecationWarning, match="send_bytes"):
        srv = make_server(apps.big_generator, send_bytes=9000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = make_server(apps.big_generator)
    a = get(srv.addr, "/?mb=1")
    b = get(plain.addr, "/?mb=1")
    assert a.status == b.status == 200
    assert a.body == b.body == apps.big_pattern(1 << 20)
    assert sorted(n for n in a.header_names if n != "Date") == \
        sorted(n for n in b.header_names if n != "Date")


# --- output buffering -------------------------------------------------------------------


@pytest.mark.parametrize("nocl", ["", "1"])
def test_outbuf_overflow_small(serve_app, nocl):
    addr = serve_app(apps.big_generator, outbuf_overflow=1024)
    r = get(addr, f"/?mb=3&nocl={nocl}")
    assert r.status == 200 and r.complete
    assert r.body == apps.big_pattern(3 << 20)


def _produced_before_reading(make_server, use_write=False, **kw):
    """How many 64 KiB pieces (of 512) the app produced while the client did not read."""
    produced = [0]

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Length", str(512 * 65536))])
        piece = b"w" * 65536
        if use_write:
            for _ in range(512):
                produced[0] += 1
                write(piece)
            return []

        def gen():
            for _ in range(512):
                produced[0] += 1
                yield piece

        return gen()

    srv = make_server(app, **kw)
    s = connect(srv.addr)
    try:
        s.sendall(request(headers=CLOSE))
        # Wait until the app stops producing (it is blocked) or has produced everything.
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if produced[0] != last:
                last, stable_since = produced[0], time.monotonic()
            elif time.monotonic() - stable_since > 0.3:
                break
        before = produced[0]
        total = 0
        s.settimeout(WAIT)
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            total += len(data)
    finally:
        s.close()
    assert total > 512 * 65536  # head + the whole body arrived
    return before


@pytest.mark.parametrize("use_write", [False, True], ids=["iterable", "write"])
def test_outbuf_high_watermark_blocks_the_app(make_server, use_write):
    small = _produced_before_reading(make_server, use_write, outbuf_high_watermark=65536)
    default = _produced_before_reading(make_server, use_write)
    # With a 64 KiB watermark the app is held to roughly what the socket buffers take;
    # with the default 16 MiB it runs 256 pieces further ahead.
    assert small < 200, small
    assert default >= small + 200, (small, default)


# --- input buffering --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["digest", "digest_lines"])
def test_inbuf_overflow_small(serve_app, mode):
    addr = serve_app(apps.input_methods, inbuf_overflow=1024)
    body = b"".join(b"line %d %s\n" % (i, b"z" * (i % 50)) for i in range(20000))
    r = get(addr, f"/?mode={mode}", method="POST", body=body)
    res = json.loads(r.body)
    assert res["len"] == len(body)
    assert res["sha256"] == hashlib.sha256(body).hexdigest()
    if mode == "digest_lines":
        assert res["lines"] == 20000


def test_inbuf_overflow_small_chunked(serve_app):
    addr = serve_app(apps.input_methods, inbuf_overflow=1024)
    pieces = [os.urandom(7000) for _ in range(100)]
    data = request("POST", "/?mode=digest", headers=[("Transfer-Encoding", "chunked")] + CLOSE,
                   body=chunked(*pieces))
    res = json.loads(parse_response(send_raw(addr, data)).body)
    assert res["len"] == 700000
    assert res["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


# --- connection_limit -------------------------------------------------------------------


def test_connection_limit(serve_app):
    addr = serve_app(apps.hello, connection_limit=2)
    a, b = RawClient(addr), RawClient(addr)
    c = None
    try:
        for cl in (a, b):
            cl.send(request())
            assert cl.read_response().status == 200
        c = RawClient(addr)  # queued by the kernel; the server does not take it yet
        c.send(request())
        with pytest.raises(socket.timeout):
            c.read_response(timeout=0.6)
        # The held connections are still served meanwhile.
        b.send(request())
        assert b.read_response().status == 200
        a.close()
        assert c.read_response().status == 200
        c.send(request())
        assert c.read_response().status == 200
    finally:
        for cl in (a, b, c):
            if cl is not None:
                cl.close()


# --- cleanup_interval / channel_timeout -------------------------------------------------


def test_channel_timeout_closes_idle_not_active(serve_app):
    addr = serve_app(apps.sleepy, channel_timeout=1, cleanup_interval=1, threads=2)
    idle, active, busy = RawClient(addr), RawClient(addr), RawClient(addr)
    try:
        for cl in (idle, active):
            cl.send(request(path="/?s=0"))
            assert cl.read_response().status == 200
        # busy: one request that runs longer than channel_timeout
        busy.send(request(path="/?s=1.6"))
        t0 = time.monotonic()
        closed_at = None
        # Until the idle one is closed, and for longer than channel_timeout in all:
        while closed_at is None or time.monotonic() - t0 <= 1.7:
            assert time.monotonic() - t0 < WAIT, "the idle connection was never closed"
            # active: a request every ~0.25 s keeps it open
            active.send(request(path="/?s=0"))
            assert active.read_response().status == 200
            if closed_at is None and idle.peer_closed(timeout=0.25):
                closed_at = time.monotonic() - t0
        assert closed_at >= 0.5, closed_at  # not before channel_timeout (give or take)
        r = busy.read_response()
        assert r.status == 200 and r.body == b"slept 1.6"
        active.send(request(path="/?s=0"))
        assert active.read_response().status == 200
    finally:
        for cl in (idle, active, busy):
            cl.close()


def test_long_cleanup_interval_delays_the_sweep(serve_app):
    addr = serve_app(apps.hello, channel_timeout=1, cleanup_interval=30)
    with RawClient(addr) as c:
        c.send(request())
        assert c.read_response().status == 200
        assert not c.peer_closed(timeout=1.7)
        c.send(request())
        assert c.read_response().status == 200


# --- log_socket_errors ------------------------------------------------------------------

_EMFILE_CHILD = r"""
import logging, os, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(name)s:%(levelname)s:%(message)s")
import rswaitress

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

srv = rswaitress.create_server(app, host="127.0.0.1", port=0, log_socket_errors=sys.argv[1])
# Leave room for a few connections only: accept() then fails with EMFILE.
n = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print("PORT", srv.effective_port, flush=True)
srv.run()
print("RUN RETURNED", flush=True)
"""


LOGGED = "rswaitress:WARNING:server accept() threw an exception"


@pytest.mark.posix_signals  # SIGTERM to the child; and resource.setrlimit
@pytest.mark.procfs  # the child counts its descriptors in /proc/self/fd
@pytest.mark.parametrize("flag", ["true", "false"])
def test_log_socket_errors(tmp_path, flag):
    """A socket error (accept() out of descriptors) is logged unless log_socket_errors
    is false; either way the server recovers once descriptors are free again."""
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        child = PythonChild(_EMFILE_CHILD, flag, stderr=err)
    proc = child.proc
    try:
        addr = ("127.0.0.1", child.read_port())
        socks = [connect(addr) for _ in range(8)]
        if flag == "true":  # the descriptors stay taken until accept() has failed
            assert wait_until(lambda: LOGGED in err_path.read_text(errors="replace")), \
                "accept() never failed"
        else:  # (nothing to wait for: give accept() the time to fail)
            time.sleep(0.4)
        for s in socks:
            s.close()
        r = None
        deadline = time.monotonic() + WAIT
        while r is None and time.monotonic() < deadline:
            try:
                r = parse_response(send_raw(addr, request(headers=CLOSE), timeout=1))
            except Exception:
                time.sleep(0.1)
        assert r is not None and r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        child.stop()
    text = err_path.read_text(errors="replace")
    logged = LOGGED in text
    assert logged is (flag == "true"), text[-2000:]


# --- max_request_header_size / max_request_body_size ------------------------------------


def test_max_request_header_size_boundary(serve_app):
    """As in Waitress, the whole head (request line to blank line) must stay below the
    limit: 999 bytes pass, 1000 are refused."""
    addr = serve_app(apps.hello, max_request_header_size=1000)
    base = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX: "
    for total, status in ((999, 200), (1000, 431)):
        data = base + b"v" * (total - len(base) - 4) + b"\r\n\r\n"
        assert len(data) == total
        assert parse_response(send_raw(addr, data)).status == status


def test_max_request_header_size(serve_app):
    addr = serve_app(apps.hello, max_request_header_size=1024)
    assert get(addr, headers=[("X-Pad", "p" * 600)]).status == 200
    r = get(addr, headers=[("X-Pad", "p" * 1200)])
    assert r.status == 431
    assert r.reason == "Request Header Fields Too Large"
    # The default is far larger.
    assert get(serve_app(apps.hello), headers=[("X-Pad", "p" * 20000)]).status == 200


def test_max_request_body_size(serve_app):
    addr = serve_app(apps.echo_body, max_request_body_size=1000)
    r = get(addr, method="POST", body=b"b" * 999)
    assert r.status == 200 and len(r.body) == 999
    # As in Waitress, a body of exactly max_request_body_size is already refused.
    for n in (1000, 1001):
        r = get(addr, method="POST", body=b"b" * n)
        assert r.status == 413
        assert b"exceeds max_body of 1000" in r.body
    data = request("POST", headers=[("Transfer-Encoding", "chunked")] + CLOSE,
                   body=chunked(b"c" * 600, b"c" * 600))
    assert parse_response(send_raw(addr, data)).status == 413
    big = serve_app(apps.echo_body)
    assert get(big, method="POST", body=b"b" * 5000).status == 200


# --- expose_tracebacks ------------------------------------------------------------------


def test_expose_tracebacks(serve_app, caplog):
    with caplog.at_level(logging.CRITICAL, logger="rswaitress"):
        hidden = get(serve_app(apps.raise_before_start))
        shown = get(serve_app(apps.raise_before_start, expose_tracebacks=True))
    assert hidden.status == shown.status == 500
    assert b"Traceback" not in hidden.body and b"BoomError" not in hidden.body
    assert b"Internal Server Error" in hidden.body
    assert b"Traceback (most recent call last)" in shown.body
    assert b"BoomError: before start_response" in shown.body


# --- asyncore_loop_timeout / asyncore_use_poll ------------------------------------------


def test_asyncore_options_accepted_without_effect(make_server):
    # A loop that honoured a one-hour poll timeout would hold these requests and the stop
    # for up to an hour; the hang guards (helpers.WAIT) give up long before.
    srv = make_server(apps.echo_environ, asyncore_loop_timeout=3600, asyncore_use_poll=True)
    assert srv.server.adj.asyncore_loop_timeout == 3600
    assert srv.server.adj.asyncore_use_poll is True
    with RawClient(srv.addr) as c:
        for _ in range(3):
            c.send(request())
            assert c.read_response().status == 200
    srv.stop()  # fails unless run() returns within the guard


# --- channel_request_lookahead ----------------------------------------------------------


def _disconnect_seen(make_server, window, **kw):
    """Whether the app, polling waitress.client_disconnected for up to ``window`` s,
    sees the client go away."""
    started = threading.Event()
    result = {}

    def app(environ, start_response):
        result["keys"] = sorted(k for k in environ if k.endswith(".client_disconnected"))
        check = environ["waitress.client_disconnected"]
        result["same"] = environ.get("rswaitress.client_disconnected") is not None
        started.set()
        seen = False
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            if check():
                seen = True
                break
            time.sleep(0.02)
        result["seen"] = seen
        result["done"] = True
        start_response("200 OK", [("Content-Length", "1")])
        return [b"x"]

    srv = make_server(app, **kw)
    s = connect(srv.addr)
    s.sendall(request())
    assert started.wait(WAIT), "the request never reached the app"
    s.close()
    assert wait_until(lambda: result.get("done"), timeout=window + WAIT)
    assert result["keys"] == ["rswaitress.client_disconnected", "waitress.client_disconnected"]
    return result["seen"]


def test_channel_request_lookahead_detects_disconnect(make_server):
    assert _disconnect_seen(make_server, WAIT, channel_request_lookahead=1) is True


def test_no_lookahead_does_not_detect_disconnect(make_server):
    # (that the app does not see it can only be shown for a while: 1.5 s)
    assert _disconnect_seen(make_server, 1.5) is False


def test_lookahead_still_serves_pipelined_requests(make_server):
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec, channel_request_lookahead=2)
    data = (request("POST", "/1", body=b"one") + request("POST", "/2", body=b"two")
            + request("GET", "/3", headers=CLOSE))
    rs = parse_responses(send_raw(srv.addr, data))
    assert [r.body for r in rs] == [b"one", b"two", b""]
    assert rec.paths == ["/1", "/2", "/3"]


def test_lookahead_no_false_disconnect_while_client_pipelines(make_server):
    """Requests read ahead while the app runs are not mistaken for a disconnect."""
    seen = []

    def app(environ, start_response):
        check = environ["waitress.client_disconnected"]
        deadline = time.monotonic() + 0.2
        flagged = False
        while time.monotonic() < deadline and not flagged:
            flagged = check()
            time.sleep(0.02)
        seen.append((environ["PATH_INFO"], flagged))
        start_response("200 OK", [("Content-Length", "1")])
        return [b"x"]

    srv = make_server(app, channel_request_lookahead=2)
    data = b"".join(request(path=f"/{i}") for i in range(3)) + request(path="/3", headers=CLOSE)
    rs = parse_responses(send_raw(srv.addr, data))
    assert [r.status for r in rs] == [200] * 4
    assert seen == [(f"/{i}", False) for i in range(4)]
