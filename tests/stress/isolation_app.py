"""The server that run_isolation.py runs as a subprocess (with any interpreter that can
import rswaitress: the current build, or an older one through ``--python``).

    python tests/stress/isolation_app.py [--threads 4] [--channel-timeout 120]
        [--cleanup-interval 30] [--hold-fd FD] [--max-seconds 600]

rswaitress on 127.0.0.1, a free port, serving:

    /          "Hello, World!"
    /heavy     "ok" (the worst-case heads are sent here; the application ignores them)
    /endless   200, an endless body of 64 KiB pieces; prints ``START <t>`` when called
               and ``CLOSED <t>`` when the server calls close() on the iterable
    /big       8 MiB with Content-Length; prints ``BIGDONE <t>`` at close(), that is once
               the whole body has been handed to the server
    /hold      prints ``HOLDING <t>``, then blocks in libc read(2) on --hold-fd through
               ctypes.PyDLL, which keeps the GIL for the whole call, until the parent
               writes a byte; prints ``RELEASED <t>`` and answers "held"

``<t>`` is time.monotonic() (CLOCK_MONOTONIC: the same clock in the parent on Linux).
Prints ``PORT <n>`` and ``CORE <path of the extension module>`` once listening; the
``rswaitress`` logger's records from INFO up go to stderr.  Stops
on SIGTERM/SIGINT, when its stdin reaches EOF (the parent is gone) or after
--max-seconds, whichever comes first.
"""

import argparse
import ctypes
import logging
import os
import sys
import threading
import time

HELLO = b"Hello, World!"
PIECE = b"x" * 65536
BIG = b"z" * (8 << 20)

_out_lock = threading.Lock()


def say(*words):
    line = " ".join(str(w) for w in words) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class Endless:
    """An endless response body; close() is reported on stdout."""

    def __init__(self):
        say("START", repr(time.monotonic()))

    def __iter__(self):
        while True:
            yield PIECE

    def close(self):
        say("CLOSED", repr(time.monotonic()))


class Big:
    """8 MiB in 1 MiB pieces; close() (the body fully handed over) is reported."""

    def __iter__(self):
        for i in range(0, len(BIG), 1 << 20):
            yield BIG[i:i + (1 << 20)]

    def close(self):
        say("BIGDONE", repr(time.monotonic()))


def make_app(hold_fd):
    libc = ctypes.PyDLL(None) if hold_fd is not None else None  # PyDLL calls keep the GIL

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", str(len(HELLO)))])
            return [HELLO]
        if path == "/heavy":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        if path == "/endless":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return Endless()
        if path == "/big":
            start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(len(BIG)))])
            return Big()
        if path == "/hold" and libc is not None:
            say("HOLDING", repr(time.monotonic()))
            buf = ctypes.create_string_buffer(1)
            libc.read(hold_fd, buf, 1)  # blocks with the GIL held
            say("RELEASED", repr(time.monotonic()))
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
            return [b"held"]
        start_response("404 Not Found", [("Content-Type", "text/plain"),
                                         ("Content-Length", "9")])
        return [b"not found"]

    return app


def _watchdog(max_seconds):
    """Ends the process when the parent goes away (stdin EOF) or at the time limit."""

    def stdin_eof():
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(3)

    def time_limit():
        time.sleep(max_seconds)
        sys.stderr.write(f"isolation_app: --max-seconds {max_seconds} reached\n")
        sys.stderr.flush()
        os._exit(4)

    threading.Thread(target=stdin_eof, daemon=True).start()
    threading.Thread(target=time_limit, daemon=True).start()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--channel-timeout", type=int, default=None)
    p.add_argument("--cleanup-interval", type=int, default=None)
    p.add_argument("--hold-fd", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=600.0)
    a = p.parse_args(argv)
    _watchdog(a.max_seconds)

    # The server's own records (e.g. closing a connection that reads none of its
    # response) go to stderr, which the runner summarises.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rswaitress").setLevel(logging.INFO)

    import rswaitress
    from rswaitress import create_server

    kw = {"threads": a.threads}
    if a.channel_timeout is not None:
        kw["channel_timeout"] = a.channel_timeout
    if a.cleanup_interval is not None:
        kw["cleanup_interval"] = a.cleanup_interval
    server = create_server(make_app(a.hold_fd), host="127.0.0.1", port=0, **kw)
    say("PORT", server.effective_port)
    import rswaitress._core as core
    say("CORE", getattr(core, "__file__", None) or os.path.dirname(rswaitress.__file__))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
