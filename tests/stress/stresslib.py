"""Shared pieces of the stress run (run_stress.py) and its pytest tests.

- ``ServerProcess``: tests/stress/server_app.py as a subprocess, stopped by its PID.
- ``/proc`` readings of that process: VmRSS, open descriptors, threads.
- ``abort_connections``: opens connections in batches and abandons each of them in one
  of the ``ABORT_STYLES``, bounded in time.
- ``settle``: waits (bounded) for descriptor and thread counts to come back down.
- ``http_request``: one plain request over a fresh connection, for liveness checks.
"""

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_SCRIPT = os.path.join(HERE, "server_app.py")
HOST = "127.0.0.1"
HELLO = b"Hello, World!"


# --------------------------------------------------------------------------
# The server subprocess
# --------------------------------------------------------------------------


class ServerProcess:
    """``server_app.py`` in a subprocess; ``.pid``, ``.port``; ``stop()`` ends it (by
    PID: SIGTERM, then SIGKILL after ``timeout`` seconds).  Its stderr goes to a
    temporary file, read back with ``stderr_text()``."""

    def __init__(self, threads=4, connection_limit=2000, nice=0, start_timeout=20.0):
        self._err = tempfile.TemporaryFile()
        cmd = [sys.executable, SERVER_SCRIPT, "--port", "0", "--threads", str(threads),
               "--connection-limit", str(connection_limit)]
        preexec = (lambda: os.nice(nice)) if nice else None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err,
                                     stdin=subprocess.DEVNULL, preexec_fn=preexec)
        self.pid = self.proc.pid
        self.port = None
        try:
            self.port = self._read_port(start_timeout)
            wait_answering(self.port, timeout=start_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_port(self, timeout):
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.splitlines():
                    if line.startswith(b"PORT "):
                        return int(line.split()[1])
            elif self.proc.poll() is not None:
                break
        raise RuntimeError(f"server did not report its port; stderr:\n{self.stderr_text()}")

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10.0):
        """Stops the server; returns its exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
                return None
            finally:
                self.proc.stdout.close()
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        return self.proc.returncode

    def stderr_text(self, limit=4000):
        self._err.seek(0)
        data = self._err.read()
        text = data.decode("utf-8", "replace")
        return text[-limit:]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def git_rev():
    """The checkout's short commit, marked when src/ or python/ have changes."""
    try:
        rev = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--", ":(top)src",
                                ":(top)python"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + (" (src/ or python/ modified)" if dirty else "")
    except Exception:
        return "?"


# --------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------


def rss_kib(pid):
    """VmRSS of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_kinds(pid):
    """{kind: count} of the open descriptors, kind being "socket", "pipe",
    "anon_inode:[eventpoll]", a file path, ...; for telling what leaked."""
    kinds = {}
    d = f"/proc/{pid}/fd"
    for name in os.listdir(d):
        try:
            target = os.readlink(os.path.join(d, name))
        except OSError:
            continue
        kind = target.split(":[", 1)[0] if target.startswith(("socket:", "pipe:")) else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def settle(pid, fds_before, threads_before, timeout=5.0, tolerance=0):
    """Polls until the open-descriptor count is <= ``fds_before + tolerance`` and the
    thread count is <= ``threads_before``, for at most ``timeout`` seconds.  Returns
    ``(fds, threads, seconds_waited)`` as last read."""
    start = time.monotonic()
    while True:
        fds, threads = fd_count(pid), thread_count(pid)
        waited = time.monotonic() - start
        if (fds <= fds_before + tolerance and threads <= threads_before) or waited >= timeout:
            return fds, threads, waited
        time.sleep(0.1)


def stable_counts(pid, timeout=5.0):
    """(fds, threads) once two readings 0.3 s apart agree (at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    last = (fd_count(pid), thread_count(pid))
    while time.monotonic() < deadline:
        time.sleep(0.3)
        cur = (fd_count(pid), thread_count(pid))
        if cur == last:
            return cur
        last = cur
    return last


# --------------------------------------------------------------------------
# Plain requests
# --------------------------------------------------------------------------


def _recv_response(sock, timeout=5.0):
    """Reads one response with Content-Length; returns (status, body)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full head: {buf!r}")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body[:length]


def http_request(port, path="/", body=None, timeout=5.0):
    """One request on a new connection (``Connection: close``); returns (status, body)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        if body is None:
            req = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        else:
            req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        s.sendall(req)
        return _recv_response(s, timeout)


def server_answers(port, timeout=5.0):
    """True when GET / and POST /echo (1 KiB) both answer correctly."""
    try:
        st1, b1 = http_request(port, "/", timeout=timeout)
        st2, b2 = http_request(port, "/echo", body=b"x" * 1024, timeout=timeout)
    except OSError:
        return False
    return st1 == 200 and b1 == HELLO and st2 == 200 and b2 == b"1024"


def wait_answering(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = http_request(port, "/", timeout=2.0)
            if status == 200 and body == HELLO:
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(f"server on port {port} does not answer")
        time.sleep(0.1)


# --------------------------------------------------------------------------
# Aborted connections
# --------------------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: stress\r\nAccept: */*\r\n\r\n"
HALF_HEAD = GET[: len(GET) // 2]
BIG_CL = 100000
POST_HEAD = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
             b"Content-Length: %d\r\n\r\n" % BIG_CL)
HALF_BODY = b"y" * (BIG_CL // 2)
LINGER_0 = struct.pack("ii", 1, 0)

#: name -> (data sent after connecting, read one response first?, RST on close?)
#: "keepalive_half" completes one request and reads its answer, then sends half of a
#: second head on the same (kept-alive) connection.
ABORT_STYLES = {
    "connect_close": (b"", False, False),       # connect, close at once (FIN)
    "connect_rst": (b"", False, True),          # connect, close with RST
    "half_head": (HALF_HEAD, False, False),     # half a request head, close
    "half_body": (POST_HEAD + HALF_BODY, False, False),      # CL 100000, 50000 sent
    "half_body_rst": (POST_HEAD + HALF_BODY, False, True),   # same, RST
    "full_close": (GET, False, False),          # full request, close before reading
    "full_rst": (GET, False, True),             # full request, RST before reading
    "keepalive_half": (HALF_HEAD, True, False), # one full exchange, half a head, close
}


def _abandon(sock, style):
    data, exchange_first, rst = ABORT_STYLES[style]
    if exchange_first:
        sock.sendall(GET)
        _recv_response(sock, 5.0)
    if data:
        sock.sendall(data)
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)


def abort_connections(port, total, styles=None, batch=200, time_limit=120.0):
    """Opens ``total`` connections, ``batch`` open at a time, and abandons each in one
    of ``styles`` (default: all of ABORT_STYLES, in rotation, so every batch mixes
    them).  Returns a dict: ``done`` (connections abandoned as planned), ``per_style``,
    ``errors`` ({exception name: count}: connect/send failures, counted not raised),
    ``seconds``, ``timed_out`` (stopped at ``time_limit``)."""
    styles = list(styles or ABORT_STYLES)
    per_style = {s: 0 for s in styles}
    errors = {}
    done = 0
    i = 0
    start = time.monotonic()
    deadline = start + time_limit
    timed_out = False
    while i < total:
        if time.monotonic() >= deadline:
            timed_out = True
            break
        open_socks = []
        # Phase 1: open the batch (all of it is connected at the same time).
        for _ in range(min(batch, total - i)):
            style = styles[i % len(styles)]
            i += 1
            try:
                s = socket.create_connection((HOST, port), timeout=5.0)
            except OSError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            open_socks.append((s, style))
        # Phase 2: send what each style sends.
        ready = []
        for s, style in open_socks:
            try:
                _abandon(s, style)
                ready.append((s, style))
            except OSError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                s.close()
        # Phase 3: abandon them all.
        for s, style in ready:
            s.close()
            per_style[style] += 1
            done += 1
    return {"done": done, "per_style": per_style, "errors": errors,
            "seconds": time.monotonic() - start, "timed_out": timed_out}
