"""WSGI application used by the benchmark suite (benches/run.py).

One app, routing on PATH_INFO:

    /hello   13-byte body "Hello, World!"
    /64k     64 KiB body
    /file    the 8 MiB file $RSWB_DATA_DIR/file-8m.bin through
             environ['wsgi.file_wrapper'] (plain chunked iteration of the file
             when the server does not provide a file_wrapper, e.g. granian)
    /post    reads the whole request body, answers with its length in bytes
    /sleep   sleeps 50 ms, then answers "slept" (occupies one worker thread)
    /cpu     pure-Python busy work (CPU_LOOPS rounds of an integer hash, about
             3 ms on the 2-core benchmark machine), answers the hash in decimal

The data directory is passed in the environment variable RSWB_DATA_DIR by
run.py; nginx serves the same files statically.
"""

import os
import time

HELLO = b"Hello, World!"
BODY_64K = b"x" * (64 * 1024)
FILE_NAME = "file-8m.bin"
FILE_SIZE = 8 * 1024 * 1024
CHUNK = 256 * 1024

# Rounds of the /cpu loop.  45,000 rounds took 3.0 ms per call on the
# benchmark machine (Xeon, Python 3.11: cpu_work() timed over 20 calls).
CPU_LOOPS = 45000


def _data_dir():
    return os.environ.get("RSWB_DATA_DIR", os.path.dirname(os.path.abspath(__file__)))


def _plain(start_response, body, status="200 OK"):
    start_response(
        status,
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _iter_file(f):
    try:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            yield block
    finally:
        f.close()


def cpu_work(rounds=CPU_LOOPS):
    """Deterministic pure-Python work holding the GIL throughout."""
    h = 0
    for i in range(rounds):
        h = (h * 31 + i) & 0xFFFFFFFF
    return h


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"

    if path == "/hello" or path == "/":
        return _plain(start_response, HELLO)

    if path == "/64k":
        return _plain(start_response, BODY_64K)

    if path == "/file":
        fpath = os.path.join(_data_dir(), FILE_NAME)
        f = open(fpath, "rb")
        size = os.fstat(f.fileno()).st_size
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(size)),
            ],
        )
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(f, CHUNK)
        return _iter_file(f)

    if path == "/post":
        stream = environ["wsgi.input"]
        try:
            remaining = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            remaining = 0
        total = 0
        while remaining > 0:
            block = stream.read(min(remaining, CHUNK))
            if not block:
                break
            total += len(block)
            remaining -= len(block)
        return _plain(start_response, str(total).encode("ascii"))

    if path == "/sleep":
        time.sleep(0.05)
        return _plain(start_response, b"slept")

    if path == "/cpu":
        return _plain(start_response, str(cpu_work()).encode("ascii"))

    return _plain(start_response, b"Not Found", "404 Not Found")
