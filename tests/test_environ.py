"""The WSGI environ, as an application sees it over a real connection; where cheap,
compared key for key with what Waitress 3.0.2 builds for the same request bytes."""

import concurrent.futures
import hashlib
import json
import random
import socket

import pytest

import apps
from helpers import WAIT
from rawhttp import RawClient, chunked, parse_response, recv_until_close, request, send_raw


def get_environ(addr, data):
    r = parse_response(send_raw(addr, data))
    assert r.status == 200, r
    return json.loads(r.body)


def close_req(method="GET", path="/", **kw):
    headers = list(kw.pop("headers", [])) + [("Connection", "close")]
    return request(method, path, headers=headers, **kw)


# Keys that legitimately differ between two servers on different ports.
VARYING = {"REMOTE_PORT", "SERVER_PORT", "wsgi.input", "wsgi.file_wrapper",
           "rswaitress.client_disconnected", "waitress.client_disconnected",
           "SERVER_SOFTWARE"}


@pytest.fixture
def compare(serve_app, waitress_server):
    """compare(request_bytes, **server_kw) -> (ours, waitress's) environ snapshots."""

    def run(data, **kw):
        # Waitress accepts HTTP/1.1 without Host, which RFC 9112 (and rswaitress by
        # default) refuses; the comparison includes such a request.
        ours = get_environ(serve_app(apps.echo_environ, allow_missing_host=True, **kw), data)
        theirs = get_environ(waitress_server(apps.echo_environ, **kw), data)
        return ours, theirs

    return run


def _common(env):
    return {k: v for k, v in env.items() if k not in VARYING}


# --- side by side with Waitress ---------------------------------------------------------


@pytest.mark.parametrize("data", [
    close_req("GET", "/"),
    close_req("GET", "/a/b/c?x=1&y=%20z"),
    close_req("GET", "/caf%C3%A9/%E2%98%83?q=%C3%A9"),
    close_req("GET", "///double//slashes/"),
    close_req("GET", "/path%2Fwith%2fencoded%3Fslash"),
    close_req("GET", "/bad%zzescape%4"),
    close_req("GET", "/frag?x=1#fragment"),
    close_req("GET", "http://example.com:8080/absolute/form?q=1"),
    close_req("DELETE", "/thing"),
    close_req("POST", "/form", body=b"a=1&b=2",
              headers=[("Content-Type", "application/x-www-form-urlencoded")]),
    close_req("GET", "/", headers=[("X-Dup", "one"), ("x-dup", "two"), ("X-DUP", "three")]),
    close_req("GET", "/", headers=[("Accept", "text/html"), ("Accept-Encoding", "gzip"),
                                   ("Cookie", "a=b"), ("User-Agent", "t/1"),
                                   ("X-Spaces", "  padded  ")]),
    close_req("GET", "/", headers=[("X-Latin", "caf\xe9")]),
    request("GET", "/ten", version="HTTP/1.0"),
    close_req("GET", "/", host=None),
])
def test_environ_matches_waitress(compare, data):
    ours, theirs = compare(data)
    assert _common(ours) == _common(theirs)


@pytest.mark.parametrize("path", ["/app", "/app/", "/app/x/y", "/apple", "/", "/App/x",
                                  "//app/x", "/app%2Fx"])
def test_url_prefix_matches_waitress(compare, path):
    ours, theirs = compare(close_req("GET", path), url_prefix="/app")
    assert _common(ours) == _common(theirs)
    assert ours["SCRIPT_NAME"] == "/app"


def test_chunked_environ_matches_waitress(compare):
    data = close_req("POST", "/c", headers=[("Transfer-Encoding", "chunked"),
                                            ("Content-Type", "text/plain")],
                     body=chunked(b"abc", b"defgh"))
    ours, theirs = compare(data)
    assert _common(ours) == _common(theirs)
    assert ours["CONTENT_LENGTH"] == "8"
    assert "HTTP_TRANSFER_ENCODING" not in ours


def test_server_name_matches_waitress(compare):
    ours, theirs = compare(close_req(), server_name="example.org")
    assert ours["SERVER_NAME"] == theirs["SERVER_NAME"] == "example.org"


def test_url_scheme_matches_waitress(compare):
    ours, theirs = compare(close_req(), url_scheme="https")
    assert ours["wsgi.url_scheme"] == theirs["wsgi.url_scheme"] == "https"


# --- individual keys --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                    "PROPFIND"])
def test_request_method(echo_addr, method):
    env = get_environ(echo_addr, close_req(method, "/m"))
    assert env["REQUEST_METHOD"] == method


def test_path_and_query(echo_addr):
    env = get_environ(echo_addr, close_req("GET", "/a%20b/c?x=1&y=%20"))
    assert env["PATH_INFO"] == "/a b/c"
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["REQUEST_URI"] == "/a%20b/c?x=1&y=%20"
    assert env["SCRIPT_NAME"] == ""


def test_path_info_is_latin1_decoded_bytes(echo_addr):
    # PEP 3333: the decoded bytes, each one code point (UTF-8 arrives as mojibake).
    env = get_environ(echo_addr, close_req("GET", "/caf%C3%A9"))
    assert env["PATH_INFO"] == b"/caf\xc3\xa9".decode("latin-1")
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café"


def test_raw_non_ascii_target_refused_as_waitress_does(echo_addr, waitress_server):
    data = b"GET /\xe9t\xe9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ours = parse_response(send_raw(echo_addr, data))
    theirs = parse_response(send_raw(waitress_server(apps.echo_environ), data))
    assert ours.status == theirs.status == 400


def test_empty_query_string(echo_addr):
    env = get_environ(echo_addr, close_req("GET", "/x"))
    assert env["QUERY_STRING"] == ""
    env = get_environ(echo_addr, close_req("GET", "/x?"))
    assert env["QUERY_STRING"] == ""


@pytest.mark.parametrize("path,script,info", [
    ("/app", "/app", ""),
    ("/app/", "/app", "/"),
    ("/app/foo/bar", "/app", "/foo/bar"),
    ("/application", "/app", "/application"),
    ("/other", "/app", "/other"),
    ("/app%20x", "/app", "/app x"),
])
def test_url_prefix(serve_app, path, script, info):
    addr = serve_app(apps.echo_environ, url_prefix="/app")
    env = get_environ(addr, close_req("GET", path))
    assert env["SCRIPT_NAME"] == script
    assert env["PATH_INFO"] == info


def test_url_prefix_with_trailing_slash_normalised(serve_app):
    addr = serve_app(apps.echo_environ, url_prefix="/app/")
    env = get_environ(addr, close_req("GET", "/app/x"))
    assert env["SCRIPT_NAME"] == "/app"
    assert env["PATH_INFO"] == "/x"


def test_content_type_and_length(echo_addr):
    env = get_environ(echo_addr, close_req("POST", "/", body=b"12345",
                                           headers=[("Content-Type", "text/plain; charset=x")]))
    assert env["CONTENT_TYPE"] == "text/plain; charset=x"
    assert env["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env
    assert env["_body_len"] == 5


def test_no_content_headers_when_absent(echo_addr):
    env = get_environ(echo_addr, close_req("GET", "/"))
    assert "CONTENT_TYPE" not in env
    assert "CONTENT_LENGTH" not in env


def test_content_length_set_for_chunked_body(echo_addr):
    body = chunked(b"x" * 100, b"y" * 23)
    env = get_environ(echo_addr, close_req("POST", "/", body=body,
                                           headers=[("Transfer-Encoding", "chunked")]))
    assert env["CONTENT_LENGTH"] == "123"
    assert env["_body_len"] == 123
    assert "HTTP_TRANSFER_ENCODING" not in env


def test_server_name_port_protocol(serve_app):
    addr = serve_app(apps.echo_environ, server_name="srv.example")
    env = get_environ(addr, close_req())
    assert env["SERVER_NAME"] == "srv.example"
    assert env["SERVER_PORT"] == str(addr[1])
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    env = get_environ(addr, request(version="HTTP/1.0"))
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_server_name_default(echo_addr):
    env = get_environ(echo_addr, close_req(headers=[("Host", "h.example:99")], host=None))
    assert env["SERVER_NAME"] == "waitress.invalid"
    assert env["HTTP_HOST"] == "h.example:99"


def test_remote_addr_host_port(echo_addr):
    s = socket.create_connection(echo_addr, timeout=WAIT)
    try:
        local_port = s.getsockname()[1]
        s.sendall(close_req())
        data = recv_until_close(s)
    finally:
        s.close()
    env = json.loads(parse_response(data).body)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_HOST"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(local_port)


def test_request_uri_is_raw_target(echo_addr):
    env = get_environ(echo_addr, close_req("GET", "/x%2Fy/..;p?q=%41#f"))
    assert env["REQUEST_URI"] == "/x%2Fy/..;p?q=%41#f"
    assert env["PATH_INFO"] == "/x/y/..;p"
    assert env["QUERY_STRING"] == "q=%41"


def test_http_headers_and_duplicates_joined(echo_addr):
    env = get_environ(echo_addr, close_req(headers=[
        ("X-Custom", "1"), ("Accept", "a/b"), ("x-custom", "2"), ("Accept", "c/d"),
        ("X-Empty", ""), ("X-Multi-Word-Name", "v"),
    ]))
    assert env["HTTP_X_CUSTOM"] == "1, 2"
    assert env["HTTP_ACCEPT"] == "a/b, c/d"
    assert env["HTTP_X_EMPTY"] == ""
    assert env["HTTP_X_MULTI_WORD_NAME"] == "v"
    assert env["HTTP_HOST"] == "localhost"


def test_header_with_underscore_dropped(echo_addr):
    env = get_environ(echo_addr, close_req(headers=[("X_Auth", "evil"), ("X-Other", "ok")]))
    assert "HTTP_X_AUTH" not in env
    assert env["HTTP_X_OTHER"] == "ok"


def test_header_value_whitespace_stripped(echo_addr):
    env = get_environ(echo_addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: \t value \t\r\n"
                                 b"Connection: close\r\n\r\n")
    assert env["HTTP_X_PAD"] == "value"


def test_proxy_headers_cleared_by_default(echo_addr):
    env = get_environ(echo_addr, close_req(headers=[("X-Forwarded-For", "1.2.3.4"),
                                                    ("Forwarded", "for=1.2.3.4"),
                                                    ("X-Other", "kept")]))
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert "HTTP_FORWARDED" not in env
    assert env["HTTP_X_OTHER"] == "kept"


def test_wsgi_keys(echo_addr):
    env = get_environ(echo_addr, close_req())
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.errors.is_stderr"] is True
    assert env["wsgi.file_wrapper.callable"] is True
    for m in ("read", "readline", "readlines", "__iter__"):
        assert env[f"wsgi.input.{m}"] is True
    assert env["SERVER_SOFTWARE"] == "rswaitress"


def test_every_value_is_a_native_string(make_server):
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    srv = make_server(app)
    parse_response(send_raw(srv.addr, close_req("POST", "/x?y", body=b"z",
                                                headers=[("Content-Type", "a/b")])))
    for k, v in seen.items():
        assert type(k) is str
        if k.isupper():
            assert type(v) is str, (k, v)


def test_environ_is_fresh_for_each_request(make_server):
    envs = []

    def app(environ, start_response):
        envs.append(environ)
        environ["app.mark"] = len(envs)
        start_response("200 OK", [("Content-Length", "0")])
        return []

    srv = make_server(app)
    with RawClient(srv.addr) as c:
        c.send(request(path="/1", headers=[("X-One", "1")]))
        c.read_response()
        c.send(request(path="/2"))
        c.read_response()
    assert envs[0] is not envs[1]
    assert "HTTP_X_ONE" not in envs[1]
    assert envs[1]["PATH_INFO"] == "/2"


# --- wsgi.input -------------------------------------------------------------------------


def input_result(addr, mode, body, n=None, chunk=False):
    path = f"/?mode={mode}" + (f"&n={n}" if n is not None else "")
    headers = [("Transfer-Encoding", "chunked")] if chunk else []
    data = close_req("POST", path, headers=headers, body=chunked(body) if chunk else body)
    r = parse_response(send_raw(addr, data))
    assert r.status == 200, r
    return json.loads(r.body)


LINES = b"first line\nsecond\n\nfourth has no newline"


@pytest.mark.parametrize("mode,n", [
    ("read", None), ("read_n", 4), ("read_n", 1), ("readline", None), ("readline_n", 3),
    ("readlines", None), ("readlines_hint", 12), ("readlines_hint", 1),
    ("readlines_hint", 0), ("iter", None), ("mixed", None),
])
@pytest.mark.parametrize("chunk", [False, True])
def test_wsgi_input_methods_match_waitress(serve_app, waitress_server, mode, n, chunk):
    ours = input_result(serve_app(apps.input_methods), mode, LINES, n, chunk)
    theirs = input_result(waitress_server(apps.input_methods), mode, LINES, n, chunk)
    assert ours == theirs


def test_wsgi_input_read_and_readline(serve_app):
    addr = serve_app(apps.input_methods)
    assert input_result(addr, "read", LINES)["parts"] == [LINES.decode()]
    assert input_result(addr, "readline", LINES)["parts"] == [
        "first line\n", "second\n", "\n", "fourth has no newline"]
    assert input_result(addr, "readline_n", LINES, 4)["parts"][:3] == ["firs", "t li", "ne\n"]
    assert input_result(addr, "iter", LINES)["parts"] == input_result(
        addr, "readlines", LINES)["parts"]


def test_wsgi_input_empty_body(serve_app):
    addr = serve_app(apps.input_methods)
    r = parse_response(send_raw(addr, close_req("GET", "/?mode=mixed")))
    assert json.loads(r.body)["parts"] == ["", "", "", "", "", ""]


@pytest.mark.parametrize("chunk", [False, True])
@pytest.mark.parametrize("size_kind", ["below", "above"])
def test_wsgi_input_around_inbuf_overflow(serve_app, chunk, size_kind):
    overflow = 64 * 1024
    addr = serve_app(apps.input_methods, inbuf_overflow=overflow)
    size = overflow - 100 if size_kind == "below" else overflow * 5 + 17
    body = apps.big_pattern(size)
    got = input_result(addr, "digest", body, chunk=chunk)
    assert got["len"] == size
    assert got["sha256"] == hashlib.sha256(body).hexdigest()
    assert got["again"] == ""
    assert got["content_length"] == str(size)


def test_wsgi_input_spilled_bodies_one_after_another(serve_app):
    """Spill files are written over by later bodies: each body reads back as itself,
    never with bytes of a longer one before it, whether it comes with Content-Length or
    chunked, on new connections or in parallel."""
    overflow = 16 * 1024
    addr = serve_app(apps.input_methods, inbuf_overflow=overflow)
    sizes = [overflow * 40, overflow * 3 + 5, overflow * 9, overflow + 1, overflow * 2]
    for i, size in enumerate(sizes):
        body = bytes([65 + i]) * size
        for chunk in (False, True):
            got = input_result(addr, "digest", body, chunk=chunk)
            assert (got["len"], got["sha256"], got["again"]) == (
                size, hashlib.sha256(body).hexdigest(), ""), (size, chunk)
    bodies = [bytes([97 + i % 26]) * (overflow * (1 + i % 7) + i) for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda b: input_result(addr, "digest", b), bodies))
    assert [(r["len"], r["sha256"]) for r in results] == [
        (len(b), hashlib.sha256(b).hexdigest()) for b in bodies]


def test_spilled_bodies_in_pieces_then_pipelined_requests(serve_app):
    """Bodies past inbuf_overflow go from the socket to their spill file (on Linux
    without passing through the server's memory): each one arrives whole and in order,
    whether it comes with its head, in odd-sized pieces or in one write with the next
    request behind it, and the request behind it is not taken as body."""
    overflow = 16 * 1024
    addr = serve_app(apps.input_methods, inbuf_overflow=overflow)
    rng = random.Random(7)
    bodies = [rng.randbytes(n) for n in (overflow * 30 + 3, overflow + 1, 700_001)]
    reqs = [request("POST", "/?mode=digest", body=b) for b in bodies]
    with RawClient(addr) as c:
        # First: the head and the body in pieces of 1 byte to 100 KiB.
        data, pos = reqs[0], 0
        while pos < len(data):
            step = rng.choice([1, 13, 4096, 65_535, 100_000])
            c.send(data[pos:pos + step])
            pos += step
        first = c.read_response("POST")
        # Then the other two and a GET, in one write.
        c.send(reqs[1] + reqs[2] + request("GET", "/?mode=digest"))
        rest = [c.read_response("POST"), c.read_response("POST"), c.read_response()]
    got = [json.loads(r.body) for r in [first] + rest]
    assert [(g["len"], g["sha256"]) for g in got] == [
        (len(b), hashlib.sha256(b).hexdigest()) for b in bodies + [b""]]


def test_client_gone_mid_spilled_body_leaves_the_server_serving(serve_app):
    """A client that sends part of a spilled body and leaves: nothing is served for it,
    and the next client's spilled body reads back as itself."""
    overflow = 8 * 1024
    addr = serve_app(apps.input_methods, inbuf_overflow=overflow)
    head = (b"POST /?mode=digest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % (overflow * 50))
    for how in ("fin", "rst"):
        s = socket.create_connection(addr)
        s.sendall(head + b"p" * (overflow * 20))
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        else:
            s.shutdown(socket.SHUT_WR)
            assert recv_until_close(s) == b""
        s.close()
    body = bytes(range(251)) * 2000
    got = input_result(addr, "digest", body)
    assert (got["len"], got["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


def test_wsgi_input_lines_of_spilled_body(serve_app):
    """readline/iteration over a body held in a file (above inbuf_overflow), with lines
    that straddle the server's internal scan size."""
    addr = serve_app(apps.input_methods, inbuf_overflow=4096)
    lines = [(b"%d:" % i) + b"z" * (i * 37 % 20000) + b"\n" for i in range(60)]
    body = b"".join(lines) + b"tail without newline"
    got = input_result(addr, "digest_lines", body)
    assert got["lines"] == 61
    assert got["len"] == len(body)
    assert got["sha256"] == hashlib.sha256(body).hexdigest()


def test_wsgi_input_spilled_readline_matches_waitress(serve_app, waitress_server):
    body = b"".join(b"line %d " % i + b"q" * (i * 101 % 9000) + b"\n" for i in range(40))
    ours = input_result(serve_app(apps.input_methods, inbuf_overflow=2048), "readline_n",
                        body, n=5000)
    theirs = input_result(waitress_server(apps.input_methods, inbuf_overflow=2048),
                          "readline_n", body, n=5000)
    assert ours == theirs
