"""A fully typed WSGI application served by rswaitress; `mypy --strict` accepts it.

    python examples/typed_app.py                 # serves http://127.0.0.1:8080/
    mypy --strict examples/typed_app.py          # what CI checks

rswaitress ships its type information (py.typed, stubs for the compiled core): the
keyword arguments of serve() and create_server() are checked by name and type (an
.ini-style string such as port="8080" is fine, port=[8080] or a misspelt name is not),
and the server object's attributes have their types.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rswaitress import create_server, serve
from rswaitress.adjustments import Adjustments
from rswaitress.server import BaseWSGIServer
from rswaitress.types import ServerOptions

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Answers with what the server told the application about the request."""
    body = json.dumps(
        {
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "server": environ["SERVER_SOFTWARE"],
        }
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


#: Settings as a deployment might keep them: native values and .ini-style strings mix.
OPTIONS: ServerOptions = {
    "host": "127.0.0.1",
    "port": "8080",
    "threads": 4,
    "expose_tracebacks": "no",
    "trusted_proxy_headers": ["x-forwarded-for", "x-forwarded-proto"],
    "trusted_proxy": "127.0.0.1",
    "ident": None,
}


def describe(server: BaseWSGIServer) -> str:
    """One line about a server, from its typed attributes."""
    adj: Adjustments = server.adj
    family = server.socket.family.name
    return (
        f"{family} {server.effective_host}:{server.effective_port}, "
        f"{adj.threads} threads, channel_timeout {adj.channel_timeout}s, "
        f"trusting {sorted(adj.trusted_proxy_headers)} from {adj.trusted_proxy}"
    )


def check_only() -> None:
    """Binds a server on a free port, describes it and releases it without serving."""
    server = create_server(app, host="127.0.0.1", port=0, threads="2", channel_timeout=30)
    try:
        print(describe(server))
        server.print_listen("Would serve on http://{}:{}")
    finally:
        server.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        check_only()
    else:
        serve(app, **OPTIONS)
