#!/usr/bin/env python3
"""Side-by-side HTTP benchmark: rswaitress vs waitress, gunicorn, granian, nginx.

    python benches/run.py                 # full run (about 20 minutes on 2 cores)
    python benches/run.py --quick         # 1 run of 3 s per figure (< 5 minutes)
    python benches/run.py --scenarios hello,post --servers rswaitress,waitress

See benches/README.md.  Everything runs on 127.0.0.1; every server is started
as a subprocess on a free port and stopped by PID afterwards.
"""

import argparse
import datetime
import errno
import http.client
import importlib.util
import json
import os
import platform
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(BENCH_DIR, "results")
NGINX_TEMPLATE = os.path.join(BENCH_DIR, "nginx.conf.template")

HOST = "127.0.0.1"
THREADS = 4  # worker threads for every WSGI server
POST_SIZE = 1024 * 1024
FILE_SIZE = 8 * 1024 * 1024
HELLO = b"Hello, World!"

ALL_SERVERS = ["rswaitress", "waitress", "gunicorn", "granian", "nginx"]

# name -> description.  "conns"/"threads" are wrk's -c/-t.
SCENARIOS = {
    "hello": dict(
        title="hello (keep-alive)",
        desc='13-byte "Hello, World!", 50 keep-alive connections',
        path="/hello", conns=50, threads=2),
    "close": dict(
        title="hello, Connection: close",
        desc="same as hello, every request sends Connection: close "
             "(new TCP connection per request)",
        path="/hello", conns=50, threads=2, headers=["Connection: close"]),
    "64k": dict(
        title="64 KiB body",
        desc="64 KiB response body, 50 keep-alive connections",
        path="/64k", conns=50, threads=2),
    "file": dict(
        title="8 MiB file",
        desc="8 MiB file via wsgi.file_wrapper (nginx: static file, "
             "sendfile on), 50 keep-alive connections",
        path="/file", conns=50, threads=2),
    "post": dict(
        title="1 MiB POST",
        desc="1 MiB request body, answer is the body length; "
             "50 keep-alive connections",
        path="/post", conns=50, threads=2, lua="post"),
    "isolation": dict(
        title="isolation (2 slow + 48 hello)",
        desc="2 connections loop on a 50 ms sleep endpoint (holding 2 of the "
             "4 threads) while 48 connections run hello; figures are hello's",
        path="/hello", conns=48, threads=2),
    "idle": dict(
        title="hello + 10k idle conns",
        desc="hello with 50 connections while 10,000 idle keep-alive "
             "connections (each served one GET first) are held open",
        path="/hello", conns=50, threads=2),
}
SCENARIO_ALIASES = {
    "keepalive": "hello", "hello-close": "close", "noka": "close",
    "nokeepalive": "close", "64kib": "64k", "big": "64k", "8m": "file",
    "sendfile": "file", "upload": "post", "sleep": "isolation",
    "idle10k": "idle", "c10k": "idle",
}

SERVER_NOTES = {
    "rswaitress": "`rswaitress.serve(app, host, port, threads=4)`",
    "waitress": "`waitress.serve(app, host, port, threads=4)`",
    "gunicorn": "`gunicorn -k gthread --workers 1 --threads 4`",
    "granian": "`granian --interface wsgi --workers 1 --runtime-threads 1 "
               "--blocking-threads 4` (4 blocking threads = the 4 WSGI "
               "threads the others get; 1 Rust I/O runtime thread, the "
               "default). Granian has no `wsgi.file_wrapper`, so /file is "
               "served by iterating the file in 256 KiB chunks",
    "nginx": "nginx, 1 worker process, static answers (see "
             "benches/nginx.conf.template); not a WSGI server, a ceiling",
}
IDLE_NOTES = {
    "rswaitress": "connection_limit=12000, channel_timeout=300, "
                  "asyncore_use_poll=True (same knobs as waitress; dropped "
                  "with a warning if serve() rejects them)",
    "waitress": "connection_limit=12000 (default 100), channel_timeout=300, "
                "asyncore_use_poll=True (select() cannot watch fds >= 1024)",
    "gunicorn": "--worker-connections 12000 (default 1000), --keep-alive 300 "
                "(default 2 s)",
    "granian": "--backpressure 12000, --http1-header-read-timeout 60000 (max)",
    "nginx": "worker_connections 12000, keepalive_timeout 300s (always)",
}


def log(msg=""):
    print(msg, flush=True)


# --------------------------------------------------------------------------
# installation of the tools
# --------------------------------------------------------------------------

def find_nginx():
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx",
                     "/usr/local/nginx/sbin/nginx") if os.access(p, os.X_OK)),
        None)


def ensure_tools(servers, no_install):
    need_apt = []
    if not shutil.which("wrk"):
        need_apt.append("wrk")
    if "nginx" in servers and not find_nginx():
        need_apt.append("nginx")
    if need_apt and not no_install:
        log("installing %s with apt-get ..." % " ".join(need_apt))
        sudo = [] if os.geteuid() == 0 else (["sudo"] if shutil.which("sudo") else [])
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(sudo + ["apt-get", "update"], env=env)
        subprocess.run(sudo + ["apt-get", "install", "-y"] + need_apt, env=env)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed and could not be installed "
                 "(apt-get install -y wrk); giving up")
    if "nginx" in servers and not find_nginx():
        log("nginx is not available; skipping it")
        servers.remove("nginx")

    modules = {"waitress": "waitress", "gunicorn": "gunicorn",
               "granian": "granian"}
    pkgs = [modules[s] for s in servers
            if s in modules and importlib.util.find_spec(modules[s]) is None]
    if importlib.util.find_spec("matplotlib") is None:
        pkgs.append("matplotlib")
    if pkgs and not no_install:
        log("installing %s with pip ..." % " ".join(pkgs))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q"] + pkgs)
        importlib.invalidate_caches()
    for s, mod in modules.items():
        if s in servers and importlib.util.find_spec(mod) is None:
            log("%s is not importable; skipping it" % s)
            servers.remove(s)

    if "rswaitress" in servers:
        probe = subprocess.run(
            [sys.executable, "-c", "import rswaitress; rswaitress.serve"],
            capture_output=True, text=True)
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            log("rswaitress is not importable (%s); skipping it. "
                "Install it first with `pip install .` in the repository." % last)
            servers.remove("rswaitress")


def versions(servers):
    from importlib import metadata
    out = {}
    for name in servers:
        if name == "nginx":
            p = subprocess.run([find_nginx(), "-v"], capture_output=True, text=True)
            out[name] = (p.stderr or p.stdout).strip().split("/")[-1]
        else:
            try:
                out[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                out[name] = "?"
    p = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    m = re.search(r"wrk (\S+)", p.stdout + p.stderr)
    out["wrk"] = m.group(1) if m else "?"
    return out


# --------------------------------------------------------------------------
# machine information
# --------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        target = 1 << 20
    else:
        target = hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def descendants(pid):
    """PIDs of all live descendants of pid (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rss_kib(pid):
    total = 0
    for p in [pid] + descendants(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def stop_process(proc, grace=8.0):
    """SIGTERM the process we started; SIGKILL it and its descendants
    (each by PID) if they are still around after the grace period."""
    if proc is None:
        return
    family = [proc.pid] + descendants(proc.pid)
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        if not any(pid_alive(p) for p in family):
            break
        time.sleep(0.05)
    for p in family:
        if pid_alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


PY_LAUNCHER = r"""
import sys
sys.path.insert(0, %(bench)r)
from apps import app
from %(module)s import serve
kw = dict(host=%(host)r, port=%(port)d, threads=%(threads)d)
extra = %(extra)r
try:
    serve(app, **kw, **extra)
except (TypeError, ValueError) as exc:
    if not extra:
        raise
    print("LAUNCHER: serve() rejected %%r (%%s); using defaults" %% (sorted(extra), exc),
          file=sys.stderr, flush=True)
    serve(app, **kw)
"""


def server_command(name, port, scenario, tmp):
    """argv for starting server `name` on `port` for `scenario`."""
    idle = scenario == "idle"
    if name in ("rswaitress", "waitress"):
        extra = {}
        if idle:
            extra = dict(connection_limit=12000, channel_timeout=300,
                         asyncore_use_poll=True)
        code = PY_LAUNCHER % dict(bench=BENCH_DIR, module=name, host=HOST,
                                  port=port, threads=THREADS, extra=extra)
        return [sys.executable, "-c", code]
    if name == "gunicorn":
        argv = [sys.executable, "-m", "gunicorn", "-k", "gthread",
                "--workers", "1", "--threads", str(THREADS),
                "--bind", "%s:%d" % (HOST, port), "--chdir", BENCH_DIR,
                "--log-level", "warning"]
        if idle:
            argv += ["--worker-connections", "12000", "--keep-alive", "300"]
        return argv + ["apps:app"]
    if name == "granian":
        argv = [sys.executable, "-m", "granian", "--interface", "wsgi",
                "--workers", "1", "--runtime-threads", "1",
                "--blocking-threads", str(THREADS),
                "--host", HOST, "--port", str(port),
                "--working-dir", BENCH_DIR, "--log-level", "warning",
                "--no-ws"]
        if idle:
            argv += ["--backpressure", "12000",
                     "--http1-header-read-timeout", "60000"]
        return argv + ["apps:app"]
    if name == "nginx":
        conf = write_nginx_conf(port, tmp)
        return [find_nginx(), "-p", tmp + "/", "-c", conf,
                "-e", os.path.join(tmp, "nginx-error.log")]
    raise ValueError(name)


def write_nginx_conf(port, tmp):
    with open(NGINX_TEMPLATE) as f:
        text = f.read()
    text = (text.replace("@PORT@", str(port)).replace("@TMP@", tmp)
            .replace("@DATA@", tmp))
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


class ServerFailed(Exception):
    pass


def http_get(port, method, path, body=None, timeout=15):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(proc, port, logpath, timeout=30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed("exited with %s: %s" % (proc.returncode, tail(logpath)))
        try:
            with socket.create_connection((HOST, port), timeout=1):
                pass
            status, body = http_get(port, "GET", "/hello", timeout=5)
            if status == 200 and body == HELLO:
                return
            last = "GET /hello -> %s %r" % (status, body[:60])
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ServerFailed("not ready after %.0f s (%s): %s" % (timeout, last, tail(logpath)))


def check_endpoint(port, scenario):
    """One request to verify the endpoint works before loading it."""
    sc = SCENARIOS[scenario]
    if sc.get("lua") == "post":
        status, body = http_get(port, "POST", "/post", body=b"a" * POST_SIZE)
        ok = status == 200 and body.strip() == str(POST_SIZE).encode()
    else:
        status, body = http_get(port, "GET", sc["path"])
        want = {"/hello": len(HELLO), "/64k": 64 * 1024, "/file": FILE_SIZE}
        ok = status == 200 and len(body) == want[sc["path"]]
    if not ok:
        raise ServerFailed("sanity check of %s failed: %s, %d bytes %r"
                           % (sc["path"], status, len(body), body[:40]))


def tail(path, n=6):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
        return " | ".join(lines[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_latency(text):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", text)
    return float(m.group(1)) * UNITS_MS[m.group(2)] if m else None


def parse_wrk(out):
    res = {"rps": 0.0, "p50_ms": None, "p99_ms": None, "requests": 0,
           "err_connect": 0, "err_read": 0, "err_write": 0, "err_timeout": 0,
           "non2xx": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(r"^\s+%s(?:\.0+)?%%\s+(\S+)" % pct, out, re.M)
        if m:
            res[key] = parse_latency(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                  r"timeout (\d+)", out)
    if m:
        (res["err_connect"], res["err_read"], res["err_write"],
         res["err_timeout"]) = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    res["errors"] = (res["err_connect"] + res["err_read"] + res["err_write"]
                     + res["err_timeout"] + res["non2xx"])
    return res


def wrk_argv(port, path, conns, threads, duration, headers=(), lua=None):
    argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration,
            "--latency", "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    if lua:
        argv += ["-s", lua]
    return argv + ["http://%s:%d%s" % (HOST, port, path)]


def run_wrk_procs(argvs, delays, timeout):
    """Run several wrk processes concurrently (argv i started after delay i);
    return their stdout texts.  Every process is killed by PID on error."""
    procs = []
    try:
        t0 = time.monotonic()
        for argv, delay in zip(argvs, delays):
            wait = t0 + delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out)
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


# --------------------------------------------------------------------------
# idle connections
# --------------------------------------------------------------------------

class IdlePool:
    """Opens N keep-alive connections; each sends one complete GET /hello and
    reads the whole response, then stays open (idle)."""

    REQUEST = ("GET /hello HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST).encode()

    def __init__(self):
        self.socks = []
        self.errors = {}

    def _err(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def open(self, port, n, time_limit, max_inflight=256):
        sel = selectors.DefaultSelector()
        deadline = time.monotonic() + time_limit
        started = 0
        pending = 0
        stop_starting = False
        linger = struct.pack("ii", 1, 0)
        try:
            while (started < n and not stop_starting) or pending:
                if time.monotonic() > deadline:
                    break
                while started < n and not stop_starting and pending < max_inflight:
                    try:
                        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    except OSError as exc:
                        self._err("socket: " + (errno.errorcode.get(exc.errno) or str(exc)))
                        stop_starting = True
                        break
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    s.setblocking(False)
                    rc = s.connect_ex((HOST, port))
                    if rc not in (0, errno.EINPROGRESS):
                        self._err("connect: " + errno.errorcode.get(rc, str(rc)))
                        s.close()
                        started += 1
                        continue
                    sel.register(s, selectors.EVENT_WRITE, {"phase": "connect", "buf": b""})
                    started += 1
                    pending += 1
                for key, _ in sel.select(timeout=0.2):
                    s, st = key.fileobj, key.data
                    done, failed = False, None
                    try:
                        if st["phase"] == "connect":
                            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                            if err:
                                failed = "connect: " + errno.errorcode.get(err, str(err))
                            else:
                                s.send(self.REQUEST)
                                st["phase"] = "read"
                                sel.modify(s, selectors.EVENT_READ, st)
                        else:
                            data = s.recv(65536)
                            if not data:
                                failed = "closed before response"
                            else:
                                st["buf"] += data
                                done, failed = self._complete(st["buf"])
                    except OSError as exc:
                        failed = "io: " + (errno.errorcode.get(exc.errno) or str(exc))
                    if done or failed:
                        sel.unregister(s)
                        pending -= 1
                        if failed:
                            self._err(failed)
                            s.close()
                        else:
                            self.socks.append(s)
            for key in list(sel.get_map().values()):
                self._err("no response within %.0f s" % time_limit
                          if key.data["phase"] == "read"
                          else "connect not completed within %.0f s" % time_limit)
                sel.unregister(key.fileobj)
                key.fileobj.close()
            if started < n:
                self.errors["not attempted (time limit or fd limit)"] = n - started
        finally:
            sel.close()

    @staticmethod
    def _complete(buf):
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return False, None
        head = buf[:head_end].decode("latin-1")
        if not head.startswith("HTTP/1.1 200"):
            return False, "status: " + head.split("\r\n", 1)[0][:40]
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        if not m:
            return False, "no content-length"
        if len(buf) - head_end - 4 >= int(m.group(1)):
            if re.search(r"(?im)^connection:\s*close", head):
                return False, "server answered Connection: close"
            return True, None
        return False, None

    def count_open(self):
        """How many idle connections are still open (not closed/reset by the
        server).  A readable idle socket means EOF, RST or stray data."""
        if not self.socks:
            return 0
        sel = selectors.DefaultSelector()
        try:
            for s in self.socks:
                sel.register(s, selectors.EVENT_READ)
            closed = 0
            for key, _ in sel.select(timeout=0):
                try:
                    if key.fileobj.recv(1, socket.MSG_PEEK) == b"":
                        closed += 1
                except OSError:
                    closed += 1
            return len(self.socks) - closed
        finally:
            sel.close()

    def close(self):
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.socks = []


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def bench_one(server, scenario, args, tmp, rawdir):
    """Start `server`, load it with `scenario` args.runs times, stop it."""
    sc = SCENARIOS[scenario]
    entry = {"status": "ok", "runs": [], "note": ""}
    if scenario == "isolation" and server == "nginx":
        entry.update(status="skipped",
                     note="nginx has no worker threads to occupy and no sleep "
                          "endpoint without extra modules")
        return entry

    port = free_port()
    logpath = os.path.join(tmp, "%s-%s.log" % (server, scenario))
    env = dict(os.environ, RSWB_DATA_DIR=tmp, PYTHONUNBUFFERED="1",
               PYTHONPATH=BENCH_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = server_command(server, port, scenario, tmp)
    lua = os.path.join(tmp, "post.lua") if sc.get("lua") == "post" else None
    main_argv = wrk_argv(port, sc["path"], sc["conns"], sc["threads"],
                         args.duration, sc.get("headers", ()), lua)
    entry["wrk"] = " ".join(shlex.quote(a) for a in main_argv)
    pool = IdlePool()
    proc = None
    logf = open(logpath, "wb")
    try:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                env=env, cwd=BENCH_DIR, start_new_session=True)
        wait_ready(proc, port, logpath)
        check_endpoint(port, scenario)
        if args.warmup > 0:
            run_wrk_procs([wrk_argv(port, sc["path"], sc["conns"], sc["threads"],
                                    args.warmup, sc.get("headers", ()), lua)],
                          [0], args.warmup + 30)
        if scenario == "idle":
            entry["rss_base_kib"] = rss_kib(proc.pid)
            t0 = time.monotonic()
            pool.open(port, args.idle_conns, args.idle_time_limit)
            entry["idle_open_s"] = round(time.monotonic() - t0, 2)
            entry["idle_opened"] = len(pool.socks)
            entry["idle_errors"] = dict(pool.errors)
            time.sleep(0.5)
            entry["rss_idle_kib"] = rss_kib(proc.pid)
            log("    %s: %d/%d idle connections open after %.1f s%s"
                % (server, len(pool.socks), args.idle_conns, entry["idle_open_s"],
                   (" errors: %s" % pool.errors) if pool.errors else ""))
            if proc.poll() is not None:
                raise ServerFailed("died while opening idle connections: "
                                   + tail(logpath))
        for i in range(args.runs):
            if scenario == "isolation":
                sleeper = wrk_argv(port, "/sleep", 2, 1, args.duration + 1)
                out_sleep, out = run_wrk_procs([sleeper, main_argv], [0, 0.5],
                                               args.duration + 60)[:2]
                res = parse_wrk(out)
                s = parse_wrk(out_sleep)
                res["sleeper_rps"] = s["rps"]
                res["sleeper_errors"] = s["errors"]
                raw = out + "\n--- sleeper ---\n" + out_sleep
            else:
                out = run_wrk_procs([main_argv], [0], args.duration + 60)[0]
                res = parse_wrk(out)
                raw = out
            if scenario == "idle":
                res["rss_kib"] = rss_kib(proc.pid)
                res["idle_still_open"] = pool.count_open()
            entry["runs"].append(res)
            with open(os.path.join(rawdir, "%s-%s-run%d.txt" % (scenario, server, i + 1)), "w") as f:
                f.write(" ".join(argv[:1] + [a for a in argv[1:] if "\n" not in a])
                        + "\n" + entry["wrk"] + "\n\n" + raw)
            if proc.poll() is not None:
                raise ServerFailed("server exited during the run: " + tail(logpath))
        if "LAUNCHER: serve() rejected" in tail(logpath, 50):
            entry["note"] = "serve() rejected the idle-scenario options; ran with defaults"
    except ServerFailed as exc:
        entry.update(status="failed", note=str(exc)[:400])
    except (subprocess.TimeoutExpired, OSError, http.client.HTTPException) as exc:
        entry.update(status="failed", note="%s: %s" % (type(exc).__name__, str(exc)[:300]))
    finally:
        pool.close()
        stop_process(proc)
        logf.close()

    runs = entry["runs"]
    if runs:
        entry["median"] = {
            "rps": median([r["rps"] for r in runs]),
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
        }
        entry["errors_total"] = sum(r["errors"] for r in runs)
        if scenario == "idle":
            entry["median"]["rss_mib"] = median([r["rss_kib"] / 1024 for r in runs])
            entry["median"]["idle_still_open"] = median([r["idle_still_open"] for r in runs])
        if scenario == "isolation":
            entry["median"]["sleeper_rps"] = median([r["sleeper_rps"] for r in runs])
    return entry


def prepare_data(tmp):
    os.chmod(tmp, 0o755)  # nginx workers may run as another user
    with open(os.path.join(tmp, "file-8m.bin"), "wb") as f:
        f.write(os.urandom(FILE_SIZE))
    with open(os.path.join(tmp, "body-64k.bin"), "wb") as f:
        f.write(b"x" * (64 * 1024))
    with open(os.path.join(tmp, "post.lua"), "w") as f:
        f.write('wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                'wrk.body = string.rep("a", %d)\n' % POST_SIZE)
    for name in ("file-8m.bin", "body-64k.bin", "post.lua"):
        os.chmod(os.path.join(tmp, name), 0o644)


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------

def fmt_num(v, digits=0):
    if v is None:
        return "-"
    return ("{:,.%df}" % digits).format(v)


def fmt_ms(v):
    if v is None:
        return "-"
    if v < 1:
        return "%.0f us" % (v * 1000)
    if v < 100:
        return "%.2f ms" % v
    return "%.0f ms" % v


def scenario_rows(scenario, sres, baseline):
    base = sres.get(baseline, {}).get("median", {}).get("rps") if baseline else None
    header = ["server", "req/s", "p50", "p99", "errors", "vs %s" % (baseline or "-")]
    if scenario == "idle":
        header += ["idle open (of requested)", "RSS MiB"]
    if scenario == "isolation":
        header += ["sleeper req/s"]
    rows = []
    for server, e in sres.items():
        if e["status"] != "ok":
            row = [server, e["status"], "", "", "", ""]
            if scenario == "idle":
                row += ["", ""]
            if scenario == "isolation":
                row += [""]
            rows.append(row)
            continue
        m = e["median"]
        ratio = "%.2fx" % (m["rps"] / base) if base else "-"
        row = [server, fmt_num(m["rps"]), fmt_ms(m["p50_ms"]), fmt_ms(m["p99_ms"]),
               fmt_num(e["errors_total"]), ratio]
        if scenario == "idle":
            row += ["%s (%s)" % (fmt_num(m["idle_still_open"]), fmt_num(e.get("idle_opened"))),
                    fmt_num(m["rss_mib"], 1)]
        if scenario == "isolation":
            row += [fmt_num(m["sleeper_rps"], 1)]
        rows.append(row)
    return header, rows


def text_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                               for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])]
                     + [line(r) for r in rows])


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def header_lines(meta):
    return [
        "Machine: %d cores (os.cpu_count()), %s, %s" % (
            meta["cpu_count"], meta["cpu_model"], meta["platform"]),
        "Date: %s (load average at start: %s)" % (meta["date"], meta.get("loadavg", "?")),
        "Command: `%s`" % meta["command"],
        "Each figure: median of %d run(s) of %d s (after a %d s warm-up); "
        "errors = sum over runs of wrk socket errors (connect/read/write/"
        "timeout) + non-2xx responses. wrk and the servers share the machine."
        % (meta["runs"], meta["duration"], meta["warmup"]),
        "Versions: " + ", ".join("%s %s" % kv for kv in meta["versions"].items()),
    ]


def print_scenario(scenario, sres, baseline):
    header, rows = scenario_rows(scenario, sres, baseline)
    log("\n== %s: %s" % (scenario, SCENARIOS[scenario]["desc"]))
    log(text_table(header, rows))
    for server, e in sres.items():
        if e.get("note"):
            log("   %s: %s" % (server, e["note"]))


def write_markdown(path, meta, results, baseline):
    out = ["# rswaitress benchmark results", ""]
    if meta.get("quick"):
        out += ["**Quick run** (`--quick`): 1 short run per figure, indicative only.", ""]
    if meta.get("interrupted"):
        out += ["**Interrupted**: partial results.", ""]
    out += ["- " + l for l in header_lines(meta)]
    out += ["", "Ratios are req/s relative to **%s**." % baseline if baseline
            else "No baseline server.", ""]
    for scenario, sres in results.items():
        header, rows = scenario_rows(scenario, sres, baseline)
        out += ["## %s" % SCENARIOS[scenario]["title"], "",
                SCENARIOS[scenario]["desc"] + ".", "", md_table(header, rows), ""]
        notes = ["- %s: %s" % (s, e["note"]) for s, e in sres.items() if e.get("note")]
        if notes:
            out += notes + [""]
    out += ["## Server configurations", ""]
    out += ["- **%s**: %s" % (s, SERVER_NOTES[s]) for s in meta["servers"]]
    if "idle" in results:
        out += ["", "Extra settings in the idle-connections scenario only "
                "(so that 10,000 connections are allowed at all):", ""]
        out += ["- **%s**: %s" % (s, IDLE_NOTES[s]) for s in meta["servers"]]
    out += ["", "nginx: `/hello` is `return 200 \"Hello, World!\"`; `/64k` and "
            "`/file` are static files with `sendfile on`; `/post` is "
            "`return 200 $content_length` with `client_max_body_size 2m; "
            "client_body_buffer_size 2m;` — nginx reads the 1 MiB body off "
            "the socket and discards it (no buffering, nothing counts the "
            "bytes; the answer echoes the Content-Length header).", ""]
    out += ["Raw wrk output of every run: `benches/results/raw/` (not committed).", ""]
    with open(path, "w") as f:
        f.write("\n".join(out))


def write_chart(path, meta, results, baseline):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no chart")
        return False
    scenarios = [s for s in results]
    servers = [s for s in meta["servers"]]
    values = {}
    for sc in scenarios:
        base = results[sc].get(baseline, {}).get("median", {}).get("rps") if baseline else None
        for sv in servers:
            e = results[sc].get(sv)
            rps = e.get("median", {}).get("rps") if e and e["status"] == "ok" else None
            values[sc, sv] = (rps / base if (rps and base) else None, rps)
    colors = {"rswaitress": "#d9480f", "waitress": "#1c7ed6", "gunicorn": "#2b8a3e",
              "granian": "#862e9c", "nginx": "#868e96"}
    fig, ax = plt.subplots(figsize=(max(8, 2.0 * len(scenarios) + 3), 6.5))
    width = 0.8 / max(1, len(servers))
    use_ratio = baseline is not None
    for i, sv in enumerate(servers):
        xs, ys, labels = [], [], []
        for j, sc in enumerate(scenarios):
            ratio, rps = values[sc, sv]
            y = ratio if use_ratio else rps
            if y:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(y)
                labels.append("%.2fx" % ratio if use_ratio else "%.0f" % rps)
        bars = ax.bar(xs, ys, width * 0.92, label=sv, color=colors.get(sv))
        for b, lab in zip(bars, labels):
            ax.annotate(lab, (b.get_x() + b.get_width() / 2, b.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, rotation=90)
    ax.set_yscale("log")
    if use_ratio:
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("requests/s relative to %s (log scale)" % baseline)
    else:
        ax.set_ylabel("requests/s (log scale)")
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([SCENARIOS[s]["title"].replace(" (", "\n(").replace(", ", ",\n")
                        for s in scenarios], fontsize=9)
    ymin, ymax = ax.get_ylim()
    ax.set_ylim(ymin, ymax * 3)
    ax.legend(ncol=len(servers), loc="upper center", fontsize=9, frameon=False,
              bbox_to_anchor=(0.5, 1.0))
    ax.set_title("WSGI servers, %d threads each - %d cores, %s - %s%s"
                 % (THREADS, meta["cpu_count"], meta["cpu_model"], meta["date"][:10],
                    " (quick)" if meta.get("quick") else ""), fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_list(text, known, aliases=None, what="item"):
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        item = (aliases or {}).get(item, item)
        if item not in known:
            sys.exit("unknown %s %r (choose from %s)" % (what, item, ", ".join(known)))
        if item not in out:
            out.append(item)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark rswaitress against waitress, gunicorn, granian, nginx.")
    ap.add_argument("--quick", action="store_true",
                    help="1 run of 3 s per figure, 1 s warm-up (< 5 min)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma list from: %s (default all)" % ", ".join(SCENARIOS))
    ap.add_argument("--servers", default=",".join(ALL_SERVERS),
                    help="comma list from: %s (default all)" % ", ".join(ALL_SERVERS))
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 10, quick 3)")
    ap.add_argument("--runs", type=int, help="runs per figure, median reported (default 3, quick 1)")
    ap.add_argument("--warmup", type=int, help="warm-up seconds before measuring (default 1)")
    ap.add_argument("--idle-conns", type=int, default=10000,
                    help="idle connections in the idle scenario (default 10000)")
    ap.add_argument("--idle-time-limit", type=float,
                    help="seconds allowed to open the idle connections (default 30, quick 15)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default benches/results)")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get/pip")
    args = ap.parse_args(argv)

    args.duration = args.duration or (3 if args.quick else 10)
    args.runs = args.runs or (1 if args.quick else 3)
    args.warmup = 1 if args.warmup is None else args.warmup
    if args.idle_time_limit is None:
        args.idle_time_limit = 15.0 if args.quick else 30.0
    scenarios = parse_list(args.scenarios, list(SCENARIOS), SCENARIO_ALIASES, "scenario")
    servers = parse_list(args.servers, ALL_SERVERS, None, "server")

    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let cleanup finish
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_sigterm)

    ensure_tools(servers, args.no_install)
    if not servers:
        sys.exit("no server left to benchmark")
    nofile = raise_nofile()
    if "idle" in scenarios and nofile < args.idle_conns + 200:
        log("RLIMIT_NOFILE is %d: fewer than %d idle connections can be opened"
            % (nofile, args.idle_conns))

    baseline = "rswaitress" if "rswaitress" in servers else servers[0]
    if baseline != "rswaitress":
        log("rswaitress not in this run: ratios are relative to %s" % baseline)
    meta = {
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
        "platform": "%s %s, Python %s" % (platform.system(), platform.release(),
                                          platform.python_version()),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in
                            [os.path.basename(sys.executable)] + sys.argv),
        "quick": args.quick, "runs": args.runs, "duration": args.duration,
        "warmup": args.warmup, "idle_conns": args.idle_conns,
        "servers": servers, "scenarios": scenarios, "baseline": baseline,
        "versions": versions(servers), "rlimit_nofile": nofile,
        "threads": THREADS,
        "loadavg": " ".join("%.2f" % x for x in os.getloadavg()),
    }
    for l in header_lines(meta):
        log(l)
    n_cases = sum(1 for sc in scenarios for sv in servers
                  if not (sc == "isolation" and sv == "nginx"))
    est = n_cases * (args.runs * args.duration + args.warmup + 3)
    log("%d server/scenario pairs, roughly %d min" % (n_cases, round(est / 60.0 + 0.5)))

    os.makedirs(args.out, exist_ok=True)
    rawdir = os.path.join(args.out, "raw")
    os.makedirs(rawdir, exist_ok=True)
    results = {}
    tmp = tempfile.mkdtemp(prefix="rswbench-")
    t_start = time.monotonic()
    try:
        prepare_data(tmp)
        for scenario in scenarios:
            results[scenario] = {}
            log("\n-- scenario %s: %s" % (scenario, SCENARIOS[scenario]["desc"]))
            for server in servers:
                log("   %s ..." % server)
                results[scenario][server] = bench_one(server, scenario, args, tmp, rawdir)
            print_scenario(scenario, results[scenario], baseline)
    except KeyboardInterrupt:
        meta["interrupted"] = True
        log("\ninterrupted; writing partial results")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)

    results = {k: v for k, v in results.items() if v}
    md = os.path.join(args.out, "results.md")
    js = os.path.join(args.out, "results.json")
    png = os.path.join(args.out, "results.png")
    with open(js, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    write_markdown(md, meta, results, baseline)
    chart = write_chart(png, meta, results, baseline) if results else False

    log("\n" + "=" * 78)
    for l in header_lines(meta):
        log(l)
    for scenario, sres in results.items():
        print_scenario(scenario, sres, baseline)
    log("\nwrote %s, %s%s  (%.0f s)" % (md, js, (", " + png) if chart else "",
                                         meta["elapsed_s"]))
    return 130 if meta.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
