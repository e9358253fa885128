"""Hostile and broken clients over real sockets: slow clients (slowloris heads, stalled
bodies) never hold a worker and are closed by channel_timeout; connection_limit holds
the line; ambiguous framing (request smuggling) and malformed request lines and headers
are refused with 400/431/501 and the connection closed, and nothing sent after them
reaches the application."""

import json
import socket
import threading
import time

import pytest

import apps
from helpers import WAIT
from rawhttp import (
    CLOSE,
    RawClient,
    connect,
    get,
    parse_response,
    parse_responses,
    recv_until_close,
    request,
)

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def exchange(addr, data, timeout=WAIT):
    """Sends ``data``; reads until the server closes. Returns (bytes, closed) where
    ``closed`` says whether EOF/reset came within ``timeout`` (a guard against a hang)."""
    s = connect(addr)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        deadline = time.monotonic() + timeout
        out = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out, False
            s.settimeout(left)
            try:
                piece = s.recv(65536)
            except socket.timeout:
                return out, False
            except (ConnectionResetError, BrokenPipeError):
                return out, True
            if not piece:
                return out, True
            out += piece
    finally:
        s.close()


# --- slow clients -----------------------------------------------------------------------


def test_idle_half_head_closed_after_channel_timeout(serve_app):
    addr = serve_app(apps.hello, channel_timeout=1, cleanup_interval=0.5)
    s = connect(addr)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")
        t0 = time.monotonic()
        served_meanwhile = 0  # answered while the half head was then seen still open
        s.settimeout(0.2)
        closed_at = None
        while closed_at is None and time.monotonic() - t0 < WAIT:
            assert get(addr).status == 200  # others are served meanwhile
            try:
                data = s.recv(100)
            except socket.timeout:
                served_meanwhile += 1
                continue
            except ConnectionResetError:
                data = b""
            assert data == b"", data  # closed without an answer
            closed_at = time.monotonic() - t0
    finally:
        s.close()
    assert closed_at is not None, "the half-sent head was never closed"
    assert closed_at >= 0.8, closed_at  # not before channel_timeout
    assert served_meanwhile >= 1


def _dribble(addr, data, interval):
    """Sends ``data`` a byte every ``interval`` s; returns (seconds until the server
    closed, bytes received), or (None, b"") if the connection was still open once all
    of ``data`` had gone out."""
    s = connect(addr)
    t0 = time.monotonic()
    try:
        for b in data:
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0, b""
            s.settimeout(interval)
            try:
                got = s.recv(1000)
                return time.monotonic() - t0, got
            except socket.timeout:
                pass
            except ConnectionResetError:
                return time.monotonic() - t0, b""
        return None, b""
    finally:
        s.close()


def test_head_dribbler_closed_while_others_are_served(serve_app):
    """Waitress's channel_timeout only closes *inactive* connections, so a client that
    dribbles a head byte every 0.3 s keeps a Waitress channel forever. rswaitress also
    requires a head to be complete within channel_timeout and closes the dribbler: here
    while it still has bytes to send (over 20 s of them)."""
    addr = serve_app(apps.hello, channel_timeout=1, cleanup_interval=0.5, threads=1)
    result = {}
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 40
    t = threading.Thread(target=lambda: result.update(r=_dribble(addr, head, 0.3)))
    t.start()
    try:
        for _ in range(5):
            assert get(addr).status == 200
            time.sleep(0.1)
    finally:
        t.join(WAIT)
    assert not t.is_alive(), "the dribbling client is still going"
    closed_after, got = result["r"]
    assert closed_after is not None, "the dribbling client was never closed"
    assert got == b""


def test_stalled_body_does_not_occupy_the_worker(make_server):
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec, threads=1)
    stalled = [connect(srv.addr) for _ in range(3)]
    try:
        for i, s in enumerate(stalled):
            s.sendall(b"POST /stalled%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Content-Length: 1000\r\n\r\n0123456789" % i)
        time.sleep(0.2)
        # With the only worker taken by a stalled body these would never be answered.
        for i in range(5):
            assert get(srv.addr, f"/other{i}").status == 200
        assert rec.paths == [f"/other{i}" for i in range(5)]  # no app call for them yet
        # The stalled client finishes: its request is served in full.
        stalled[0].sendall(b"x" * 990)
        r = parse_response(recv_until_close(stalled[0]))
        assert r.status == 200 and r.body == b"0123456789" + b"x" * 990
        assert rec.paths[-1] == "/stalled0"
    finally:
        for s in stalled:
            s.close()


@pytest.mark.parametrize("chunked_body", [False, True], ids=["content-length", "chunked"])
def test_active_upload_longer_than_channel_timeout_is_not_cut(serve_app, chunked_body):
    """channel_timeout closes *inactive* connections: an upload that keeps sending must
    not be cut just because it takes longer than channel_timeout in all. (Regression:
    body bytes arriving in the same read as the head used to start the slowloris clock
    meant for the next head, and the upload was closed after channel_timeout.)"""
    addr = serve_app(apps.echo_body, channel_timeout=1, cleanup_interval=0.5)
    data = b"u" * 20000
    n = 10
    if chunked_body:
        head = (b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%X\r\n%s\r\n" % (len(data), data)
        end = b"0\r\n\r\n"
    else:
        head = (b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % (n * len(data)))
        piece = data
        end = b""
    s = connect(addr)
    try:
        try:
            s.sendall(head + piece)  # the first body bytes arrive with the head
            for _ in range(n - 1):
                time.sleep(0.2)  # 2 s in all (twice channel_timeout), data every 0.2 s
                s.sendall(piece)
            s.sendall(end)
        except (BrokenPipeError, ConnectionResetError) as e:
            pytest.fail(f"the server closed an active upload: {e!r}")
        raw = recv_until_close(s)
    finally:
        s.close()
    r = parse_response(raw)
    assert r.status == 200 and r.body == data * n


def test_connection_limit_holds_without_dropping_held_connections(serve_app):
    addr = serve_app(apps.hello, connection_limit=3)
    held = [RawClient(addr) for _ in range(3)]
    extra = []
    try:
        for c in held:
            c.send(request())
            assert c.read_response().status == 200
        # More clients: TCP connect still succeeds (the kernel queues them) ...
        extra = [RawClient(addr) for _ in range(2)]
        for c in extra:
            c.send(request())
        # ... but the server does not take them while at the limit,
        with pytest.raises(socket.timeout):
            extra[0].read_response(timeout=0.5)
        # and the connections it holds are served, not dropped.
        for _ in range(2):
            for c in held:
                c.send(request())
                assert c.read_response().status == 200
        # Each held connection that closes lets one waiting client in, in order.
        held[0].close()
        assert extra[0].read_response().status == 200
        with pytest.raises(socket.timeout):
            extra[1].read_response(timeout=0.3)
        held[1].close()
        assert extra[1].read_response().status == 200
    finally:
        for c in held + extra:
            c.close()


def test_slow_clients_holding_every_slot_are_reaped(serve_app):
    """connection_limit + channel_timeout: clients that take every slot and then say
    nothing are closed after channel_timeout, which lets a waiting client in."""
    addr = serve_app(apps.hello, connection_limit=2, channel_timeout=1, cleanup_interval=0.5)
    holders = [connect(addr) for _ in range(2)]
    waiting = None
    try:
        for h in holders:
            h.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        t0 = time.monotonic()  # the holders' last activity
        time.sleep(0.2)
        waiting = RawClient(addr)
        waiting.send(request())
        r = waiting.read_response()
        assert r.status == 200
        assert time.monotonic() - t0 >= 0.5  # let in only once a holder was reaped
        for h in holders:
            h.settimeout(WAIT)
            assert h.recv(100) == b""
    finally:
        for h in holders:
            h.close()
        if waiting is not None:
            waiting.close()


# --- nothing after an error reaches the app ---------------------------------------------


@pytest.mark.parametrize("bad", [
    b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET /bad HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
], ids=["dup-cl", "bad-header", "bad-chunk"])
def test_pipelined_after_400_never_reaches_app(make_server, bad):
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec)
    data = request(path="/first") + bad + SMUGGLED + request(path="/after", headers=CLOSE)
    raw, closed = exchange(srv.addr, data)
    rs = parse_responses(raw)
    assert [r.status for r in rs] == [200, 400]
    assert closed
    assert rec.paths == ["/first"]


# --- request smuggling ------------------------------------------------------------------

H = b"POST /p HTTP/1.1\r\nHost: x\r\n"
TE = b"Transfer-Encoding: chunked\r\n"

SMUGGLING = {
    "CL+TE": (H + b"Content-Length: 5\r\n" + TE + b"\r\n0\r\n\r\n", 400),
    "TE+CL": (H + TE + b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "TE chunked in HTTP/1.0": (b"POST /p HTTP/1.0\r\n" + TE + b"\r\n0\r\n\r\n", 400),
    "TE xchunked": (H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    "TE chunked, identity": (H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501),
    "TE identity, chunked": (H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
    "TE chunked, chunked": (H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    "TE twice": (H + b"Transfer-Encoding: gzip\r\n" + TE + b"\r\n0\r\n\r\n", 501),
    "TE empty": (H + b"Transfer-Encoding: \r\n\r\n", 400),
    "TE vertical tab": (H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    "TE header folded from line start": (H + b" Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                                         400),
    "TE with space before colon": (H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "duplicate CL differing": (H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    "CL list": (H + b"Content-Length: 4, 3\r\n\r\nabcd", 400),
    "CL plus sign": (H + b"Content-Length: +3\r\n\r\nabc", 400),
    "CL minus": (H + b"Content-Length: -3\r\n\r\nabc", 400),
    "CL hex": (H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    "CL empty": (H + b"Content-Length: \r\n\r\n", 400),
    "chunk size 0x5": (H + TE + b"\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size -5": (H + TE + b"\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size overflow": (H + TE + b"\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size with space": (H + TE + b"\r\n5 \r\nhello\r\n0\r\n\r\n", 400),
    "chunk ext with quote": (H + TE + b'\r\n5;a"b\r\nhello\r\n0\r\n\r\n', 400),
    "chunk ext with control": (H + TE + b"\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size line bare LF": (H + TE + b"\r\n5\nhello\r\n0\r\n\r\n", 400),
    "missing CRLF after chunk data": (H + TE + b"\r\n5\r\nhelloXX0\r\n\r\n", 400),
    "chunk data then bare LF": (H + TE + b"\r\n5\r\nhello\n0\r\n\r\n", 400),
    "last chunk without blank line": (H + TE + b"\r\n5\r\nhello\r\n0\r\nGET /x HTTP/1.1\r\n\r\n",
                                      400),
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_refused_and_closed(make_server, name):
    data, status = SMUGGLING[name]
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec)
    raw, closed = exchange(srv.addr, data + SMUGGLED)
    rs = parse_responses(raw)
    assert [r.status for r in rs] == [status], rs
    assert rs[0].header("Connection") == "close"
    assert closed, "the connection stayed open after the error"
    assert rec.paths == []
    # and the server is fine afterwards
    assert get(srv.addr).status == 200


@pytest.mark.parametrize("te", [b"  chunked", b"\tchunked", b"chunked ", b"CHUNKED"])
def test_transfer_encoding_whitespace_and_case_is_plain_chunked(make_server, te):
    """Optional whitespace around a field value and the coding's case carry no meaning:
    the body is framed as chunked, and what follows is the next request (no desync)."""
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec)
    data = (H + b"Transfer-Encoding:" + te + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            + request(path="/next", headers=CLOSE))
    raw, closed = exchange(srv.addr, data)
    rs = parse_responses(raw)
    assert [(r.status, r.body) for r in rs] == [(200, b"hello"), (200, b"")]
    assert rec.paths == ["/p", "/next"]


def test_underscore_headers_do_not_frame_a_body(make_server):
    """Content_Length / Transfer_Encoding are not Content-Length / Transfer-Encoding:
    the bytes after the head are the next request (here: garbage, so 400)."""
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec)
    for h in (b"Content_Length: 5\r\n\r\nhello", b"Transfer_Encoding: chunked\r\n\r\n5\r\nhello"):
        rec.paths.clear()
        raw, closed = exchange(srv.addr, H + h + b"\r\n\r\n")
        rs = parse_responses(raw)
        assert rs[0].status == 200 and rs[0].body == b""
        assert [r.status for r in rs[1:]] == [400]
        assert rec.paths == ["/p"]


# --- request line and headers -----------------------------------------------------------

MALFORMED = {
    "lowercase method": (b"get /p HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "NUL in target": (b"GET /p\x00q HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "CR in target": (b"GET /p\rq HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "DEL in target": (b"GET /p\x7fq HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "space in target": (b"GET /p q HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "tab separator": (b"GET\t/p HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "double space": (b"GET  /p HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "lowercase version": (b"GET /p http/1.1\r\nHost: x\r\n\r\n", 400),
    "bare CR line end": (b"GET /p HTTP/1.1\rHost: x\r\n\r\n", 400),
    "over-long request line": (b"GET /" + b"a" * 300000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    "header name with space": (b"GET /p HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400),
    "header name with (": (b"GET /p HTTP/1.1\r\nHost: x\r\nX(y): 1\r\n\r\n", 400),
    "header name with @": (b"GET /p HTTP/1.1\r\nHost: x\r\nX@y: 1\r\n\r\n", 400),
    "header name with NUL": (b"GET /p HTTP/1.1\r\nHost: x\r\nX\x00y: 1\r\n\r\n", 400),
    "header name with tab": (b"GET /p HTTP/1.1\r\nHost: x\r\nX\t: 1\r\n\r\n", 400),
    "space before colon": (b"GET /p HTTP/1.1\r\nHost: x\r\nX : 1\r\n\r\n", 400),
    "empty header name": (b"GET /p HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n", 400),
    "no colon": (b"GET /p HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
    "obs-fold space": (b"GET /p HTTP/1.1\r\nHost: x\r\nX: 1\r\n 2\r\n\r\n", 400),
    "obs-fold tab": (b"GET /p HTTP/1.1\r\nHost: x\r\nX: 1\r\n\t2\r\n\r\n", 400),
    "NUL in value": (b"GET /p HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    "CR in value": (b"GET /p HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    "LF in value": (b"GET /p HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n", 400),
    "too many headers": (b"GET /p HTTP/1.1\r\nHost: x\r\n"
                         + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(3000))
                         + b"\r\n", 431),
    "one huge header": (b"GET /p HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 300000 + b"\r\n\r\n", 431),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_head_refused_and_closed(make_server, name):
    data, status = MALFORMED[name]
    rec = apps.Recorder(apps.echo_body)
    srv = make_server(rec)
    raw, closed = exchange(srv.addr, data + SMUGGLED)
    rs = parse_responses(raw)
    assert [r.status for r in rs] == [status], rs
    assert closed
    assert rec.paths == []


def test_too_many_headers_431_with_small_limit(serve_app):
    addr = serve_app(apps.hello, max_request_header_size=2000)
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300))
    raw, closed = exchange(addr, head + b"\r\n")
    r = parse_response(raw)
    assert r.status == 431 and closed
    # Unterminated: refused as soon as the limit is passed, without waiting for the end
    # (which never comes: an answer at all shows that it did not wait).
    raw, closed = exchange(addr, head)
    assert parse_response(raw).status == 431 and closed


def test_permissive_but_valid_values_are_accepted(make_server):
    """Tabs and obs-text (bytes >= 0x80) are allowed in field values."""
    rec = apps.Recorder(apps.echo_environ)
    srv = make_server(rec)
    raw, closed = exchange(srv.addr, b"GET /ok HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\nX-B: a\xffb\r\n"
                                     b"Connection: close\r\n\r\n")
    r = parse_response(raw)
    assert r.status == 200
    env = json.loads(r.body)
    assert env["HTTP_X_A"] == "a\tb"
    assert env["HTTP_X_B"] == "a\xffb"
