"""The server the stress tests run as a subprocess.

    python tests/stress/server_app.py [--port 0] [--threads 4] [--connection-limit 2000]

Serves on 127.0.0.1 with rswaitress and this app:

    /       "Hello, World!"
    /echo   reads the whole of wsgi.input, answers with the number of bytes read

Once listening it prints ``PORT <n>`` on stdout (flushed) so that the parent knows where
to connect; SIGTERM or SIGINT stops it (``server.run()`` returns and the process exits 0).
"""

import argparse
import sys

HELLO = b"Hello, World!"


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    if path == "/echo":
        stream = environ["wsgi.input"]
        n = 0
        while True:
            block = stream.read(65536)
            if not block:
                break
            n += len(block)
        body = str(n).encode("ascii")
    elif path == "/":
        body = HELLO
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"),
                                         ("Content-Length", "9")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--connection-limit", type=int, default=2000)
    a = p.parse_args(argv)

    from rswaitress import create_server

    server = create_server(app, host="127.0.0.1", port=a.port, threads=a.threads,
                           connection_limit=a.connection_limit)
    print(f"PORT {server.effective_port}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
