"""A tiny HTTP/1.x client over raw sockets, for tests that must control every byte.

``send_raw`` sends bytes and returns everything the server sends back until it closes
the connection (or the timeout passes); ``parse_responses`` splits such bytes into
responses. ``RawClient`` keeps a connection open to read one response at a time
(keep-alive, pipelining, 100 Continue).
"""

import socket
import time

from helpers import WAIT

#: How long a socket wait lasts before it gives up (a guard against a hang only: the
#: tests never rely on it running out).
TIMEOUT = WAIT


class ResponseError(Exception):
    pass


class Response:
    """One parsed response: ``status`` (int), ``reason``, ``version``, ``headers`` (list
    of (name, value) in arrival order), ``body`` (de-chunked), ``raw_body`` (as it came,
    framing included) and ``raw_head``."""

    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.raw_head = raw_head
        self.body = b""
        self.raw_body = b""
        self.chunked = False
        self.complete = True

    def header(self, name, default=None):
        """The first value of header ``name`` (case-insensitive)."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def get_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __contains__(self, name):
        return self.header(name) is not None

    @property
    def header_names(self):
        return [k for k, _ in self.headers]

    def __repr__(self):
        return f"<Response {self.status} {self.reason!r} {self.headers!r} body={self.body[:80]!r}>"


def connect(addr, timeout=TIMEOUT):
    """Connects to ``(host, port)`` or to a Unix socket path (str or Path)."""
    if isinstance(addr, tuple):
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr = str(addr)
    sock.settimeout(timeout)
    sock.connect(addr)
    return sock


def recv_until_close(sock, timeout=TIMEOUT):
    """Reads until EOF (or a reset), or until ``timeout`` seconds have passed in all."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def send_raw(addr, data, timeout=TIMEOUT, shut_write=False):
    """Sends ``data`` in one sendall() and returns all the bytes the server sends back
    before it closes the connection (or ``timeout`` passes)."""
    sock = connect(addr, timeout)
    try:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return recv_until_close(sock, timeout)
    finally:
        sock.close()


def _parse_head(buf, start):
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        return None
    raw_head = buf[start:end + 4]
    lines = raw_head[:-4].split(b"\r\n")
    parts = lines[0].decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ResponseError(f"bad status line {lines[0]!r}")
    version, status = parts[0], int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ResponseError(f"bad header line {line!r}")
        headers.append((name, value.strip()))
    return Response(version, status, reason, headers, raw_head), end + 4


def _dechunk(buf, pos):
    """Decodes a chunked body starting at ``pos``; returns (body, end, complete). When
    incomplete, ``body`` holds the complete chunks seen so far."""
    body = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(body), pos, False
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            # trailers (none expected) then the blank line
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return b"".join(body), pos, False
                line = buf[pos:eol]
                pos = eol + 2
                if not line:
                    return b"".join(body), pos, True
        if len(buf) < pos + size + 2:
            return b"".join(body), pos, False
        body.append(buf[pos:pos + size])
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise ResponseError("chunk not followed by CRLF")
        pos += size + 2


def no_body_expected(method, status):
    return method == "HEAD" or 100 <= status < 200 or status in (204, 304)


def parse_one(buf, start=0, method="GET", eof=True):
    """Parses the response starting at ``buf[start]``. Returns (response, end) or None
    when more bytes are needed. With ``eof`` the buffer is all there is (a body framed
    by the close runs to its end, and a short body is returned with complete=False)."""
    parsed = _parse_head(buf, start)
    if parsed is None:
        if eof and start < len(buf):
            raise ResponseError(f"incomplete head: {buf[start:start + 200]!r}")
        return None
    resp, pos = parsed
    if no_body_expected(method, resp.status):
        return resp, pos
    te = resp.header("Transfer-Encoding")
    cl = resp.header("Content-Length")
    if te is not None and "chunked" in te.lower():
        resp.chunked = True
        body, end, complete = _dechunk(buf, pos)
        if not complete:
            if not eof:
                return None
            resp.complete = False
            resp.body = body
            resp.raw_body = buf[pos:]
            return resp, len(buf)
        resp.body = body
        resp.raw_body = buf[pos:end]
        return resp, end
    if cl is not None:
        n = int(cl)
        if len(buf) - pos < n:
            if not eof:
                return None
            resp.complete = False
            resp.body = resp.raw_body = buf[pos:]
            return resp, len(buf)
        resp.body = resp.raw_body = buf[pos:pos + n]
        return resp, pos + n
    # Delimited by the close.
    if not eof:
        return None
    resp.body = resp.raw_body = buf[pos:]
    return resp, len(buf)


def parse_responses(buf, methods=None):
    """Splits ``buf`` (everything received up to the close) into responses. ``methods``
    lists the request methods in order (HEAD responses have no body); interim 1xx
    responses take no entry of their own."""
    methods = list(methods or [])
    out = []
    pos = 0
    i = 0
    while pos < len(buf):
        method = methods[i] if i < len(methods) else "GET"
        resp, pos = parse_one(buf, pos, method, eof=True)
        out.append(resp)
        if not 100 <= resp.status < 200:
            i += 1
    return out


def parse_response(buf, method="GET"):
    """The single response in ``buf``; fails if there are other bytes."""
    rs = parse_responses(buf, [method])
    if len(rs) != 1:
        raise ResponseError(f"expected one response, got {len(rs)}: {rs!r}")
    return rs[0]


class RawClient:
    """One connection, read one response at a time."""

    def __init__(self, addr, timeout=TIMEOUT):
        self.sock = connect(addr, timeout)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no complete response in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    def read_response(self, method="GET", timeout=None):
        """Reads exactly one response (an interim 1xx counts as one)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            got = parse_one(self.buf, 0, method, eof=self.eof)
            if got is not None:
                resp, end = got
                self.buf = self.buf[end:]
                return resp
            if self.eof:
                raise ResponseError("connection closed before a complete response")
            self._fill(deadline)

    def read_until(self, marker, timeout=None):
        """Reads until ``marker`` has arrived; the bytes stay for read_response()."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.buf:
            if self.eof:
                raise ResponseError(f"connection closed before {marker!r}: {self.buf!r}")
            self._fill(deadline)

    def read_until_close(self, timeout=None):
        data = self.buf + recv_until_close(self.sock, timeout or self.timeout)
        self.buf = b""
        return data

    def peer_closed(self, timeout=WAIT):
        """True when the server closes the connection (EOF or reset) within ``timeout``
        with no further bytes; False if the connection is still open then. To show that
        a connection stays open, pass a short ``timeout``."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if data:
            self.buf += data
            return False
        return True

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request(method="GET", path="/", version="HTTP/1.1", headers=(), body=b"", host="localhost"):
    """Builds request bytes. ``headers`` is a list of (name, value); a Host header is
    added for HTTP/1.1 unless given; Content-Length is added for a body unless a
    Content-Length or Transfer-Encoding is given."""
    headers = list(headers)
    names = {k.lower() for k, _ in headers}
    if version == "HTTP/1.1" and "host" not in names and host is not None:
        headers.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(body))))
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


#: Headers for a request after which the server closes the connection.
CLOSE = [("Connection", "close")]


def get(addr, path="/", headers=(), method="GET", body=b"", version="HTTP/1.1"):
    """One request on a new connection, ``Connection: close`` added: the parsed
    response."""
    data = request(method, path, version=version, headers=list(headers) + CLOSE, body=body)
    return parse_response(send_raw(addr, data), method)


def chunked(*pieces, trailer=b""):
    """A chunked body made of ``pieces``."""
    out = b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + trailer + b"\r\n"


def wait_until(predicate, timeout=WAIT, interval=0.02):
    """Polls ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)
