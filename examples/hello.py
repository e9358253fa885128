"""A minimal WSGI application, served by rswaitress when run as a script.

    python examples/hello.py                     # serve() on port 8080
    rswaitress-serve --port=8080 hello:app       # the same, from examples/
"""


def app(environ, start_response):
    body = b"Hello, World!\n"
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    )
    return [body]


if __name__ == "__main__":
    from rswaitress import serve

    serve(app, host="127.0.0.1", port=8080)
