"""rswaitress: a WSGI server with a Rust core, a drop-in replacement for Waitress.

``serve(app, **kw)``, ``create_server(app, **kw)`` and ``serve_paste`` take every
Waitress argument with Waitress's meaning (see ``rswaitress.adjustments``; their types
are ``rswaitress.types.ServerOptions``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import socket

    from _typeshed.wsgi import WSGIApplication
    from typing_extensions import Unpack

    from rswaitress.server import BaseWSGIServer
    from rswaitress.types import ServerOptions

__all__ = ["serve", "serve_paste", "create_server"]


def create_server(
    application: WSGIApplication,
    map: dict[int, Any] | None = None,
    _start: bool = True,
    _sock: socket.socket | None = None,
    _dispatcher: object = None,
    **kw: Unpack[ServerOptions],
) -> BaseWSGIServer:
    """Binds the listening sockets and returns a server; call its ``run()``."""
    from rswaitress.server import create_server as _create

    return _create(application, map, _start, _sock, _dispatcher, **kw)


#: The arguments that say where to listen; without any of them, serve() uses the sockets
#: of a socket activation (rswaitress.activation) when the process was given some.
_ADDRESS_ARGUMENTS = frozenset({"listen", "host", "port", "unix_socket", "sockets"})


def serve(app: WSGIApplication, **kw: Unpack[ServerOptions]) -> None:
    """Serves ``app`` until interrupted (Ctrl-C, SIGTERM) or the server is closed.

    Without an address argument, sockets passed by socket activation (``LISTEN_FDS``,
    see ``rswaitress.activation``) are served when there are any."""
    extra = cast("dict[str, Any]", kw)  # also holds the test-only keys below
    _server = extra.pop("_server", create_server)  # for tests: a different factory
    _quiet = extra.pop("_quiet", False)  # for tests: no logging set-up, no banner
    if not _ADDRESS_ARGUMENTS & kw.keys():
        from rswaitress.activation import listen_fds

        inherited = listen_fds()
        if inherited:
            kw["sockets"] = inherited
    if not _quiet:
        logging.basicConfig()
        log = logging.getLogger("rswaitress")
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
    server = _server(app, **kw)
    if not _quiet:
        scheme = "https" if server.adj.ssl_certfile else "http"
        server.print_listen(f"Serving on {scheme}://{{}}:{{}}")
    server.run()


def serve_paste(
    app: WSGIApplication, global_conf: Mapping[str, Any], **kw: Unpack[ServerOptions]
) -> int:
    """The ``paste.server_runner`` entry point: ``use = egg:rswaitress#main``."""
    serve(app, **kw)
    return 0
