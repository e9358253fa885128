#!/usr/bin/env python3
"""Thread scaling of one rswaitress process: a CPU-bound WSGI app at threads=1 and
threads=2, on a free-threaded CPython and on a GIL CPython, side by side in one run.

    python benches/freethreaded.py \\
        --python ft=/work/venv-ft/bin/python --python gil=/work/venv-ft311/bin/python

Each --python is NAME=INTERPRETER (a virtualenv's python with rswaitress installed).
The app does pure-Python arithmetic (--work iterations, about 1-2 ms a request, no I/O)
and answers 200. For each interpreter and thread count the server is started as a
subprocess on 127.0.0.1, warmed up, loaded with wrk (-t2, --connections, --duration),
and its CPU time (utime + stime of every thread, from /proc/PID/stat) is read before
and after: the table gives req/s, the server's CPU milliseconds per request and the
speed-up of threads=2 over threads=1. Linux only (wrk, /proc). The whole run takes
about (interpreters x 2) x (duration + 3) seconds.
"""

import argparse
import datetime
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.request

SERVER = r"""
import sys
import rswaitress

WORK = int(sys.argv[1])


def app(environ, start_response):
    total = 0
    for i in range(WORK):
        total += i * i % 7
    body = b"%d\n" % total
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


gil = getattr(sys, "_is_gil_enabled", lambda: True)()
print("GIL", "on" if gil else "off", sys.version.split()[0], flush=True)
rswaitress.serve(app, listen="127.0.0.1:" + sys.argv[2], threads=sys.argv[3], _quiet=True)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("server exited early: %s" % proc.stderr.read())
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("server did not answer on port %d" % port)


def run_one(python, threads, args):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    proc = subprocess.Popen(
        [python, "-c", SERVER, str(args.work), str(port), str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        banner = proc.stdout.readline().strip()
        wait_ready(port, proc)
        url = "http://127.0.0.1:%d/" % port
        subprocess.run(["wrk", "-t2", "-c%d" % args.connections, "-d1s", url],
                       capture_output=True, check=True)
        before = cpu_seconds(proc.pid)
        out = subprocess.run(
            ["wrk", "-t2", "-c%d" % args.connections, "-d%ds" % args.duration, url],
            capture_output=True, text=True, check=True,
        ).stdout
        cpu = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    return {
        "banner": banner,
        "rps": rps,
        "requests": requests,
        "cpu_ms": 1000.0 * cpu / max(requests, 1),
        "errors": errors.group(0) if errors else "",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", required=True, metavar="NAME=PYTHON")
    ap.add_argument("--work", type=int, default=30000,
                    help="loop iterations per request (30000: about 1.2 ms on CPython 3.11 here)")
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per figure")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--out", help="also write the Markdown table to this file")
    args = ap.parse_args()

    rows = []
    for spec in args.python:
        name, _, python = spec.partition("=")
        figures = {}
        for threads in (1, 2):
            r = run_one(python, threads, args)
            figures[threads] = r
            print("%-6s threads=%d  %-28s %8.1f req/s  %5.2f ms CPU/req %s"
                  % (name, threads, r["banner"], r["rps"], r["cpu_ms"], r["errors"]), flush=True)
        rows.append((name, python, figures))

    lines = [
        "| interpreter | GIL | threads=1 req/s | threads=2 req/s | speed-up | CPU ms/req (1 / 2) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, python, f in rows:
        banner = f[1]["banner"].split()
        lines.append("| %s (%s) | %s | %.0f | %.0f | %.2fx | %.2f / %.2f |" % (
            name, banner[2] if len(banner) > 2 else "?", banner[1] if len(banner) > 1 else "?",
            f[1]["rps"], f[2]["rps"], f[2]["rps"] / f[1]["rps"], f[1]["cpu_ms"], f[2]["cpu_ms"]))
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        load = os.getloadavg()
        with open(args.out, "w") as f:
            f.write("# Thread scaling: free-threaded vs GIL CPython\n\n")
            f.write("%s UTC, %s, %d CPUs, load before the run %.2f/%.2f/%.2f\n\n" % (
                datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                platform.platform(), os.cpu_count(), *load))
            f.write("    python benches/freethreaded.py %s --work %d --duration %d --connections %d\n\n"
                    % (" ".join("--python " + p for p in args.python), args.work, args.duration,
                       args.connections))
            f.write("One server process each; the app runs %d iterations of pure-Python "
                    "arithmetic per request (no I/O); wrk -t2 -c%d for %d s after a 1 s warm-up; "
                    "CPU is the server's utime+stime over the measured run.\n\n"
                    % (args.work, args.connections, args.duration))
            f.write(table + "\n")


if __name__ == "__main__":
    main()
