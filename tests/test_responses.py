"""Responses over real sockets: framing (Content-Length, chunked, close), write(),
exc_info, 500 pages, the app iterator's close(), wsgi.file_wrapper, and bodies larger
than the output buffers."""

import hashlib
import socket
import threading
import time

import pytest

import apps
from helpers import WAIT
from rawhttp import (
    RawClient,
    connect,
    parse_response,
    parse_responses,
    recv_until_close,
    request,
    send_raw,
    wait_until,
)


def get(addr, path="/", version="HTTP/1.1", headers=(), method="GET", timeout=WAIT):
    headers = list(headers)
    if version == "HTTP/1.1" and not any(k.lower() == "connection" for k, _ in headers):
        headers.append(("Connection", "close"))
    raw = send_raw(addr, request(method, path, version=version, headers=headers),
                   timeout=timeout)
    return parse_response(raw, method=method)


# --- framing ----------------------------------------------------------------------------


def test_content_length_from_app(serve_app):
    addr = serve_app(apps.hello)
    r = get(addr)
    assert r.header("Content-Length") == "14"
    assert r.header("Transfer-Encoding") is None
    assert r.body == b"Hello, world!\n"


def test_content_length_computed_for_one_item_list(serve_app):
    addr = serve_app(apps.list_one_no_length)
    with RawClient(addr) as c:
        c.send(request())
        r = c.read_response()
        assert r.header("Content-Length") == str(len(b"computed length"))
        assert r.header("Transfer-Encoding") is None
        assert r.body == b"computed length"
        # With a length the connection stays open.
        assert not c.peer_closed(timeout=0.3)


def test_two_item_list_is_chunked_in_http11(serve_app):
    addr = serve_app(apps.list_two_no_length)
    r = get(addr, headers=[("Connection", "keep-alive")])
    assert r.chunked
    assert r.header("Transfer-Encoding") == "chunked"
    assert r.header("Content-Length") is None
    assert r.header("Connection") == "close"
    assert r.body == b"first,second"
    assert r.raw_body == b"6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n"


def test_generator_is_chunked_in_http11(serve_app):
    addr = serve_app(apps.generator_app)
    r = get(addr, "/?n=4&size=3", headers=[("Connection", "keep-alive")])
    assert r.chunked and r.complete
    assert r.body == b"aaabbbcccddd"
    assert r.raw_body.endswith(b"0\r\n\r\n")


def test_generator_with_length_not_chunked(serve_app):
    addr = serve_app(apps.generator_with_length)
    with RawClient(addr) as c:
        for _ in range(2):
            c.send(request())
            r = c.read_response()
            assert r.header("Content-Length") == "10"
            assert not r.chunked
            assert r.body == b"0123456789"


@pytest.mark.parametrize("app", [apps.generator_app, apps.list_two_no_length])
def test_http10_without_length_closes(serve_app, app):
    addr = serve_app(app)
    raw = send_raw(addr, request(version="HTTP/1.0"))
    r = parse_response(raw)
    assert r.version == "HTTP/1.0"
    assert r.header("Connection") == "close"
    assert r.header("Transfer-Encoding") is None
    assert r.header("Content-Length") is None
    assert r.body in (b"aaaaabbbbbccccc", b"first,second")


def test_short_body_closes_connection(serve_app):
    addr = serve_app(apps.short_body)
    with RawClient(addr) as c:
        c.send(request())
        data = c.read_until_close()
    r = parse_response(data)
    assert r.header("Content-Length") == "20"
    assert not r.complete
    assert r.body == b"short"


def test_long_body_is_cut_to_content_length(serve_app):
    addr = serve_app(apps.long_body)
    with RawClient(addr) as c:
        c.send(request() + request())
        a = c.read_response()
        b = c.read_response()
    assert a.body == b.body == b"01234"


@pytest.mark.parametrize("status", ["204", "304"])
def test_no_body_statuses(serve_app, status):
    addr = serve_app(apps.status_app)
    raw = send_raw(addr, request(path=f"/?status={status}", headers=[("Connection", "close")]))
    r = parse_response(raw)
    assert r.status == int(status)
    assert r.header("Content-Length") is None
    assert r.header("Transfer-Encoding") is None
    assert raw.endswith(b"\r\n\r\n") and raw == r.raw_head


def test_same_framing_as_waitress(serve_app, waitress_server):
    cases = [(apps.list_one_no_length, "HTTP/1.1"), (apps.list_two_no_length, "HTTP/1.1"),
             (apps.generator_app, "HTTP/1.0"), (apps.generator_with_length, "HTTP/1.0"),
             (apps.hello, "HTTP/1.0")]
    for app, version in cases:
        req = request(version=version, headers=[("Connection", "keep-alive")])
        got = []
        for addr in (serve_app(app), waitress_server(app)):
            with RawClient(addr) as c:
                c.send(req)
                got.append(c.read_response())
        a, b = got
        drop = ("Date", "Server")
        assert [h for h in a.headers if h[0] not in drop] == \
               [h for h in b.headers if h[0] not in drop], app.__name__
        assert a.body == b.body


# --- write() ----------------------------------------------------------------------------


def test_write_callable_chunked(serve_app):
    addr = serve_app(apps.write_app)
    r = get(addr)
    assert r.chunked
    assert r.body == b"write1,write2,ret"


def test_write_callable_with_content_length(serve_app):
    addr = serve_app(apps.write_app)
    with RawClient(addr) as c:
        c.send(request(path="/?cl=1"))
        r = c.read_response()
        assert r.header("Content-Length") == "15"
        assert r.body == b"write1,write2,r"
        c.send(request(path="/?cl=1"))
        assert c.read_response().body == b"write1,write2,r"


def test_write_then_empty_iterable(serve_app):
    addr = serve_app(apps.write_then_empty)
    r = get(addr)
    assert r.body == b"via write() "
    assert r.header("Content-Length") == "12"


def test_write_then_one_item_list_http10_sends_everything(serve_app):
    addr = serve_app(apps.write_app)
    raw = send_raw(addr, b"GET / HTTP/1.0\r\n\r\n")
    r = parse_response(raw)
    assert r.body == b"write1,write2,ret"


def test_start_response_called_lazily_in_first_iteration(make_server):
    def app(environ, start_response):
        def gen():
            start_response("200 OK", [("Content-Length", "4")])
            yield b"lazy"

        return gen()

    srv = make_server(app)
    r = get(srv.addr)
    assert r.status == 200
    assert r.body == b"lazy"


def test_body_without_start_response_is_500(make_server):
    def app(environ, start_response):
        return [b"no status"]

    srv = make_server(app)
    raw = send_raw(srv.addr, request(headers=[("Connection", "close")]))
    r = parse_response(raw)
    assert r.status == 500
    assert b"no status" not in raw


# --- exc_info and errors ----------------------------------------------------------------


def test_exc_info_before_body_replaces_response(serve_app):
    addr = serve_app(apps.exc_info_before_body)
    r = get(addr)
    assert r.status == 503
    assert r.header("X-Replaced") == "yes"
    assert r.header("X-Dropped") is None
    assert r.header("Content-Type") is None
    assert r.body == b"replacement body"


def test_exc_info_after_body_reraises_and_closes(serve_app):
    addr = serve_app(apps.exc_info_after_body)
    with RawClient(addr) as c:
        c.send(request())
        data = c.read_until_close()
    r = parse_response(data)
    assert r.status == 200
    assert r.chunked and not r.complete  # no last chunk: the client can tell
    assert r.body == b"already sent"
    assert b"never" not in data


def test_start_response_twice_without_exc_info_is_500(serve_app):
    addr = serve_app(apps.start_response_twice)
    r = get(addr)
    assert r.status == 500


@pytest.mark.parametrize("app", [apps.raise_before_start, apps.raise_after_start])
def test_500_without_traceback(serve_app, app, logs):
    addr = serve_app(app)
    r = get(addr, "/boom")
    assert r.status == 500
    assert r.reason == "Internal Server Error"
    assert r.header("Connection") == "close"
    assert r.header("Content-Type") == "text/plain; charset=utf-8"
    assert r.header("Content-Length") == str(len(r.body))
    assert r.body == (b"Internal Server Error\r\n\r\nThe server encountered an unexpected "
                      b"internal server error\r\n\r\n(generated by rswaitress)")
    assert b"BoomError" not in r.body
    assert logs.wait("Exception while serving /boom")


def test_500_is_http10_for_http10(serve_app):
    addr = serve_app(apps.raise_before_start)
    r = get(addr, version="HTTP/1.0", headers=[("Connection", "keep-alive")])
    assert r.version == "HTTP/1.0"
    assert r.status == 500
    assert r.get_all("Connection") == ["close"]


def test_500_with_expose_tracebacks_names_the_error(serve_app):
    addr = serve_app(apps.raise_before_start, expose_tracebacks=True)
    r = get(addr)
    assert r.status == 500
    assert r.body.startswith(b"Internal Server Error\r\n\r\n")
    assert b"BoomError: before start_response" in r.body
    assert b"The server encountered an unexpected" not in r.body
    assert r.header("Content-Length") == str(len(r.body))


def test_500_with_expose_tracebacks_has_traceback(serve_app):
    addr = serve_app(apps.raise_before_start, expose_tracebacks=True)
    r = get(addr)
    assert b"Traceback (most recent call last)" in r.body
    assert b"in raise_before_start" in r.body


def test_logged_exception_has_traceback(serve_app, logs, caplog):
    addr = serve_app(apps.raise_before_start)
    assert get(addr, "/tb").status == 500
    rec = logs.wait("Exception while serving /tb")[0]
    assert rec.exc_info and rec.exc_info[2] is not None
    assert "raise_before_start" in caplog.text


def test_500_closes_connection_and_drops_pipelined(make_server):
    rec = apps.Recorder(apps.raise_before_start)
    srv = make_server(rec)
    rs = parse_responses(send_raw(srv.addr, request(path="/1") + request(path="/2")))
    assert [r.status for r in rs] == [500]
    assert rec.paths == ["/1"]


@pytest.mark.parametrize("app", [apps.raise_in_generator, apps.raise_after_write])
def test_error_after_body_started_truncates_and_closes(serve_app, app):
    addr = serve_app(app)
    with RawClient(addr) as c:
        c.send(request())
        data = c.read_until_close()
    r = parse_response(data)
    assert r.status == 200
    assert r.chunked and not r.complete
    assert r.body in (b"first piece", b"written")


@pytest.mark.parametrize("status,headers", [
    ("200 OK", [("Connection", "close")]),          # hop-by-hop
    ("200 OK", [("Transfer-Encoding", "chunked")]),  # hop-by-hop
    ("200 OK", [("X-Bad", "a\r\nInjected: yes")]),   # CRLF in a value
    ("200 OK", [("X-Bad\r\nInjected", "yes")]),      # CRLF in a name
    ("200 OK\r\nInjected: yes", []),                 # CRLF in the status
    (b"200 OK", []),                                 # status not a str
    ("200 OK", [(b"X-Bytes", "v")]),                 # name not a str
    ("200 OK", [("X-Bytes", b"v")]),                 # value not a str
    ("200 OK", [("X-Snowman", "\u2603")]),           # not latin-1
    ("200 OK", [("Content-Length", "abc")]),         # not an int
])
def test_invalid_status_or_headers_give_500(serve_app, status, headers):
    addr = serve_app(apps.make_bad_response_app(status, headers))
    raw = send_raw(addr, request(headers=[("Connection", "close")]))
    r = parse_response(raw)
    assert r.status == 500
    assert b"Injected" not in raw
    assert b"should not be sent" not in raw


def test_latin1_header_value_sent_as_latin1(serve_app):
    addr = serve_app(apps.make_bad_response_app("200 OK", [("X-Cafe", "caf\xe9"),
                                                          ("Content-Length", "18")]))
    raw = send_raw(addr, request(headers=[("Connection", "close")]))
    assert b"\r\nX-Cafe: caf\xe9\r\n" in raw
    assert parse_response(raw).status == 200


# --- close() of the app iterator --------------------------------------------------------


def test_close_called_after_normal_response(serve_app):
    app, state = apps.make_closing_app(pieces=3, size=10)
    addr = serve_app(app)
    r = get(addr)
    assert r.body == b"x" * 30
    assert state.closed.wait(WAIT)
    assert state.calls == 1
    assert state.yielded == 3


def test_generator_close_runs_finally(serve_app):
    app, state = apps.make_closing_generator_app()
    addr = serve_app(app)
    assert get(addr).body == b"one two"
    assert state.finalized.wait(WAIT)


def test_close_called_for_head(serve_app):
    app, state = apps.make_closing_app(pieces=3, size=10)
    addr = serve_app(app)
    r = get(addr, method="HEAD")
    assert r.status == 200
    assert state.closed.wait(WAIT)


def test_close_called_when_iteration_raises(make_server):
    closed = []

    class Bad:
        def __iter__(self):
            yield b"one"
            raise apps.BoomError("x")

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Bad()

    srv = make_server(app)
    with RawClient(srv.addr) as c:
        c.send(request())
        c.read_until_close()
    assert wait_until(lambda: closed == [True])


def test_close_called_when_client_disconnects_mid_response(make_server):
    # 64 KiB pieces, far more than the socket buffers and the (lowered) high watermark
    # hold: the app is still producing when the client goes away.
    app, state = apps.make_closing_app(pieces=4000, size=65536)
    srv = make_server(app, outbuf_high_watermark=256 * 1024, outbuf_overflow=64 * 1024)
    s = connect(srv.addr)
    s.sendall(request())
    got = s.recv(1024)
    assert got.startswith(b"HTTP/1.1 200 OK")
    s.close()
    assert state.closed.wait(WAIT), "close() not called after the client went away"
    assert state.yielded < 4000
    # The server is unharmed.
    raw = send_raw(srv.addr, request(method="HEAD", headers=[("Connection", "close")]))
    assert parse_response(raw, method="HEAD").status == 200


def test_close_called_when_client_disconnects_before_first_piece(make_server):
    app, state = apps.make_closing_app(pieces=5, size=10, delay=0.2, content_length=False)
    srv = make_server(app)
    s = connect(srv.addr)
    s.sendall(request())
    s.close()
    assert state.closed.wait(WAIT)


# --- wsgi.file_wrapper ------------------------------------------------------------------


@pytest.fixture
def eight_mib(tmp_path):
    data = apps.big_pattern(8 * 1024 * 1024 - 7)
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    return p, data


def test_file_wrapper_large_file_identical(serve_app, eight_mib):
    path, data = eight_mib
    addr = serve_app(apps.make_file_app(path))
    with RawClient(addr) as c:
        for _ in range(2):  # and the connection is reusable after a sendfile
            c.send(request())
            r = c.read_response()
            assert r.header("Content-Length") == str(len(data))
            assert len(r.body) == len(data)
            assert hashlib.sha256(r.body).digest() == hashlib.sha256(data).digest()


@pytest.mark.unix_sockets
def test_file_wrapper_over_unix_socket(unix_server, eight_mib):
    path, data = eight_mib
    srv = unix_server(apps.make_file_app(path))
    r = parse_response(send_raw(srv.addr, request(headers=[("Connection", "close")])))
    assert r.body == data


def test_file_wrapper_short_content_length(serve_app, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"0123456789" * 10)
    addr = serve_app(apps.make_file_app(p, content_length=25))
    with RawClient(addr) as c:
        c.send(request() + request())
        a = c.read_response()
        b = c.read_response()
    assert a.header("Content-Length") == "25"
    assert a.body == b.body == b"0123456789012345678901234"


def test_file_wrapper_long_content_length_corrected(serve_app, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc" * 10)
    addr = serve_app(apps.make_file_app(p, content_length=500))
    r = get(addr)
    assert r.get_all("Content-Length") == ["30"]
    assert r.body == b"abc" * 10


def test_file_wrapper_from_current_position(serve_app, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"HEADERxxxxPAYLOAD")
    addr = serve_app(apps.make_file_app(p, seek=10))
    r = get(addr)
    assert r.body == b"PAYLOAD"
    assert r.header("Content-Length") == "7"


def test_file_wrapper_empty_file(serve_app, tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    addr = serve_app(apps.make_file_app(p))
    with RawClient(addr) as c:
        c.send(request() + request(path="/again"))
        a = c.read_response()
        b = c.read_response()
    assert a.status == b.status == 200
    assert a.body == b.body == b""


def test_file_wrapper_bytesio(serve_app):
    data = bytes(range(256)) * 40
    addr = serve_app(apps.make_bytesio_app(data))
    r = get(addr)
    assert r.status == 200
    assert r.body == data


def test_file_wrapper_bytesio_with_length(serve_app):
    data = b"q" * 5000
    addr = serve_app(apps.make_bytesio_app(data, content_length=5000))
    with RawClient(addr) as c:
        c.send(request() + request())
        assert c.read_response().body == data
        assert c.read_response().body == data


def test_file_wrapper_bytesio_gets_content_length(serve_app):
    addr = serve_app(apps.make_bytesio_app(b"abc" * 10))
    with RawClient(addr) as c:
        c.send(request())
        r = c.read_response()
        assert r.body == b"abc" * 10
        assert r.header("Content-Length") == "30"
        assert not c.peer_closed(timeout=0.3)


def test_file_wrapper_bytesio_long_content_length_corrected(serve_app):
    addr = serve_app(apps.make_bytesio_app(b"abc" * 10, content_length=50))
    r = get(addr)
    assert r.complete
    assert r.body == b"abc" * 10
    assert r.get_all("Content-Length") == ["30"]


def test_file_wrapper_file_is_closed(make_server, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"z" * 1000)
    opened = []

    def app(environ, start_response):
        f = open(p, "rb")
        opened.append(f)
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](f)

    srv = make_server(app)
    assert get(srv.addr).body == b"z" * 1000
    assert wait_until(lambda: opened and opened[0].closed)


# --- larger than the output buffers -----------------------------------------------------


@pytest.mark.parametrize("nocl", [False, True])
def test_output_larger_than_outbuf_overflow(serve_app, nocl):
    mb = 4
    addr = serve_app(apps.big_generator, outbuf_overflow=64 * 1024)
    s = connect(addr)
    try:
        s.sendall(request(path=f"/?mb={mb}" + ("&nocl=1" if nocl else ""),
                          headers=[("Connection", "close")]))
        time.sleep(0.3)  # let the server buffer (and spill) before reading
        data = recv_until_close(s)
    finally:
        s.close()
    r = parse_response(data)
    expected = apps.big_pattern(mb * 1024 * 1024)
    assert r.complete
    assert r.chunked == nocl
    assert len(r.body) == len(expected)
    assert r.body == expected


def test_slow_reader_with_small_high_watermark(serve_app):
    addr = serve_app(apps.big_generator, outbuf_overflow=16 * 1024,
                     outbuf_high_watermark=64 * 1024)
    # A small receive window, set before connecting (shrinking it on a connected socket
    # makes Linux stall the sender, whatever the server).
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    s.settimeout(WAIT)
    s.connect(addr)
    try:
        s.sendall(request(path="/?mb=2", headers=[("Connection", "close")]))
        chunks = []
        for _ in range(5):
            chunks.append(s.recv(4096))
            time.sleep(0.02)
        chunks.append(recv_until_close(s))
    finally:
        s.close()
    r = parse_response(b"".join(chunks))
    assert r.body == apps.big_pattern(2 * 1024 * 1024)


def test_app_returning_none_is_500(make_server):
    def app(environ, start_response):
        start_response("200 OK", [])
        return None

    srv = make_server(app)
    r = get(srv.addr)
    assert r.status == 500


# --- many clients, one busy thread ------------------------------------------------------


def busy_app(environ, start_response):
    """Spends a while holding the GIL on each request (so that requests queue behind it),
    then answers with a body made from the path, shaped as ``kind`` in the path says."""
    until = time.perf_counter() + 0.0003
    while time.perf_counter() < until:
        pass
    path = environ["PATH_INFO"]
    kind = int(path.rsplit("/", 1)[1]) % 5
    body = path.encode() * (4000 if kind == 2 else 3)  # kind 2: past 64 KiB
    if kind == 1:  # chunked, in pieces
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([body[:5], body[5:], b""])
    if kind == 3:  # write(), then an empty iterable
        write = start_response("200 OK", [("Content-Length", str(len(body)))])
        write(body)
        return []
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def many_clients_each_get_their_own(addr, clients=8, each=30):
    failures = []

    def client(c):
        rc = RawClient(addr)
        try:
            for i in range(each):
                path = f"/client{c}/{i}"
                method = "HEAD" if i % 5 == 4 else "GET"
                rc.send(request(method, path))
                r = rc.read_response(method=method)
                kind = i % 5
                expected = b"" if method == "HEAD" else path.encode() * (4000 if kind == 2 else 3)
                if r.status != 200 or r.body != expected:
                    failures.append((path, r.status, r.body[:80]))
                    return
                if r.header("Connection") == "close":
                    # A chunked answer to a client that did not ask for keep-alive.
                    assert rc.peer_closed()
                    rc.close()
                    rc = RawClient(addr)
        except Exception as e:  # noqa: BLE001 - reported below with the client
            failures.append((c, repr(e)))
        finally:
            rc.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not any(t.is_alive() for t in threads), "a client got no answer"
    assert failures == []


def test_many_keep_alive_clients_each_get_their_own_responses(serve_app):
    """A GIL-bound application with requests waiting: small responses may be left for
    the reactor to send while the thread goes on with the next request. Whatever sends
    them, each client gets its own answers, whole, in order, in every framing."""
    many_clients_each_get_their_own(serve_app(busy_app))


@pytest.mark.unix_sockets
def test_many_clients_each_get_their_own_over_unix_socket(unix_server):
    many_clients_each_get_their_own(unix_server(busy_app).addr)
