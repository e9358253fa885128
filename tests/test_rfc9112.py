"""RFC 9112's request rules over real sockets: Host (missing, repeated, invalid), the four
request-target forms and the methods they belong to, raw non-ASCII targets, and
whitespace in chunk extensions.

Each refusal is a 400 with the reason in its body, after which the connection closes and
nothing of the request reaches the application.
"""

import pytest

import apps
from rawhttp import parse_response, request, send_raw


def exchange(addr, data):
    return parse_response(send_raw(addr, data))


@pytest.fixture
def recorded(make_server):
    """(address, Recorder) of a server whose application echoes the environ."""

    def factory(**kw):
        rec = apps.Recorder(apps.echo_environ)
        return make_server(rec, **kw).addr, rec

    return factory


def refused(resp, reason):
    assert resp.status == 400, resp
    assert reason.encode() in resp.body, resp.body
    assert resp.header("Connection") == "close"


def test_http11_without_host_is_refused(recorded):
    addr, rec = recorded()
    refused(exchange(addr, b"GET / HTTP/1.1\r\n\r\n"), "Host header is missing")
    assert rec.paths == []


def test_http10_needs_no_host(recorded):
    addr, rec = recorded()
    assert exchange(addr, b"GET /ten HTTP/1.0\r\n\r\n").status == 200
    assert rec.paths == ["/ten"]


def test_allow_missing_host_relaxes_only_that_rule(recorded):
    addr, rec = recorded(allow_missing_host=True)
    resp = exchange(addr, b"GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert resp.status == 200
    assert rec.paths == ["/nohost"]
    # Two Host lines are still refused.
    two = b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"
    refused(exchange(addr, two), "Host header is repeated")


def test_two_host_lines_are_refused(recorded):
    addr, rec = recorded()
    for data in (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                 b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"):
        refused(exchange(addr, data), "Host header is repeated")
    assert rec.paths == []


@pytest.mark.parametrize("host", ["a b", "a/b", "user@a", "a:b", "a:80:81", "[::1", "[]", "a%zz",
                                  "[::1]x", 'a"b', "a?b"])
def test_invalid_host_values_are_refused(recorded, host):
    addr, rec = recorded()
    data = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    refused(exchange(addr, data), "Host header is invalid")
    assert rec.paths == []


@pytest.mark.parametrize("host", ["", "example.com", "example.com:8080", "127.0.0.1:1", "[::1]:80",
                                  "xn--bcher-kva.example", "under_score.example"])
def test_valid_host_values_reach_the_application(recorded, host):
    addr, rec = recorded()
    resp = exchange(addr, f"GET /h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert resp.status == 200
    assert rec.paths == ["/h"]


@pytest.mark.parametrize("line", [
    b"GET * HTTP/1.1",
    b"POST * HTTP/1.1",
    b"GET example.com:443 HTTP/1.1",
    b"CONNECT /path HTTP/1.1",
    b"CONNECT example.com HTTP/1.1",
    b"GET relative/path HTTP/1.1",
    b"GET ?query HTTP/1.1",
])
def test_target_form_must_fit_the_method(recorded, line):
    addr, rec = recorded()
    resp = exchange(addr, line + b"\r\nHost: x\r\n\r\n")
    assert resp.status == 400, resp
    assert b"Request target" in resp.body
    assert rec.paths == []


@pytest.mark.parametrize("line, method, uri", [
    (b"OPTIONS * HTTP/1.1", "OPTIONS", "*"),
    (b"CONNECT example.com:443 HTTP/1.1", "CONNECT", "example.com:443"),
    (b"GET http://example.com/abs?q=1 HTTP/1.1", "GET", "http://example.com/abs?q=1"),
])
def test_target_forms_that_fit_reach_the_application(make_server, line, method, uri):
    import json

    addr = make_server(apps.echo_environ).addr
    resp = exchange(addr, line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp.status == 200, resp
    env = json.loads(resp.body)
    assert (env["REQUEST_METHOD"], env["REQUEST_URI"]) == (method, uri)


@pytest.mark.parametrize("target", [b"/caf\xc3\xa9", b"/\xff", b"/a\x80b"])
def test_raw_non_ascii_targets_are_refused(recorded, target):
    addr, rec = recorded()
    refused(exchange(addr, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"), "non-ASCII")
    assert rec.paths == []


@pytest.mark.parametrize("ext", [b" ;a", b"; a", b"\t;\ta = b", b';a= "q" ; b'])
def test_chunk_extensions_may_have_whitespace(serve_app, ext):
    addr = serve_app(apps.echo_body)
    body = b"5" + ext + b"\r\nhello\r\n0" + ext + b"\r\n\r\n"
    headers = [("Transfer-Encoding", "chunked"), ("Connection", "close")]
    data = request("POST", "/c", headers=headers, body=body)
    resp = exchange(addr, data)
    assert resp.status == 200, resp
    assert resp.body == b"hello"


@pytest.mark.parametrize("ext", [b" ", b";a ", b" ; ", b";a="])
def test_chunk_extensions_still_refuse_stray_whitespace(serve_app, ext):
    addr = serve_app(apps.echo_body)
    data = request("POST", "/c", headers=[("Transfer-Encoding", "chunked")],
                   body=b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")
    assert exchange(addr, data).status == 400
