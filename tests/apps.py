"""WSGI applications the functional tests serve.

Plain functions are ready-made apps; ``make_*`` functions build an app around some state
the test reads afterwards (a file, an Event, a list of calls).
"""

import hashlib
import io
import json
import os
import threading
import time
from urllib.parse import parse_qs


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json_response(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def environ_snapshot(environ):
    """The environ as JSON-able data: strings as they are, other values described."""
    out = {}
    for k, v in environ.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, bool):
            out[k] = v
        elif k == "wsgi.version":
            out[k] = list(v)
        else:
            out[k] = f"<{type(v).__name__}>"
    for name in ("read", "readline", "readlines", "__iter__"):
        out[f"wsgi.input.{name}"] = hasattr(environ["wsgi.input"], name)
    out["wsgi.errors.is_stderr"] = environ["wsgi.errors"] is __import__("sys").stderr
    out["wsgi.file_wrapper.callable"] = callable(environ.get("wsgi.file_wrapper"))
    return out


def echo_environ(environ, start_response):
    """Answers with the environ as JSON (the body is read and reported as its length)."""
    snap = environ_snapshot(environ)
    snap["_body_len"] = len(environ["wsgi.input"].read())
    return _json_response(start_response, snap)


def echo_body(environ, start_response):
    """Answers with the request body; X-Content-Length repeats the CONTENT_LENGTH key."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(len(body))),
        ("X-Content-Length", environ.get("CONTENT_LENGTH", "<absent>")),
        ("X-Method", environ["REQUEST_METHOD"]),
        ("X-Path", environ["PATH_INFO"]),
    ])
    return [body]


def input_methods(environ, start_response):
    """Reads wsgi.input in the way ``?mode=`` says and reports what it got.

    modes: read, read_n (``n``), readline, readline_n (``n``), readlines,
    readlines_hint (``n``), iter, mixed, digest (sha256 and length of read())."""
    q = _query(environ)
    mode = q.get("mode", "read")
    n = int(q.get("n", "0") or 0)
    inp = environ["wsgi.input"]
    result = {"mode": mode}
    if mode == "read":
        result["parts"] = [inp.read()]
    elif mode == "read_n":
        parts = []
        while True:
            piece = inp.read(n)
            if not piece:
                break
            parts.append(piece)
        result["parts"] = parts
    elif mode == "readline":
        parts = []
        while True:
            line = inp.readline()
            if not line:
                break
            parts.append(line)
        result["parts"] = parts
    elif mode == "readline_n":
        parts = []
        while True:
            line = inp.readline(n)
            if not line:
                break
            parts.append(line)
        result["parts"] = parts
    elif mode == "readlines":
        result["parts"] = inp.readlines()
    elif mode == "readlines_hint":
        result["parts"] = inp.readlines(n)
        result["rest"] = inp.read().decode("latin-1")
    elif mode == "iter":
        result["parts"] = list(inp)
    elif mode == "mixed":
        parts = [inp.read(3), inp.readline(), inp.readline(2), inp.read(0)]
        parts += inp.readlines()
        parts.append(inp.read())
        parts.append(inp.readline())
        result["parts"] = parts
    elif mode == "digest":
        data = inp.read()
        # Also check reading again at EOF gives nothing.
        result["again"] = inp.read().decode("latin-1")
        result["sha256"] = hashlib.sha256(data).hexdigest()
        result["len"] = len(data)
        result["content_length"] = environ.get("CONTENT_LENGTH")
    elif mode == "digest_lines":
        h = hashlib.sha256()
        count = 0
        total = 0
        for line in inp:
            h.update(line)
            count += 1
            total += len(line)
        result["sha256"] = h.hexdigest()
        result["lines"] = count
        result["len"] = total
    if "parts" in result:
        result["parts"] = [p.decode("latin-1") for p in result["parts"]]
    return _json_response(start_response, result)


def hello(environ, start_response):
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def list_one_no_length(environ, start_response):
    """A one-item list without Content-Length: the server computes it."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"computed length"]


def list_two_no_length(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"first,", b"second"]


def generator_app(environ, start_response):
    """Yields ``?n=`` pieces of ``?size=`` bytes (default 3 x 5), no Content-Length."""
    q = _query(environ)
    n = int(q.get("n", 3))
    size = int(q.get("size", 5))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        for i in range(n):
            yield bytes([ord("a") + i % 26]) * size

    return gen()


def generator_with_length(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])

    def gen():
        yield b"01234"
        yield b"56789"

    return gen()


def short_body(environ, start_response):
    """Declares 20 bytes, sends 5."""
    start_response("200 OK", [("Content-Length", "20")])
    return [b"short"]


def long_body(environ, start_response):
    """Declares 5 bytes, sends 20 (the excess is cut)."""
    start_response("200 OK", [("Content-Length", "5")])
    return [b"0123456789", b"abcdefghij"]


def write_app(environ, start_response):
    """Uses write(): ``?cl=1`` sets a Content-Length; returns one more piece."""
    q = _query(environ)
    headers = [("Content-Type", "text/plain")]
    if q.get("cl"):
        headers.append(("Content-Length", "15"))
    write = start_response("200 OK", headers)
    write(b"write1,")
    write(b"write2,")
    return [b"ret"]


def write_then_empty(environ, start_response):
    write = start_response("200 OK", [("Content-Length", "12")])
    write(b"via write() ")
    return []


def head_app(environ, start_response):
    """Returns a body for any method, HEAD included; ``?mode=`` picks the framing:
    length (Content-Length header), list1 (computed), chunked (generator)."""
    mode = _query(environ).get("mode", "length")
    body = b"this body must not reach a HEAD client"
    if mode == "length":
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if mode == "list1":
        start_response("200 OK", [])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([body[:10], body[10:]])


def make_file_app(path, content_length=None, seek=0):
    """Serves ``path`` through wsgi.file_wrapper (a real file: sendfile applies)."""

    def app(environ, start_response):
        f = open(path, "rb")
        f.seek(seek)
        headers = [("Content-Type", "application/octet-stream")]
        if content_length is not None:
            headers.append(("Content-Length", str(content_length)))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f, 65536)

    return app


def make_bytesio_app(data, content_length=None):
    """wsgi.file_wrapper over a BytesIO (no descriptor: iterated)."""

    def app(environ, start_response):
        headers = [("Content-Type", "application/octet-stream")]
        if content_length is not None:
            headers.append(("Content-Length", str(content_length)))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](io.BytesIO(data), 1000)

    return app


class BoomError(Exception):
    pass


def raise_before_start(environ, start_response):
    raise BoomError("before start_response")


def raise_after_start(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise BoomError("after start_response")


def raise_in_generator(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first piece"
        raise BoomError("in the generator")

    return gen()


def raise_after_write(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written")
    raise BoomError("after write")


def exc_info_before_body(environ, start_response):
    """Catches its own error before any body and replaces the response (PEP 3333)."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Dropped", "yes")])
    try:
        raise BoomError("handled")
    except BoomError:
        import sys

        start_response("503 Service Unavailable", [("X-Replaced", "yes")], sys.exc_info())
    return [b"replacement body"]


def exc_info_after_body(environ, start_response):
    """Calls start_response with exc_info after body bytes went out: it re-raises."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"already sent")
    try:
        raise BoomError("too late")
    except BoomError:
        import sys

        start_response("500 Internal Server Error", [], sys.exc_info())
    return [b"never"]


def start_response_twice(environ, start_response):
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"no"]


def make_bad_response_app(status="200 OK", headers=()):
    """Calls start_response with what it is given (validation must refuse it)."""

    def app(environ, start_response):
        start_response(status, list(headers))
        return [b"should not be sent"]

    return app


def returns_str(environ, start_response):
    start_response("200 OK", [])
    return ["not bytes"]


def sleepy(environ, start_response):
    """Sleeps ``?s=`` seconds (default 0.5) and says so."""
    s = float(_query(environ).get("s", 0.5))
    time.sleep(s)
    body = f"slept {s}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def announcing_sleepy(environ, start_response):
    """``sleepy`` after printing "APP STARTED <path>" on stdout, so that a test running
    the server in a child process can wait for the request to be in the app."""
    print("APP STARTED", environ["PATH_INFO"], flush=True)
    return sleepy(environ, start_response)


def status_app(environ, start_response):
    """Answers with the status in ``?status=`` (e.g. 204, 304) and a body."""
    code = _query(environ).get("status", "200")
    reasons = {"204": "No Content", "304": "Not Modified", "200": "OK", "404": "Not Found"}
    start_response(f"{code} {reasons.get(code, 'Whatever')}", [("Content-Type", "text/plain")])
    return [b"body for " + code.encode()]


def headers_app(environ, start_response):
    """Lowercase and repeated header names, a Server and Date of its own if asked."""
    q = _query(environ)
    headers = [("x-lower", "1"), ("Set-Cookie", "a=1"), ("content-type", "text/plain"),
               ("set-cookie", "b=2"), ("Content-Length", "2")]
    if q.get("server"):
        headers.append(("Server", "myapp/1.0"))
    if q.get("date"):
        headers.append(("Date", "Tue, 01 Jan 2030 00:00:00 GMT"))
    start_response("200 OK", headers)
    return [b"ok"]


class Recorder:
    """Counts the requests an app saw and keeps their paths."""

    def __init__(self, app=hello):
        self.app = app
        self.paths = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            self.paths.append(environ["PATH_INFO"])
        return self.app(environ, start_response)


class Started:
    """Wraps an app; ``event`` is set once a request is in it (for tests running the
    server in-process)."""

    def __init__(self, app):
        self.app = app
        self.event = threading.Event()

    def __call__(self, environ, start_response):
        self.event.set()
        return self.app(environ, start_response)


class ClosingIterable:
    """An app iterable yielding ``pieces`` x ``size`` bytes; close() sets ``closed`` and
    records whether iteration was cut short."""

    def __init__(self, pieces, size, on_close, delay=0.0):
        self.pieces = pieces
        self.size = size
        self.on_close = on_close
        self.delay = delay
        self.yielded = 0

    def __iter__(self):
        for _ in range(self.pieces):
            if self.delay:
                time.sleep(self.delay)
            self.yielded += 1
            yield b"x" * self.size

    def close(self):
        self.on_close(self)


def make_closing_app(pieces=10, size=1024, delay=0.0, content_length=True):
    """An app whose iterable records its close(). Returns (app, state) where state has
    ``closed`` (threading.Event) and ``yielded`` (pieces produced before close)."""

    class State:
        closed = threading.Event()
        yielded = None
        calls = 0

    state = State()

    def on_close(it):
        state.yielded = it.yielded
        state.calls += 1
        state.closed.set()

    def app(environ, start_response):
        headers = [("Content-Type", "application/octet-stream")]
        if content_length:
            headers.append(("Content-Length", str(pieces * size)))
        start_response("200 OK", headers)
        return ClosingIterable(pieces, size, on_close, delay)

    return app, state


def make_closing_generator_app():
    """A real generator: close() raises GeneratorExit inside it; ``state`` records it."""

    class State:
        finalized = threading.Event()

    state = State()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            try:
                yield b"one "
                yield b"two"
            finally:
                state.finalized.set()

        return gen()

    return app, state


def big_generator(environ, start_response):
    """``?mb=`` MiB (default 4) in 64 KiB pieces of a repeating pattern, with
    Content-Length unless ``?nocl=1``."""
    q = _query(environ)
    total = int(float(q.get("mb", 4)) * 1024 * 1024)
    piece = bytes(range(256)) * 256  # 64 KiB
    headers = [("Content-Type", "application/octet-stream")]
    if not q.get("nocl"):
        headers.append(("Content-Length", str(total)))
    start_response("200 OK", headers)

    def gen():
        sent = 0
        while sent < total:
            chunk = piece[: total - sent]
            sent += len(chunk)
            yield chunk

    return gen()


def big_pattern(total):
    piece = bytes(range(256)) * 256
    return (piece * (total // len(piece) + 1))[:total]


def worker_info(environ, start_response):
    """For worker-process tests: ``/crash`` ends the process at once (a crash, as a
    segfault would); ``/slow?s=N`` prints SLOW and sleeps N seconds first; every answer
    is the process's pid and ``wsgi.multiprocess``, as JSON."""
    path = environ["PATH_INFO"]
    if path == "/crash":
        os._exit(17)
    if path == "/slow":
        # One write (atomic on a pipe): the workers share the master's stdout.
        os.write(1, b"SLOW\n")
        time.sleep(float(_query(environ).get("s", "1")))
    return _json_response(start_response, {"pid": os.getpid(),
                                           "multiprocess": environ["wsgi.multiprocess"],
                                           "path": path})
