"""Translation of reverse-proxy headers into the WSGI environ.

``proxy_headers_middleware`` wraps an application so that, when a request arrives from
the trusted proxy, the ``Forwarded`` header or the ``X-Forwarded-*`` headers named in
``trusted_proxy_headers`` decide ``REMOTE_ADDR``/``REMOTE_PORT``/``REMOTE_HOST``,
``SERVER_NAME``/``SERVER_PORT``, ``HTTP_HOST`` and ``wsgi.url_scheme``, exactly as
Waitress 3.0.2 does. Proxy headers that are not trusted are removed from the environ
(``clear_untrusted``) and, when asked, a warning names them. A proxy header that cannot
be understood is answered with ``400 Bad Request``.

Only the headers the settings trust are ever read; everything else the proxy sent is
left as the client sent it, apart from the clearing above.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["proxy_headers_middleware", "MalformedProxyHeader", "PROXY_HEADERS"]

_default_logger = logging.getLogger("rswaitress")

#: CGI-style names (without ``HTTP_``) of every header only a trusted proxy may set,
#: in the order warnings list them.
_PROXY_HEADER_ORDER = (
    "X_FORWARDED_FOR",
    "X_FORWARDED_HOST",
    "X_FORWARDED_PROTO",
    "X_FORWARDED_PORT",
    "X_FORWARDED_BY",
    "FORWARDED",
)
PROXY_HEADERS = frozenset(_PROXY_HEADER_ORDER)

# RFC 7230 section 3.2.6: a quoted-string is DQUOTE *( qdtext / quoted-pair ) DQUOTE,
# where qdtext is any visible character or obs-text except DQUOTE and backslash (plus
# space and tab), and a quoted-pair is a backslash before a visible character, space,
# tab or obs-text byte.
_ESCAPED_CHAR = r"\\([\t \x21-\x7e\x80-\xff])"
_QUOTED_STRING = re.compile(
    r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|' + _ESCAPED_CHAR + r')*"'
)
_ESCAPED_CHAR_RE = re.compile(_ESCAPED_CHAR)

_MULTIPLE_VALUES = "Unspecified behavior for multiple values found in header"


class MalformedProxyHeader(Exception):
    """A trusted proxy header whose value cannot be used; answered with a 400."""

    def __init__(self, header: str, reason: str, value: str) -> None:
        super().__init__(header, reason, value)
        self.header = header
        self.reason = reason
        self.value = value


def _unquote(text: str) -> str:
    """``text`` without its surrounding double quotes and with quoted-pairs resolved;
    unquoted text is returned as it is. Half-quoted or badly quoted text is an error."""
    opens = text.startswith('"')
    closes = text.endswith('"')
    if not opens and not closes:
        return text
    if opens and closes and _QUOTED_STRING.fullmatch(text):
        return _ESCAPED_CHAR_RE.sub(r"\1", text[1:-1])
    raise ValueError("Invalid quoting in value")


def _bracket_ipv6(hop: str) -> str:
    """An X-Forwarded-For hop that looks like a bare IPv6 address (colons, no dots,
    no closing bracket) gets brackets, so that it is not mistaken for host:port."""
    if ":" in hop and "." not in hop and not hop.endswith("]"):
        return "[" + hop + "]"
    return hop


def _unbracket(addr: str) -> str:
    if addr[0] == "[" and addr[-1] == "]":
        return addr[1:-1]
    return addr


def _trusted_list(
    environ: WSGIEnvironment, key: str, count: int, tidy: Callable[[str], str]
) -> str:
    """Reads a comma-separated X-Forwarded-* list: every entry is unquoted (and passed
    through ``tidy``), the last ``count`` are kept, and the environ value is cut down to
    those same entries. Returns the oldest entry kept."""
    raw = environ[key].split(",")
    entries = [tidy(_unquote(piece.strip())) for piece in raw]
    kept = entries[-count:]
    environ[key] = ",".join(raw[-count:]).strip()
    return kept[0]


def _single_value(environ: WSGIEnvironment, key: str) -> str:
    """Reads a header that must carry one value (X-Forwarded-Proto/-Port); an absent
    header reads as the empty string."""
    value = _unquote(environ.get(key, ""))
    if "," in value:
        raise ValueError(_MULTIPLE_VALUES)
    return value


def _parse_forwarded_element(element: str, logger: logging.Logger) -> dict[str, str]:
    """One comma-separated element of an RFC 7239 Forwarded header, as a dict of the
    by/for/host/proto parameters it sets (lower-cased, unquoted)."""
    params = {"by": "", "for": "", "host": "", "proto": ""}
    for pair in element.split(";"):
        pair = pair.lower()
        if pair == "":
            continue
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError('Invalid forwarded-pair missing "="')
        if name != name.strip():
            raise ValueError("Token may not be surrounded by whitespace")
        if value != value.strip():
            raise ValueError("Value may not be surrounded by whitespace")
        if name in params:
            params[name] = _unquote(value)
        else:
            logger.warning("Unknown Forwarded token: %s", name)
    return params


class _Forwarding:
    """What the trusted proxy headers of one request say."""

    def __init__(self) -> None:
        self.client: str | None = None
        self.host = ""
        self.proto = ""
        self.port = ""
        self.used_forwarded = False
        self.untrusted = set(PROXY_HEADERS)


def _read_x_forwarded(
    environ: WSGIEnvironment, trusted: set[str], count: int, found: _Forwarding
) -> None:
    key = "HTTP_X_FORWARDED_FOR"
    if "x-forwarded-for" in trusted and key in environ:
        try:
            found.client = _trusted_list(environ, key, count, _bracket_ipv6)
        except Exception as exc:
            raise MalformedProxyHeader("X-Forwarded-For", str(exc), environ[key]) from exc
        found.untrusted.discard("X_FORWARDED_FOR")

    key = "HTTP_X_FORWARDED_HOST"
    if "x-forwarded-host" in trusted and key in environ:
        try:
            found.host = _trusted_list(environ, key, count, lambda entry: entry)
        except Exception as exc:
            raise MalformedProxyHeader("X-Forwarded-Host", str(exc), environ[key]) from exc
        found.untrusted.discard("X_FORWARDED_HOST")

    for option, name, attr in (
        ("x-forwarded-proto", "X-Forwarded-Proto", "proto"),
        ("x-forwarded-port", "X-Forwarded-Port", "port"),
    ):
        if option not in trusted:
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        try:
            setattr(found, attr, _single_value(environ, key))
        except Exception as exc:
            raise MalformedProxyHeader(name, str(exc), environ[key]) from exc
        found.untrusted.discard(key[5:])

    if "x-forwarded-by" in trusted:
        # Never interpreted, only let through to the application.
        found.untrusted.discard("X_FORWARDED_BY")


def _read_forwarded(
    environ: WSGIEnvironment,
    trusted: set[str],
    count: int,
    found: _Forwarding,
    logger: logging.Logger,
) -> None:
    if "forwarded" not in trusted:
        return
    # Trusting Forwarded means distrusting every X-Forwarded-* header.
    found.untrusted = set(PROXY_HEADERS) - {"FORWARDED"}
    header = environ.get("HTTP_FORWARDED")
    if not header:
        return
    found.used_forwarded = True

    raw = header.split(",")
    try:
        elements = [_parse_forwarded_element(item.strip(), logger) for item in raw]
    except Exception as exc:
        raise MalformedProxyHeader("Forwarded", str(exc), environ["HTTP_FORWARDED"]) from exc

    environ["HTTP_FORWARDED"] = ",".join(raw[-count:]).strip()

    # The newest element is the starting point; then, walking from the newest trusted
    # element to the oldest, every parameter an element sets replaces what was there,
    # so the oldest trusted element that names a value wins (it describes the request
    # as the client made it). A port never comes from Forwarded itself.
    newest = elements[-1]
    found.host = newest["host"]
    found.proto = newest["proto"]
    found.port = ""
    for element in reversed(elements[-count:]):
        found.client = element["for"] or found.client
        found.host = element["host"] or found.host
        found.proto = element["proto"] or found.proto


def _apply(environ: WSGIEnvironment, found: _Forwarding) -> None:
    """Writes what the proxy headers said into the environ."""
    port = found.port

    if found.proto:
        proto = found.proto.lower()
        if proto not in ("http", "https"):
            raise MalformedProxyHeader(
                "Forwarded Proto=" if found.used_forwarded else "X-Forwarded-Proto",
                "unsupported proto value",
                proto,
            )
        environ["wsgi.url_scheme"] = proto
        if not port:
            port = "443" if proto == "https" else "80"

    host = found.host
    if host:
        if ":" in host and not host.endswith("]"):
            # host:port -- this port beats X-Forwarded-Port and the proto's default.
            name, port = host.rsplit(":", 1)
            environ["SERVER_NAME"] = name.strip()
            environ["HTTP_HOST"] = host
        else:
            environ["SERVER_NAME"] = host
            environ["HTTP_HOST"] = host
            scheme = environ["wsgi.url_scheme"]
            default_for_scheme = (port == "80" and scheme == "http") or (
                port == "443" and scheme == "https"
            )
            if port and not default_for_scheme:
                environ["HTTP_HOST"] = f"{host}:{port}"

    if port:
        environ["SERVER_PORT"] = str(port)

    client = found.client
    if client:
        if ":" in client and not client.endswith("]"):
            addr, client_port = client.rsplit(":", 1)
            environ["REMOTE_ADDR"] = _unbracket(addr.strip())
            environ["REMOTE_PORT"] = client_port.strip()
        else:
            environ["REMOTE_ADDR"] = _unbracket(client.strip())
        environ["REMOTE_HOST"] = environ["REMOTE_ADDR"]


def parse_proxy_headers(
    environ: WSGIEnvironment,
    trusted_proxy_count: int,
    trusted_proxy_headers: set[str] | None,
    logger: logging.Logger | None = None,
) -> set[str]:
    """Applies the trusted proxy headers to ``environ`` and returns the names
    (``X_FORWARDED_FOR`` style) of the proxy headers that remain untrusted.
    Raises MalformedProxyHeader for a value that cannot be used."""
    logger = logger if logger is not None else _default_logger
    trusted = trusted_proxy_headers if trusted_proxy_headers is not None else set()
    found = _Forwarding()
    _read_x_forwarded(environ, trusted, trusted_proxy_count, found)
    _read_forwarded(environ, trusted, trusted_proxy_count, found, logger)
    _apply(environ, found)
    return found.untrusted


def _title_case(cgi_name: str) -> str:
    return "-".join(part.capitalize() for part in cgi_name.split("_"))


def clear_untrusted_headers(
    environ: WSGIEnvironment,
    untrusted_headers: Iterable[str],
    log_warning: bool = False,
    logger: logging.Logger | None = None,
) -> None:
    """Removes the untrusted proxy headers from ``environ``; with ``log_warning``, one
    warning names those that were present."""
    removed = []
    for name in _PROXY_HEADER_ORDER:
        if name in untrusted_headers and environ.pop("HTTP_" + name, None) is not None:
            removed.append(_title_case(name))
    if log_warning and removed:
        logger = logger if logger is not None else _default_logger
        logger.warning(
            "Removed untrusted headers (%s). Waitress recommends these be "
            "removed upstream.",
            ", ".join(removed),
        )


def _bad_request(message: str, ident: str, start_response: StartResponse) -> Iterator[bytes]:
    """A Waitress-style plain-text error page, started lazily like Waitress's."""
    body = (
        f"Bad Request\r\n\r\n{message}\r\n\r\n(generated by {ident or 'server'})"
    ).encode()
    start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
    yield body


class ProxyHeadersMiddleware:
    """The WSGI callable ``proxy_headers_middleware`` returns."""

    def __init__(
        self,
        app: WSGIApplication,
        trusted_proxy: str | None,
        trusted_proxy_count: int,
        trusted_proxy_headers: set[str] | None,
        clear_untrusted: bool,
        log_untrusted: bool,
        logger: logging.Logger,
        ident: str,
    ) -> None:
        self.app = app
        self.trusted_proxy = trusted_proxy
        self.trusted_proxy_count = trusted_proxy_count
        self.trusted_proxy_headers = trusted_proxy_headers
        self.clear_untrusted = clear_untrusted
        self.log_untrusted = log_untrusted
        self.logger = logger
        self.ident = ident

    def _is_trusted(self, peer: str) -> bool:
        return self.trusted_proxy == "*" or peer == self.trusted_proxy

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        peer = environ["REMOTE_ADDR"]
        untrusted: Iterable[str] = PROXY_HEADERS
        if self._is_trusted(peer):
            try:
                untrusted = parse_proxy_headers(
                    environ,
                    self.trusted_proxy_count,
                    self.trusted_proxy_headers,
                    logger=self.logger,
                )
            except MalformedProxyHeader as bad:
                self.logger.warning(
                    'Malformed proxy header "%s" from "%s": %s value: %s',
                    bad.header,
                    peer,
                    bad.reason,
                    bad.value,
                )
                return _bad_request(
                    f'Header "{bad.header}" malformed.', self.ident, start_response
                )
        if self.clear_untrusted:
            clear_untrusted_headers(
                environ, untrusted, log_warning=self.log_untrusted, logger=self.logger
            )
        return self.app(environ, start_response)


def proxy_headers_middleware(
    app: WSGIApplication,
    trusted_proxy: str | None = None,
    trusted_proxy_count: int = 1,
    trusted_proxy_headers: set[str] | None = None,
    clear_untrusted: bool = True,
    log_untrusted: bool = False,
    logger: logging.Logger | None = _default_logger,
    ident: str = "rswaitress",
) -> WSGIApplication:
    """Wraps ``app`` so that proxy headers from ``trusted_proxy`` (an address, ``*``
    for any peer, or ``localhost`` for Unix-socket peers) are applied to the environ
    and the others removed, as Waitress's middleware of the same name does."""
    return ProxyHeadersMiddleware(
        app,
        trusted_proxy,
        trusted_proxy_count,
        trusted_proxy_headers,
        clear_untrusted,
        log_untrusted,
        logger if logger is not None else _default_logger,
        ident,
    )
