"""HTTP/1.x connection handling over real sockets: persistence, pipelining, request body
framing, 100 Continue, HEAD, and the Date/Server headers."""

import email.utils
import time

import pytest

import apps
from helpers import WAIT
from rawhttp import RawClient, chunked, parse_response, parse_responses, request, send_raw

# --- persistence ------------------------------------------------------------------------


def test_http11_keeps_alive_by_default(serve_app):
    addr = serve_app(apps.hello)
    with RawClient(addr) as c:
        for _ in range(3):
            c.send(request())
            r = c.read_response()
            assert r.status == 200
            assert r.body == b"Hello, world!\n"
            assert r.header("Connection") is None
        assert not c.peer_closed(timeout=0.3)


def test_http11_same_connection_serves_every_request(make_server):
    rec = apps.Recorder()
    srv = make_server(rec)
    with RawClient(srv.addr) as c:
        for i in range(5):
            c.send(request(path=f"/n{i}"))
            assert c.read_response().status == 200
    assert rec.paths == [f"/n{i}" for i in range(5)]


def test_http10_closes_by_default(serve_app):
    addr = serve_app(apps.hello)
    with RawClient(addr) as c:
        c.send(request(version="HTTP/1.0"))
        r = c.read_response()
        assert r.version == "HTTP/1.0"
        assert r.status == 200
        assert r.header("Connection") == "close"
        assert c.peer_closed()


def test_http10_keep_alive_when_asked(serve_app):
    addr = serve_app(apps.hello)
    with RawClient(addr) as c:
        for _ in range(2):
            c.send(request(version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
            r = c.read_response()
            assert r.status == 200
            assert r.header("Connection") == "Keep-Alive"
            assert r.body == b"Hello, world!\n"
        assert not c.peer_closed(timeout=0.3)


def test_http10_keep_alive_without_length_closes(serve_app):
    addr = serve_app(apps.generator_app)
    raw = send_raw(addr, request(version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
    r = parse_response(raw)
    assert r.status == 200
    assert r.header("Connection") == "close"
    assert r.header("Transfer-Encoding") is None  # no chunking in 1.0: the close frames it
    assert r.body == b"aaaaabbbbbccccc"


def test_http11_connection_close(serve_app):
    addr = serve_app(apps.hello)
    with RawClient(addr) as c:
        c.send(request(headers=[("Connection", "close")]))
        r = c.read_response()
        assert r.status == 200
        assert r.header("Connection") == "close"
        assert r.body == b"Hello, world!\n"
        assert c.peer_closed()


def test_http11_connection_close_stops_pipeline(make_server):
    rec = apps.Recorder()
    srv = make_server(rec)
    raw = send_raw(srv.addr, request(path="/1", headers=[("Connection", "close")])
                   + request(path="/2"))
    rs = parse_responses(raw)
    assert [r.status for r in rs] == [200]
    assert rec.paths == ["/1"]


# --- pipelining -------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(serve_app):
    addr = serve_app(apps.echo_body)
    data = (request("POST", "/first", body=b"one")
            + request("GET", "/second")
            + request("POST", "/third", body=b"three", headers=[("Connection", "close")]))
    rs = parse_responses(send_raw(addr, data))
    assert [r.header("X-Path") for r in rs] == ["/first", "/second", "/third"]
    assert [r.body for r in rs] == [b"one", b"", b"three"]
    assert [r.header("X-Method") for r in rs] == ["POST", "GET", "POST"]


def test_pipelined_order_kept_when_first_is_slow(serve_app):
    addr = serve_app(apps.sleepy, threads=4)
    data = (request(path="/?s=0.4") + request(path="/?s=0")
            + request(path="/?s=0.1", headers=[("Connection", "close")]))
    rs = parse_responses(send_raw(addr, data))
    assert [r.body for r in rs] == [b"slept 0.4", b"slept 0.0", b"slept 0.1"]


def test_pipelined_with_chunked_bodies(serve_app):
    addr = serve_app(apps.echo_body)
    te = [("Transfer-Encoding", "chunked")]
    data = (request("POST", "/a", headers=te, body=chunked(b"hello ", b"world"))
            + request("POST", "/b", headers=te + [("Connection", "close")],
                      body=chunked(b"second")))
    rs = parse_responses(send_raw(addr, data))
    assert [r.body for r in rs] == [b"hello world", b"second"]


def test_requests_sent_byte_by_byte(serve_app):
    addr = serve_app(apps.echo_body)
    data = request("POST", "/slow", body=b"abc")
    with RawClient(addr) as c:
        for i in range(len(data)):
            c.send(data[i:i + 1])
        r = c.read_response()
    assert r.status == 200
    assert r.body == b"abc"


def test_leading_blank_lines_ignored(serve_app):
    addr = serve_app(apps.hello)
    r = parse_response(send_raw(addr, b"\r\n\r\n" + request(headers=[("Connection", "close")])))
    assert r.status == 200


# --- request bodies ---------------------------------------------------------------------


def test_content_length_body(serve_app):
    addr = serve_app(apps.echo_body)
    body = bytes(range(256)) * 10
    r = parse_response(send_raw(addr, request("POST", body=body,
                                              headers=[("Connection", "close")])))
    assert r.body == body
    assert r.header("X-Content-Length") == str(len(body))


def test_content_length_body_in_pieces(serve_app):
    addr = serve_app(apps.echo_body)
    body = b"x" * 100000
    data = request("PUT", body=body)
    with RawClient(addr) as c:
        for i in range(0, len(data), 7000):
            c.send(data[i:i + 7000])
            time.sleep(0.001)
        r = c.read_response()
    assert r.body == body


def test_chunked_request_body(serve_app):
    addr = serve_app(apps.echo_body)
    body = chunked(b"Wiki", b"pedia ", b"in\r\n\r\nchunks.")
    r = parse_response(send_raw(addr, request(
        "POST", headers=[("Transfer-Encoding", "chunked"), ("Connection", "close")], body=body)))
    assert r.status == 200
    assert r.body == b"Wikipedia in\r\n\r\nchunks."
    assert r.header("X-Content-Length") == str(len(r.body))


def test_chunked_request_with_extensions_and_trailers(serve_app):
    addr = serve_app(apps.echo_body)
    body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    r = parse_response(send_raw(addr, request(
        "POST", headers=[("Transfer-Encoding", "chunked"), ("Connection", "close")], body=body)))
    assert r.status == 200
    assert r.body == b"hello world"


def test_chunked_request_empty(serve_app):
    addr = serve_app(apps.echo_body)
    r = parse_response(send_raw(addr, request(
        "POST", headers=[("Transfer-Encoding", "chunked"), ("Connection", "close")],
        body=b"0\r\n\r\n")))
    assert r.status == 200
    assert r.body == b""
    assert r.header("X-Content-Length") == "0"


def test_chunked_hex_sizes_upper_and_lower(serve_app):
    addr = serve_app(apps.echo_body)
    body = b"a\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n"
    r = parse_response(send_raw(addr, request(
        "POST", headers=[("Transfer-Encoding", "chunked"), ("Connection", "close")], body=body)))
    assert r.body == b"0123456789abcdefghij"


def test_transfer_encoding_is_case_insensitive(serve_app):
    addr = serve_app(apps.echo_body)
    r = parse_response(send_raw(addr, request(
        "POST", headers=[("Transfer-Encoding", "Chunked"), ("Connection", "close")],
        body=chunked(b"xyz"))))
    assert r.body == b"xyz"


# --- 100 Continue -----------------------------------------------------------------------


def test_expect_continue_interim_then_final(serve_app):
    addr = serve_app(apps.echo_body)
    head = (b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
            b"Expect: 100-continue\r\n\r\n")
    with RawClient(addr) as c:
        c.send(head)
        interim = c.read_response()
        assert interim.status == 100
        assert interim.raw_head == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"0123456789")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"0123456789"


def test_expect_continue_chunked(serve_app):
    addr = serve_app(apps.echo_body)
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\n\r\n")
    with RawClient(addr) as c:
        c.send(head)
        assert c.read_response().status == 100
        c.send(chunked(b"abc", b"def"))
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"abcdef"


def test_expect_continue_not_sent_for_http10(serve_app):
    addr = serve_app(apps.echo_body)
    raw = send_raw(addr, b"POST / HTTP/1.0\r\nContent-Length: 3\r\n"
                         b"Expect: 100-continue\r\n\r\nabc")
    assert b"100 Continue" not in raw
    r = parse_response(raw)
    assert r.status == 200
    assert r.body == b"abc"


def test_expect_continue_without_body_has_no_interim(serve_app):
    addr = serve_app(apps.echo_body)
    raw = send_raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         b"Connection: close\r\n\r\n")
    rs = parse_responses(raw)
    assert [r.status for r in rs] == [200]


# --- HEAD -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["length", "list1", "chunked"])
def test_head_never_carries_body(serve_app, mode):
    addr = serve_app(apps.head_app)
    with RawClient(addr) as c:
        c.send(request("HEAD", f"/?mode={mode}"))
        r = c.read_response(method="HEAD")
        assert r.status == 200
        # Nothing may follow the head: the next bytes on the wire must be the next
        # response (or the close).
        if r.header("Connection") == "close":
            assert c.read_until_close() == b""
        else:
            c.send(request("GET", f"/?mode={mode}"))
            g = c.read_response()
            assert g.status == 200
            assert g.body == b"this body must not reach a HEAD client"
    if mode == "length" or mode == "list1":
        assert r.header("Content-Length") == str(len(b"this body must not reach a HEAD client"))


def test_head_chunked_response_has_no_chunk_bytes(serve_app):
    addr = serve_app(apps.head_app)
    raw = send_raw(addr, request("HEAD", "/?mode=chunked"))
    r = parse_response(raw, method="HEAD")
    assert raw.endswith(b"\r\n\r\n")
    assert raw == r.raw_head  # not even the 0\r\n\r\n terminator
    assert b"this body" not in raw


def test_head_file_wrapper_has_no_body(serve_app, tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"F" * 50000)
    addr = serve_app(apps.make_file_app(p))
    with RawClient(addr) as c:
        c.send(request("HEAD"))
        r = c.read_response(method="HEAD")
        assert r.status == 200
        assert r.header("Content-Length") == "50000"
        c.send(request("GET", headers=[("Connection", "close")]))
        g = c.read_response()
        assert g.body == b"F" * 50000
        assert c.read_until_close() == b""


def test_head_bytesio_file_wrapper_has_no_body(serve_app):
    addr = serve_app(apps.make_bytesio_app(b"B" * 3000))
    raw = send_raw(addr, request("HEAD", headers=[("Connection", "close")]))
    r = parse_response(raw, method="HEAD")
    assert r.status == 200
    assert raw == r.raw_head


def test_head_pipelined_with_get(serve_app):
    addr = serve_app(apps.head_app)
    data = (request("HEAD", "/?mode=length") + request("GET", "/?mode=length")
            + request("HEAD", "/?mode=length", headers=[("Connection", "close")]))
    raw = send_raw(addr, data)
    rs = parse_responses(raw, ["HEAD", "GET", "HEAD"])
    assert [r.status for r in rs] == [200, 200, 200]
    assert [r.body for r in rs] == [b"", b"this body must not reach a HEAD client", b""]


# --- Date and Server --------------------------------------------------------------------


def test_date_and_server_headers(serve_app):
    addr = serve_app(apps.hello)
    before = time.time()
    r = parse_response(send_raw(addr, request(headers=[("Connection", "close")])))
    after = time.time()
    assert r.header("Server") == "rswaitress"
    date = r.header("Date")
    assert date.endswith(" GMT")
    parsed = email.utils.parsedate_to_datetime(date).timestamp()
    assert before - 2 <= parsed <= after + 1
    assert len(r.get_all("Date")) == 1


def test_ident_changes_server_header(serve_app):
    addr = serve_app(apps.echo_environ, ident="my-server/2")
    r = parse_response(send_raw(addr, request(headers=[("Connection", "close")])))
    assert r.header("Server") == "my-server/2"
    assert b'"SERVER_SOFTWARE": "my-server/2"' in r.body


def test_empty_ident_omits_server_header(serve_app):
    addr = serve_app(apps.hello, ident="")
    r = parse_response(send_raw(addr, request(headers=[("Connection", "close")])))
    assert r.header("Server") is None
    assert r.header("Date") is not None


def test_app_server_header_kept_and_via_added(serve_app):
    addr = serve_app(apps.headers_app)
    r = parse_response(send_raw(addr, request(path="/?server=1",
                                              headers=[("Connection", "close")])))
    assert r.get_all("Server") == ["myapp/1.0"]
    assert r.header("Via") == "rswaitress"


def test_app_date_header_kept(serve_app):
    addr = serve_app(apps.headers_app)
    r = parse_response(send_raw(addr, request(path="/?date=1",
                                              headers=[("Connection", "close")])))
    assert r.get_all("Date") == ["Tue, 01 Jan 2030 00:00:00 GMT"]


def test_header_names_recased_and_sorted(serve_app):
    addr = serve_app(apps.headers_app)
    r = parse_response(send_raw(addr, request(headers=[("Connection", "close")])))
    names = r.header_names
    assert "X-Lower" in names and "Content-Type" in names
    assert names == sorted(names)
    assert r.get_all("Set-Cookie") == ["a=1", "b=2"]


def test_same_headers_as_waitress(serve_app, waitress_server):
    """Apart from Server and Date, the head is the one Waitress sends."""
    ours = serve_app(apps.headers_app, ident="waitress")
    theirs = waitress_server(apps.headers_app)
    req = request(path="/?server=1", headers=[("Connection", "close")])
    a = parse_response(send_raw(ours, req))
    b = parse_response(send_raw(theirs, req))
    strip = lambda hs: [(k, v) for k, v in hs if k != "Date"]  # noqa: E731
    assert strip(a.headers) == strip(b.headers)
    assert a.body == b.body


def test_expect_continue_behind_a_pipelined_request(serve_app):
    """The interim 100 for a pipelined request comes after the response before it."""
    addr = serve_app(apps.sleepy)
    with RawClient(addr) as c:
        c.send(request(path="/?s=0.2")
               + b"POST /?s=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                 b"Expect: 100-continue\r\n\r\n")
        first = c.read_response()
        assert first.status == 200 and first.body == b"slept 0.2"
        assert c.read_response().status == 100
        c.send(b"data")
        assert c.read_response().body == b"slept 0.0"


def test_body_not_read_by_app_does_not_desync(serve_app):
    addr = serve_app(apps.hello)  # never reads wsgi.input
    data = (request("POST", "/1", body=b"GET /evil HTTP/1.1\r\n\r\n")
            + request("POST", "/2", headers=[("Transfer-Encoding", "chunked")],
                      body=chunked(b"GET /evil2 HTTP/1.1\r\n\r\n"))
            + request("GET", "/3", headers=[("Connection", "close")]))
    rs = parse_responses(send_raw(addr, data))
    assert [r.status for r in rs] == [200, 200, 200]
    assert all(r.body == b"Hello, world!\n" for r in rs)


def test_head_with_length_and_no_body_keeps_alive(make_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "100")])
        return []

    srv = make_server(app)
    with RawClient(srv.addr) as c:
        for _ in range(2):
            c.send(request("HEAD"))
            r = c.read_response(method="HEAD")
            assert r.status == 200
            assert r.header("Content-Length") == "100"
            assert r.header("Connection") is None
        assert not c.peer_closed(timeout=0.3)


def test_empty_pieces_do_not_end_a_chunked_body(make_server):
    def app(environ, start_response):
        start_response("200 OK", [])
        return iter([b"", b"a", b"", b"b", b""])

    srv = make_server(app)
    r = parse_response(send_raw(srv.addr, request(headers=[("Connection", "close")])))
    assert r.chunked and r.complete
    assert r.body == b"ab"
    assert r.raw_body == b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n"


def test_many_clients_with_keep_alive(serve_app):
    import threading

    addr = serve_app(apps.echo_body, threads=4)
    errors = []

    def client(n):
        try:
            with RawClient(addr) as c:
                for i in range(5):
                    body = b"%d-%d-" % (n, i) * (n + 1)
                    c.send(request("POST", f"/{n}/{i}", body=body))
                    r = c.read_response()
                    if r.body != body or r.header("X-Path") != f"/{n}/{i}":
                        errors.append((n, i, r))
        except Exception as e:  # reported below
            errors.append((n, e))

    ts = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT)
    assert not errors
    assert not any(t.is_alive() for t in ts)


def test_many_header_lines_within_size_limit(serve_app, waitress_server):
    data = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"\r\n")
    theirs = parse_response(send_raw(waitress_server(apps.hello), data))
    assert theirs.status == 200
    ours = parse_response(send_raw(serve_app(apps.hello), data))
    assert ours.status == 200


def test_chunked_request_sent_byte_by_byte(serve_app):
    addr = serve_app(apps.echo_body)
    data = request("POST", "/bytes", headers=[("Transfer-Encoding", "chunked")],
                   body=b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")
    with RawClient(addr) as c:
        for i in range(len(data)):
            c.send(data[i:i + 1])
        r = c.read_response()
    assert r.status == 200
    assert r.body == b"abcde"
