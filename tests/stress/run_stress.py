#!/usr/bin/env python3
"""Robustness figures for rswaitress: memory under sustained keep-alive load, and
descriptor/thread leaks after aborted connections.

    python tests/stress/run_stress.py              # full: 1,000,000 requests, 10,000 aborts
    python tests/stress/run_stress.py --quick      # 100,000 requests, 2,000 aborts

Starts tests/stress/server_app.py (rswaitress, threads=4, connection_limit=2000) as a
subprocess on 127.0.0.1 and measures:

1. RSS growth.  A warm-up (default 50,000 requests, half ``GET /``, half a 1 KiB
   ``POST /echo``), then N keep-alive requests (half each, in 10 alternating chunks) with
   ``wrk -t2 -c32`` and tests/stress/load.lua, which stops wrk at an exact request count
   and checks every status and body.  VmRSS (/proc/PID/status) is read after the
   warm-up, after every chunk and at the end.  Target: growth < 5 MiB.
2. Leaks.  Open descriptors (/proc/PID/fd) and threads (/proc/PID/task) are counted,
   then M connections (default 10,000) are opened 200 at a time and abandoned in the
   styles of stresslib.ABORT_STYLES (connect+close, connect+RST, half a head, half of a
   100,000-byte body with FIN or RST, a full request closed or RST before the answer is
   read, half a second head on a kept-alive connection); after at most 5 s of settling
   they are counted again.  Target: no more descriptors, the same threads, and the server
   still answers ``GET /`` and ``POST /echo``.

Prints a table, writes a Markdown report (--out; default tests/stress/results.md, or
results-quick.md with --quick) and exits 1 if a target is missed (also on wrong answers
under load, an incomplete abort phase or a dead server), 2 on a setup error.  Runs
itself, the server and wrk at niceness >= 5.  Every wrk run and the abort phase are
bounded in time (--time-limit bounds the load phase as a whole).
"""

import argparse
import datetime
import math
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import stresslib as L  # noqa: E402

LUA = os.path.join(HERE, "load.lua")
RSS_TARGET_MIB = 5.0
WRK_THREADS = 2
WRK_CONNS = 32
CHUNKS = 10  # main-phase wrk runs (alternating hello / echo); RSS is read after each


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------


def _unit_seconds(value, unit):
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def run_wrk(port, mode, count, time_limit):
    """``count`` requests of ``mode`` ("hello" or "echo") with wrk, stopped by load.lua at
    the count or by -d at ``time_limit`` seconds, whichever is first.  Returns a dict:
    requests, seconds, bad (wrong status/body), non2xx, socket_errors, by_count."""
    path = "/echo" if mode == "echo" else "/"
    per_thread = math.ceil(count / WRK_THREADS)
    d = max(1, int(math.ceil(time_limit)))
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNS}", f"-d{d}s", "--timeout", "5s",
           "-s", LUA, f"http://{L.HOST}:{port}{path}", "--", mode, str(per_thread)]
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    stopped = 0
    by_count = False
    err_fd = p.stderr.fileno()
    err_buf = b""
    hard_deadline = start + d + 30
    try:
        # Wait for every wrk thread to report "STOPPED" (or for wrk to end at -d).
        while p.poll() is None and time.monotonic() < hard_deadline:
            r, _, _ = select.select([err_fd], [], [], 0.2)
            if r:
                chunk = os.read(err_fd, 4096)
                if not chunk:
                    break
                err_buf += chunk
                stopped = err_buf.count(b"STOPPED")
                if stopped >= WRK_THREADS:
                    by_count = True
                    os.kill(p.pid, signal.SIGINT)  # wrk stops and prints its summary
                    break
        out, err = p.communicate(timeout=max(5.0, hard_deadline - time.monotonic()))
    except BaseException:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(5)
        raise
    seconds = time.monotonic() - start
    out = out.decode("utf-8", "replace")
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk output:\n{out}\n{(err_buf + err).decode()}")
    res = {"requests": int(m.group(1)), "seconds": _unit_seconds(m.group(2), m.group(3)),
           "wall": seconds, "by_count": by_count, "bad": 0, "non2xx": 0,
           "socket_errors": 0, "mode": mode}
    m = re.search(r"BAD (\d+)", out)
    res["bad"] = int(m.group(1)) if m else -1
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = sum(int(x) for x in m.groups())
    return res


def chunk_time_limit(count, rate):
    """-d for a wrk run of ``count`` requests: 3x the time at the rate seen so far (at
    least 10 s, at most 300 s); load.lua normally stops wrk long before."""
    if not rate:
        rate = 2000.0
    return min(300.0, max(10.0, 3.0 * count / rate))


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------


def rss_phase(srv, warmup, requests, time_limit, log):
    pid, port = srv.pid, srv.port
    deadline = time.monotonic() + time_limit
    out = {"runs": [], "curve": [], "rss_start_kib": L.rss_kib(pid)}
    rate = {"hello": None, "echo": None}
    totals = {"hello": 0, "echo": 0, "bad": 0, "non2xx": 0, "socket_errors": 0}

    def one(mode, count, phase):
        if time.monotonic() >= deadline:
            raise TimeoutError("load phase over --time-limit")
        limit = min(chunk_time_limit(count, rate[mode]), max(1.0, deadline - time.monotonic()))
        r = run_wrk(port, mode, count, limit)
        if r["seconds"] > 0:
            rate[mode] = r["requests"] / r["seconds"]
        r["phase"] = phase
        out["runs"].append(r)
        log(f"  {phase:8s} {mode:5s} {r['requests']:>9,d} req in {r['seconds']:6.2f} s "
            f"({r['requests'] / max(r['seconds'], 1e-9):>8,.0f}/s) bad={r['bad']} "
            f"sockerr={r['socket_errors']} rss={L.rss_kib(pid) / 1024:.1f} MiB")
        if not srv.alive():
            raise RuntimeError("server died under load")
        return r

    # Warm-up.
    wdone = 0
    for mode, n in (("hello", warmup // 2), ("echo", warmup - warmup // 2)):
        if n > 0:
            wdone += one(mode, n, "warm-up")["requests"]
    out["warmup_requests"] = wdone
    time.sleep(0.5)
    out["rss_warm_kib"] = L.rss_kib(pid)
    out["curve"].append((0, out["rss_warm_kib"]))

    # Main phase: CHUNKS alternating runs, then top up until each half is reached.
    targets = {"hello": requests // 2, "echo": requests - requests // 2}
    per_chunk = {m: max(1, math.ceil(targets[m] / (CHUNKS // 2))) for m in targets}
    done = 0
    while any(totals[m] < targets[m] for m in targets):
        for mode in ("hello", "echo"):
            left = targets[mode] - totals[mode]
            if left <= 0:
                continue
            r = one(mode, min(per_chunk[mode], left), "main")
            totals[mode] += r["requests"]
            for k in ("bad", "non2xx", "socket_errors"):
                totals[k] += max(0, r[k])
            done += r["requests"]
            out["curve"].append((done, L.rss_kib(pid)))
    time.sleep(0.5)
    out["rss_end_kib"] = L.rss_kib(pid)
    out["rss_hwm_kib"] = _status_field(pid, "VmHWM")
    out["requests"] = done
    out["totals"] = totals
    out["growth_mib"] = (out["rss_end_kib"] - out["rss_warm_kib"]) / 1024.0
    return out


def _status_field(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return None


def abort_phase(srv, aborts, batch, log):
    pid, port = srv.pid, srv.port
    fds0, thr0 = L.stable_counts(pid)
    kinds0 = L.fd_kinds(pid)
    log(f"  before: {fds0} fds, {thr0} threads")
    res = L.abort_connections(port, aborts, batch=batch, time_limit=120.0)
    peak_now = L.fd_count(pid)
    log(f"  {res['done']:,d} connections abandoned in {res['seconds']:.2f} s "
        f"(errors: {res['errors'] or 'none'}); fds right after: {peak_now}")
    fds1, thr1, waited = L.settle(pid, fds0, thr0, timeout=5.0)
    kinds1 = L.fd_kinds(pid)
    answers = srv.alive() and L.server_answers(port)
    log(f"  after {waited:.1f} s: {fds1} fds, {thr1} threads; answers: {answers}")
    return {"fds_before": fds0, "threads_before": thr0, "fds_after": fds1,
            "threads_after": thr1, "settle_s": waited, "fds_right_after": peak_now,
            "kinds_before": kinds0, "kinds_after": kinds1, "answers": answers, **res}


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def checks(rss, ab):
    """[(name, figure, target, ok)]"""
    c = []
    if rss is not None:
        c.append(("RSS growth after warm-up", f"{rss['growth_mib']:+.2f} MiB "
                  f"({rss['rss_warm_kib'] / 1024:.1f} -> {rss['rss_end_kib'] / 1024:.1f} MiB)",
                  f"< {RSS_TARGET_MIB:g} MiB", rss["growth_mib"] < RSS_TARGET_MIB))
        t = rss["totals"]
        c.append(("wrong answers under load", f"{t['bad']:,d} of {rss['requests']:,d}",
                  "0", t["bad"] == 0))
    if ab is not None:
        c.append(("open fds (before -> after)", f"{ab['fds_before']} -> {ab['fds_after']}",
                  "no increase", ab["fds_after"] <= ab["fds_before"]))
        c.append(("threads (before -> after)",
                  f"{ab['threads_before']} -> {ab['threads_after']}", "unchanged",
                  ab["threads_after"] == ab["threads_before"]))
        c.append(("aborted connections", f"{ab['done']:,d} of {ab['requested']:,d}",
                  "all, in time", ab["done"] == ab["requested"] and not ab["timed_out"]))
        c.append(("server answers afterwards", "yes" if ab["answers"] else "NO", "yes",
                  bool(ab["answers"])))
    return c


def table(rows):
    head = ("check", "figure", "target", "result")
    body = [(n, f, t, "ok" if ok else "MISSED") for n, f, t, ok in rows]
    w = [max(len(str(r[i])) for r in [head] + body) for i in range(4)]
    line = lambda r: "  ".join(str(x).ljust(w[i]) for i, x in enumerate(r))  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in body])


def markdown(args, env, rss, ab, rows, ok, server_stderr):
    md = ["# rswaitress stress results", ""]
    md.append(f"Command: `{env['command']}`  ")
    md.append(f"Date: {env['date']}; commit {env['rev']}; {env['machine']}; "
              f"load average at start {env['load']}; {env['wrk']}.")
    md.append("")
    md.append(f"Server: tests/stress/server_app.py (rswaitress, threads=4, "
              f"connection_limit={args.connection_limit}) in a subprocess, niceness "
              f">= 5 (as are wrk and the client).  Load: wrk -t{WRK_THREADS} "
              f"-c{WRK_CONNS}, keep-alive, with load.lua (exact request counts, every "
              f"status and body checked).")
    md.append("")
    md.append("| check | figure | target | result |")
    md.append("|---|---|---|---|")
    for n, f, t, good in rows:
        md.append(f"| {n} | {f} | {t} | {'ok' if good else '**MISSED**'} |")
    md.append("")
    md.append(f"**Overall: {'all targets met' if ok else 'TARGET MISSED'}**")
    if rss is not None:
        t = rss["totals"]
        md += ["", "## 1. RSS under keep-alive load", ""]
        md.append(f"- VmRSS at start (after one probe): {rss['rss_start_kib'] / 1024:.1f} MiB")
        md.append(f"- warm-up: {rss['warmup_requests']:,d} requests "
                  f"(half `GET /`, half 1 KiB `POST /echo`)")
        md.append(f"- measured: {rss['requests']:,d} requests ({t['hello']:,d} `GET /`, "
                  f"{t['echo']:,d} `POST /echo`); non-2xx {t['non2xx']}, wrong "
                  f"answers {t['bad']}, wrk socket errors {t['socket_errors']}")
        md.append(f"- VmRSS after warm-up {rss['rss_warm_kib']:,d} KiB, at the end "
                  f"{rss['rss_end_kib']:,d} KiB: growth **{rss['growth_mib']:+.2f} MiB**; "
                  f"VmHWM {rss['rss_hwm_kib']:,d} KiB")
        md += ["", "VmRSS after each wrk run of the measured phase:", "",
               "| requests done | VmRSS (KiB) | vs. warm (KiB) |", "|---:|---:|---:|"]
        for n, kib in rss["curve"]:
            md.append(f"| {n:,d} | {kib:,d} | {kib - rss['rss_warm_kib']:+,d} |")
        md += ["", "wrk runs:", "", "| phase | endpoint | requests | seconds | req/s | "
               "stopped at count | wrong | socket errors |",
               "|---|---|---:|---:|---:|---|---:|---:|"]
        for r in rss["runs"]:
            md.append(f"| {r['phase']} | {'POST /echo' if r['mode'] == 'echo' else 'GET /'} "
                      f"| {r['requests']:,d} | {r['seconds']:.2f} | "
                      f"{r['requests'] / max(r['seconds'], 1e-9):,.0f} | "
                      f"{'yes' if r['by_count'] else 'no (-d)'} | {r['bad']} | "
                      f"{r['socket_errors']} |")
    if ab is not None:
        md += ["", "## 2. Aborted connections", ""]
        md.append(f"- {ab['done']:,d} of {ab['requested']:,d} connections abandoned, "
                  f"{args.batch} open at a time, in {ab['seconds']:.2f} s; client-side "
                  f"errors: {ab['errors'] or 'none'}")
        md.append("- per style: " + ", ".join(f"{k} {v:,d}" for k, v in ab["per_style"].items()))
        md.append(f"- open fds {ab['fds_before']} before, {ab['fds_right_after']} right "
                  f"after the last batch, {ab['fds_after']} after {ab['settle_s']:.1f} s")
        md.append(f"- threads {ab['threads_before']} before, {ab['threads_after']} after")
        md.append(f"- server answers `GET /` and `POST /echo` afterwards: "
                  f"{'yes' if ab['answers'] else 'NO'}")
        md.append(f"- descriptors before: {_kinds(ab['kinds_before'])}")
        md.append(f"- descriptors after: {_kinds(ab['kinds_after'])}")
    md += ["", "Styles (stresslib.ABORT_STYLES): connect_close (connect, close), connect_rst "
           "(connect, close with SO_LINGER 0 = RST), half_head (half a request head, close), "
           "half_body / half_body_rst (POST head with Content-Length 100000 and 50,000 body "
           "bytes, then FIN / RST), full_close / full_rst (a full GET, then FIN / RST "
           "without reading the answer), keepalive_half (one full exchange, then half a "
           "second head, close)."]
    if server_stderr.strip():
        lines = server_stderr.strip().splitlines()
        counts = {}
        for line in lines:
            key = re.sub(r"\d+", "N", line)
            counts[key] = counts.get(key, 0) + 1
        md += ["", f"Server stderr: {len(lines)} lines; distinct (digits as N):", "", "```"]
        md += [f"{n:6d} x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:20]]
        md.append("```")
    md.append("")
    return "\n".join(md)


def _kinds(k):
    return ", ".join(f"{v} {n}" for n, v in sorted(k.items()))


# --------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description="rswaitress RSS / fd / thread stress figures")
    p.add_argument("--requests", type=int, default=None,
                   help="measured keep-alive requests, half GET /, half POST /echo "
                        "(default 1,000,000; --quick 100,000)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up requests (default 50,000; --quick 20,000)")
    p.add_argument("--aborts", type=int, default=None,
                   help="aborted connections (default 10,000; --quick 2,000)")
    p.add_argument("--batch", type=int, default=200, help="connections open at a time")
    p.add_argument("--quick", action="store_true", help="100k requests, 2,000 aborts")
    p.add_argument("--connection-limit", type=int, default=2000)
    p.add_argument("--time-limit", type=float, default=None,
                   help="bound on the load phase in seconds (default 900; --quick 60)")
    p.add_argument("--out", default=None,
                   help="Markdown report (default tests/stress/results.md; "
                        "--quick: tests/stress/results-quick.md; '-' for none)")
    args = p.parse_args(argv)
    q = args.quick
    if args.requests is None:
        args.requests = 100_000 if q else 1_000_000
    if args.warmup is None:
        args.warmup = 20_000 if q else 50_000
    if args.aborts is None:
        args.aborts = 2_000 if q else 10_000
    if args.time_limit is None:
        args.time_limit = 60.0 if q else 900.0
    if args.out is None:
        args.out = os.path.join(HERE, "results-quick.md" if q else "results.md")

    if shutil.which("wrk") is None and args.requests > 0:
        print("wrk is not on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    nice_now = os.nice(0)
    if nice_now < 5:
        os.nice(5 - nice_now)  # inherited by the server and wrk

    def log(msg):
        print(msg, flush=True)

    env = {
        "command": " ".join(["python tests/stress/run_stress.py"]
                            + list(argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "rev": L.git_rev(),
        "machine": f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
                   f"Python {platform.python_version()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "wrk": "wrk " + (subprocess.run(["wrk", "-v"], capture_output=True, text=True)
                         .stdout.split(" [")[0].replace("wrk ", "").strip()
                         if shutil.which("wrk") else "-"),
    }
    rss = ab = None
    fatal = None
    try:
        srv = L.ServerProcess(threads=4, connection_limit=args.connection_limit)
    except Exception as e:
        print(f"cannot start the server: {e}", file=sys.stderr)
        return 2
    try:
        log(f"server pid {srv.pid} on port {srv.port}")
        if args.requests > 0:
            log(f"[1] RSS: {args.warmup:,d} warm-up + {args.requests:,d} requests")
            try:
                rss = rss_phase(srv, args.warmup, args.requests, args.time_limit, log)
            except (TimeoutError, RuntimeError) as e:
                fatal = f"load phase: {e}"
                log(f"  FAILED: {e}")
        if args.aborts > 0 and srv.alive():
            log(f"[2] leaks: {args.aborts:,d} aborted connections")
            ab = abort_phase(srv, args.aborts, args.batch, log)
            ab["requested"] = args.aborts
        if not srv.alive():
            fatal = (fatal + "; " if fatal else "") + "server process died"
    except KeyboardInterrupt:
        srv.stop()
        return 130
    finally:
        code = srv.stop()
    server_stderr = srv.stderr_text(limit=1_000_000)

    rows = checks(rss, ab)
    if fatal:
        rows.append(("run completed", fatal, "yes", False))
    ok = all(r[3] for r in rows)
    print()
    print(table(rows))
    print()
    print("ALL TARGETS MET" if ok else "TARGET MISSED")
    if code != 0:
        print(f"(server exit code on SIGTERM: {code})")
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(markdown(args, env, rss, ab, rows, ok, server_stderr))
        print(f"report: {os.path.relpath(args.out)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
