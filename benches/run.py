#!/usr/bin/env python3
"""Side-by-side HTTP benchmark: rswaitress vs waitress, gunicorn, granian, nginx.

    python benches/run.py                 # full run: 3 x 10 s per figure (over an hour)
    python benches/run.py --quick         # 1 x 2 s per figure (about 10-11 minutes)
    python benches/run.py --list          # scenarios, variants, plan and its duration
    python benches/run.py --scenarios hello,flask-json --servers rswaitress,granian-bt1
    python benches/run.py --baseline-python /path/to/venv/bin/python   # + rswaitress-base

See benches/README.md.  Everything runs on 127.0.0.1; every server variant
is started as a subprocess on a free port and stopped by PID afterwards.
Each figure is reported with the server's CPU time per request (its whole
process tree, from /proc), the measure that drifts least on a shared machine.
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
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(BENCH_DIR, "results")
QUICK_OUT = os.path.join(DEFAULT_OUT, "quick")  # git-ignored (benches/.gitignore)
NGINX_TEMPLATE = os.path.join(BENCH_DIR, "nginx.conf.template")

HOST = "127.0.0.1"
POST_SIZE = 1024 * 1024
FILE_SIZE = 8 * 1024 * 1024
HELLO = b"Hello, World!"

def _is(expected):
    return lambda body: body == expected


def _length(n):
    return lambda body: len(body) == n


def _json_list(n):
    def check(body):
        try:
            value = json.loads(body)
        except ValueError:
            return False
        return isinstance(value, list) and len(value) == n and all(
            isinstance(x, dict) for x in value)
    return check


def _cpu_answer(body):
    sys.path.insert(0, BENCH_DIR)
    try:
        import apps
    finally:
        sys.path.remove(BENCH_DIR)
    return body == str(apps.cpu_work()).encode()


FLASK_APP = "realapps.flaskapp:app"
DJANGO_APP = "realapps.djsite.wsgi:application"

# name -> description.  "conns"/"threads" are wrk's -c/-t; "app" the WSGI
# callable as module:attr (default apps:app); "check" verifies one answer
# before the load; "nginx" whether nginx has the endpoint; "needs" the
# modules the app imports.
SCENARIOS = {
    "hello": dict(
        title="hello (keep-alive)",
        desc='13-byte "Hello, World!", 50 keep-alive connections',
        path="/hello", conns=50, threads=2, check=_is(HELLO), nginx=True),
    "tls-hello": dict(
        title="hello over TLS (keep-alive)",
        desc="hello over HTTPS on 50 keep-alive connections (2 wrk threads); a "
             "self-signed EC P-256 certificate made per run, the same files for "
             "every server; waitress has no TLS",
        path="/hello", conns=50, threads=2, check=_is(HELLO), nginx=True, tls=True),
    "tls-close": dict(
        title="hello over TLS, Connection: close",
        desc="tls-hello with Connection: close on every request: a full TLS "
             "handshake per request (the handshake cost)",
        path="/hello", conns=50, threads=2, headers=["Connection: close"],
        check=_is(HELLO), nginx=True, tls=True),
    "hello-log": dict(
        title="hello, access log on",
        desc="hello (50 keep-alive connections) with the server's access log on, "
             "Gunicorn's default format (nginx: combined, the same fields), one "
             "line per request appended to a file; waitress has no access log",
        path="/hello", conns=50, threads=2, check=_is(HELLO), nginx=True,
        access_log=True),
    "close": dict(
        title="hello, Connection: close",
        desc="same as hello, every request sends Connection: close "
             "(new TCP connection per request)",
        path="/hello", conns=50, threads=2, headers=["Connection: close"],
        check=_is(HELLO), nginx=True),
    "64k": dict(
        title="64 KiB body",
        desc="64 KiB response body, 50 keep-alive connections",
        path="/64k", conns=50, threads=2, check=_length(64 * 1024), nginx=True),
    "file": dict(
        title="8 MiB file",
        desc="8 MiB file via wsgi.file_wrapper (nginx: static file, "
             "sendfile on), 50 keep-alive connections",
        path="/file", conns=50, threads=2, check=_length(FILE_SIZE), nginx=True),
    "post": dict(
        title="1 MiB POST",
        desc="1 MiB request body, answer is the body length; "
             "50 keep-alive connections",
        path="/post", conns=50, threads=2, lua="post", nginx=True),
    "isolation": dict(
        title="isolation (2 slow + 48 hello)",
        desc="2 connections loop on a 50 ms sleep endpoint (holding 2 of the "
             "4 threads) while 48 connections run hello; figures are hello's",
        path="/hello", conns=48, threads=2, check=_is(HELLO)),
    "idle": dict(
        title="hello + 10k idle conns",
        desc="hello with 50 connections while 10,000 idle keep-alive "
             "connections (each served one GET first) are held open",
        path="/hello", conns=50, threads=2, check=_is(HELLO), nginx=True),
    "flask-hello": dict(
        title="Flask hello",
        desc='Flask view returning "Hello, World!", 50 keep-alive connections',
        app=FLASK_APP, path="/hello", conns=50, threads=2, check=_is(HELLO),
        needs=("flask",)),
    "flask-json": dict(
        title="Flask jsonify",
        desc="Flask jsonify() of a list of 20 small dicts (1.1 KB), "
             "50 keep-alive connections",
        app=FLASK_APP, path="/json", conns=50, threads=2, check=_json_list(20),
        needs=("flask",)),
    "flask-jinja": dict(
        title="Flask Jinja table",
        desc="Flask view rendering a Jinja template (compiled at import) into a "
             "60-row HTML table (5.5 KB), 50 keep-alive connections",
        app=FLASK_APP, path="/jinja", conns=50, threads=2,
        check=lambda body: body.count(b"<tr class=") == 60, needs=("flask",)),
    "django-hello": dict(
        title="Django hello",
        desc='Django view returning "Hello, World!" through the default '
             "middleware list, 50 keep-alive connections",
        app=DJANGO_APP, path="/hello", conns=50, threads=2, check=_is(HELLO),
        needs=("django",)),
    "django-orm": dict(
        title="Django ORM 20 rows",
        desc="Django view reading 20 of 100 rows from SQLite through the ORM "
             "and answering them as JSON (1.3 KB), 50 keep-alive connections",
        app=DJANGO_APP, path="/orm", conns=50, threads=2, check=_json_list(20),
        needs=("django",)),
    "cpu": dict(
        title="CPU-bound 3 ms view",
        desc="pure-Python view computing for about 3 ms per request (GIL held), "
             "20 keep-alive connections; one process, and two (-w2 variants)",
        path="/cpu", conns=20, threads=2, check=_cpu_answer),
    "heads": dict(
        title="hello + hostile heads",
        desc="hello on 50 keep-alive connections while 4 other connections "
             "send, back to back, request heads just under 256 KiB (a request "
             "line, Host and ~52,000 `a:b` lines: within the 262,144-byte "
             "max_request_header_size of Waitress and rswaitress); figures are "
             "hello's, with the heads running and alone",
        path="/hello", conns=50, threads=2, check=_is(HELLO), nginx=True),
}
SCENARIO_ALIASES = {
    "keepalive": "hello", "hello-close": "close", "noka": "close",
    "nokeepalive": "close", "64kib": "64k", "big": "64k", "8m": "file",
    "sendfile": "file", "upload": "post", "sleep": "isolation",
    "idle10k": "idle", "c10k": "idle", "flask": "flask-hello",
    "django": "django-hello", "orm": "django-orm", "jinja": "flask-jinja",
    "json": "flask-json", "cpu-bound": "cpu", "log": "hello-log",
    "access-log": "hello-log", "tls": "tls-hello", "https": "tls-hello",
    "tls-keepalive": "tls-hello", "https-close": "tls-close", "accesslog": "hello-log",
}

# Server variants: one server kind ("server") in one configuration.  A kind
# can appear several times in a run, e.g. at its defaults and at its best.
#   kwargs:  keyword arguments of serve() (rswaitress, waitress)
#   args:    command-line arguments (gunicorn, granian)
#   only:    scenarios the variant joins by default (None: every scenario it
#            can run); --servers overrides the defaults.
VARIANTS = {
    "rswaitress": dict(
        server="rswaitress", kwargs={},
        desc="`rswaitress.serve(app, host=, port=)`: its defaults (threads=4)"),
    "rswaitress-t1": dict(
        server="rswaitress", kwargs={"threads": 1},
        desc="`rswaitress.serve(app, host=, port=, threads=1)`"),
    "waitress": dict(
        server="waitress", kwargs={},
        desc="`waitress.serve(app, host=, port=)`: its defaults (threads=4)"),
    "gunicorn": dict(
        server="gunicorn", args=["-k", "gthread", "--workers", "1", "--threads", "4"],
        desc="`gunicorn -k gthread --workers 1 --threads 4`"),
    "gunicorn-sync": dict(
        server="gunicorn", args=[],
        desc="`gunicorn`: its defaults (1 sync worker: one request at a time, "
             "no keep-alive)"),
    "granian": dict(
        server="granian", args=[],
        desc="`granian --interface wsgi`: its defaults (1 worker, 1 runtime "
             "thread, blocking threads = backpressure/2 = 512, started on demand)"),
    "granian-bt1": dict(
        server="granian", args=["--blocking-threads", "1"],
        desc="`granian --interface wsgi --blocking-threads 1`"),
    "granian-bt4": dict(
        server="granian", args=["--blocking-threads", "4"],
        desc="`granian --interface wsgi --blocking-threads 4` (4 threads, like "
             "the others; the configuration of earlier runs' `granian` column)"),
    "rswaitress-w2": dict(
        server="rswaitress", kwargs={"workers": 2}, only=("cpu",),
        desc="`rswaitress.serve(app, host=, port=, workers=2)`: 2 processes "
             "(\"not available\" while serve() has no `workers`)"),
    "gunicorn-w2": dict(
        server="gunicorn", args=["-k", "gthread", "--workers", "2", "--threads", "4"],
        only=("cpu",), desc="`gunicorn -k gthread --workers 2 --threads 4`"),
    "granian-w2": dict(
        server="granian", args=["--workers", "2", "--blocking-threads", "4"],
        only=("cpu",), desc="`granian --interface wsgi --workers 2 --blocking-threads 4`"),
    "granian-w2-bt1": dict(
        server="granian", args=["--workers", "2", "--blocking-threads", "1"],
        only=("cpu",), desc="`granian --interface wsgi --workers 2 --blocking-threads 1`"),
    "nginx": dict(
        server="nginx",
        desc="nginx, 1 worker process, static answers (see "
             "benches/nginx.conf.template); not a WSGI server, a ceiling"),
}
SERVER_KINDS = ["rswaitress", "waitress", "gunicorn", "granian", "nginx"]
SERVER_NOTES = {
    "granian": "Granian has no `wsgi.file_wrapper`, so its /file is served by "
               "iterating the file in 256 KiB chunks. Every granian variant "
               "also gets `--log-level warning --no-ws`.",
    "gunicorn": "Every gunicorn variant also gets `--log-level warning`.",
}

IDLE_NOTES = {
    "rswaitress": "connection_limit=12000, channel_timeout=300, "
                  "asyncore_use_poll=True (same knobs as waitress; dropped "
                  "with a warning if serve() rejects them)",
    "waitress": "connection_limit=12000 (default 100), channel_timeout=300, "
                "asyncore_use_poll=True (select() cannot watch fds >= 1024)",
    "gunicorn": "--worker-connections 12000 (default 1000), --keep-alive 300 "
                "(default 2 s)",
    "granian": "--backpressure 12000, --http1-header-read-timeout 60000 (max); "
               "the defaults variant then has up to 6,000 blocking threads "
               "(backpressure/2, started on demand)",
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


PROBE = r"""
import importlib.util, json, os, subprocess, sys
out = {"executable": sys.executable, "python": sys.version.split()[0],
       "venv": sys.prefix != sys.base_prefix}
for name in ("rswaitress", "waitress", "flask", "django"):
    out[name] = importlib.util.find_spec(name) is not None
if out["rswaitress"]:
    try:
        import rswaitress
        rswaitress.serve
        from importlib import metadata
        out["rswaitress_version"] = metadata.version("rswaitress")
        out["rswaitress_file"] = rswaitress.__file__
    except Exception as exc:
        out["rswaitress"] = False
        out["rswaitress_error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(out))
"""


def server_env(tmp=None):
    """Environment of every server process (and of the interpreter probes)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=BENCH_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if tmp:
        env["RSWB_DATA_DIR"] = tmp
    return env


def probe_python(python):
    """What `python` imports when started as the servers are (same
    environment and working directory)."""
    try:
        p = subprocess.run([python, "-c", PROBE], capture_output=True, text=True,
                           env=server_env(), cwd=BENCH_DIR, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def source_revision(path):
    """'git <hash>[ +changes]' of the checkout holding `path`, if it is one."""
    d = os.path.dirname(path)
    p = subprocess.run(["git", "-C", d, "log", "-1", "--format=%h"],
                       capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout.strip():
        return None
    rev = "git " + p.stdout.strip()
    top = subprocess.run(["git", "-C", d, "rev-parse", "--show-toplevel"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", top, "status", "--porcelain", "--", "src", "python"],
                           capture_output=True, text=True).stdout.strip()
    return rev + (" +uncommitted changes" if dirty else "")


def pip_install(python, pkgs):
    log("installing %s with pip into %s ..." % (" ".join(pkgs), python))
    subprocess.run([python, "-m", "pip", "install", "-q"] + pkgs)


def ensure_tools(variants, need_modules, no_install):
    """Install what the run needs; return the variants that can run, and
    the interpreter probes (python -> probe)."""
    kinds = {VARIANTS[v]["server"] for v in variants}
    need_apt = []
    if not shutil.which("wrk"):
        need_apt.append("wrk")
    if "nginx" in kinds and not find_nginx():
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
    missing = set()
    if "nginx" in kinds and not find_nginx():
        log("nginx is not available; skipping it")
        missing.add("nginx")

    # Packages for the interpreter running this script (which also runs
    # waitress, gunicorn and granian, and the current rswaitress).
    wanted = [k for k in ("waitress", "gunicorn", "granian") if k in kinds]
    wanted += ["matplotlib"] + sorted(need_modules)
    pkgs = [m for m in wanted if importlib.util.find_spec(m) is None]
    if pkgs and not no_install:
        pip_install(sys.executable, pkgs)
        importlib.invalidate_caches()
    for k in ("waitress", "gunicorn", "granian"):
        if k in kinds and importlib.util.find_spec(k) is None:
            log("%s is not importable; skipping it" % k)
            missing.add(k)

    probes = {}
    for python in sorted({VARIANTS[v].get("python") or sys.executable for v in variants
                          if VARIANTS[v]["server"] == "rswaitress"}):
        probe = probe_python(python)
        absent = [m for m in sorted(need_modules) if not probe.get(m)]
        if absent and probe.get("venv") and not no_install:
            pip_install(python, absent)
            probe = probe_python(python)
        probes[python] = probe
        if not probe.get("rswaitress"):
            why = probe.get("rswaitress_error") or probe.get("error") or "not installed"
            log("rswaitress is not importable by %s (%s). Install it first with "
                "`pip install .` in the repository." % (python, why))
    kept = []
    for v in variants:
        spec = VARIANTS[v]
        if spec["server"] in missing:
            continue
        if spec["server"] == "rswaitress":
            probe = probes[spec.get("python") or sys.executable]
            if not probe.get("rswaitress"):
                log("skipping %s: rswaitress not importable" % v)
                continue
        kept.append(v)
    return kept, probes


def versions(variants, probes, need_modules):
    from importlib import metadata
    out = {}
    for v in variants:
        spec = VARIANTS[v]
        kind = spec["server"]
        if kind == "rswaitress":
            python = spec.get("python") or sys.executable
            key = "rswaitress" if python == sys.executable else v
            if key in out:
                continue
            probe = probes[python]
            text = probe.get("rswaitress_version", "?")
            rev = source_revision(probe["rswaitress_file"]) if "rswaitress_file" in probe else None
            where = probe.get("rswaitress_file", "?")
            out[key] = "%s (%s%s)" % (text, where, ", " + rev if rev else "")
        elif kind in out:
            continue
        elif kind == "nginx":
            p = subprocess.run([find_nginx(), "-v"], capture_output=True, text=True)
            out[kind] = (p.stderr or p.stdout).strip().split("/")[-1]
        else:
            try:
                out[kind] = metadata.version(kind)
            except metadata.PackageNotFoundError:
                out[kind] = "?"
    for m in sorted(need_modules):
        try:
            out[m] = metadata.version(m)
        except metadata.PackageNotFoundError:
            out[m] = "?"
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


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(pid):
    """CPU time (user + system) used so far by process `pid` and all its
    descendants, in seconds.

    /proc/PID/stat fields 14-15 (utime, stime) cover every thread of a
    process, the exited ones too; fields 16-17 (cutime, cstime) hold the
    children it has already reaped.  Summing all four over the live tree
    counts each process once whether it is still running or was reaped
    during the measurement."""
    total = 0
    for p in [pid] + descendants(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


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


NOT_AVAILABLE_EXIT = 75  # launcher: serve() does not know an option of the variant

PY_LAUNCHER = r"""
import importlib, sys
sys.path.insert(0, %(bench)r)
module, attr = %(target)r.split(":")
app = getattr(importlib.import_module(module), attr)
from %(server)s import serve
kw = dict(host=%(host)r, port=%(port)d)
variant = %(kwargs)r
extra = %(extra)r
access_log_path = %(access_log)r
if access_log_path:
    # The access log goes to a file of its own, set up before serve(): serve()
    # only adds a stderr handler to the root logger (and sets the level of
    # "rswaitress" if unset), which this logger does not propagate to.
    import logging
    handler = logging.FileHandler(access_log_path)
    handler.setFormatter(logging.Formatter("%%(message)s"))
    access = logging.getLogger("rswaitress.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    variant = dict(variant, access_log=True)  # an older serve(): "not available"
try:
    serve(app, **kw, **variant, **extra)
except (TypeError, ValueError) as exc:
    if any(str(exc) == "Unknown adjustment %%r" %% (k,) for k in variant):
        print("LAUNCHER: NOT AVAILABLE: serve() raised %%s(%%r)" %% (type(exc).__name__, str(exc)),
              file=sys.stderr, flush=True)
        sys.exit(%(na_exit)d)
    if not extra:
        raise
    print("LAUNCHER: serve() rejected %%r (%%s); using defaults" %% (sorted(extra), exc),
          file=sys.stderr, flush=True)
    serve(app, **kw, **variant)
"""


# Granian's access log atoms cannot say Gunicorn's %(b)s (body bytes): "-"
# stands in for it; the rest is Gunicorn's default format, field by field.
GRANIAN_ACCESS_FMT = ('%(addr)s - - [%(time)s] "%(method)s %(path)s %(protocol)s" '
                      '%(status)d - "%(header{referer})s" "%(header{user-agent})s"')

# How each server is told to write its access log to PATH (hello-log).
ACCESS_LOG_NOTES = {
    "rswaitress": "`serve(app, ..., access_log=True)` (default `access_log_format`: "
                  "Gunicorn's default), the `rswaitress.access` logger given a "
                  "`logging.FileHandler(PATH)` with formatter `%(message)s`, level "
                  "INFO, `propagate = False`, set up by the launcher before serve()",
    "gunicorn": "`--access-logfile PATH` (its default `--access-logformat`)",
    "granian": "`--access-log --access-log-fmt '%s' --log-config FILE`, FILE routing "
               "the `granian.access` logger (level INFO, whatever `--log-level`) to a "
               "`logging.FileHandler(PATH)` with formatter `%%(message)s`; Granian has "
               "no atom for the body size, `-` stands in for it" % GRANIAN_ACCESS_FMT,
    "nginx": "`access_log PATH combined;` (the same fields as Gunicorn's default)",
    "waitress": "not available: waitress has no access log",
}


def granian_log_config(path, tmp, name):
    """A logging dictConfig (JSON) for granian: its own messages to stdout as
    by default, granian.access to the file `path`."""
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "generic": {"format": "[%(levelname)s] %(message)s"},
            "access": {"format": "%(message)s"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "generic",
                        "stream": "ext://sys.stdout"},
            "access": {"class": "logging.FileHandler", "formatter": "access",
                       "filename": path},
        },
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "WARNING", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
    conf = os.path.join(tmp, "%s-logging.json" % name)
    with open(conf, "w") as f:
        json.dump(config, f, indent=1)
    return conf


def server_command(variant, port, scenario, tmp, access_log=None):
    """argv for starting `variant` on `port` for `scenario`; `access_log`:
    the file the server's access log goes to (None: access log off)."""
    spec = VARIANTS[variant]
    kind = spec["server"]
    idle = scenario == "idle"
    target = SCENARIOS[scenario].get("app", "apps:app")
    tls = SCENARIOS[scenario].get("tls")
    cert, key = (TLS_FILES["cert"], TLS_FILES["key"]) if tls else (None, None)
    if kind in ("rswaitress", "waitress"):
        extra = {}
        if idle:
            extra = dict(connection_limit=12000, channel_timeout=300,
                         asyncore_use_poll=True)
        kwargs = spec["kwargs"]
        if tls:
            # In the variant's kwargs: a serve() without TLS says "not available".
            kwargs = dict(kwargs, ssl_certfile=cert, ssl_keyfile=key)
        code = PY_LAUNCHER % dict(bench=BENCH_DIR, target=target, server=kind, host=HOST,
                                  port=port, kwargs=kwargs, extra=extra,
                                  access_log=access_log, na_exit=NOT_AVAILABLE_EXIT)
        return [spec.get("python") or sys.executable, "-c", code]
    if kind == "gunicorn":
        argv = [sys.executable, "-m", "gunicorn"] + spec["args"] + [
            "--bind", "%s:%d" % (HOST, port), "--chdir", BENCH_DIR,
            "--log-level", "warning"]
        if idle:
            argv += ["--worker-connections", "12000", "--keep-alive", "300"]
        if access_log:
            argv += ["--access-logfile", access_log]
        if tls:
            argv += ["--certfile", cert, "--keyfile", key]
        return argv + [target]
    if kind == "granian":
        argv = [sys.executable, "-m", "granian", "--interface", "wsgi"] + spec["args"] + [
            "--host", HOST, "--port", str(port), "--working-dir", BENCH_DIR,
            "--log-level", "warning", "--no-ws"]
        if idle:
            argv += ["--backpressure", "12000",
                     "--http1-header-read-timeout", "60000"]
        if access_log:
            argv += ["--access-log", "--access-log-fmt", GRANIAN_ACCESS_FMT,
                     "--log-config", granian_log_config(access_log, tmp,
                                                        "%s-%s" % (variant, scenario))]
        if tls:
            argv += ["--ssl-certificate", cert, "--ssl-keyfile", key]
        return argv + [target]
    if kind == "nginx":
        conf = write_nginx_conf(port, tmp, access_log, tls)
        return [find_nginx(), "-p", tmp + "/", "-c", conf,
                "-e", os.path.join(tmp, "nginx-error.log")]
    raise ValueError(variant)


def write_nginx_conf(port, tmp, access_log=None, tls=False):
    with open(NGINX_TEMPLATE) as f:
        text = f.read()
    directive = ("access_log %s combined;" % access_log) if access_log else "access_log off;"
    ssl = ""
    if tls:
        ssl = ("listen 127.0.0.1:%d ssl backlog=4096;\n        ssl_certificate %s;\n"
               "        ssl_certificate_key %s;\n        ssl_protocols TLSv1.2 TLSv1.3;"
               % (port, TLS_FILES["cert"], TLS_FILES["key"]))
        text = text.replace("listen 127.0.0.1:@PORT@ backlog=4096;", "@SSL@")
    text = (text.replace("@SSL@", ssl).replace("@PORT@", str(port)).replace("@TMP@", tmp)
            .replace("@DATA@", tmp).replace("@ACCESS_LOG@", directive))
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


class ServerFailed(Exception):
    pass


class NotAvailable(Exception):
    """The variant's configuration does not exist in the server tried."""


# The run's certificate: {"cert": PATH, "key": PATH}, filled by make_cert().
TLS_FILES = {}


def make_cert(tmp):
    """A self-signed EC P-256 certificate for 127.0.0.1 and localhost, made
    once per run with the openssl CLI in the run's scratch directory."""
    cert, key = os.path.join(tmp, "tls-cert.pem"), os.path.join(tmp, "tls-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    TLS_FILES.update(cert=cert, key=key)


def http_get(port, method, path, body=None, timeout=15, tls=False):
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(proc, port, logpath, timeout=30.0, tls=False):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if proc.returncode == NOT_AVAILABLE_EXIT:
                line = [l for l in tail(logpath, 50).split(" | ") if "NOT AVAILABLE" in l]
                raise NotAvailable((line or ["serve() rejected an option"])[-1]
                                   .replace("LAUNCHER: NOT AVAILABLE: ", ""))
            raise ServerFailed("exited with %s: %s" % (proc.returncode, tail(logpath)))
        try:
            with socket.create_connection((HOST, port), timeout=1):
                pass
            status, body = http_get(port, "GET", "/hello", timeout=5, tls=tls)
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
        status, body = http_get(port, "POST", "/post", body=b"a" * POST_SIZE,
                                tls=sc.get("tls"))
        ok = status == 200 and body.strip() == str(POST_SIZE).encode()
    else:
        status, body = http_get(port, "GET", sc["path"], tls=sc.get("tls"))
        ok = status == 200 and sc["check"](body)
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


def wrk_argv(port, path, conns, threads, duration, headers=(), lua=None, tls=False):
    argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration,
            "--latency", "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    if lua:
        argv += ["-s", lua]
    return argv + ["%s://%s:%d%s" % ("https" if tls else "http", HOST, port, path)]


def run_wrk_procs(argvs, delays, timeout, cpu_pid=None):
    """Run several wrk processes concurrently (argv i started after delay i);
    return their stdout texts, and the CPU seconds the process tree of
    `cpu_pid` used from just before the first wrk started to just after
    the last one ended (None without cpu_pid).  Every process is killed by
    PID on error."""
    procs = []
    cpu = None
    try:
        cpu0 = tree_cpu_seconds(cpu_pid) if cpu_pid else None
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
        if cpu_pid:
            cpu = tree_cpu_seconds(cpu_pid) - cpu0
        return outs, cpu
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def add_cpu(res, cpu_s, requests):
    """CPU seconds of the server in a measured run, and per request."""
    res["cpu_s"] = round(cpu_s, 3) if cpu_s is not None else None
    res["cpu_requests"] = requests
    res["cpu_us_per_req"] = (cpu_s * 1e6 / requests) if (cpu_s is not None and requests) else None
    return res


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
# hostile request heads
# --------------------------------------------------------------------------

HEAD_LIMIT = 262144   # max_request_header_size default of Waitress and rswaitress
HEAD_MARGIN = 1024    # stay this far under it
HEADS_CLIENTS = 4


def hostile_head():
    """A request head just under HEAD_LIMIT bytes: the request line, Host,
    then as many 5-byte `a:b` header lines as fit.  Returns (bytes, lines)."""
    start = ("GET /hello HTTP/1.1\r\nHost: %s\r\n" % HOST).encode()
    line = b"a:b\r\n"
    n = (HEAD_LIMIT - HEAD_MARGIN - len(start) - 2) // len(line)
    return start + line * n + b"\r\n", n


HOSTILE_HEAD, HOSTILE_LINES = hostile_head()


class HeadsLoad:
    """`clients` threads; each opens a connection, sends one hostile head,
    reads the answer (whatever its status) or the close, and starts again,
    until stop() or `time_limit` seconds have passed.  Every socket
    operation times out after io_timeout seconds."""

    def __init__(self, port, head, clients=HEADS_CLIENTS, time_limit=120.0, io_timeout=10.0):
        self.port, self.head, self.clients = port, head, clients
        self.time_limit, self.io_timeout = time_limit, io_timeout
        self.answered = 0
        self.outcomes = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks = {}
        self._threads = []

    def start(self):
        self.deadline = time.monotonic() + self.time_limit
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)

    def wait_answered(self, n, timeout):
        end = time.monotonic() + timeout
        while self.answered < n and time.monotonic() < end:
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        with self._lock:
            socks = list(self._socks.values())
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(self.io_timeout + 5)

    def _client(self, i):
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            s = None
            try:
                s = socket.create_connection((HOST, self.port), timeout=self.io_timeout)
                with self._lock:
                    self._socks[i] = s
                try:
                    s.sendall(self.head)
                    outcome = self._answer(s)
                except (BrokenPipeError, ConnectionResetError):
                    # the server stopped reading: what did it answer, if anything?
                    try:
                        outcome = self._answer(s)
                    except OSError:
                        outcome = "reset before an answer"
            except socket.timeout:
                outcome = "no answer in %.0f s" % self.io_timeout
            except OSError as exc:
                outcome = "error " + (errno.errorcode.get(exc.errno) or str(exc))
            finally:
                with self._lock:
                    self._socks.pop(i, None)
                if s is not None:
                    s.close()
            if self._stop.is_set():
                break  # cut short by stop(): not an outcome
            with self._lock:
                self.answered += 1
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    @staticmethod
    def _answer(s):
        """Read one response; return its status code, or how it ended."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                return ("closed after a partial answer" if buf
                        else "closed without an answer")
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split(b" ")
        code = status[1].decode("latin-1") if len(status) > 1 else "?"
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if m:
            need = int(m.group(1)) - len(body)
            while need > 0:
                data = s.recv(min(need, 65536))
                if not data:
                    break
                need -= len(data)
        return code


# --------------------------------------------------------------------------
# access log files
# --------------------------------------------------------------------------

class LogLines:
    """Counts the lines a server appends to its access log file.

    settle() waits until the file has stopped growing (servers may write
    lines a little after the answers: rswaitress delivers them in batches);
    reset() truncates the file between runs, which is safe because every
    server appends to it (O_APPEND: nginx, and Python's FileHandler, mode 'a')."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.lines = 0
        self.first = None  # the first line written, as a sample of the format

    def count(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    if self.first is None:
                        self._sample(block)
                    self.lines += block.count(b"\n")
                    self.offset += len(block)
        except FileNotFoundError:
            pass
        return self.lines

    def _sample(self, block):
        head = block.split(b"\n", 1)
        if len(head) == 2:
            self.first = head[0].decode("utf-8", "replace")

    def settle(self, quiet=0.4, limit=10.0):
        """Count until no line has arrived for `quiet` s (at most `limit` s)."""
        end = time.monotonic() + limit
        last, since = self.count(), time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.1)
            n = self.count()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def reset(self):
        try:
            os.truncate(self.path, 0)
        except FileNotFoundError:
            pass
        self.offset = 0
        self.lines = 0


LOG_SETTLE_S = 0.6  # per settle() in estimate_s: the 0.4 s quiet period and the reads


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def unavailable_reason(variant, scenario, probes):
    """Why `variant` cannot run `scenario` (None when it can)."""
    sc = SCENARIOS[scenario]
    spec = VARIANTS[variant]
    if spec["server"] == "nginx" and not sc.get("nginx"):
        return "nginx serves static answers only; no WSGI application to run here"
    if spec["server"] == "waitress" and sc.get("access_log"):
        return "waitress has no access log"
    if spec["server"] == "waitress" and sc.get("tls"):
        return "waitress has no TLS"
    for module in sc.get("needs", ()):
        if spec["server"] == "rswaitress":
            python = spec.get("python") or sys.executable
            if not probes.get(python, {}).get(module):
                return "%s is not importable by %s" % (module, python)
        elif importlib.util.find_spec(module) is None:
            return "%s is not importable" % module
    return None


def bench_one(variant, scenario, args, tmp, rawdir, probes):
    """Start `variant`, load it with `scenario` args.runs times, stop it."""
    sc = SCENARIOS[scenario]
    entry = {"status": "ok", "runs": [], "note": ""}
    why = unavailable_reason(variant, scenario, probes)
    if why:
        entry.update(status="not available", note=why)
        return entry

    port = free_port()
    logpath = os.path.join(tmp, "%s-%s.log" % (variant, scenario))
    access = None
    if sc.get("access_log"):
        access = LogLines(os.path.join(tmp, "%s-%s-access.log" % (variant, scenario)))
    argv = server_command(variant, port, scenario, tmp, access and access.path)
    lua = os.path.join(tmp, "post.lua") if sc.get("lua") == "post" else None
    main_argv = wrk_argv(port, sc["path"], sc["conns"], sc["threads"],
                         args.duration, sc.get("headers", ()), lua, sc.get("tls"))
    entry["wrk"] = " ".join(shlex.quote(a) for a in main_argv)
    pool = IdlePool()
    proc = None
    logf = open(logpath, "wb")
    try:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                env=server_env(tmp), cwd=BENCH_DIR, start_new_session=True)
        wait_ready(proc, port, logpath, tls=sc.get("tls"))
        check_endpoint(port, scenario)
        if access and access.settle() == 0:
            raise ServerFailed("no access log line in %s after the probe requests: %s"
                               % (access.path, tail(logpath)))
        if args.warmup > 0:
            run_wrk_procs([wrk_argv(port, sc["path"], sc["conns"], sc["threads"],
                                    args.warmup, sc.get("headers", ()), lua,
                                    sc.get("tls"))],
                          [0], args.warmup + 30)
        if access:
            access.settle()  # the probes' and the warm-up's lines, then a clean file
            entry["log_sample"] = access.first
            access.reset()
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
                % (variant, len(pool.socks), args.idle_conns, entry["idle_open_s"],
                   (" errors: %s" % pool.errors) if pool.errors else ""))
            if proc.poll() is not None:
                raise ServerFailed("died while opening idle connections: "
                                   + tail(logpath))
        for i in range(args.runs):
            if scenario == "isolation":
                sleeper = wrk_argv(port, "/sleep", 2, 1, args.duration + 1)
                (out_sleep, out), cpu = run_wrk_procs([sleeper, main_argv], [0, 0.5],
                                                      args.duration + 60, proc.pid)
                res = parse_wrk(out)
                s = parse_wrk(out_sleep)
                res["sleeper_rps"] = s["rps"]
                res["sleeper_errors"] = s["errors"]
                add_cpu(res, cpu, res["requests"] + s["requests"])
                raw = out + "\n--- sleeper ---\n" + out_sleep
            elif scenario == "heads":
                (out_alone,), cpu = run_wrk_procs([main_argv], [0], args.duration + 60, proc.pid)
                alone = parse_wrk(out_alone)
                add_cpu(alone, cpu, alone["requests"])
                heads = HeadsLoad(port, HOSTILE_HEAD, time_limit=args.duration + 60)
                try:
                    heads.start()
                    heads.wait_answered(1, 5.0)
                    n0, t0 = heads.answered, time.monotonic()
                    (out,), cpu = run_wrk_procs([main_argv], [0], args.duration + 60, proc.pid)
                    n1, t1 = heads.answered, time.monotonic()
                finally:
                    heads.stop()
                res = parse_wrk(out)
                add_cpu(res, cpu, res["requests"])
                res["alone"] = alone
                res["heads_answered"] = n1 - n0
                res["heads_per_s"] = (n1 - n0) / (t1 - t0)
                res["head_outcomes"] = dict(heads.outcomes)
                raw = ("--- hello alone ---\n" + out_alone
                       + "\nserver CPU: %s s for %s requests\n" % (alone["cpu_s"], alone["cpu_requests"])
                       + "\n--- hello with %d clients sending %d-byte heads ---\n"
                       % (HEADS_CLIENTS, len(HOSTILE_HEAD)) + out
                       + "\nhead answers: %s\n" % res["head_outcomes"])
            else:
                (out,), cpu = run_wrk_procs([main_argv], [0], args.duration + 60, proc.pid)
                res = parse_wrk(out)
                add_cpu(res, cpu, res["requests"])
                raw = out
            if scenario == "idle":
                res["rss_kib"] = rss_kib(proc.pid)
                res["idle_still_open"] = pool.count_open()
            if access:
                # Every request wrk completed was answered, so it was logged; a
                # few more (in flight when wrk stopped) may be too.
                res["log_lines"] = access.settle()
                access.reset()
                short = res["requests"] - res["log_lines"]
                raw += "\naccess log: %d lines for %d requests completed\n" % (
                    res["log_lines"], res["requests"])
                if short > 0:
                    log("    ERROR: %s run %d: %s access log lines for %s requests "
                        "completed: %s lines missing (dropped?)"
                        % (variant, i + 1, fmt_num(res["log_lines"]),
                           fmt_num(res["requests"]), fmt_num(short)))
                else:
                    log("    %s run %d: %s access log lines for %s requests completed"
                        % (variant, i + 1, fmt_num(res["log_lines"]), fmt_num(res["requests"])))
            entry["runs"].append(res)
            with open(os.path.join(rawdir, "%s-%s-run%d.txt" % (scenario, variant, i + 1)), "w") as f:
                f.write(" ".join(argv[:1] + [a for a in argv[1:] if "\n" not in a])
                        + "\n" + entry["wrk"] + "\n\n" + raw
                        + "\nserver CPU: %s s for %s requests\n" % (res["cpu_s"], res["cpu_requests"]))
            if proc.poll() is not None:
                raise ServerFailed("server exited during the run: " + tail(logpath))
        if "LAUNCHER: serve() rejected" in tail(logpath, 50):
            entry["note"] = "serve() rejected the idle-scenario options; ran with defaults"
    except NotAvailable as exc:
        entry.update(status="not available", note=str(exc)[:400])
    except ServerFailed as exc:
        entry.update(status="failed", note=str(exc)[:400])
    except (subprocess.TimeoutExpired, OSError, http.client.HTTPException) as exc:
        entry.update(status="failed", note="%s: %s" % (type(exc).__name__, str(exc)[:300]))
    finally:
        pool.close()
        stop_process(proc)
        logf.close()
        if access:
            try:
                os.remove(access.path)
            except OSError:
                pass

    runs = entry["runs"]
    if runs:
        entry["median"] = {
            "rps": median([r["rps"] for r in runs]),
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
            "cpu_us_per_req": median([r["cpu_us_per_req"] for r in runs]),
        }
        entry["errors_total"] = sum(r["errors"] for r in runs)
        if scenario == "idle":
            entry["median"]["rss_mib"] = median([r["rss_kib"] / 1024 for r in runs])
            entry["median"]["idle_still_open"] = median([r["idle_still_open"] for r in runs])
        if scenario == "isolation":
            entry["median"]["sleeper_rps"] = median([r["sleeper_rps"] for r in runs])
        if access:
            entry["log_lines"] = sum(r["log_lines"] for r in runs)
            entry["log_requests"] = sum(r["requests"] for r in runs)
            short = entry["log_requests"] - entry["log_lines"]
            if short > 0:
                msg = ("ERROR: %s access log lines for %s requests completed (%s missing)"
                       % (fmt_num(entry["log_lines"]), fmt_num(entry["log_requests"]),
                          fmt_num(short)))
                entry["note"] = entry["note"] + "; " + msg if entry["note"] else msg
        if scenario == "heads":
            m = entry["median"]
            m["alone_rps"] = median([r["alone"]["rps"] for r in runs])
            m["alone_p99_ms"] = median([r["alone"]["p99_ms"] for r in runs])
            m["alone_cpu_us_per_req"] = median([r["alone"]["cpu_us_per_req"] for r in runs])
            m["heads_per_s"] = median([r["heads_per_s"] for r in runs])
            entry["errors_total"] += sum(r["alone"]["errors"] for r in runs)
            outcomes = {}
            for r in runs:
                for k, n in r["head_outcomes"].items():
                    outcomes[k] = outcomes.get(k, 0) + n
            entry["head_outcomes"] = outcomes
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
        return "%.0f µs" % (v * 1000)
    if v < 100:
        return "%.2f ms" % v
    return "%.0f ms" % v


def fmt_cpu(v):
    """Microseconds of CPU per request."""
    if v is None:
        return "-"
    if v < 100:
        return "%.1f" % v
    return "{:,.0f}".format(v)


def fmt_ratio(a, b):
    return "%.2fx" % (a / b) if (a is not None and b) else "-"


CPU_HEAD = "CPU µs/req"

STATUS_SHORT = {"not available": "n/a", "failed": "failed", "skipped": "skipped"}


def scenario_rows(scenario, sres, ref):
    refm = sres.get(ref, {}).get("median", {}) if ref else {}
    header = ["variant", "req/s", CPU_HEAD, "p50", "p99", "errors",
              "req/s vs %s" % (ref or "-"), "CPU vs %s" % (ref or "-")]
    if scenario == "heads":
        header += ["alone req/s", "alone " + CPU_HEAD, "alone p99", "with/alone req/s",
                   "heads/s", "head answers"]
    if scenario == "idle":
        header += ["idle open (of requested)", "RSS MiB"]
    if scenario == "isolation":
        header += ["sleeper req/s"]
    if SCENARIOS[scenario].get("access_log"):
        header += ["log lines", "requests completed", "lines/requests"]
    rows = []
    for variant, e in sres.items():
        if e["status"] != "ok":
            rows.append([variant, e["status"]] + [""] * (len(header) - 2))
            continue
        m = e["median"]
        row = [variant, fmt_num(m["rps"]), fmt_cpu(m["cpu_us_per_req"]),
               fmt_ms(m["p50_ms"]), fmt_ms(m["p99_ms"]), fmt_num(e["errors_total"]),
               fmt_ratio(m["rps"], refm.get("rps")),
               fmt_ratio(m["cpu_us_per_req"], refm.get("cpu_us_per_req"))]
        if scenario == "heads":
            answers = ", ".join("%s: %s" % (k, fmt_num(n)) for k, n in
                                sorted(e["head_outcomes"].items(), key=lambda kv: -kv[1]))
            row += [fmt_num(m["alone_rps"]), fmt_cpu(m["alone_cpu_us_per_req"]),
                    fmt_ms(m["alone_p99_ms"]), fmt_ratio(m["rps"], m["alone_rps"]),
                    fmt_num(m["heads_per_s"], 1), answers or "-"]
        if scenario == "idle":
            row += ["%s (%s)" % (fmt_num(m["idle_still_open"]), fmt_num(e.get("idle_opened"))),
                    fmt_num(m["rss_mib"], 1)]
        if scenario == "isolation":
            row += [fmt_num(m["sleeper_rps"], 1)]
        if SCENARIOS[scenario].get("access_log"):
            row += [fmt_num(e["log_lines"]), fmt_num(e["log_requests"]),
                    "%.3f" % (e["log_lines"] / e["log_requests"]) if e["log_requests"] else "-"]
        rows.append(row)
    return header, rows


LOG_OFF, LOG_ON = "hello", "hello-log"
LOG_TARGET = 0.8  # rswaitress keeps >= 0.8x of its hello req/s with the access log on


def log_overhead(results):
    """variant -> the access log's cost: hello-log against hello, both from
    this run (None when the run lacks either scenario)."""
    if LOG_OFF not in results or LOG_ON not in results:
        return None
    out = {}
    for variant, on in results[LOG_ON].items():
        off = results[LOG_OFF].get(variant)
        row = {"status": on["status"], "note": on.get("note", "")}
        if off is None or off["status"] != "ok":
            row.update(status="no %s figure" % LOG_OFF)
        elif on["status"] == "ok":
            a, b = off["median"], on["median"]
            row.update(
                rps_off=a["rps"], rps_on=b["rps"],
                rps_ratio=b["rps"] / a["rps"] if a["rps"] else None,
                cpu_off=a["cpu_us_per_req"], cpu_on=b["cpu_us_per_req"],
                cpu_diff=(b["cpu_us_per_req"] - a["cpu_us_per_req"])
                if None not in (a["cpu_us_per_req"], b["cpu_us_per_req"]) else None,
                p99_off=a["p99_ms"], p99_on=b["p99_ms"],
                log_lines=on["log_lines"], log_requests=on["log_requests"])
        out[variant] = row
    return out


def overhead_rows(overhead):
    header = ["variant", "req/s off", "req/s on", "on/off req/s", CPU_HEAD + " off",
              CPU_HEAD + " on", "CPU µs/req added", "p99 off", "p99 on",
              "log lines/requests"]
    rows = []
    for variant, o in overhead.items():
        if o["status"] != "ok" or "rps_on" not in o:
            rows.append([variant, STATUS_SHORT.get(o["status"], o["status"])]
                        + [""] * (len(header) - 2))
            continue
        diff = o["cpu_diff"]
        rows.append([
            variant, fmt_num(o["rps_off"]), fmt_num(o["rps_on"]),
            "%.2fx" % o["rps_ratio"] if o["rps_ratio"] is not None else "-",
            fmt_cpu(o["cpu_off"]), fmt_cpu(o["cpu_on"]),
            ("%+.1f" % diff if abs(diff) < 100 else "{:+,.0f}".format(diff))
            + (" (%+.0f%%)" % (100.0 * diff / o["cpu_off"]) if o["cpu_off"] else "")
            if diff is not None else "-",
            fmt_ms(o["p99_off"]), fmt_ms(o["p99_on"]),
            "%s / %s" % (fmt_num(o["log_lines"]), fmt_num(o["log_requests"]))])
    return header, rows


OVERHEAD_EXPLAINED = (
    "Access log overhead: `%s` (access log on, one line per request to a file) "
    "against `%s` (off), both from this run: req/s on ÷ req/s off, and the CPU "
    "µs/req it adds. Target for rswaitress: on/off req/s >= %.1fx. log lines/"
    "requests: lines found in the file against the requests wrk completed, "
    "summed over the runs (lines >= requests, or lines were dropped)."
    % (LOG_ON, LOG_OFF, LOG_TARGET))


def overhead_notes(overhead):
    return ["%s: %s" % (v, o["note"]) for v, o in overhead.items() if o.get("note")]


def print_overhead(overhead):
    log("\n== access log overhead: %s vs %s" % (LOG_ON, LOG_OFF))
    log(text_table(*overhead_rows(overhead)))
    for note in overhead_notes(overhead):
        log("   " + note)
    log(OVERHEAD_EXPLAINED)


def matrix_rows(results, variants, key, fmt):
    """One row per scenario, one column per variant: the median of `key`."""
    header = ["scenario"] + variants
    rows = []
    for scenario, sres in results.items():
        row = [scenario]
        for v in variants:
            e = sres.get(v)
            if e is None:
                row.append("")
            elif e["status"] != "ok":
                row.append(STATUS_SHORT.get(e["status"], e["status"]))
            else:
                row.append(fmt(e["median"].get(key)))
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


CPU_EXPLAINED = (
    "CPU µs/req: CPU time (user + system) of the server process and all its "
    "descendants during the measured wrk run (/proc/PID/stat read just "
    "before and just after it), divided by the requests wrk completed in that "
    "run; wrk's own CPU is not counted. It drifts much less than req/s on "
    "this shared machine: compare it first.")


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


def print_scenario(scenario, sres, ref):
    header, rows = scenario_rows(scenario, sres, ref)
    log("\n== %s: %s" % (scenario, SCENARIOS[scenario]["desc"]))
    log(text_table(header, rows))
    for variant, e in sres.items():
        if e.get("note"):
            log("   %s: %s" % (variant, e["note"]))


def print_matrices(results, variants):
    log("\n== CPU µs per request (server process tree; lower is better)")
    log(text_table(*matrix_rows(results, variants, "cpu_us_per_req", fmt_cpu)))
    log("\n== requests/s")
    log(text_table(*matrix_rows(results, variants, "rps", fmt_num)))


def write_markdown(path, meta, results, ref):
    variants = meta["variants"]
    out = ["# rswaitress benchmark results", ""]
    if meta.get("quick"):
        out += ["**Quick run** (`--quick`): 1 short run per figure, indicative only.", ""]
    if meta.get("interrupted"):
        out += ["**Interrupted**: partial results.", ""]
    out += ["- " + l for l in header_lines(meta)]
    out += ["", CPU_EXPLAINED, "",
            ("Ratios are relative to the reference variant **%s**." % ref) if ref
            else "No reference variant.", ""]
    out += ["## CPU per request (µs of server CPU per completed request; lower is better)", "",
            md_table(*matrix_rows(results, variants, "cpu_us_per_req", fmt_cpu)), "",
            "## Requests per second", "",
            md_table(*matrix_rows(results, variants, "rps", fmt_num)), "",
            "n/a: not available (the variant cannot run that scenario, see its "
            "table). For `heads` the figures are hello's with the heads running.", ""]
    for scenario, sres in results.items():
        header, rows = scenario_rows(scenario, sres, ref)
        out += ["## %s (`%s`)" % (SCENARIOS[scenario]["title"], scenario), "",
                SCENARIOS[scenario]["desc"] + ".", "", md_table(header, rows), ""]
        notes = ["- %s: %s" % (s, e["note"]) for s, e in sres.items() if e.get("note")]
        if notes:
            out += notes + [""]
    overhead = log_overhead(results)
    if overhead:
        out += ["## Access log overhead (`%s` vs `%s`)" % (LOG_ON, LOG_OFF), "",
                OVERHEAD_EXPLAINED, "", md_table(*overhead_rows(overhead)), ""]
        notes = ["- " + n for n in overhead_notes(overhead)]
        if notes:
            out += notes + [""]
    if "heads" in results:
        out += ["`heads`: each of the %d head clients sends a %d-byte head (%s `a:b` "
                "lines), reads the answer or the close, and starts again on a new "
                "connection; \"head answers\" counts how each ended (status code "
                "or close); the CPU of the heads is in hello's CPU us/req."
                % (HEADS_CLIENTS, len(HOSTILE_HEAD), fmt_num(HOSTILE_LINES)), ""]
    out += ["## Variants", ""]
    out += ["- **%s**: %s" % (v, VARIANTS[v]["desc"]) for v in variants]
    kinds = [k for k in SERVER_KINDS if any(VARIANTS[v]["server"] == k for v in variants)]
    out += [""] + ["%s: %s" % (k, SERVER_NOTES[k]) for k in kinds if k in SERVER_NOTES]
    if any(SCENARIOS[sc].get("access_log") for sc in results):
        out += ["", "Access log in `%s` (PATH: a file in the run's temporary "
                "directory, truncated after each run once its lines are counted):"
                % LOG_ON, ""]
        out += ["- **%s**: %s" % (k, ACCESS_LOG_NOTES[k]) for k in kinds]
        samples = [(v, e["log_sample"]) for sc in results if SCENARIOS[sc].get("access_log")
                   for v, e in results[sc].items() if e.get("log_sample")]
        if samples:
            out += ["", "First line of each access log:", "", "```"]
            out += ["%-15s %s" % vs for vs in samples] + ["```"]
    if "idle" in results:
        out += ["", "Extra settings in the idle-connections scenario only "
                "(so that 10,000 connections are allowed at all):", ""]
        out += ["- **%s**: %s" % (k, IDLE_NOTES[k]) for k in kinds]
    if "nginx" in variants:
        out += ["", "nginx: `/hello` is `return 200 \"Hello, World!\"`; `/64k` and "
                "`/file` are static files with `sendfile on`; `/post` is "
                "`return 200 $content_length` with `client_max_body_size 2m; "
                "client_body_buffer_size 2m;` — nginx reads the 1 MiB body off "
                "the socket and discards it (no buffering, nothing counts the "
                "bytes; the answer echoes the Content-Length header)."]
    out += ["", "Raw wrk output of every run: `raw/` in the directory of this report "
            "(not committed).", ""]
    with open(path, "w") as f:
        f.write("\n".join(out))


FAMILY_COLORS = {
    "rswaitress": ["#d9480f", "#ffa94d", "#a61e4d", "#f783ac", "#e67700"],
    "waitress": ["#1c7ed6", "#74c0fc"],
    "gunicorn": ["#2b8a3e", "#8ce99a", "#087f5b"],
    "granian": ["#862e9c", "#cc5de8", "#5f3dc4", "#9775fa", "#e599f7", "#3b5bdb"],
    "nginx": ["#868e96"],
}


def variant_colors(variants):
    used, out = {}, {}
    for v in variants:
        kind = VARIANTS[v]["server"]
        palette = FAMILY_COLORS.get(kind, ["#495057"])
        out[v] = palette[used.get(kind, 0) % len(palette)]
        used[kind] = used.get(kind, 0) + 1
    return out


def write_chart(path, meta, results, ref):
    """Two panels per group of up to 7 scenarios: req/s relative to the
    reference variant, and CPU µs per request (both log scale)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        log("matplotlib missing: no chart")
        return False
    variants = meta["variants"]
    colors = variant_colors(variants)
    scenarios = list(results)
    chunks = [scenarios[i:i + 7] for i in range(0, len(scenarios), 7)]

    def present(sc):
        return [v for v in variants if v in results[sc]
                and results[sc][v]["status"] == "ok"]

    bars_max = max(sum(len(present(sc)) for sc in chunk) for chunk in chunks)
    fig, axes = plt.subplots(2 * len(chunks), 1, squeeze=False,
                             figsize=(max(10, 0.22 * bars_max + 2.5), 4.2 * 2 * len(chunks)))
    seen = set()
    for c, chunk in enumerate(chunks):
        for panel in ("ratio", "cpu"):
            ax = axes[2 * c + (panel == "cpu")][0]
            x = 0.0
            ticks = []
            for sc in chunk:
                vs = present(sc)
                refm = results[sc].get(ref, {}).get("median", {}) if ref else {}
                start = x
                for v in vs:
                    m = results[sc][v]["median"]
                    if panel == "ratio":
                        base = refm.get("rps")
                        y = m["rps"] / base if (base and ref) else m["rps"]
                        lab = (("%.3fx" if y < 0.1 else "%.2fx") % y) if (base and ref) else "%.0f" % y
                    else:
                        y = m.get("cpu_us_per_req")
                        lab = fmt_cpu(y)
                    if y:
                        ax.bar(x, y, 0.9, color=colors[v],
                                   label=v if v not in seen else None)
                        seen.add(v)
                        ax.annotate(lab, (x, y), xytext=(0, 2), textcoords="offset points",
                                    ha="center", va="bottom", fontsize=6, rotation=90)
                    x += 1
                ticks.append(((start + x - 1) / 2.0, SCENARIOS[sc]["title"]))
                x += 1.2
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
            if panel == "ratio":
                if ref:
                    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
                    ax.set_ylabel("req/s relative to %s" % ref)
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: "%gx" % y))
                else:
                    ax.set_ylabel("req/s")
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: "{:,.0f}".format(y)))
            else:
                ax.set_ylabel("server CPU µs per request\n(lower is better)")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: "%g" % y))
            ax.set_xticks([t for t, _ in ticks])
            ax.set_xticklabels([t.replace(" (", "\n(").replace(" + ", "\n+ ")
                                for _, t in ticks], fontsize=8)
            ymin, ymax = ax.get_ylim()
            ax.set_ylim(ymin, ymax * 4)
            ax.grid(axis="y", which="both", alpha=0.25)
    handles, labels = [], []
    for ax in axes[:, 0]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    order = sorted(range(len(labels)), key=lambda i: variants.index(labels[i]))
    height = fig.get_size_inches()[1]
    title_h = 0.35 / height                                   # figure fraction
    legend_h = 0.22 * ((len(labels) + 6) // 7) / height
    fig.suptitle("WSGI servers - %d cores, %s - %s%s - median of %d x %d s"
                 % (meta["cpu_count"], meta["cpu_model"], meta["date"][:10],
                    " (quick)" if meta.get("quick") else "", meta["runs"], meta["duration"]),
                 fontsize=10, y=1 - 0.08 / height, va="top")
    fig.legend([handles[i] for i in order], [labels[i] for i in order],
               ncol=min(7, len(labels)), loc="upper center", fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - title_h))
    fig.tight_layout(rect=(0, 0, 1, 1 - title_h - legend_h))
    fig.savefig(path, dpi=110)
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


def add_baseline_variant(python):
    """Register rswaitress-base (rswaitress from another interpreter), placed
    right after rswaitress."""
    spec = dict(server="rswaitress", kwargs={}, python=python,
                desc="`rswaitress.serve(app, host=, port=)` (defaults) run by "
                     "`%s` (--baseline-python): an earlier build, side by side" % python)
    items = list(VARIANTS.items())
    VARIANTS.clear()
    for name, value in items:
        VARIANTS[name] = value
        if name == "rswaitress":
            VARIANTS["rswaitress-base"] = spec
    if "rswaitress-base" not in VARIANTS:
        VARIANTS["rswaitress-base"] = spec


def ordered(variants):
    """Grouped by server kind, in definition order within a kind."""
    names = list(VARIANTS)
    return sorted(set(variants), key=lambda v: (SERVER_KINDS.index(VARIANTS[v]["server"]),
                                                names.index(v)))


def default_variants(scenario):
    sc = SCENARIOS[scenario]
    return ordered([v for v, spec in VARIANTS.items()
                    if (spec.get("only") is None or scenario in spec["only"])
                    and (spec["server"] != "nginx" or sc.get("nginx"))
                    and not (spec["server"] == "waitress" and sc.get("tls"))])


def build_plan(scenarios, explicit):
    """scenario -> variants to run in it."""
    return {sc: ordered(explicit) if explicit else default_variants(sc) for sc in scenarios}


PAIR_OVERHEAD_S = 0.8  # start, probe, stop: 62 s for 25 pairs of 1+1 s (2-core machine)


def estimate_s(plan, args):
    total = 0.0
    for sc, variants in plan.items():
        for v in variants:
            if VARIANTS[v]["server"] == "nginx" and not SCENARIOS[sc].get("nginx"):
                continue
            if VARIANTS[v]["server"] == "waitress" and SCENARIOS[sc].get("access_log"):
                continue  # not available (no access log): never started
            per = PAIR_OVERHEAD_S + args.warmup + args.runs * args.duration
            if sc == "heads":
                per += args.runs * (args.duration + 0.5)
            elif sc == "isolation":
                per += args.runs * 0.5
            elif sc == "idle":
                # opening 10,000 connections takes about a second; waitress
                # accepts slowly and may use the whole time limit
                per += 3.0 + (args.idle_time_limit if VARIANTS[v]["server"] == "waitress" else 0)
            if SCENARIOS[sc].get("access_log"):
                per += (args.runs + 2) * LOG_SETTLE_S  # settle(): probes, warm-up, each run
            total += per
    return total


def print_list(plan, args):
    log("scenarios:")
    for name, sc in SCENARIOS.items():
        log("  %-13s %s" % (name, sc["desc"]))
    log("\nvariants:")
    for name, spec in VARIANTS.items():
        only = " [default only in: %s]" % ", ".join(spec["only"]) if spec.get("only") else ""
        log("  %-15s %s%s" % (name, spec["desc"], only))
    log("\nplan (%d s per run, %d run(s), %d s warm-up):" % (args.duration, args.runs, args.warmup))
    for sc, variants in plan.items():
        log("  %-13s %s" % (sc, ", ".join(variants)))
    log("estimated time: %.1f min" % (estimate_s(plan, args) / 60.0))


def seed_django(tmp):
    p = subprocess.run([sys.executable, "-m", "realapps.djsite.seed"], env=server_env(tmp),
                       cwd=BENCH_DIR, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
    log("   " + p.stdout.strip())
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark rswaitress against waitress, gunicorn, granian, nginx.")
    ap.add_argument("--quick", action="store_true",
                    help="1 run of 2 s per figure, 1 s warm-up (about 10-11 min for every "
                         "scenario and default variant)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma list from: %s (default all)" % ", ".join(SCENARIOS))
    ap.add_argument("--servers", metavar="VARIANTS",
                    help="comma list of variants (see --list); default: every variant "
                         "that can run the scenario, the -w2 ones in cpu only")
    ap.add_argument("--baseline-python", metavar="PATH",
                    help="interpreter (e.g. a venv's bin/python) holding an earlier "
                         "rswaitress build: adds the variant rswaitress-base")
    ap.add_argument("--reference", metavar="VARIANT",
                    help="variant the ratios are relative to (default rswaitress)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 10, quick 2)")
    ap.add_argument("--runs", type=int, help="runs per figure, median reported (default 3, quick 1)")
    ap.add_argument("--warmup", type=int, help="warm-up seconds before measuring (default 1)")
    ap.add_argument("--idle-conns", type=int, default=10000,
                    help="idle connections in the idle scenario (default 10000)")
    ap.add_argument("--idle-time-limit", type=float,
                    help="seconds allowed to open the idle connections (default 30, quick 15)")
    ap.add_argument("--out", help="output directory (default benches/results; with --quick "
                                  "benches/results/quick, which git ignores)")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get/pip")
    ap.add_argument("--list", action="store_true",
                    help="list the scenarios, the variants and the plan with its estimated "
                         "time, and exit")
    args = ap.parse_args(argv)

    args.duration = args.duration or (2 if args.quick else 10)
    args.runs = args.runs or (1 if args.quick else 3)
    args.warmup = 1 if args.warmup is None else args.warmup
    args.out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    if args.idle_time_limit is None:
        args.idle_time_limit = 15.0 if args.quick else 30.0
    if args.baseline_python:
        args.baseline_python = os.path.abspath(os.path.expanduser(args.baseline_python))
        if not os.access(args.baseline_python, os.X_OK):
            sys.exit("--baseline-python %s: not an executable" % args.baseline_python)
        add_baseline_variant(args.baseline_python)
    scenarios = parse_list(args.scenarios, list(SCENARIOS), SCENARIO_ALIASES, "scenario")
    explicit = None
    if args.servers and "rswaitress-base" in args.servers and not args.baseline_python:
        sys.exit("the variant rswaitress-base needs --baseline-python PATH")
    if args.servers:
        explicit = parse_list(args.servers, list(VARIANTS), None, "variant")
        if args.baseline_python and "rswaitress-base" not in explicit:
            explicit.append("rswaitress-base")
    plan = build_plan(scenarios, explicit)
    if args.list:
        print_list(plan, args)
        return 0

    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let cleanup finish
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_sigterm)

    need_modules = {m for sc in scenarios for m in SCENARIOS[sc].get("needs", ())}
    every = ordered([v for vs in plan.values() for v in vs])
    kept, probes = ensure_tools(every, need_modules, args.no_install)
    plan = {sc: [v for v in vs if v in kept] for sc, vs in plan.items()}
    variants = ordered([v for vs in plan.values() for v in vs])
    if not variants:
        sys.exit("no server left to benchmark")
    nofile = raise_nofile()
    if "idle" in scenarios and nofile < args.idle_conns + 200:
        log("RLIMIT_NOFILE is %d: fewer than %d idle connections can be opened"
            % (nofile, args.idle_conns))

    ref = args.reference or ("rswaitress" if "rswaitress" in variants else variants[0])
    if ref not in variants:
        sys.exit("--reference %s is not in this run (%s)" % (ref, ", ".join(variants)))
    if ref != "rswaitress":
        log("ratios are relative to %s" % ref)
    meta = {
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
        "platform": "%s %s, Python %s" % (platform.system(), platform.release(),
                                          platform.python_version()),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in
                            [os.path.basename(sys.executable)] + sys.argv),
        "quick": args.quick, "runs": args.runs, "duration": args.duration,
        "warmup": args.warmup, "idle_conns": args.idle_conns,
        "variants": variants, "scenarios": scenarios, "plan": plan, "reference": ref,
        "variant_config": {v: {k: x for k, x in VARIANTS[v].items()} for v in variants},
        "versions": versions(variants, probes, need_modules), "rlimit_nofile": nofile,
        "baseline_python": args.baseline_python,
        "hostile_head_bytes": len(HOSTILE_HEAD) if "heads" in scenarios else None,
        "clk_tck": CLK_TCK,
        "loadavg": " ".join("%.2f" % x for x in os.getloadavg()),
    }
    for l in header_lines(meta):
        log(l)
    n_cases = sum(len(vs) for vs in plan.values())
    log("%d variant/scenario pairs, roughly %.0f min"
        % (n_cases, estimate_s(plan, args) / 60.0 + 0.5))

    os.makedirs(args.out, exist_ok=True)
    rawdir = os.path.join(args.out, "raw")
    os.makedirs(rawdir, exist_ok=True)
    results = {}
    tmp = tempfile.mkdtemp(prefix="rswbench-")
    t_start = time.monotonic()
    try:
        prepare_data(tmp)
        if any(SCENARIOS[sc].get("tls") for sc in scenarios):
            make_cert(tmp)
        if "django-orm" in scenarios and importlib.util.find_spec("django") is not None:
            failure = seed_django(tmp)
            if failure:
                log("could not create the Django database (%s)" % failure)
        for scenario in scenarios:
            if not plan[scenario]:
                continue
            results[scenario] = {}
            log("\n-- scenario %s: %s" % (scenario, SCENARIOS[scenario]["desc"]))
            for variant in plan[scenario]:
                log("   %s ..." % variant)
                results[scenario][variant] = bench_one(variant, scenario, args, tmp,
                                                       rawdir, probes)
            print_scenario(scenario, results[scenario], ref)
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
    overhead = log_overhead(results)
    with open(js, "w") as f:
        json.dump({"meta": meta, "results": results, "log_overhead": overhead}, f, indent=1)
    write_markdown(md, meta, results, ref)
    chart = write_chart(png, meta, results, ref) if results else False

    log("\n" + "=" * 78)
    for l in header_lines(meta):
        log(l)
    log(CPU_EXPLAINED)
    for scenario, sres in results.items():
        print_scenario(scenario, sres, ref)
    if overhead:
        print_overhead(overhead)
    print_matrices(results, variants)
    log("\nwrote %s, %s%s  (%.0f s)" % (md, js, (", " + png) if chart else "",
                                         meta["elapsed_s"]))
    return 130 if meta.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
