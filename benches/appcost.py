"""What the real-app scenarios' views cost with no server at all.

Calls each Flask and Django view of benches/run.py's real-app scenarios in a loop,
in this process, with the environ a server would build for `GET <path> HTTP/1.1`,
and reports the CPU time of this thread per call (start_response, iterating the
body and close() included). That is the floor of CPU per request for one GIL: what
a server adds is its figure in results.md minus this one.

    python benches/appcost.py                    # every real-app scenario, 3 x 2 s each
    python benches/appcost.py --seconds 5 flask-hello django-orm
"""

import argparse
import importlib
import io
import os
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import run  # noqa: E402  (benches/run.py: the scenarios and the Django seeding)

REAL_APPS = [name for name, sc in run.SCENARIOS.items() if sc.get("app")]


def environ_for(path):
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_HOST": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_USER_AGENT": "appcost",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }


def load(target):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def call_once(app, path, check):
    status = []

    def start_response(s, headers, exc_info=None):
        status.append(s)
        return lambda data: None

    body = app(environ_for(path), start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    if not status or not status[0].startswith("200") or not check(data):
        sys.exit("%s: unexpected answer %r %r" % (path, status, data[:200]))


def measure(app, path, check, seconds):
    """CPU µs of this thread per call, over about `seconds` of calls."""
    calls = 0
    cpu0 = time.thread_time()
    wall_end = time.monotonic() + seconds
    while time.monotonic() < wall_end:
        for _ in range(50):
            call_once(app, path, check)
        calls += 50
    return (time.thread_time() - cpu0) / calls * 1e6, calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenarios", nargs="*", default=REAL_APPS,
                    help="real-app scenarios (default: %s)" % ", ".join(REAL_APPS))
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per run (default 2)")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure, median (default 3)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in REAL_APPS]
    if unknown:
        ap.error("not a real-app scenario: %s (choose from %s)"
                 % (", ".join(unknown), ", ".join(REAL_APPS)))

    tmp = tempfile.mkdtemp(prefix="rswappcost-")
    os.environ.update(run.server_env(tmp))
    if any(s.startswith("django-orm") for s in args.scenarios):
        failure = run.seed_django(tmp)
        if failure:
            sys.exit("could not create the Django database: %s" % failure)

    print("| scenario | CPU µs per call (median of %d x %g s) | calls |"
          % (args.runs, args.seconds))
    print("|---|---:|---:|")
    for name in args.scenarios:
        sc = run.SCENARIOS[name]
        app = load(sc["app"])
        for _ in range(200):  # warm-up: imports, caches, the first queries
            call_once(app, sc["path"], sc["check"])
        figures = sorted(measure(app, sc["path"], sc["check"], args.seconds)
                         for _ in range(args.runs))
        cost, calls = figures[len(figures) // 2]
        print("| %s | %.1f | %d |" % (name, cost, calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
