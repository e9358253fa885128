"""The access log (``access_log=True``): one line per request on ``rswaitress.access`` at
INFO, with Gunicorn's atoms, checked against what was sent and served over real sockets.
"""

import base64
import http.client
import logging
import logging.handlers
import os
import threading

import pytest

import apps
from helpers import WAIT
from rawhttp import RawClient, parse_response, request, send_raw, wait_until


@pytest.fixture
def access(caplog):
    """``access.lines(n)``: waits for ``n`` access log lines and returns them."""
    caplog.set_level(logging.INFO, logger="rswaitress.access")

    class Access:
        @staticmethod
        def records():
            return [r for r in list(caplog.records) if r.name == "rswaitress.access"]

        @classmethod
        def lines(cls, n):
            assert wait_until(lambda: len(cls.records()) >= n, WAIT), cls.records()
            return [r.getMessage() for r in cls.records()]

    return Access


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/304":
        start_response("304 Not Modified", [("ETag", '"x"')])
        return [b""]
    if path == "/cut":
        # Promises 100 bytes, gives 10: the connection is closed after them.
        start_response("200 OK", [("Content-Length", "100")])
        return [b"0123456789"]
    if path == "/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"abc", b"defg"])
    if path == "/boom":
        raise RuntimeError("boom")
    body = b"hello body"
    start_response("201 Created", [("Content-Length", str(len(body))), ("X-Out", "out-value")])
    return [body]


def test_every_atom(make_server, access):
    fmt = ("%(h)s|%(l)s|%(u)s|%(r)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(f)s|%(a)s"
           "|%(T)s|%(M)s|%(D)s|%(L)s|%(p)s|%({X-Trace}i)s|%({x-out}o)s|%({REQUEST_METHOD}e)s"
           "|%({nope}e)s|%(zz)s|%(t)s")
    srv = make_server(_app, access_log=True, access_log_format=fmt)
    auth = base64.b64encode(b"alice:secret").decode()
    resp = parse_response(send_raw(srv.addr, request("GET", "/a%20b/c?x=1&y=2", headers=[
        ("Authorization", f"Basic {auth}"), ("Referer", "http://ref.example/"),
        ("User-Agent", "tester/1.0"), ("X-Trace", "t-42"), ("Connection", "close")])))
    assert resp.status == 201
    (line,) = access.lines(1)
    f = line.split("|")
    assert f[:13] == ["127.0.0.1", "-", "alice", "GET /a%20b/c?x=1&y=2 HTTP/1.1", "GET", "/a b/c",
                      "x=1&y=2", "HTTP/1.1", "201", "10", "10", "http://ref.example/",
                      "tester/1.0"]
    seconds, millis, micros, decimal = int(f[13]), int(f[14]), int(f[15]), float(f[16])
    assert seconds == millis // 1000 == micros // 1_000_000
    assert millis == micros // 1000
    assert round(decimal * 1e6) == micros
    assert f[17] == f"<{os.getpid()}>"
    assert f[18:23] == ["t-42", "out-value", "GET", "-", "-"]
    assert f[23].startswith("[") and f[23].endswith("]") and len(f[23]) == 28


def test_default_format_is_gunicorns(make_server, access):
    srv = make_server(_app, access_log=True)
    send_raw(srv.addr, request("GET", "/x", headers=[("Connection", "close")]))
    (line,) = access.lines(1)
    head, rest = line.split(" [", 1)
    assert head == "127.0.0.1 - -"
    assert rest.split("] ", 1)[1] == '"GET /x HTTP/1.1" 201 10 "-" "-"'


@pytest.mark.parametrize("method, path, status, sent", [
    ("HEAD", "/", 201, "0"),           # no body goes out for HEAD
    ("GET", "/304", 304, "0"),         # nor for 304
    ("GET", "/cut", 200, "10"),        # what was sent, not what was promised
    ("GET", "/chunked", 200, "7"),     # body bytes, without the chunk framing
    ("GET", "/boom", 500, None),       # the server's error page
])
def test_status_and_bytes_are_what_was_sent(make_server, access, method, path, status, sent):
    srv = make_server(_app, access_log=True, access_log_format="%(s)s %(b)s")
    data = request(method, path, headers=[("Connection", "close")])
    resp = parse_response(send_raw(srv.addr, data), method=method)
    assert resp.status == status
    (line,) = access.lines(1)
    code, bytes_sent = line.split()
    assert int(code) == status
    if sent is None:
        assert int(bytes_sent) == len(resp.body) > 0
    else:
        assert bytes_sent == sent


def test_client_bytes_are_escaped(make_server, access):
    srv = make_server(_app, access_log=True, access_log_format='"%(r)s" "%(a)s" %({x-h}i)s')
    raw = (b'GET /q"uote\\ HTTP/1.1\r\nHost: x\r\nUser-Agent: evil" 200 "fake\r\n'
           b"X-H: caf\xc3\xa9\r\nConnection: close\r\n\r\n")
    assert parse_response(send_raw(srv.addr, raw)).status == 201
    (line,) = access.lines(1)
    assert line == '"GET /q\\"uote\\\\ HTTP/1.1" "evil\\" 200 \\"fake" caf\\xc3\\xa9'


def _concurrent_gets(addr, clients, per_client, path):
    """`clients` threads, each sending `per_client` GETs of path(i, n) on one keep-alive
    connection and expecting 200; returns what went wrong."""
    errors = []

    def client(i):
        try:
            conn = http.client.HTTPConnection(*addr, timeout=WAIT)
            for n in range(per_client):
                conn.request("GET", path(i, n))
                r = conn.getresponse()
                r.read()
                assert r.status == 200
            conn.close()
        except Exception as e:  # returned to the test
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    return errors


def test_exact_line_count_under_concurrent_load(make_server, access):
    srv = make_server(apps.hello, access_log=True, access_log_format="%(U)s %(s)s", threads=4)
    clients, per_client = 8, 250
    assert not _concurrent_gets(srv.addr, clients, per_client, lambda i, n: f"/c{i}/r{n}")
    lines = access.lines(clients * per_client)
    assert len(lines) == clients * per_client
    # Complete, never interleaved: every line is exactly one request's.
    expected = [f"/c{i}/r{n} 200" for i in range(clients) for n in range(per_client)]
    assert sorted(lines) == sorted(expected)


def test_off_by_default(make_server, access):
    srv = make_server(_app)
    with RawClient(srv.addr) as c:
        c.send(request("GET", "/"))
        assert c.read_response().status == 201
    # A request logged would be delivered before the connection's next exchange ends.
    srv2 = make_server(_app, access_log=True, access_log_format="%(U)s")
    send_raw(srv2.addr, request("GET", "/marker", headers=[("Connection", "close")]))
    assert access.lines(1) == ["/marker"]


def test_bad_formats_are_refused_at_once():
    import rswaitress

    for bad, what in [("%(h)s %", "doubled"), ("%(h", "unterminated"), ("%d", "atom")]:
        with pytest.raises(ValueError, match=f"access_log_format: .*{what}"):
            rswaitress.create_server(_app, host="127.0.0.1", port=0, access_log_format=bad)


# --- lines written by the core itself when logging would do exactly that ---------------


@pytest.fixture
def scratch_logger():
    """A logger name, its handlers removed and propagation restored at teardown."""
    names = []

    def make(name):
        names.append(name)
        return logging.getLogger(name)

    yield make
    for name in names:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()
        lg.filters.clear()
        lg.propagate = True
        lg.setLevel(logging.NOTSET)


def test_which_configurations_the_core_writes_itself(scratch_logger, tmp_path):
    from rswaitress.access import fast_sinks

    lg = scratch_logger("rsw.test.sinks")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    assert fast_sinks("rsw.test.sinks") == []  # no handler: INFO goes nowhere
    h = logging.FileHandler(tmp_path / "a.log")
    h.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    lg.addHandler(h)
    ((fd, prefix, suffix),) = fast_sinks("rsw.test.sinks")
    assert fd == h.stream.fileno()
    assert (prefix, suffix) == (b"INFO:rsw.test.sinks:", b"\n")
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    assert fast_sinks("rsw.test.sinks") is None, "a time in the format: logging does it"
    h.setFormatter(logging.Formatter("{message}", style="{"))
    assert fast_sinks("rsw.test.sinks") is None
    h.setFormatter(None)
    assert fast_sinks("rsw.test.sinks")[0][1:] == (b"", b"\n")
    h.addFilter(lambda record: True)
    assert fast_sinks("rsw.test.sinks") is None, "a filter: logging does it"
    h.filters.clear()
    lg.addHandler(logging.handlers.RotatingFileHandler(tmp_path / "r.log"))
    assert fast_sinks("rsw.test.sinks") is None, "rotation: logging does it"
    for extra in list(lg.handlers[1:]):
        lg.removeHandler(extra)
        extra.close()
    lg.setLevel(logging.WARNING)
    assert fast_sinks("rsw.test.sinks") == [], "INFO disabled: dropped, as logging would"


def test_the_core_writes_the_bytes_logging_would(make_server, scratch_logger, tmp_path):
    lg = scratch_logger("rswaitress.access")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    path = tmp_path / "access.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s |"))
    lg.addHandler(handler)
    srv = make_server(_app, access_log=True, access_log_format="%(m)s %(U)s %(s)s")
    with RawClient(srv.addr) as c:
        for n in range(50):
            c.send(request("GET", f"/r{n}"))
            assert c.read_response().status == 201
    expected = "".join(f"INFO rswaitress.access: GET /r{n} 201 |\n" for n in range(50))
    assert wait_until(lambda: path.read_text() == expected, WAIT), path.read_text()


def test_a_filter_added_later_takes_effect(make_server, scratch_logger, tmp_path):
    lg = scratch_logger("rswaitress.access")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    path = tmp_path / "access.log"
    handler = logging.FileHandler(path)
    lg.addHandler(handler)
    srv = make_server(_app, access_log=True, access_log_format="%(U)s")
    seen = []

    def drop_secret(record):
        seen.append(record.getMessage())
        return "secret" not in record.getMessage()

    handler.addFilter(drop_secret)
    # The core looks at the configuration about once a second; from then on every line
    # goes through logging, and the filter sees (and drops) the secret ones.
    n = 0

    def through_filter():
        nonlocal n
        n += 1
        send_raw(srv.addr, request("GET", f"/secret{n}", headers=[("Connection", "close")]))
        return any(m == f"/secret{n}" for m in seen)

    assert wait_until(through_filter, WAIT)
    send_raw(srv.addr, request("GET", "/visible", headers=[("Connection", "close")]))
    assert wait_until(lambda: "/visible" in path.read_text(), WAIT)
    assert f"/secret{n}" not in path.read_text()


_MASTER = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
sys.path.insert(0, sys.argv[1])
import apps, rswaitress
if __name__ == "__main__":
    server = rswaitress.create_server(apps.hello, **json.loads(sys.argv[2]))
    print("PORT", server.effective_port, flush=True)
    server.run()
"""


@pytest.mark.posix_signals
def test_workers_share_one_stream_without_mixing_lines():
    """Two workers write their lines to the master's stderr (one pipe): every line comes
    whole, and there is one per request."""
    import json

    from procs import PythonChild, stop_processes

    kw = {"listen": "127.0.0.1:0", "workers": 2, "access_log": True,
          "access_log_format": "%(U)s %(s)s %(p)s"}
    child = PythonChild(_MASTER, os.path.dirname(os.path.abspath(__file__)), json.dumps(kw))
    try:
        port = child.read_port()
        for _ in range(2):
            child.stderr.wait_for(lambda line: "is serving" in line)
        clients, per_client = 6, 200
        assert not _concurrent_gets(("127.0.0.1", port), clients, per_client,
                                    lambda i, n: f"/c{i}/{n}")
        child.proc.terminate()
        assert child.proc.wait(WAIT) == 0
        out = child.stderr.rest().decode().splitlines() + child.stderr.seen
        lines = [line for line in out if line.startswith("rswaitress.access ")]
        assert len(lines) == clients * per_client
        paths = set()
        for line in lines:
            _, path, status, pid = line.split(" ")
            assert status == "200" and pid.startswith("<") and pid.endswith(">")
            paths.add(path)
        assert paths == {f"/c{i}/{n}" for i in range(clients) for n in range(per_client)}
    finally:
        stop_processes([child.proc])
