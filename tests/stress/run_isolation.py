#!/usr/bin/env python3
"""Figures for "no client and no Python call can stall the server".

    python tests/stress/run_isolation.py                 # full: ~1 min
    python tests/stress/run_isolation.py --quick         # a few seconds per scenario
    python tests/stress/run_isolation.py --python /work/venv-base/bin/python --append
                                                         # another build, added to the report

Starts tests/stress/isolation_app.py (rswaitress on 127.0.0.1, threads=4) in a subprocess,
with this interpreter or with --python, a fresh server for each scenario, and measures:

1. heads.  3 connections send worst-case request heads back to back (just under the
   default max_request_header_size of 262,144 bytes: ~38,000 header lines with a
   different name each, or one name repeated) for --duration seconds, from a helper
   process, while one keep-alive client here does ``GET /`` in a loop and records each
   request's latency (and, every 5 ms, a new connection sends a request with an invalid
   Content-Length, which the server refuses with 400 without calling the application);
   and the same loops without heads for comparison.  Target: GET p99 under heads
   < 50 ms (and every head and GET answered 200).
2. slow readers.  ``threads`` (4) clients with a 4 KiB SO_RCVBUF request an endless
   response and never read; channel_timeout=2, cleanup_interval=1.  The application
   prints the time at which the server closes each iterable (its pool thread is free
   again).  Meanwhile a keep-alive GET loop runs on another connection.  Target: every
   pool thread freed within channel_timeout + cleanup_interval + 1 s of the last slow
   client's request, and a new connection answered afterwards (slow clients still
   connected).
3. GIL.  ``GET /hold`` blocks in libc read(2) through ctypes.PyDLL (the GIL is held for
   the whole call) for --hold seconds, until this script writes to a pipe.  Meanwhile
   (a) new connections send that refused request back to back (2 ms apart, the last
   0.1 s before the release), and (b) the rest of an 8 MiB response produced before the
   hold (the application's close() was seen) is read.  Target: every such refusal
   answered 400 before the GIL is released, p99 < 50 ms.

Prints a table, writes a Markdown report (--out, default tests/stress/results-isolation.md;
--append adds this run to it; '-' for none) and exits 1 if a target is missed or a
scenario could not run.  Every wait is bounded; the server subprocess also ends by itself
when this script goes away (EOF on its stdin) or at a time limit.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import stresslib as L  # noqa: E402

APP = os.path.join(HERE, "isolation_app.py")
HOST = "127.0.0.1"
HELLO = b"Hello, World!"

HEAD_LIMIT = 262144  # default max_request_header_size
HEAVY_CONNS = 3
THREADS = 4
CHANNEL_TIMEOUT = 2
CLEANUP_INTERVAL = 1
BIG_LEN = 8 << 20
P99_TARGET_MS = 50.0


# --------------------------------------------------------------------------
# Small HTTP client pieces
# --------------------------------------------------------------------------


def worst_case_head(distinct, limit=HEAD_LIMIT):
    """``GET /heavy`` with as many short header lines as fit under ``limit`` bytes:
    ``<hex number>:`` (a new name on every line) or ``a:b`` repeated."""
    first = b"GET /heavy HTTP/1.1\r\nHost: x\r\n"
    room = limit - len(first) - 8
    if not distinct:
        return first + b"a:b\r\n" * (room // 5) + b"\r\n"
    parts = []
    used = n = 0
    while True:
        line = b"%x:\r\n" % n
        if used + len(line) > room:
            break
        parts.append(line)
        used += len(line)
        n += 1
    return first + b"".join(parts) + b"\r\n"


def head_lines(head):
    return head.count(b"\r\n") - 3  # request line, Host, final empty line


class Conn:
    """One client connection that reads Content-Length framed responses."""

    def __init__(self, port, timeout=10.0, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.buf = b""

    def send(self, data, timeout=None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def read_head(self, timeout):
        """Reads up to the end of a response head; returns (status, headers dict)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a full head ({len(self.buf)} bytes)")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def read_response(self, timeout):
        """One response; returns (status, body)."""
        deadline = time.monotonic() + timeout
        status, headers = self.read_head(timeout)
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buf) < length:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self.sock.recv(max(65536, length - len(self.buf)))
            if not chunk:
                raise ConnectionError("closed in the middle of a body")
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def fresh_get(port, timeout=5.0):
    """``GET /`` on a new connection; True when it is answered "Hello, World!"."""
    try:
        c = Conn(port, timeout)
        try:
            c.send(GET)
            return c.read_response(timeout) == (200, HELLO)
        finally:
            c.close()
    except OSError:
        return False


def get_loop(port, until, hang_guard, stop=None):
    """Keep-alive ``GET /`` back to back until ``until`` (monotonic) or ``stop`` is set.
    A request started before the end is waited for, at most ``hang_guard`` seconds
    past the end; a failed connection is counted and replaced.  Returns a dict:
    lat (seconds, answered requests), ends (monotonic time each was answered),
    errors [(kind, seconds waited)]."""
    lat, ends, errors = [], [], []
    conn = None
    while time.monotonic() < until and not (stop and stop.is_set()):
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = Conn(port, timeout=max(1.0, until - t0 + hang_guard))
            conn.send(GET, timeout=max(1.0, until - t0 + hang_guard))
            status, body = conn.read_response(max(1.0, until - t0 + hang_guard))
            if (status, body) != (200, HELLO):
                raise ValueError(f"answer {status} {body[:40]!r}")
            t1 = time.monotonic()
            lat.append(t1 - t0)
            ends.append(t1)
        except (OSError, ValueError) as e:
            errors.append((type(e).__name__, time.monotonic() - t0))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return {"lat": lat, "ends": ends, "errors": errors}


#: Refused with 400 before any application call.  (A request without Host would do for
#: the current core, but the previous release passes it to the application.)
REFUSED = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"


def refusal_loop(port, until, timeout, pace, out):
    """Until ``until`` (monotonic): a new connection sends REFUSED and reads the answer,
    then ``pace`` seconds of pause.  Appends (start, end or None, status or error name)
    to ``out``."""
    while time.monotonic() < until:
        t0 = time.monotonic()
        try:
            c = Conn(port, timeout=timeout)
            try:
                c.send(REFUSED)
                st, _ = c.read_response(timeout)
            finally:
                c.close()
            out.append((t0, time.monotonic(), st))
        except OSError as e:
            out.append((t0, None, type(e).__name__))
        time.sleep(pace)


def pct(values, p):
    """Nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def _pct(x):
    return "-" if x is None else f"{x:.0f}%"


def ms(x):
    return "-" if x is None else f"{x * 1000:.1f} ms"


def lat_summary(lat):
    return {"n": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99),
            "max": max(lat) if lat else None}


# --------------------------------------------------------------------------
# The server subprocess
# --------------------------------------------------------------------------


class Server:
    """isolation_app.py under ``python``; stdout lines are collected with their tag."""

    def __init__(self, python, args=(), pass_fds=(), max_seconds=300.0, start_timeout=30.0):
        self._err = tempfile.TemporaryFile()
        cmd = [python, APP, "--max-seconds", str(max_seconds)] + list(args)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, pass_fds=pass_fds)
        self.pid = self.proc.pid
        self._lines = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.port = int(self.wait("PORT", 1, start_timeout)[0][0])
            self.core = self.wait("CORE", 1, 5.0)[0][0]
        except BaseException:
            self.stop()
            raise

    def _read(self):
        for raw in self.proc.stdout:
            words = raw.decode("utf-8", "replace").split()
            if not words:
                continue
            with self._cond:
                self._lines.setdefault(words[0], []).append(words[1:])
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def lines(self, tag):
        with self._cond:
            return list(self._lines.get(tag, []))

    def wait(self, tag, count, timeout):
        """The first ``count`` lines tagged ``tag`` (their words after the tag); raises
        TimeoutError if they do not come within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._lines.get(tag, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise TimeoutError(f"{len(self._lines.get(tag, []))} of {count} {tag} "
                                       f"lines after {timeout:.1f} s; stderr:\n"
                                       f"{self.stderr_text(1500)}")
                self._cond.wait(min(left, 0.2))
            return list(self._lines[tag][:count])

    def times(self, tag):
        return [float(w[0]) for w in self.lines(tag)]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code (None if
        killed)."""
        code = self.proc.poll()
        if code is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
                code = None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self._reader.join(5)
        self.proc.stdout.close()
        return code

    def stderr_text(self, limit=None):
        self._err.seek(0)
        text = self._err.read().decode("utf-8", "replace")
        return text if limit is None else text[-limit:]


# --------------------------------------------------------------------------
# 1. heads
# --------------------------------------------------------------------------


def heavy_client_main(port, variant, conns, max_seconds):
    """The helper process of scenario 1: ``conns`` connections send worst-case heads
    back to back until a line arrives on stdin (or ``max_seconds``); prints READY once
    connected and a JSON summary at the end."""
    head = worst_case_head(variant == "distinct")
    stop = threading.Event()
    lock = threading.Lock()
    res = {"answered": 0, "statuses": {}, "errors": [], "rtt": [], "head_bytes": len(head),
           "head_lines": head_lines(head)}
    deadline = time.monotonic() + max_seconds
    socks = [Conn(port, timeout=60.0) for _ in range(conns)]

    def worker(c):
        while not stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                c.send(head, timeout=60.0)
                status, _ = c.read_response(60.0)
            except OSError as e:
                with lock:
                    res["errors"].append(type(e).__name__)
                return
            with lock:
                res["answered"] += 1
                res["statuses"][str(status)] = res["statuses"].get(str(status), 0) + 1
                res["rtt"].append(time.monotonic() - t0)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in socks]
    for t in threads:
        t.start()
    print("READY", flush=True)

    def wait_stdin():
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    while not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.1)
    stop.set()
    for t in threads:
        t.join(max(1.0, deadline + 60 - time.monotonic()))
    for c in socks:
        c.close()
    print(json.dumps(res), flush=True)
    return 0


def heads_scenario(python, duration, log):
    out = {"duration": duration, "variants": {}}
    for variant in ("none", "distinct", "one-name"):
        srv = Server(python, ["--threads", str(THREADS)], max_seconds=duration + 180)
        helper = None
        try:
            out["core"] = srv.core
            if not fresh_get(srv.port):
                raise RuntimeError("the server does not answer GET /")
            if variant != "none":
                helper = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--heavy-client",
                     str(srv.port), variant, "--max-seconds", str(duration + 60)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                line = _readline(helper.stdout, 20.0)
                if line.strip() != b"READY":
                    raise RuntimeError(f"heavy-client helper: {line!r}")
            cpu0, m0 = thread_cpu(srv.pid), machine_busy()
            t0 = time.monotonic()
            refusals = []
            rt = threading.Thread(target=refusal_loop,
                                  args=(srv.port, t0 + duration, 30.0, 0.005, refusals))
            rt.start()
            loop = get_loop(srv.port, t0 + duration, hang_guard=30.0)
            elapsed = time.monotonic() - t0
            cpu = cpu_use(cpu0, thread_cpu(srv.pid), elapsed)
            if cpu:
                cpu["machine"] = machine_use(m0, machine_busy())
            rt.join(60.0)
            heavy = None
            if helper is not None:
                helper.stdin.write(b"stop\n")
                helper.stdin.flush()
                line = _readline(helper.stdout, 90.0)
                heavy = json.loads(line) if line.strip() else {"answered": 0, "errors":
                                                               ["no summary"], "rtt": [],
                                                               "statuses": {}}
            r = {"get": lat_summary(loop["lat"]), "get_errors": loop["errors"],
                 "refused": lat_summary([b - a for a, b, st in refusals if st == 400]),
                 "refused_other": sorted({str(st) for _, _, st in refusals if st != 400}),
                 "elapsed": elapsed, "heavy": heavy, "alive": srv.alive(), "cpu": cpu}
            if heavy:
                r["heavy_rtt"] = lat_summary(heavy.pop("rtt"))
            out["variants"][variant] = r
            g = r["get"]
            desc = ("no heads" if variant == "none" else
                    f"heads ({variant}): {heavy['answered']} answered {heavy['statuses']}, "
                    f"errors {heavy['errors'] or 'none'}, round trip p50 "
                    f"{ms(r['heavy_rtt']['p50'])} max {ms(r['heavy_rtt']['max'])}")
            rf = r["refused"]
            log(f"  {desc}; GET x{g['n']} p50 {ms(g['p50'])} p99 {ms(g['p99'])} "
                f"max {ms(g['max'])}, errors {len(loop['errors'])}; 400 refusals x{rf['n']} "
                f"p50 {ms(rf['p50'])} p99 {ms(rf['p99'])} max {ms(rf['max'])}"
                + (f", other answers {r['refused_other']}" if r["refused_other"] else ""))
            if cpu:
                log(f"    server CPU {cpu['total']:.0f}% of a core; busiest thread "
                    f"{cpu['busiest_name']!r} {cpu['busiest']:.0f}%; all processes "
                    f"{_pct(cpu.get('machine'))} of {os.cpu_count()} cores")
        finally:
            if helper is not None and helper.poll() is None:
                try:
                    helper.stdin.close()
                    helper.wait(30)
                except (OSError, subprocess.TimeoutExpired):
                    helper.kill()
                    helper.wait(10)
            if helper is not None:
                helper.stdout.close()
                helper.stderr.close()
            srv.stop()
            out.setdefault("stderr", []).append(srv.stderr_text())
    return out


def thread_cpu(pid):
    """{tid: (name, CPU seconds)} of the threads of ``pid`` from /proc (empty where
    /proc is not there)."""
    out = {}
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = (name, (int(fields[11]) + int(fields[12])) / hz)  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return out


def machine_busy():
    """(busy, total) jiffies of all CPUs from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(v) - v[3] - v[4], sum(v)  # minus idle and iowait


def machine_use(before, after):
    """Busy share of all CPUs between two machine_busy() readings, in % of one core."""
    if not before or not after or after[1] <= before[1]:
        return None
    return 100.0 * (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


def cpu_use(before, after, seconds):
    """Server CPU over ``seconds`` between two thread_cpu() readings: total and busiest
    thread, in % of one core."""
    per = {tid: (name, cpu - before.get(tid, (name, 0.0))[1])
           for tid, (name, cpu) in after.items()}
    if not per or seconds <= 0:
        return None
    busiest_tid = max(per, key=lambda t: per[t][1])
    name, busy = per[busiest_tid]
    return {"total": 100.0 * sum(c for _, c in per.values()) / seconds,
            "busiest": 100.0 * busy / seconds, "busiest_name": name,
            "busiest_seconds": busy}


def _readline(f, timeout):
    r, _, _ = select.select([f], [], [], timeout)
    return f.readline() if r else b""


# --------------------------------------------------------------------------
# 2. slow readers
# --------------------------------------------------------------------------


def slow_scenario(python, log):
    bound = CHANNEL_TIMEOUT + CLEANUP_INTERVAL + 1.0
    window = max(2 * bound, bound + 5.0)  # how long the freeing is waited for
    srv = Server(python, ["--threads", str(THREADS), "--channel-timeout", str(CHANNEL_TIMEOUT),
                          "--cleanup-interval", str(CLEANUP_INTERVAL)], max_seconds=180)
    readers = []
    out = {"bound": bound, "window": window, "core": srv.core}
    try:
        if not fresh_get(srv.port):
            raise RuntimeError("the server does not answer GET /")
        for _ in range(THREADS):
            c = Conn(srv.port, timeout=5.0, rcvbuf=4096)
            c.send(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(c)
        t_req = time.monotonic()
        srv.wait("START", THREADS, 10.0)
        out["started"] = len(srv.lines("START"))
        stop = threading.Event()
        box = {}
        loop = threading.Thread(target=lambda: box.update(
            get_loop(srv.port, t_req + window, hang_guard=1.0, stop=stop)))
        loop.start()
        try:
            srv.wait("CLOSED", THREADS, window)
        except TimeoutError:
            pass
        t_freed_all = time.monotonic()
        # Give the loop a little time on a free server before stopping it.
        if len(srv.lines("CLOSED")) >= THREADS:
            time.sleep(0.5)
        stop.set()
        loop.join(window + 5.0)
        closed_at = sorted(srv.times("CLOSED"))
        closed = [t - t_req for t in closed_at]
        out["freed_after"] = closed
        lat, ends = box.get("lat", []), box.get("ends", [])
        out["get"] = lat_summary(lat)
        # GETs answered while every pool thread was still held by a slow client (before
        # the first close()), and once at least one was free again.
        # GETs sent while every pool thread was still held by a slow client (before the
        # first close()), and those sent once one was free again.
        first_free = closed_at[0] if closed_at else float("inf")
        held = [(x, e) for x, e in zip(lat, ends) if e - x < first_free]
        out["get_held"] = lat_summary([x for x, _ in held])
        out["get_held_done_after_free"] = sum(1 for _, e in held if e >= first_free)
        out["get_free"] = lat_summary([x for x, e in zip(lat, ends) if e - x >= first_free])
        out["get_first"] = lat[0] if lat else None
        out["get_errors"] = box.get("errors", [])
        # A new connection while the slow clients are still connected and not reading.
        t0 = time.monotonic()
        out["answers_after"] = fresh_get(srv.port, timeout=5.0)
        out["answers_after_s"] = time.monotonic() - t0
        out["loop_s"] = t_freed_all - t_req
        log(f"  {out['started']} slow clients served; freed after "
            f"{', '.join(f'{x:.2f}' for x in closed) or 'none'} s (bound {bound:g} s, "
            f"waited up to {window:g} s)")
        g, gh, gf = out["get"], out["get_held"], out["get_free"]
        log(f"  GET loop meanwhile: x{g['n']} p50 {ms(g['p50'])} p99 {ms(g['p99'])} "
            f"max {ms(g['max'])}, errors {out['get_errors'] or 'none'}; sent while all "
            f"pool threads were held: {gh['n']} answered (max {ms(gh['max'])}); sent once "
            f"one was free: x{gf['n']} p99 {ms(gf['p99'])}")
        log(f"  new connection answered afterwards: {out['answers_after']} "
            f"({out['answers_after_s']:.2f} s)")
    finally:
        for c in readers:
            c.close()
        # Informational: does the server recover once the slow clients have gone?
        if "answers_after" in out and not out["answers_after"]:
            out["answers_after_disconnect"] = fresh_get(srv.port, timeout=5.0)
        srv.stop()
        text = srv.stderr_text()
        out["stderr"] = [text]
        out["timeout_logs"] = text.count("accepted none of its response")
    return out


# --------------------------------------------------------------------------
# 3. GIL-holding call
# --------------------------------------------------------------------------


def tcp_queues(local_port, remote_port):
    """(tx_queue, rx_queue) in bytes of the loopback TCP socket from ``local_port`` to
    ``remote_port``, from /proc/net/tcp (None where that is not readable)."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                w = line.split()
                if (w[1], w[2]) == want:
                    tx, rx = w[4].split(":")
                    return int(tx, 16), int(rx, 16)
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    return None


def gil_scenario(python, hold, log):
    r_fd, w_fd = os.pipe()
    try:
        srv = Server(python, ["--threads", str(THREADS), "--hold-fd", str(r_fd)],
                     pass_fds=(r_fd,), max_seconds=hold + 180)
    finally:
        os.close(r_fd)
    out = {"hold": hold, "core": srv.core}
    big = holder = None
    released = False
    try:
        if not fresh_get(srv.port):
            raise RuntimeError("the server does not answer GET /")
        # An 8 MiB response, read only up to its head: the body waits in the server.
        big = Conn(srv.port, timeout=10.0, rcvbuf=65536)
        big.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _ = big.read_head(10.0)
        srv.wait("BIGDONE", 1, 20.0)
        got_before = len(big.buf)
        holder = Conn(srv.port, timeout=10.0)
        holder.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        t_hold = float(srv.wait("HOLDING", 1, 10.0)[0][0])
        t_release_due = t_hold + hold
        # Where the unread part of the 8 MiB is as the hold begins: the server's socket
        # send queue, the client's receive queue, and the rest in the server's own
        # output buffer (which only the server can flush).
        cport = big.sock.getsockname()[1]
        srv_q, cli_q = tcp_queues(srv.port, cport), tcp_queues(cport, srv.port)
        if srv_q and cli_q:
            in_kernel = srv_q[0] + cli_q[1]
            out["in_server_buffer"] = max(0, BIG_LEN - len(big.buf) - in_kernel)
            out["in_kernel"] = in_kernel
        refusals = []  # (start, end or None, status or error)
        flush = {}

        def flush_loop():
            n = len(big.buf)
            t0 = time.monotonic()
            flush["first_byte"] = None
            try:
                big.sock.settimeout(hold + 10.0)
                while n < BIG_LEN:
                    chunk = big.sock.recv(1 << 20)
                    if not chunk:
                        break
                    if flush["first_byte"] is None:
                        flush["first_byte"] = time.monotonic() - t0
                    n += len(chunk)
            except OSError as e:
                flush["error"] = type(e).__name__
            flush.update(start=t0, end=time.monotonic(), bytes=n - got_before, total=n)

        # The last refusal is sent 0.1 s before the release, so that one answered in
        # time is never counted as late for being sent a moment before the release.
        ta = threading.Thread(target=refusal_loop,
                              args=(srv.port, t_release_due - 0.1, hold + 10.0, 0.002,
                                    refusals))
        tb = threading.Thread(target=flush_loop)
        ta.start()
        tb.start()
        time.sleep(max(0.0, t_release_due - time.monotonic()))
        # Before releasing: the held request must not have been answered.
        holder.sock.setblocking(False)
        try:
            early = holder.sock.recv(1)
        except BlockingIOError:
            early = None
        holder.sock.setblocking(True)
        t_release = time.monotonic()
        os.write(w_fd, b"x")
        released = True
        ta.join(hold + 30)
        tb.join(hold + 30)
        held_status, held_body = holder.read_response(10.0)
        t_released_srv = srv.times("RELEASED")
        out.update(
            big_status=status,
            held_answer=(held_status, held_body.decode("ascii", "replace")),
            held_answered_early=early is not None,
            hold_s=t_release - t_hold,
            released_at=(t_released_srv[0] - t_hold) if t_released_srv else None,
        )
        during = [x for x in refusals if x[0] < t_release]
        in_hold = [x for x in during if x[1] is not None and x[1] < t_release]
        out["refusals"] = {
            "sent": len(during),
            "answered_in_hold": len(in_hold),
            "answered_400_in_hold": sum(1 for x in in_hold if x[2] == 400),
            "answered_after_release": sum(1 for x in during if x[1] is not None
                                          and x[1] >= t_release),
            "failed": [x[2] for x in during if x[1] is None],
            "statuses": sorted({str(x[2]) for x in during}),
            "lat": lat_summary([x[1] - x[0] for x in during if x[1] is not None]),
        }
        f = flush
        f["done_in_hold"] = f.get("total", 0) >= BIG_LEN and f["end"] < t_release
        f["in_hold_bytes"] = f.get("bytes", 0) if f["done_in_hold"] else None
        f["seconds"] = f["end"] - f["start"]
        f["rate"] = f["bytes"] / f["seconds"] if f["done_in_hold"] and f["seconds"] > 0 else None
        out["flush"] = {k: v for k, v in f.items() if k not in ("start", "end")}
        out["flush"]["after_release_s"] = (f["end"] - t_release) if not f["done_in_hold"] else None
        out["answers_after"] = fresh_get(srv.port)
        rf = out["refusals"]
        log(f"  GIL held {out['hold_s']:.2f} s; refusals sent {rf['sent']}, answered in the "
            f"hold {rf['answered_in_hold']} ({rf['answered_400_in_hold']} x 400), after the "
            f"release {rf['answered_after_release']}; latency p50 {ms(rf['lat']['p50'])} "
            f"p99 {ms(rf['lat']['p99'])} max {ms(rf['lat']['max'])}")
        fl = out["flush"]
        if out.get("in_server_buffer") is not None:
            log(f"  as the hold began: {out['in_kernel']:,d} bytes in socket queues, about "
                f"{out['in_server_buffer']:,d} in the server's output buffer")
        log(f"  8 MiB response: {fl['bytes']:,d} bytes read during the test, "
            + (f"done {fl['seconds']:.3f} s after the hold began "
               f"({fl['rate'] / 1048576:.0f} MiB/s)" if fl["done_in_hold"] else
               f"not done during the hold (finished {fl['after_release_s']:.2f} s after "
               f"the release)"))
        log(f"  held request: {out['held_answer']}, answered before the release: "
            f"{out['held_answered_early']}; server answers afterwards: {out['answers_after']}")
    finally:
        if not released:
            try:
                os.write(w_fd, b"x")
            except OSError:
                pass
        os.close(w_fd)
        for c in (big, holder):
            if c is not None:
                c.close()
        srv.stop()
        out["stderr"] = [srv.stderr_text()]
    return out


# --------------------------------------------------------------------------
# Checks and report
# --------------------------------------------------------------------------


def checks(res):
    """[(scenario, check, figure, target, ok or None for a figure without target)]"""
    rows = []
    h = res.get("heads")
    if h:
        base = h["variants"].get("none")
        if base:
            g = base["get"]
            rows.append(("heads", "GET p99 without heads", f"{ms(g['p99'])} (x{g['n']})",
                         "(reference)", None))
        for v in ("distinct", "one-name"):
            r = h["variants"].get(v)
            if not r:
                continue
            g, hv = r["get"], r["heavy"]
            rows.append(("heads", f"GET p99 under heads ({v})",
                         f"{ms(g['p99'])} (x{g['n']}, max {ms(g['max'])})",
                         f"< {P99_TARGET_MS:g} ms",
                         g["p99"] is not None and g["p99"] * 1000 < P99_TARGET_MS
                         and not r["get_errors"]))
            ok200 = hv["answered"] > 0 and set(hv["statuses"]) == {"200"} and not hv["errors"]
            rows.append(("heads", f"heads answered ({v})",
                         f"{hv['answered']} {hv['statuses']}"
                         + (f", errors {hv['errors']}" if hv["errors"] else ""),
                         "all 200", ok200))
    s = res.get("slow")
    if s:
        freed = s.get("freed_after", [])
        worst = max(freed) if freed else None
        all_freed = len(freed) >= THREADS and worst is not None and worst <= s["bound"]
        rows.append(("slow readers", "pool threads freed",
                     f"{len(freed)} of {THREADS}" + (f", last {worst:.2f} s" if freed else "")
                     + ("" if len(freed) >= THREADS else f" (waited {s['window']:g} s)"),
                     f"all, <= {s['bound']:g} s", all_freed))
        g = s["get"]
        rows.append(("slow readers", "GETs meanwhile", f"x{g['n']}, first {ms(s['get_first'])}, "
                     f"p99 {ms(g['p99'])}, errors {len(s['get_errors'])}", "(figure)", None))
        rows.append(("slow readers", "server answers afterwards",
                     "yes" if s["answers_after"] else "NO", "yes", bool(s["answers_after"])))
    gl = res.get("gil")
    if gl:
        rf = gl["refusals"]
        rows.append(("GIL", "refusals answered in the hold",
                     f"{rf['answered_400_in_hold']} of {rf['sent']}", "all (and > 0)",
                     rf["sent"] > 0 and rf["answered_400_in_hold"] == rf["sent"]))
        lat = rf["lat"]
        rows.append(("GIL", "refusal latency p99", f"{ms(lat['p99'])} (max {ms(lat['max'])})",
                     f"< {P99_TARGET_MS:g} ms",
                     lat["p99"] is not None and lat["p99"] * 1000 < P99_TARGET_MS))
        fl = gl["flush"]
        rows.append(("GIL", "8 MiB flush during the hold",
                     f"{fl['rate'] / 1048576:.0f} MiB/s" if fl["done_in_hold"] else
                     f"not done in the hold ({fl['after_release_s']:.2f} s after release)",
                     "(figure)", None))
    return rows


def table(rows):
    head = ("scenario", "check", "figure", "target", "result")
    body = [(a, b, c, d, "-" if ok is None else ("ok" if ok else "MISSED"))
            for a, b, c, d, ok in rows]
    w = [max(len(str(r[i])) for r in [head] + body) for i in range(5)]
    line = lambda r: "  ".join(str(x).ljust(w[i]) for i, x in enumerate(r)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in body])


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _python_version(python):
    try:
        return subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return "?"


def _stderr_digest(texts, limit=12):
    counts = {}
    for text in texts:
        for line in text.strip().splitlines():
            key = re.sub(r"\d+", "N", line.strip())
            counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:limit]


INTRO = """# Isolation stress results: no client and no Python call can stall the server

Produced by `tests/stress/run_isolation.py` (see tests/stress/README.md).  The server is
tests/stress/isolation_app.py, rswaitress on 127.0.0.1 with threads=4, in a subprocess
(a fresh one per scenario); all traffic is loopback.  Latencies are measured by the
client, from sending a request to having read the whole response.  Targets: heads, GET
p99 < 50 ms while 3 connections send worst-case heads; slow readers, every pool thread
freed within channel_timeout + cleanup_interval + 1 s (= 4 s) and a new connection
answered; GIL, every 400 refusal sent while the GIL is held answered before its release,
p99 < 50 ms.
"""


def markdown(env, res, rows, ok):
    md = [f"## {env['label']}", ""]
    md.append(f"Command: `{env['command']}`  ")
    md.append(f"Date: {env['date']}; commit {env['rev']}; {env['machine']}; load average "
              f"at start {env['load']}, at the end {env['load_end']}.  ")
    md.append(f"Server interpreter: `{env['python']}` (Python {env['pyver']}); core: "
              f"`{env['core']}`.")
    md += ["", "| scenario | check | figure | target | result |", "|---|---|---|---|---|"]
    for a, b, c, d, good in rows:
        md.append(f"| {a} | {b} | {c} | {d} | "
                  f"{'-' if good is None else ('ok' if good else '**MISSED**')} |")
    md += ["", f"**Overall: {'all targets met' if ok else 'TARGET MISSED'}**"]
    h = res.get("heads")
    if h:
        md += ["", f"### 1. Worst-case heads ({h['duration']:g} s per variant)", ""]
        heads = {v: r["heavy"] for v, r in h["variants"].items() if r.get("heavy")}
        for v, hv in heads.items():
            md.append(f"- {v}: heads of {hv['head_bytes']:,d} bytes, {hv['head_lines']:,d} "
                      f"header lines, on {HEAVY_CONNS} keep-alive connections back to back")
        md += ["", "| heads | GETs | GET p50 | GET p99 | GET max | GET errors | heads "
               "answered | head round trip p50 | head round trip max | 400s | 400 p50 | "
               "400 p99 | 400 max |",
               "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for v, r in h["variants"].items():
            g, hv = r["get"], r.get("heavy")
            md.append(f"| {v} | {g['n']:,d} | {ms(g['p50'])} | {ms(g['p99'])} | "
                      f"{ms(g['max'])} | {len(r['get_errors'])} | "
                      + (f"{hv['answered']:,d} {hv['statuses']}" if hv else "-") + " | "
                      + (f"{ms(r['heavy_rtt']['p50'])} | {ms(r['heavy_rtt']['max'])} |"
                         if hv else "- | - |")
                      + f" {r['refused']['n']:,d} | {ms(r['refused']['p50'])} | "
                        f"{ms(r['refused']['p99'])} | {ms(r['refused']['max'])} |")
        md += ["", "CPU during each GET loop, in % of one core: the server process and its "
               "busiest thread (/proc/PID/task), and every process on the machine "
               f"(/proc/stat, {os.cpu_count()} cores: the server, the clients, anything "
               "else running):", "", "| heads | server CPU | busiest thread | its CPU | its "
               "CPU per head answered | all processes |", "|---|---:|---|---:|---:|---:|"]
        for v, r in h["variants"].items():
            c, hv = r.get("cpu"), r.get("heavy")
            if not c:
                continue
            per_head = (f"{c['busiest_seconds'] * 1000 / hv['answered']:.1f} ms"
                        if hv and hv["answered"] else "-")
            md.append(f"| {v} | {c['total']:.0f}% | `{c['busiest_name']}` | "
                      f"{c['busiest']:.0f}% | {per_head} | {_pct(c.get('machine'))} |")
        md += ["", "GETs: one keep-alive connection, `GET /` back to back, served by the "
               "application on a pool thread.  400s: meanwhile, every 5 ms a new connection "
               "sends a request with an invalid Content-Length, which the server refuses with "
               "400 without calling the application (in the current core: the reactor alone, "
               "no pool thread, no GIL)."]
    s = res.get("slow")
    if s:
        md += ["", "### 2. Slow readers", ""]
        md.append(f"- {THREADS} clients (SO_RCVBUF 4096) request an endless body and read "
                  f"nothing; channel_timeout={CHANNEL_TIMEOUT}, "
                  f"cleanup_interval={CLEANUP_INTERVAL}; bound {s['bound']:g} s")
        md.append("- pool threads freed (iterable closed), seconds after the last slow "
                  "client's request: "
                  + (", ".join(f"{x:.2f}" for x in s["freed_after"]) or "none")
                  + f" ({len(s['freed_after'])} of {THREADS}; waited up to {s['window']:g} s)")
        md.append(f"- server log lines \"accepted none of its response\": {s['timeout_logs']}")
        g, gh, gf = s["get"], s["get_held"], s["get_free"]
        md.append(f"- keep-alive GET loop on another connection, from the slow clients' "
                  f"requests until 0.5 s after the last close() (or the end of the wait): "
                  f"{g['n']:,d} answered, p50 {ms(g['p50'])}, p99 {ms(g['p99'])}, max "
                  f"{ms(g['max'])}; errors: "
                  + (", ".join(f"{k} after {t:.1f} s" for k, t in s["get_errors"]) or "none"))
        md.append(f"  - sent while all {THREADS} pool threads were held (before the first "
                  f"close()): {gh['n']} answered, {s['get_held_done_after_free']} of them once "
                  f"a thread was free (none can run before: no pool thread is free for the "
                  f"application), latency max {ms(gh['max'])}")
        md.append(f"  - sent once a pool thread was free: {gf['n']:,d} answered, p50 "
                  f"{ms(gf['p50'])}, p99 {ms(gf['p99'])}, max {ms(gf['max'])}")
        md.append(f"- new connection answered afterwards, slow clients still connected: "
                  f"{'yes' if s['answers_after'] else 'no'} ({s['answers_after_s']:.2f} s)")
        if "answers_after_disconnect" in s:
            md.append(f"- once the slow clients closed their connections: "
                      f"{'answers' if s['answers_after_disconnect'] else 'still no answer'}")
    gl = res.get("gil")
    if gl:
        rf, fl, lat = gl["refusals"], gl["flush"], gl["refusals"]["lat"]
        md += ["", f"### 3. GIL held by an application call ({gl['hold']:g} s)", ""]
        md.append(f"- the GIL was held {gl['hold_s']:.2f} s (libc read(2) through "
                  f"ctypes.PyDLL, from the HOLDING line to the byte written to the pipe)")
        md.append(f"- requests with an invalid Content-Length on new connections, 2 ms "
                  f"apart: {rf['sent']:,d} sent during the hold, "
                  f"{rf['answered_400_in_hold']:,d} answered 400 before the release, "
                  f"{rf['answered_after_release']:,d} only after it, failed "
                  f"{rf['failed'] or 'none'} (statuses: {', '.join(rf['statuses'])}); "
                  f"latency p50 {ms(lat['p50'])}, p99 {ms(lat['p99'])}, max {ms(lat['max'])}")
        md.append(f"- 8 MiB response produced before the hold (close() seen), its client "
                  f"reading only from the start of the hold: {fl['bytes']:,d} bytes read; "
                  + (f"complete {fl['seconds'] * 1000:.0f} ms into the hold, "
                     f"{fl['rate'] / 1048576:.0f} MiB/s" if fl["done_in_hold"] else
                     f"not complete during the hold, finished {fl['after_release_s']:.2f} s "
                     f"after the release"))
        if gl.get("in_server_buffer") is not None:
            md.append(f"  - as the hold began, {gl['in_kernel']:,d} bytes were in the "
                      f"kernel's socket queues (/proc/net/tcp) and about "
                      f"{gl['in_server_buffer']:,d} in the server's own output buffer")
        md.append(f"- the held request: answered {gl['held_answer']} after the release "
                  f"(nothing before it: {'no' if gl['held_answered_early'] else 'yes'}); "
                  f"server answers afterwards: {'yes' if gl['answers_after'] else 'no'}")
    digest = _stderr_digest([t for k in ("heads", "slow", "gil") if res.get(k)
                             for t in res[k]["stderr"]])
    if digest:
        md += ["", "Server stderr, distinct lines (digits as N):", "", "```"]
        md += [f"{n:5d} x {k[:160]}" for k, n in digest]
        md.append("```")
    if res.get("errors"):
        md += ["", "Errors:", ""] + [f"- {e}" for e in res["errors"]]
    md.append("")
    return "\n".join(md)


def main(argv=None):
    p = argparse.ArgumentParser(description="rswaitress isolation stress figures")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs the server (default: this one)")
    p.add_argument("--quick", action="store_true", help="a few seconds per scenario")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per heads variant (default 10; --quick 2)")
    p.add_argument("--hold", type=float, default=None,
                   help="seconds the GIL is held (default 5; --quick 2)")
    p.add_argument("--scenarios", default="heads,slow,gil",
                   help="comma-separated subset of heads,slow,gil")
    p.add_argument("--label", default=None, help="title of this run in the report")
    p.add_argument("--out", default=os.path.join(HERE, "results-isolation.md"),
                   help="Markdown report ('-' for none)")
    p.add_argument("--append", action="store_true",
                   help="add this run to the report instead of replacing it")
    p.add_argument("--heavy-client", nargs=2, metavar=("PORT", "VARIANT"),
                   help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=120.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.heavy_client:
        return heavy_client_main(int(args.heavy_client[0]), args.heavy_client[1],
                                 HEAVY_CONNS, args.max_seconds)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.hold is None:
        args.hold = 2.0 if args.quick else 5.0
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - {"heads", "slow", "gil"}
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    def log(msg):
        print(msg, flush=True)

    python = os.path.abspath(args.python) if os.sep in args.python else args.python
    env = {
        "command": shlex.join(["python", "tests/stress/run_isolation.py"]
                              + list(argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "rev": L.git_rev(),
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
                   f"{platform.release()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": python,
        "pyver": _python_version(python),
        "label": args.label or ("current build" if args.python == sys.executable
                                else f"server run by {python}"),
    }
    res = {"errors": []}
    log(f"server interpreter {python}")
    try:
        if "heads" in scenarios:
            log(f"[1] heads: {HEAVY_CONNS} connections of worst-case heads, "
                f"{args.duration:g} s per variant")
            try:
                res["heads"] = heads_scenario(python, args.duration, log)
            except (RuntimeError, TimeoutError, OSError) as e:
                res["errors"].append(f"heads: {e}")
                log(f"  FAILED: {e}")
        if "slow" in scenarios:
            log(f"[2] slow readers: {THREADS} clients that never read, channel_timeout="
                f"{CHANNEL_TIMEOUT}, cleanup_interval={CLEANUP_INTERVAL}")
            try:
                res["slow"] = slow_scenario(python, log)
            except (RuntimeError, TimeoutError, OSError) as e:
                res["errors"].append(f"slow readers: {e}")
                log(f"  FAILED: {e}")
        if "gil" in scenarios:
            log(f"[3] GIL held {args.hold:g} s by an application call")
            try:
                res["gil"] = gil_scenario(python, args.hold, log)
            except (RuntimeError, TimeoutError, OSError) as e:
                res["errors"].append(f"GIL: {e}")
                log(f"  FAILED: {e}")
    except KeyboardInterrupt:
        return 130
    env["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    env["core"] = next((res[k]["core"] for k in ("heads", "slow", "gil")
                        if res.get(k) and res[k].get("core")), "?")

    rows = checks(res)
    for e in res["errors"]:
        rows.append(("run", "completed", e.splitlines()[0][:120], "yes", False))
    ok = all(r[4] is not False for r in rows) and bool(rows)
    print()
    print(table(rows))
    print()
    print("ALL TARGETS MET" if ok else "TARGET MISSED")
    if args.out != "-":
        text = markdown(env, res, rows, ok)
        if args.append and os.path.exists(args.out):
            with open(args.out, "a") as f:
                f.write("\n" + text)
        else:
            with open(args.out, "w") as f:
                f.write(INTRO + "\n" + text)
        print(f"report: {os.path.relpath(args.out)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
