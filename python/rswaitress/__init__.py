"""rswaitress: a WSGI server with a Rust core, a drop-in replacement for Waitress.

``serve(app, **kw)``, ``create_server(app, **kw)`` and ``serve_paste`` take every
Waitress argument with Waitress's meaning (see ``rswaitress.adjustments``).
"""

import logging

__all__ = ["serve", "serve_paste", "create_server"]


def create_server(application, **kw):
    """Binds the listening sockets and returns a server; call its ``run()``."""
    from rswaitress.server import create_server as _create

    return _create(application, **kw)


def serve(app, **kw):
    """Serves ``app`` until interrupted (Ctrl-C, SIGTERM) or the server is closed."""
    _server = kw.pop("_server", create_server)  # for tests: a different factory
    _quiet = kw.pop("_quiet", False)  # for tests: no logging set-up, no banner
    if not _quiet:
        logging.basicConfig()
        log = logging.getLogger("rswaitress")
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
    server = _server(app, **kw)
    if not _quiet:
        server.print_listen("Serving on http://{}:{}")
    server.run()


def serve_paste(app, global_conf, **kw):
    """The ``paste.server_runner`` entry point: ``use = egg:rswaitress#main``."""
    serve(app, **kw)
    return 0
