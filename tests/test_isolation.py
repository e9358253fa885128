"""No single client and no single Python call can stall the server.

- A stream of worst-case request heads (tens of thousands of short header lines, within
  max_request_header_size) on a few connections: other connections keep being answered.
- Clients that ask for a large response and stop reading: their pool threads are freed
  after channel_timeout, the applications' iterables are closed, the event is logged.
- An application call that holds the GIL (a C call that never releases it): the reactor
  goes on accepting, refusing bad requests and flushing other responses meanwhile.
- A client whose next request is in before its response has finished (the application's
  close() still running) does not keep the pool thread to itself: requests of other
  connections waiting in the queue go first.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import apps
from helpers import WAIT
from rawhttp import RawClient, connect, parse_response, request, send_raw, wait_until

#: Largest head that stays under the default max_request_header_size (262144 bytes).
HEAD_LIMIT = 262144


def worst_case_head(distinct, limit=HEAD_LIMIT):
    """One request line, then as many short header lines as fit under ``limit``: the
    same name repeated (joined into one value), or a different name on every line."""
    start = b"GET /heavy HTTP/1.1\r\nHost: x\r\n"
    room = limit - len(start) - 8
    if not distinct:
        return start + b"a:b\r\n" * (room // 5) + b"\r\n"
    lines = []
    used = 0
    i = 0
    while True:
        line = b"%x:\r\n" % i
        if used + len(line) > room:
            break
        lines.append(line)
        used += len(line)
        i += 1
    return start + b"".join(lines) + b"\r\n"


@pytest.mark.parametrize("distinct", [True, False], ids=["distinct-names", "one-name"])
def test_worst_case_heads_do_not_stall_other_connections(make_server, distinct):
    srv = make_server(apps.hello, threads=2)
    head = worst_case_head(distinct)
    assert len(head) < HEAD_LIMIT
    done = threading.Event()
    answers = []
    errors = []

    def heavy_client():
        try:
            with RawClient(srv.addr, timeout=WAIT) as c:
                for _ in range(4):
                    c.send(head)
                    answers.append(c.read_response().status)
        except Exception as e:  # reported below
            errors.append(e)

    heavy = [threading.Thread(target=heavy_client) for _ in range(3)]
    for t in heavy:
        t.start()
    try:
        # Meanwhile a keep-alive client and fresh connections are answered; each socket
        # operation is bounded by the client's timeout (a hang guard, not a speed limit).
        with RawClient(srv.addr) as c:
            for i in range(40):
                c.send(request(path=f"/light{i}"))
                assert c.read_response().status == 200
        for _ in range(10):
            r = parse_response(send_raw(srv.addr, request(headers=[("Connection", "close")])))
            assert r.status == 200
    finally:
        for t in heavy:
            t.join(WAIT)
        done.set()
    assert not errors, errors
    assert answers == [200] * 12


class _Endless:
    """An iterable of 64 KiB pieces without end; close() is recorded."""

    def __init__(self, closed, started):
        self.closed = closed
        started.release()

    def __iter__(self):
        piece = b"x" * 65536
        while True:
            yield piece

    def close(self):
        self.closed.release()


def test_slow_readers_free_their_workers(make_server, logs):
    closed = threading.Semaphore(0)
    started = threading.Semaphore(0)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/big":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return _Endless(closed, started)
        return apps.hello(environ, start_response)

    threads = 2
    srv = make_server(app, threads=threads, channel_timeout=1, cleanup_interval=1,
                      outbuf_high_watermark=65536)
    readers = []
    for _ in range(threads):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(srv.addr)
        s.sendall(request(path="/big"))
        readers.append(s)
    try:
        for _ in range(threads):
            assert started.acquire(timeout=WAIT), "the application was not called"
        t0 = time.monotonic()
        # Every pool thread is now blocked on a client that reads nothing; each is freed
        # once its client has accepted no bytes for channel_timeout.
        for _ in range(threads):
            assert closed.acquire(timeout=WAIT), "a slow reader still holds its pool thread"
        assert time.monotonic() - t0 >= 0.9, "closed before channel_timeout"
        r = parse_response(send_raw(srv.addr, request(headers=[("Connection", "close")])))
        assert r.status == 200
        what = "accepted none of its response"
        assert wait_until(lambda: len(logs.find(what)) >= threads), logs.records()
    finally:
        for s in readers:
            s.close()


class _Closing:
    """A body whose close() waits until ``sent`` is set (the client sent its next
    request), then a little more, so that the request has been read by then."""

    def __init__(self, sent):
        self.sent = sent

    def __iter__(self):
        yield b"a"

    def close(self):
        self.sent.wait(WAIT)
        time.sleep(0.01)


def test_a_client_asking_at_once_does_not_keep_the_thread(make_server):
    rounds = 40
    sent = [threading.Event() for _ in range(rounds + 1)]
    served = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        served.append(path)
        start_response("200 OK", [("Content-Length", "1")])
        if path.startswith("/a/"):
            return _Closing(sent[int(path[3:]) + 1])
        return [b"b"]

    srv = make_server(app, threads=1)
    b_sent = threading.Event()
    a_errors = []

    def client_a():
        try:
            with RawClient(srv.addr, timeout=WAIT) as c:
                for i in range(rounds):
                    if i == 3:
                        assert b_sent.wait(WAIT)
                    c.send(request(path=f"/a/{i}"))
                    sent[i].set()
                    assert c.read_response().status == 200
        except Exception as e:  # reported by the main thread
            a_errors.append(e)
        finally:
            sent[rounds].set()

    a = threading.Thread(target=client_a)
    a.start()
    try:
        assert wait_until(lambda: len(served) >= 3)
        with RawClient(srv.addr, timeout=WAIT) as b:
            b.send(request(path="/b"))
            b_sent.set()
            assert b.read_response().status == 200
        # /a/3 reached the server while /a/2 was finishing, after /b was queued: /b goes
        # first (a few places of slack for a slow machine; unfair, it came after all 40).
        assert served.index("/b") <= 6, served
    finally:
        b_sent.set()
        a.join(WAIT)
    assert not a_errors, a_errors
    assert len(served) == rounds + 1


_HOLDER = r"""
import ctypes, sys
sys.path.insert(0, sys.argv[2])
import rswaitress

fd = int(sys.argv[1])
libc = ctypes.PyDLL(None)  # calls through PyDLL keep the GIL
BIG = b"z" * (8 << 20)

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hold":
        print("HOLDING", flush=True)
        buf = ctypes.create_string_buffer(1)
        libc.read(fd, buf, 1)  # blocks, GIL held, until the test writes a byte
        start_response("200 OK", [("Content-Length", "4")])
        return [b"held"]
    if path == "/big":
        start_response("200 OK", [("Content-Length", str(len(BIG)))])
        return [BIG]
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

srv = rswaitress.create_server(app, host="127.0.0.1", port=0, threads=2)
print("PORT", srv.effective_port, flush=True)
srv.run()
"""


@pytest.mark.posix
def test_gil_holding_call_does_not_stall_the_reactor(tmp_path):
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(r), os.path.dirname(__file__)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(r,),
    )
    os.close(r)
    try:
        port = int(proc.stdout.readline().split()[1])
        addr = ("127.0.0.1", port)
        # A large response, read only in part: the rest waits in the server for the
        # reactor to flush.
        big = connect(addr)
        big.sendall(request(path="/big"))
        first = big.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK")
        holder = RawClient(addr, timeout=WAIT)
        holder.send(request(path="/hold"))
        assert proc.stdout.readline().strip() == b"HOLDING"
        # The GIL is held until the byte is written below. Meanwhile:
        # - the rest of the large response is flushed,
        body = first
        while len(body) < 8 << 20:
            chunk = big.recv(1 << 20)
            assert chunk, "the large response was cut"
            body += chunk
        assert body.endswith(b"z" * 1000)
        # - new connections are accepted, and requests the reactor refuses on its own
        #   are answered,
        for bad in (b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                    b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n"):
            resp = parse_response(send_raw(addr, bad))
            assert resp.status == 400
        # - and the held request is still held (nothing has been written for it).
        holder.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            holder.sock.recv(1)
        os.write(w, b"x")
        resp = holder.read_response()
        assert (resp.status, resp.body) == (200, b"held")
        big.close()
        holder.close()
    finally:
        os.close(w)
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
