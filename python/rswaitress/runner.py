"""``rswaitress-serve``: serve a WSGI application from the command line.

A stand-in for ``waitress-serve`` (Waitress 3.0.2): the same options, the
same ``MODULE:OBJECT`` notation, the same exit statuses and the same error
output, so that scripts and service units written for Waitress keep working
when only the program name changes.
"""

from __future__ import annotations

import getopt
import logging
import os
import pkgutil
import sys
from typing import IO, Any, Callable

from rswaitress.activation import ActivationError
from rswaitress.adjustments import Adjustments

#: The name shown in the usage text when no better one is known, e.g. when
#: started as ``python -m rswaitress`` (argv[0] is then ``__main__.py``).
PROGRAM = "rswaitress-serve"

USAGE = """\
Usage:

    {0} [OPTS] MODULE:OBJECT

Standard options:

    --help
        Show this information.

    --app=MODULE:OBJECT
        The WSGI application to serve, as an alternative to giving it as the
        positional argument (give one or the other, not both).

    --call
        Call the given object to get the WSGI application.

    --host=ADDR
        Hostname or IP address on which to listen, default is '0.0.0.0',
        which means "all IP addresses on this host".

        Note: May not be used together with --listen

    --port=PORT
        TCP port on which to listen, default is '8080'

        Note: May not be used together with --listen

    --listen=ip:port
        Tell rswaitress to listen on an ip port combination.

        Example:

            --listen=127.0.0.1:8080
            --listen=[::1]:8080
            --listen=*:8080

        This option may be used multiple times to listen on multiple sockets.
        A wildcard for the hostname is also supported and will bind to both
        IPv4/IPv6 depending on whether they are enabled or disabled.

    --[no-]ipv4
        Toggle on/off IPv4 support.

        Example:

            --no-ipv4

        This will disable IPv4 socket support. This affects wildcard matching
        when generating the list of sockets.

    --[no-]ipv6
        Toggle on/off IPv6 support.

        Example:

            --no-ipv6

        This will disable IPv6 socket support. This affects wildcard matching
        when generating the list of sockets.

    --unix-socket=PATH
        Path of Unix socket. If a socket path is specified, a Unix domain
        socket is made instead of the usual inet domain socket.

        Not available on Windows.

    --unix-socket-perms=PERMS
        Octal permissions to use for the Unix domain socket, default is
        '600'.

    --url-scheme=STR
        Default wsgi.url_scheme value, default is 'http'.

    --url-prefix=STR
        The 'SCRIPT_NAME' WSGI environment value.  Any value other than the
        empty string becomes 'SCRIPT_NAME' (with one leading and no trailing
        slash), and is removed from the front of the 'PATH_INFO' of every
        request whose path starts with it.  Default is the empty string.

    --ident=STR
        Server identity used in the 'Server' header in responses. Default
        is 'rswaitress'.

    --server-name=NAME
        The 'SERVER_NAME' WSGI environment value, used only when a request
        carries no 'Host' header (and no trusted proxy header supplies one).
        Default is 'waitress.invalid'.

Proxy options:

    --trusted-proxy=IP
        IP address of a remote peer allowed to override WSGI environment
        values using proxy headers. Use 'localhost' for Unix sockets, or '*'
        to trust every peer (only safe behind a firewall that admits nothing
        but your proxies).

    --trusted-proxy-count=INT
        How many proxies in a chain are trusted. Default is 1.

    --trusted-proxy-headers=LIST
        Space-separated proxy headers to trust: either 'forwarded', or any
        of 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto',
        'x-forwarded-port' and 'x-forwarded-by'. Requires --trusted-proxy.
        If --trusted-proxy is set without this, 'x-forwarded-proto' is
        trusted (with a deprecation warning).

    --[no-]log-untrusted-proxy-headers
        Toggle logging a warning for each untrusted proxy header that is
        removed. Off by default.

    --[no-]clear-untrusted-proxy-headers
        Toggle removing proxy headers that are not trusted before the
        application sees them. On by default.

Tuning options:

    --threads=INT
        Number of threads used to process application logic, default is 4.

    --backlog=INT
        Connection backlog for the server. Default is 1024.

    --recv-bytes=INT
        Number of bytes to request when calling socket.recv(). Default is
        8192.

    --send-bytes=INT
        Deprecated; accepted (with a warning) for compatibility with
        Waitress. Default is 1.

    --outbuf-overflow=INT
        A temporary file should be created if the pending output is larger
        than this. Default is 1048576 (1MB).

    --outbuf-high-watermark=INT
        The app_iter will pause when pending output is larger than this value
        and will resume once enough data is written to the socket to fall below
        this threshold. Default is 16777216 (16MB).

    --inbuf-overflow=INT
        A temporary file should be created if the pending input is larger
        than this. Default is 524288 (512KB).

    --connection-limit=INT
        Stop creating new channels if too many are already active.
        Default is 100.

    --cleanup-interval=INT
        Minimum seconds between cleaning up inactive channels. Default
        is 30. See '--channel-timeout'.

    --channel-timeout=INT
        Maximum number of seconds to leave inactive connections open.
        Default is 120. 'Inactive' is defined as 'has received no data
        from the client and has sent no data to the client'.

    --[no-]log-socket-errors
        Toggle whether premature client disconnect tracebacks ought to be
        logged. On by default.

    --max-request-header-size=INT
        Maximum size of all request headers combined. Default is 262144
        (256KB).

    --max-request-body-size=INT
        Maximum size of request body. Default is 1073741824 (1GB).

    --[no-]expose-tracebacks
        Toggle whether to expose tracebacks of unhandled exceptions to the
        client. Off by default.

    --asyncore-loop-timeout=INT
        Accepted for compatibility with Waitress; has no effect, since the
        rswaitress core runs its own poll loop. Default is 1.

    --[no-]asyncore-use-poll
        Accepted for compatibility with Waitress; has no effect, since the
        rswaitress core always uses poll. Default is False.

    --channel-request-lookahead=INT
        Allows channels to stay readable and buffer more requests up to the
        given maximum even if a request is already being processed. This allows
        detecting if a client closed the connection while its request is being
        processed. Default is 0.

rswaitress options:

    --[no-]allow-missing-host
        Accept HTTP/1.1 requests that carry no 'Host' header, as Waitress
        does. RFC 9112 requires them to be answered with 400 Bad Request,
        which is the default.

    --graceful-timeout=SECONDS
        How long a graceful stop (SIGTERM, Ctrl-C) waits for requests in
        progress before closing their connections. Default is 30.

    --workers=INT
        Worker processes, each with its own pool of threads. Default is 1,
        a single process. With more, a master process binds the sockets once,
        shares them with the workers, replaces any that dies, reloads them on
        SIGHUP and adds or removes one on SIGTTIN / SIGTTOU.

    --max-requests=INT
        Replace a worker process after it has served this many requests
        (gracefully: no request fails). Default is 0, never.

    --max-requests-jitter=INT
        Add a random number of requests up to this to --max-requests for each
        worker, so that they are not all replaced at once. Default is 0.

    --touch-reload=PATH
        Reload the workers (as SIGHUP does) whenever this file is modified;
        the way to reload on Windows.

    --[no-]access-log
        Log one line per request on the 'rswaitress.access' logger (INFO).
        Default is off.

    --access-log-format=FORMAT
        The line, with Gunicorn's atoms: %(h)s remote address, %(u)s user,
        %(t)s time, %(r)s request line, %(s)s status, %(b)s body bytes,
        %(f)s referer, %(a)s user agent, %(D)s microseconds, %({{X-Name}}i)s
        a request header, %({{X-Name}}o)s a response header, %({{VAR}}e)s an
        environ value, and others. Default is Gunicorn's:
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

    --metrics-listen=HOST:PORT
        A separate listener answering /metrics (OpenMetrics text: requests
        by status, durations, queue waits, threads, connections, bytes),
        /healthz and /readyz (503 once a stop or reload has begun), without
        the GIL. With --workers, the master's, covering every worker.

HTTPS (TLS 1.2 and 1.3 on the TCP listeners; Unix sockets stay plain HTTP):

    --ssl-certfile=FILE
        PEM file of the server certificate, followed by its chain. Sets
        wsgi.url_scheme to https and HTTPS to on. SIGHUP reloads it (and
        the key) without downtime.

    --ssl-keyfile=FILE
        PEM file of the private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
        Default: read the key from --ssl-certfile.

    --ssl-keyfile-password=PASSWORD
        Password of an encrypted PKCS#8 key.

    --ssl-ca-certs=FILE
        PEM file of the CA certificates that client certificates are
        verified against.

    --ssl-cert-reqs=none|optional|required
        Client certificates: not asked for (default), verified when given,
        or required. A verified one is in SSL_CLIENT_S_DN (RFC 4514) and
        SSL_CLIENT_CERT (PEM).

    --ssl-min-version=TLSv1.2|TLSv1.3
        The oldest TLS version accepted. Default is TLSv1.2.

"""


def program_name(argv0: str | None) -> str:
    """What to call ourselves in the usage text: the basename of argv[0],
    unless that is only a module file of ours."""
    name = os.path.basename(argv0 or "")
    if not name or name in ("__main__.py", "runner.py"):
        return PROGRAM
    return name


def show_usage(stream: IO[str], name: str, error: str | None = None) -> None:
    """Print the usage text, preceded by ``Error: ...`` when there is one."""
    if error is not None:
        print(f"Error: {error}\n", file=stream)
    print(USAGE.format(name), file=stream)


def describe_import_failure(stream: IO[str], exc: BaseException) -> None:
    """Explain why the application could not be loaded, listing the
    exception's arguments one by one (the waitress-serve format)."""
    print(
        f"There was an exception ({type(exc).__name__}) importing your module.\n",
        file=stream,
    )
    arguments = getattr(exc, "args", None)
    if not arguments:
        print("It had no arguments.", file=stream)
        return
    print("It had these arguments: ", file=stream)
    for number, argument in enumerate(arguments, start=1):
        print(f"{number}. {argument}\n", file=stream)


def _enable_info_logging() -> None:
    # Without a level of its own the logger inherits WARNING from the root
    # and the "Serving on ..." line is never shown; a level configured by the
    # user is left alone.
    logger = logging.getLogger("rswaitress")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def run(argv: list[str] = sys.argv, _serve: Callable[..., Any] | None = None) -> int:
    """Run the command line ``argv`` (program name first) and return the exit
    status: 0 after ``--help`` or once the server stops, 1 on a usage error
    or when the application cannot be loaded.

    ``_serve`` replaces ``rswaitress.serve`` in unit tests of the argument
    handling; it is called as ``_serve(app, **kw)`` with the raw option
    strings, which ``serve`` validates through ``Adjustments``.
    """
    name = program_name(argv[0] if argv else "")

    try:
        kw, positional = Adjustments.parse_args(argv[1:])
    except getopt.GetoptError as exc:
        show_usage(sys.stderr, name, str(exc))
        return 1

    if kw.pop("help"):
        show_usage(sys.stdout, name)
        return 0

    wanted = positional
    if "app" in kw:
        wanted = [kw.pop("app")] + positional
    if len(wanted) != 1:
        show_usage(sys.stderr, name, "Specify one application only")
        return 1

    _enable_info_logging()

    # Like waitress-serve, let MODULE be found in the current directory.
    sys.path.append(os.getcwd())

    call = kw.pop("call")
    if _supervised(kw):
        # Worker processes import the application themselves (after the fork, or in the
        # spawned process), so that a reload runs the code as it is then; here only the
        # module is looked for, so that a typo still fails at once.
        from rswaitress.supervisor import AppRef

        missing = _missing_module(wanted[0])
        if missing is not None:
            show_usage(sys.stderr, name, str(missing))
            describe_import_failure(sys.stderr, missing)
            return 1
        app: Any = AppRef(wanted[0], call)
    else:
        try:
            app = pkgutil.resolve_name(wanted[0])
        except (ValueError, ImportError, AttributeError) as exc:
            show_usage(sys.stderr, name, str(exc))
            describe_import_failure(sys.stderr, exc)
            return 1
        if call:
            app = app()

    if _serve is None:
        # Imported here so that this module (and --help) works even before
        # the compiled core is importable.
        from rswaitress import serve

        _serve = serve

    from rswaitress.adjustments import TLSSettingsError
    from rswaitress.supervisor import WorkerBootError

    try:
        _serve(app, **kw)
    except ActivationError as exc:  # LISTEN_FDS names sockets that cannot be served
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except WorkerBootError as exc:  # the application failed to load in every worker
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except TLSSettingsError as exc:  # a certificate or key that cannot be loaded
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def _supervised(kw: dict[str, Any]) -> bool:
    """Whether these (raw) options ask for worker processes; a value that does not
    convert is left for serve() to refuse with its usual message."""
    try:
        return (int(kw.get("workers", 1)) > 1 or int(kw.get("max_requests", 0)) > 0
                or bool(kw.get("touch_reload")))
    except (TypeError, ValueError):
        return False


def _missing_module(spec: str) -> ImportError | None:
    """An ImportError when the module part of MODULE:OBJECT cannot be found."""
    import importlib.util

    module = spec.split(":", 1)[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        return ImportError(str(exc))
    if found is None:
        return ModuleNotFoundError(f"No module named '{module}'")
    return None
