"""Server settings for rswaitress.

Every keyword that ``waitress.serve()`` (Waitress 3.0.2) understands is
understood here too, with the same default, the same way of turning strings
into values and the same errors.  That matters because rswaitress is meant to
be dropped into existing deployments unchanged: a ``[server:main]`` section of
a PasteDeploy ``.ini`` file hands every value over as a string, command lines
are parsed into strings, and scripts that call ``serve(app, port=8080)`` pass
native Python values.  All three must end up with the same settings they
would get from Waitress, and a mistake must be reported with the message the
user would get from Waitress.

The one intentional difference is the default of ``ident`` (the ``Server:``
response header), which names this server instead of Waitress.
"""

from __future__ import annotations

import getopt
import platform
import socket
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Union, cast

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from rswaitress.types import ServerOptions

#: A socket address as getaddrinfo() gives it for TCP: ``(host, port)`` for IPv4,
#: ``(host, port, flowinfo, scope_id)`` for IPv6.
SockAddr = Union[tuple[str, int], tuple[str, int, int, int]]

#: One resolved ``listen`` entry: ``(family, socktype, proto, sockaddr)``.
ListenAddress = tuple[socket.AddressFamily, socket.SocketKind, int, SockAddr]

# --------------------------------------------------------------------------
# Platform facts
# --------------------------------------------------------------------------

#: Windows' getaddrinfo() is used with numeric ports only (see _port_for).
ON_WINDOWS = platform.system() == "Windows"

#: IPv6 is only usable when Python was built with it *and* the IPV6_V6ONLY
#: socket option can be set, which keeps an IPv6 listener from also taking
#: the IPv4 traffic of a separate IPv4 listener.  (Windows builds of Python
#: may lack the constants, but the option itself is always there.)
IPV6_AVAILABLE = bool(socket.has_ipv6) and (
    ON_WINDOWS
    or (hasattr(socket, "IPPROTO_IPV6") and hasattr(socket, "IPV6_V6ONLY"))
)


# --------------------------------------------------------------------------
# Converters.  Each one takes whatever the user supplied (a native value or a
# string from a config file or the command line) and returns the value the
# server works with.  Errors are left to the builtins they call, so that the
# exception type and text are the ones Waitress users already know.
# --------------------------------------------------------------------------

#: Lower-cased spellings that mean "yes" in a config file.  Anything else,
#: including "2" or "enabled", means "no" -- Waitress is that strict, and a
#: setting that silently flips meaning between servers would be worse.
TRUE_WORDS = frozenset({"1", "t", "true", "y", "yes", "on"})


def to_bool(value: object) -> bool:
    """Interpret a flag.  ``None`` is off, real booleans pass through, and
    anything else is compared (as stripped, lower-cased text) with
    :data:`TRUE_WORDS`."""
    if value is None:
        return False
    if value is True or value is False:
        return value
    return str(value).strip().lower() in TRUE_WORDS


def to_octal(value: str) -> int:
    """Read Unix permission bits written in octal, e.g. ``"600"``.

    Only text is accepted (``int(value, 8)``): Waitress raises ``TypeError``
    for an already-numeric value such as ``0o600`` and so do we, so a config
    that works here also works there."""
    return int(value, 8)


def to_lines(value: str | Iterable[str]) -> list[str]:
    """Split text into its non-blank, stripped lines; other iterables are
    just turned into a list."""
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    return list(value)


def to_list(value: str | Iterable[str]) -> list[str]:
    """Split text on any whitespace (spaces or newlines, as an ``.ini`` value
    spanning several lines has).  An iterable's items are split the same way,
    so ``["a b", "c"]`` also gives three words."""
    words = []
    for item in to_lines(value):
        words.extend(item.split())
    return words


def to_set(value: str | Iterable[str]) -> set[str]:
    """Like :func:`to_list`, without order or duplicates."""
    return set(to_list(value))


def to_url_prefix(value: str) -> str:
    """Normalise a ``SCRIPT_NAME`` prefix: empty stays empty, anything else
    gets exactly one leading slash and no trailing slash (``"app/"`` and
    ``"//app"`` both become ``"/app"``; ``"/"`` stays ``"/"``)."""
    value = value.strip()
    if not value:
        return value
    return "/" + value.strip("/")


def to_optional_str(value: object) -> str | None:
    """Text, or ``None`` for any false-ish value such as ``""`` -- that is how
    an empty ``ident =`` line in an ``.ini`` file turns the header off."""
    if not value:
        return None
    return str(value)


class TLSSettingsError(ValueError):
    """A TLS certificate, key or CA file that cannot be used (the message names the
    setting, the file and why)."""


#: ssl_cert_reqs values, by what may be given: the words, or ssl.CERT_NONE (0),
#: ssl.CERT_OPTIONAL (1) and ssl.CERT_REQUIRED (2) as the ssl module numbers them.
_CERT_REQS = {
    "none": "none", "cert_none": "none", "0": "none",
    "optional": "optional", "cert_optional": "optional", "1": "optional",
    "required": "required", "cert_required": "required", "2": "required",
}


def to_cert_reqs(value: object) -> str:
    """``ssl_cert_reqs``: ``"none"``, ``"optional"`` or ``"required"`` (also
    ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED or their numbers)."""
    name = getattr(value, "name", None)
    text = name if isinstance(name, str) else str(int(value) if isinstance(value, int) else value)
    found = _CERT_REQS.get(text.strip().lower())
    if found is None:
        raise ValueError(
            f"ssl_cert_reqs must be none, optional or required, not {value!r}"
        )
    return found


def to_tls_version(value: object) -> str:
    """``ssl_min_version``: ``"TLSv1.2"`` or ``"TLSv1.3"`` (also ``"1.3"``, or
    ssl.TLSVersion.TLSv1_3)."""
    name = getattr(value, "name", None)
    text = (name if isinstance(name, str) else str(value)).strip().lower()
    text = text.replace("_", ".").removeprefix("tlsv").removeprefix("tls")
    if text in ("1.2", "1.3"):
        return "TLSv" + text
    if text in ("1", "1.0", "1.1", "ssl3", "sslv3", "minimum.supported"):
        raise ValueError(
            f"ssl_min_version {value!r} is not supported: TLS 1.2 is the oldest "
            "version served (give TLSv1.2 or TLSv1.3)"
        )
    raise ValueError(f"ssl_min_version must be TLSv1.2 or TLSv1.3, not {value!r}")


def only_sockets(value: Iterable[object]) -> list[socket.socket]:
    """Keep the items that are real ``socket.socket`` objects; anything else
    (e.g. the text a config file would give) is dropped without error."""
    return [item for item in value if isinstance(item, socket.socket)]


# Names under which Waitress exposes the same helpers, for code that imports
# them from ``waitress.adjustments`` and is switched over to rswaitress.
truthy = TRUE_WORDS
asbool = to_bool
asoctal = to_octal
aslist_cronly = to_lines
aslist = to_list
asset = to_set
slash_fixed_str = to_url_prefix
str_iftruthy = to_optional_str
as_socket_list = only_sockets


#: The proxy headers ``trusted_proxy_headers`` may name, lower-cased with
#: dashes.  ``forwarded`` (RFC 7239) cannot be combined with the others.
KNOWN_PROXY_HEADERS = frozenset(
    {
        "forwarded",
        "x-forwarded-by",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-proto",
    }
)


# --------------------------------------------------------------------------
# The settings table: the single source of truth for names, converters and
# defaults.  The Adjustments class, its class attributes and the command line
# options of parse_args() are all generated from it.
# --------------------------------------------------------------------------


#: Gunicorn's default access log format (the core's DEFAULT_ACCESS_LOG_FORMAT).
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


class Setting(NamedTuple):
    name: str
    convert: Callable[[Any], Any]
    default: Any
    why: str


SETTINGS = (
    Setting("host", str, "0.0.0.0",
            "Address to listen on; 0.0.0.0 means every IPv4 interface. "
            "Combined with port into a single listen entry."),
    Setting("port", int, 8080,
            "TCP port to listen on. A string is accepted so .ini files work."),
    Setting("ipv4", to_bool, True,
            "Whether wildcard/hostname listen entries may resolve to IPv4."),
    Setting("ipv6", to_bool, True,
            "Whether wildcard/hostname listen entries may resolve to IPv6."),
    Setting("listen", to_list, ["0.0.0.0:8080"],
            "host:port pairs to bind; replaced after construction by the "
            "resolved (family, socktype, proto, sockaddr) tuples."),
    Setting("threads", int, 4,
            "Worker threads that run the WSGI application."),
    Setting("trusted_proxy", to_optional_str, None,
            "Peer address (or '*') whose proxy headers are believed."),
    Setting("trusted_proxy_count", int, None,
            "How many chained proxies are trusted; becomes 1 when left unset."),
    Setting("trusted_proxy_headers", to_set, set(),
            "Which proxy headers from trusted_proxy are applied to the environ."),
    Setting("log_untrusted_proxy_headers", to_bool, False,
            "Log a warning for each untrusted proxy header that is dropped."),
    Setting("clear_untrusted_proxy_headers", to_bool, True,
            "Remove proxy headers that are not trusted before the app sees "
            "them (on by default since Waitress 3.0)."),
    Setting("url_scheme", str, "http",
            "Default wsgi.url_scheme."),
    Setting("url_prefix", to_url_prefix, "",
            "SCRIPT_NAME for every request; stripped from PATH_INFO when "
            "the path starts with it."),
    Setting("backlog", int, 1024,
            "Queue length passed to listen(): connections the OS holds "
            "before they are accepted."),
    Setting("recv_bytes", int, 8192,
            "Bytes asked for in each socket read."),
    Setting("send_bytes", int, 1,
            "Deprecated write-coalescing threshold; accepted, with a warning."),
    Setting("outbuf_overflow", int, 1048576,
            "Pending response bytes above which output spills to a temp file."),
    Setting("outbuf_high_watermark", int, 16777216,
            "Pending response bytes above which the app's iterator is paused "
            "until the socket drains."),
    Setting("inbuf_overflow", int, 524288,
            "Request body bytes above which input spills to a temp file."),
    Setting("connection_limit", int, 100,
            "Open connections above which no more are accepted."),
    Setting("cleanup_interval", int, 30,
            "Minimum seconds between sweeps for idle connections."),
    Setting("channel_timeout", int, 120,
            "Seconds a connection may sit with no traffic before it is closed."),
    Setting("log_socket_errors", to_bool, True,
            "Log errors caused by clients that disconnect early."),
    Setting("max_request_header_size", int, 262144,
            "Largest accepted size of all request headers together."),
    Setting("max_request_body_size", int, 1073741824,
            "Largest accepted request body."),
    Setting("expose_tracebacks", to_bool, False,
            "Send the traceback of an unhandled app error to the client."),
    Setting("ident", to_optional_str, "rswaitress",
            "Server: header value; empty means no header. Waitress's default "
            "is 'waitress'."),
    # The two asyncore_* settings only steer Waitress's asyncore select()/
    # poll() loop.  rswaitress's Rust core runs its own poll-based event loop,
    # so they are parsed, validated and stored for compatibility but have no
    # effect on how the server runs.
    Setting("asyncore_loop_timeout", int, 1,
            "Waitress's asyncore.loop timeout. No effect in rswaitress."),
    Setting("asyncore_use_poll", to_bool, False,
            "Waitress's poll()-instead-of-select() switch. No effect in "
            "rswaitress, which always polls."),
    Setting("unix_socket", str, None,
            "Path of a Unix domain socket to listen on instead of TCP."),
    Setting("unix_socket_perms", to_octal, 0o600,
            "Permission bits given to unix_socket, written in octal."),
    Setting("sockets", only_sockets, [],
            "Already-bound sockets to serve on (e.g. socket activation)."),
    Setting("channel_request_lookahead", int, 0,
            "Requests read ahead per connection while one is running, which "
            "lets a running request see that its client went away."),
    Setting("server_name", str, "waitress.invalid",
            "SERVER_NAME when the request carries no Host header."),
    # Settings of rswaitress's own (Waitress has no such keyword).
    Setting("allow_missing_host", to_bool, False,
            "Accept HTTP/1.1 requests without a Host header, as Waitress does. "
            "RFC 9112 requires a 400 answer, which is the default."),
    Setting("graceful_timeout", float, 30.0,
            "Seconds a graceful stop (SIGTERM, Ctrl-C, close()) waits for requests "
            "in progress before closing their connections."),
    Setting("workers", int, 1,
            "Worker processes, each with its own pool of threads. 1 is a single "
            "process (no supervisor); more adds a master that binds the sockets "
            "once, shares them with the workers and supervises them."),
    Setting("max_requests", int, 0,
            "Requests after which a worker process is replaced (gracefully, "
            "without failing a request); 0 never replaces it."),
    Setting("max_requests_jitter", int, 0,
            "A random number of requests up to this is added to max_requests for "
            "each worker, so that workers are not all replaced at once."),
    Setting("touch_reload", to_optional_str, None,
            "A file whose modification triggers a zero-downtime reload of the "
            "workers, as SIGHUP does (the way to reload on Windows)."),
    Setting("access_log", to_bool, False,
            "Log one line per request on the 'rswaitress.access' logger at INFO."),
    Setting("access_log_format", str, ACCESS_LOG_FORMAT,
            "The access log line, with Gunicorn's atoms (%(h)s, %(r)s, "
            "%({header}i)s...)."),
    Setting("metrics_listen", to_optional_str, None,
            "HOST:PORT of a separate listener answering /metrics (OpenMetrics "
            "text), /healthz and /readyz without the GIL; with workers, the "
            "master's, covering every worker."),
    Setting("ssl_certfile", to_optional_str, None,
            "PEM file of the server certificate (and its chain): the TCP "
            "listeners serve HTTPS (TLS 1.2 and 1.3, ALPN http/1.1)."),
    Setting("ssl_keyfile", to_optional_str, None,
            "PEM file of the private key (PKCS#8, PKCS#1 RSA or SEC1 EC); "
            "without it the key is read from ssl_certfile."),
    Setting("ssl_keyfile_password", to_optional_str, None,
            "Password of an encrypted (PKCS#8) ssl_keyfile."),
    Setting("ssl_ca_certs", to_optional_str, None,
            "PEM file of the CA certificates client certificates are "
            "verified against."),
    Setting("ssl_cert_reqs", to_cert_reqs, "none",
            "Client certificates: none (not asked for), optional (verified "
            "when given) or required."),
    Setting("ssl_min_version", to_tls_version, "TLSv1.2",
            "Oldest TLS version accepted: TLSv1.2 or TLSv1.3."),
)

SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}

#: The settings Waitress does not have: extensions of rswaitress's own.
RSWAITRESS_ONLY = frozenset({
    "allow_missing_host", "graceful_timeout", "workers", "max_requests", "max_requests_jitter",
    "touch_reload", "access_log", "access_log_format", "metrics_listen",
    "ssl_certfile", "ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs", "ssl_cert_reqs",
    "ssl_min_version",
})

# Pairs of settings that may not be given together, checked in this order
# before anything else; each message is the one Waitress gives.
_CONFLICTS = (
    (("listen",), ("host", "port"), "host or port may not be set if listen is set."),
    (("listen",), ("sockets",), "socket may not be set if listen is set."),
    (("sockets",), ("host", "port"), "host or port may not be set if sockets is set."),
    (("sockets",), ("unix_socket",), "unix_socket may not be set if sockets is set"),
    (("unix_socket",), ("host", "port"), "unix_socket may not be set if host or port is set"),
    (("unix_socket",), ("listen",), "unix_socket may not be set if listen is set"),
)

# Keywords of the command line that belong to the runner, not to the server.
_RUNNER_FLAGS = ("help", "call")
_RUNNER_VALUE_OPTIONS = ("app",)


def _copy_default(value: Any) -> Any:
    # Mutable defaults are copied so that one instance can never change
    # another's (or the class's) list or set.
    if isinstance(value, (list, set)):
        return type(value)(value)
    return value


def _split_listen_entry(entry: str, default_port: int | str) -> tuple[str | None, str]:
    """Split ``host:port`` into its parts.  ``[v6]:port`` and bare hosts are
    understood; a bare host (or a bracketed IPv6 address with no port) gets
    ``default_port``.  ``*`` becomes ``None``, i.e. every local address."""
    host: str | None
    host, sep, port = entry.rpartition(":")
    if not sep or "]" in port:
        # No colon at all, or the last colon was inside "[...]".
        host, port = entry, str(default_port)
    if "[" in host and "]" in host:
        host = host.strip("[").rstrip("]")
    if host == "*":
        host = None
    return host, port


def _port_for(port: str) -> str | int:
    # Windows' getaddrinfo() cannot resolve service names such as "http".
    if not ON_WINDOWS:
        return port
    try:
        return int(port)
    except Exception:
        raise ValueError(
            "Windows does not support service names instead of port numbers"
        ) from None


def resolve_listen(
    entries: Iterable[str], default_port: int | str, family: int
) -> list[ListenAddress]:
    """Resolve listen entries into the ``(family, socktype, proto, sockaddr)``
    tuples the server binds, in order.

    getaddrinfo() can report the same address more than once (and macOS
    reports link-local addresses once per zone index), which would make the
    second bind() fail, so an address/port pair that was already seen -- with
    any ``%zone`` suffix ignored -- is skipped.  Port 0 is never treated as a
    duplicate: every ``:0`` entry asks for its own ephemeral port."""
    resolved: list[ListenAddress] = []
    seen: set[tuple[str, int]] = set()
    for entry in entries:
        port: str | int
        host, port = _split_listen_entry(entry, default_port)
        port = _port_for(port)
        try:
            infos = socket.getaddrinfo(
                host,
                port,
                family,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                socket.AI_PASSIVE,
            )
        except Exception as exc:
            raise ValueError("Invalid host/port specified.") from exc
        for fam, socktype, proto, _canonname, found in infos:
            sockaddr = cast(SockAddr, found)  # SOCK_STREAM over IPv4 or IPv6
            key = (sockaddr[0].partition("%")[0], sockaddr[1])
            if sockaddr[1] != 0 and key in seen:
                continue
            seen.add(key)
            resolved.append((fam, socktype, proto, sockaddr))
    return resolved


def _family_filter(ipv4: bool, ipv6: bool) -> socket.AddressFamily:
    """The address family getaddrinfo() is restricted to.

    Note that turning *both* off restricts nothing (AF_UNSPEC), exactly as in
    Waitress."""
    if not ipv4 and not IPV6_AVAILABLE:  # pragma: no cover - IPv6-less hosts
        raise ValueError(
            "IPv4 is disabled but IPv6 is not available. Cowardly refusing to start."
        )
    if ipv4 and not ipv6:
        return socket.AF_INET
    if ipv6 and not ipv4:
        return socket.AF_INET6
    return socket.AF_UNSPEC


class Adjustments:
    """The validated settings of one server.

    Construct it with the keywords given to ``serve()``; each becomes an
    attribute of the same name, converted from text where needed.  Unset
    settings read their default from the class (generated from
    :data:`SETTINGS`).  After construction ``listen`` holds resolved socket
    addresses rather than the ``host:port`` text, ``trusted_proxy_count`` is
    never ``None`` and ``trusted_proxy_headers`` is a set of lower-case
    header names.
    """

    # The settings as an instance holds them after conversion (the class holds the
    # defaults, set from SETTINGS below the class; there ``listen`` is the unresolved
    # ``["0.0.0.0:8080"]`` and ``trusted_proxy_count`` is None).
    host: str
    port: int
    ipv4: bool
    ipv6: bool
    listen: list[ListenAddress]
    threads: int
    trusted_proxy: str | None
    trusted_proxy_count: int
    trusted_proxy_headers: set[str]
    log_untrusted_proxy_headers: bool
    clear_untrusted_proxy_headers: bool
    url_scheme: str
    url_prefix: str
    backlog: int
    recv_bytes: int
    send_bytes: int
    outbuf_overflow: int
    outbuf_high_watermark: int
    inbuf_overflow: int
    connection_limit: int
    cleanup_interval: int
    channel_timeout: int
    log_socket_errors: bool
    max_request_header_size: int
    max_request_body_size: int
    expose_tracebacks: bool
    ident: str | None
    asyncore_loop_timeout: int
    asyncore_use_poll: bool
    unix_socket: str | None
    unix_socket_perms: int
    sockets: list[socket.socket]
    channel_request_lookahead: int
    server_name: str
    allow_missing_host: bool
    graceful_timeout: float
    workers: int
    max_requests: int
    max_requests_jitter: int
    touch_reload: str | None
    access_log: bool
    access_log_format: str
    metrics_listen: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_keyfile_password: str | None
    ssl_ca_certs: str | None
    ssl_cert_reqs: str
    ssl_min_version: str
    #: ``metrics_listen`` resolved to one address (set when it is given).
    metrics_address: ListenAddress | None = None

    #: Options set on every accepted connection: (level, option, value).
    #: Nagle's algorithm is disabled because responses are already buffered.
    socket_options: list[tuple[int, int, int]] = [
        (getattr(socket, "SOL_TCP", socket.IPPROTO_TCP), socket.TCP_NODELAY, 1),
    ]

    def __init__(self, **kw: Unpack[ServerOptions]) -> None:
        for present, others, message in _CONFLICTS:
            if any(name in kw for name in present) and any(
                name in kw for name in others
            ):
                raise ValueError(message)

        if "send_bytes" in kw:
            warnings.warn(
                "send_bytes will be removed in a future release",
                DeprecationWarning,
                stacklevel=1,  # the default, as in Waitress
            )

        # Instance copies of the mutable defaults.
        for setting in SETTINGS:
            if isinstance(setting.default, (list, set)):
                setattr(self, setting.name, _copy_default(setting.default))

        # Convert in the caller's order, so that with several bad values the
        # first one is reported -- as Waitress does.
        for name, value in kw.items():
            known = SETTINGS_BY_NAME.get(name)
            if known is None:
                raise ValueError(f"Unknown adjustment {name!r}")
            setattr(self, name, known.convert(value))

        # ``listen`` holds the host:port text entries until they are resolved here.
        entries = cast("list[str]", self.listen)
        if "host" in kw or "port" in kw:
            entries = [f"{self.host}:{self.port}"]

        family = _family_filter(self.ipv4, self.ipv6)
        resolved = resolve_listen(entries, self.port, family)

        self._check_proxy_settings()
        self._check_process_settings()
        self._check_tls_settings()
        if self.metrics_listen is not None:
            try:
                found = resolve_listen([self.metrics_listen], self.port, socket.AF_UNSPEC)
            except ValueError:
                found = []
            if not found:
                raise ValueError(
                    f"metrics_listen: {self.metrics_listen!r} is not a HOST:PORT address"
                )
            self.metrics_address = found[0]

        self.listen = resolved
        self.check_sockets(self.sockets)

    def _check_process_settings(self) -> None:
        for name, least in (("workers", 1), ("max_requests", 0), ("max_requests_jitter", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be at least {least}, not {getattr(self, name)}")
        if self.graceful_timeout < 0:
            raise ValueError(f"graceful_timeout must not be negative, not {self.graceful_timeout}")
        try:
            from rswaitress._core import check_access_log_format
        except ImportError:  # the compiled core is not built: the server checks it later
            pass
        else:
            try:
                check_access_log_format(self.access_log_format)
            except ValueError as exc:
                raise ValueError(f"access_log_format: {exc}") from None

    def _check_tls_settings(self) -> None:
        if self.ssl_certfile is None:
            for name in ("ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} has no meaning without ssl_certfile")
            if self.ssl_cert_reqs != "none":
                raise ValueError("ssl_cert_reqs has no meaning without ssl_certfile")
            return
        if self.ssl_cert_reqs != "none" and self.ssl_ca_certs is None:
            raise ValueError(
                f"ssl_cert_reqs={self.ssl_cert_reqs} needs ssl_ca_certs (the CA "
                "certificates client certificates are verified against)"
            )
        try:
            from rswaitress._core import check_tls
        except ImportError:  # the compiled core is not built: the server checks it later
            return
        # The files are read now, so that a bad one fails at once, naming itself.
        try:
            check_tls(self)
        except ValueError as exc:
            raise TLSSettingsError(str(exc)) from None

    def uses_supervisor(self) -> bool:
        """Whether the server runs as a master with worker processes: more than one
        worker, or one that is to be replaced (max_requests) or reloaded (touch_reload)."""
        return self.workers > 1 or self.max_requests > 0 or self.touch_reload is not None

    def _check_proxy_settings(self) -> None:
        if self.trusted_proxy_count is not None and self.trusted_proxy is None:
            raise ValueError(
                "trusted_proxy_count has no meaning without setting trusted_proxy"
            )
        if self.trusted_proxy_count is None:
            self.trusted_proxy_count = 1

        headers = self.trusted_proxy_headers
        if headers and self.trusted_proxy is None:
            raise ValueError(
                "trusted_proxy_headers has no meaning without setting trusted_proxy"
            )

        if headers:
            headers = {header.lower() for header in headers}
            self.trusted_proxy_headers = headers
            unknown = headers - KNOWN_PROXY_HEADERS
            if unknown:
                # Waitress lists both sets in hash order, which changes from
                # run to run; sorted order is one of those orders, and stable.
                raise ValueError(
                    "Received unknown trusted_proxy_headers value ({}) expected "
                    "one of {}".format(
                        ", ".join(sorted(unknown)), ", ".join(sorted(KNOWN_PROXY_HEADERS))
                    )
                )
            if "forwarded" in headers and len(headers) > 1:
                raise ValueError(
                    "The Forwarded proxy header and the "
                    "X-Forwarded-{By,Host,Proto,Port,For} headers are mutually "
                    "exclusive. Can't trust both!"
                )
        elif self.trusted_proxy is not None:
            # Older Waitress trusted X-Forwarded-Proto from the trusted proxy
            # without being told to; that is kept, with the same warning.
            warnings.warn(
                "No proxy headers were marked as trusted, but trusted_proxy was set. "
                "Implicitly trusting X-Forwarded-Proto for backwards compatibility. "
                "This will be removed in future versions of waitress.",
                DeprecationWarning,
                stacklevel=1,  # the default, as in Waitress
            )
            self.trusted_proxy_headers = {"x-forwarded-proto"}

    @classmethod
    def parse_args(cls, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Turn command line arguments into ``(kw, args)``.

        ``kw`` maps setting names to the *raw strings* given (flags become
        ``"true"``/``"false"``); converting them is left to ``__init__``, so
        the command line goes through the same checks as every other source.
        It always holds ``help`` and ``call`` (booleans for the runner), and
        ``app`` when ``--app=MODULE:OBJECT`` was given.  Repeated
        ``--listen`` options are joined with spaces.  ``args`` are the
        positional arguments.  Bad options raise ``getopt.GetoptError``.

        ``--app`` is an rswaitress addition (Waitress 3.0.2 rejects it); every
        command line Waitress 3.0.2 accepts gives the same result here.
        """
        long_options = list(_RUNNER_FLAGS)
        long_options += [name + "=" for name in _RUNNER_VALUE_OPTIONS]
        for setting in SETTINGS:
            option = setting.name.replace("_", "-")
            if setting.convert is to_bool:
                long_options += [option, "no-" + option]
            else:
                long_options.append(option + "=")

        kw: dict[str, Any] = {flag: False for flag in _RUNNER_FLAGS}
        options, args = getopt.getopt(argv, "", long_options)
        for option, value in options:
            name = option[2:].replace("-", "_")
            if name in _RUNNER_FLAGS:
                kw[name] = True
            elif name == "listen":
                kw["listen"] = kw.get("listen", "") + " " + value
            elif name.startswith("no_") and name[3:] in SETTINGS_BY_NAME:
                kw[name[3:]] = "false"
            elif name in SETTINGS_BY_NAME and SETTINGS_BY_NAME[name].convert is to_bool:
                kw[name] = "true"
            else:
                kw[name] = value
        return kw, args

    @classmethod
    def check_sockets(cls, sockets: Iterable[socket.socket]) -> None:
        """Reject a ``sockets`` list the server could not serve: stream
        sockets only, and either all Internet or all Unix."""
        unix_family = getattr(socket, "AF_UNIX", None)
        kinds = set()
        for sock in sockets:
            if sock.type != socket.SOCK_STREAM:
                kinds.add("other")
            elif sock.family in (socket.AF_INET, socket.AF_INET6):
                kinds.add("inet")
            elif unix_family is not None and sock.family == unix_family:
                kinds.add("unix")
            else:
                kinds.add("other")
        if {"inet", "unix"} <= kinds:
            raise ValueError("Internet and UNIX sockets may not be mixed.")
        if "other" in kinds:
            raise ValueError("Only Internet or UNIX stream sockets may be used.")


# Class-level defaults, so ``Adjustments.threads`` etc. read as in Waitress.
for _setting in SETTINGS:
    setattr(Adjustments, _setting.name, _copy_default(_setting.default))
del _setting
