"""Types of the public API, for type checkers and for code that builds the keyword
arguments of ``serve()`` / ``create_server()`` ahead of time::

    from rswaitress import serve
    from rswaitress.types import ServerOptions

    options: ServerOptions = {"listen": "127.0.0.1:8080", "threads": 8}
    serve(app, **options)

``ServerOptions`` lists every Waitress 3.0.2 adjustment (and rswaitress's own
additions) with the types it accepts as input: the native value, or the text a
PasteDeploy ``.ini`` file or a command line gives (``port="8080"``,
``expose_tracebacks="yes"``). What the server keeps after conversion is described by the
attributes of ``rswaitress.adjustments.Adjustments``.

Nothing here costs anything at run time: this module only defines a ``TypedDict``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import TypedDict

__all__ = ["ServerOptions"]


class ServerOptions(TypedDict, total=False):
    """The keyword arguments of ``serve()``, ``create_server()`` and ``Adjustments()``.

    Flags take ``True``/``False`` or the words Waitress reads as true (``"1"``,
    ``"true"``, ``"yes"``, ``"on"``, ``"t"``, ``"y"``; anything else is false).
    Numbers take an ``int`` or its text. Lists take an iterable of strings or one
    string of whitespace-separated words.
    """

    # Where to listen: ``host``/``port``, or ``listen``, or ``unix_socket``, or
    # ``sockets`` (some of these may not be combined; see Adjustments).
    host: str
    port: int | str
    listen: str | Iterable[str]
    ipv4: bool | int | str
    ipv6: bool | int | str
    unix_socket: str | os.PathLike[str]
    unix_socket_perms: str  # octal text, e.g. "600" (an int is refused, as in Waitress)
    sockets: Iterable[socket.socket]
    backlog: int | str

    # Requests and the environ.
    threads: int | str
    url_scheme: str
    url_prefix: str
    server_name: str
    ident: str | None  # the Server header; None or "" sends none
    expose_tracebacks: bool | int | str
    channel_request_lookahead: int | str

    # Proxies.
    trusted_proxy: str | None
    trusted_proxy_count: int | str
    trusted_proxy_headers: str | Iterable[str]
    log_untrusted_proxy_headers: bool | int | str
    clear_untrusted_proxy_headers: bool | int | str

    # Buffers, limits and timeouts.
    recv_bytes: int | str
    send_bytes: int | str  # deprecated: accepted with a DeprecationWarning
    outbuf_overflow: int | str
    outbuf_high_watermark: int | str
    inbuf_overflow: int | str
    connection_limit: int | str
    cleanup_interval: int | str
    channel_timeout: int | str
    max_request_header_size: int | str
    max_request_body_size: int | str
    log_socket_errors: bool | int | str

    # Accepted for Waitress compatibility, without effect on rswaitress's core.
    asyncore_loop_timeout: int | str
    asyncore_use_poll: bool | int | str

    # rswaitress's own (Waitress has no such keyword).
    allow_missing_host: bool | int | str
    graceful_timeout: float | int | str  # seconds
    workers: int | str
    max_requests: int | str
    max_requests_jitter: int | str
    touch_reload: str | None  # a file path
    access_log: bool | int | str
    access_log_format: str
    metrics_listen: str | None  # HOST:PORT
    ssl_certfile: str | None  # PEM certificate chain
    ssl_keyfile: str | None  # PEM key: PKCS#8, PKCS#1 RSA or SEC1 EC
    ssl_keyfile_password: str | None
    ssl_ca_certs: str | None  # PEM CA certificates for client certificates
    ssl_cert_reqs: str | int  # none / optional / required, or ssl.CERT_*
    ssl_min_version: str | int  # TLSv1.2 / TLSv1.3, or ssl.TLSVersion
