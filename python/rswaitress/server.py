"""The server objects: sockets bound as Waitress binds them, a pool of threads, and the
Rust core (``rswaitress._core.Server``) that accepts, parses, dispatches and writes.

``create_server`` returns a ``TcpWSGIServer`` or ``UnixWSGIServer`` when there is one
listening socket and a ``MultiSocketServer`` when there are several, with the same
attributes Waitress users rely on: ``run()``, ``close()``, ``print_listen()``,
``effective_host``, ``effective_port``, ``socket`` and ``adj``.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import stat
import sys
import threading
import weakref
from socket import AddressFamily
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Union

from rswaitress import _core
from rswaitress.adjustments import Adjustments, ListenAddress

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from typing_extensions import Unpack

    from rswaitress.types import ServerOptions

#: What signal.getsignal() returns.
_Handler = Union[Callable[[int, Union[FrameType, None]], Any], int, signal.Handlers, None]

logger = logging.getLogger("rswaitress")

#: Seconds run() waits for pool threads to finish after the reactor has stopped.
THREAD_JOIN_TIMEOUT = 5.0

#: Servers whose run() is in progress (on any thread).
_RUNNING: weakref.WeakSet[BaseWSGIServer] = weakref.WeakSet()


@atexit.register
def _stop_running_servers() -> None:
    """At interpreter exit, stops the servers still running on other threads and waits
    for them: a daemon thread must not be inside the server when the interpreter
    finalises (Python ends such threads abruptly, and that cannot unwind through the
    core)."""
    for server in list(_RUNNING):
        server._stop_for_exit()


def cleanup_unix_socket(path: str) -> None:
    """Removes a stale Unix socket file left by a previous server at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode):
        try:
            os.remove(path)
        except OSError:
            pass


def _prepare_socket(sock: socket.socket, adj: Adjustments) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        if sys.platform == "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


class _SignalWakeup:
    """A socket pair whose writing end is ``signal.set_wakeup_fd``'s: a signal then wakes
    the thread waiting in the core's run() at once (the handler itself runs when that
    thread takes the GIL). Only on the main thread, and only when no one else (an asyncio
    loop, say) has set a wakeup descriptor already."""

    def __init__(self, reader: socket.socket, writer: socket.socket) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    def install(cls) -> _SignalWakeup | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            reader, writer = socket.socketpair()
        except OSError:
            return None
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            reader.close()
            writer.close()
            return None
        if previous != -1:
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
            return None
        return cls(reader, writer)

    def fileno(self) -> int:
        return self.reader.fileno()

    def uninstall(self) -> None:
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError):
            pass
        self.reader.close()
        self.writer.close()


class _Listening:
    """One listening socket and what the environ and print_listen say about it."""

    def __init__(
        self, sock: socket.socket, effective_host: str, effective_port: str, is_unix: bool
    ) -> None:
        self.socket = sock
        self.effective_host = effective_host
        self.effective_port = effective_port
        self.is_unix = is_unix


def _listen(
    sock: socket.socket,
    adj: Adjustments,
    bind: Callable[[socket.socket], None] | None = None,
) -> socket.socket:
    """Calls ``bind(sock)`` for a socket of ours, then listen(backlog). A socket of ours
    is closed if either fails; a pre-bound one (``bind`` is None) stays the caller's."""
    try:
        if bind is not None:
            bind(sock)
        sock.listen(adj.backlog)
    except BaseException:
        if bind is not None:
            sock.close()
        raise
    return sock


def _tcp_listening(
    sockinfo: ListenAddress, adj: Adjustments, sock: socket.socket | None = None
) -> _Listening:
    family, socktype, proto, sockaddr = sockinfo

    def bind(sock: socket.socket) -> None:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _prepare_socket(sock, adj)
        sock.bind(sockaddr)

    if sock is None:
        sock = _listen(socket.socket(family, socktype, proto or 0), adj, bind)
    else:
        _listen(sock, adj)
    host, port = socket.getnameinfo(
        sock.getsockname(), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    )
    return _Listening(sock, host, port, False)


def _unix_listening(adj: Adjustments, sock: socket.socket | None = None) -> _Listening:
    path = adj.unix_socket

    def bind(sock: socket.socket) -> None:
        assert path is not None  # binding is only asked for with unix_socket set
        cleanup_unix_socket(path)
        sock.bind(path)
        if os.path.exists(path):
            os.chmod(path, adj.unix_socket_perms)

    if sock is None:
        sock = _listen(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), adj, bind)
    else:
        _listen(sock, adj)
    return _Listening(sock, "unix", sock.getsockname(), True)


def _wrap_application(application: WSGIApplication, adj: Adjustments) -> WSGIApplication:
    """Applies the proxy-headers middleware when a proxy is trusted or untrusted proxy
    headers must be logged; plain clearing of untrusted headers is done by the core."""
    if adj.trusted_proxy or (
        adj.clear_untrusted_proxy_headers and adj.log_untrusted_proxy_headers
    ):
        from rswaitress.proxy_headers import proxy_headers_middleware

        return proxy_headers_middleware(
            application,
            trusted_proxy=adj.trusted_proxy,
            trusted_proxy_count=adj.trusted_proxy_count,
            trusted_proxy_headers=adj.trusted_proxy_headers,
            clear_untrusted=adj.clear_untrusted_proxy_headers,
            log_untrusted=adj.log_untrusted_proxy_headers,
            logger=logger,
            ident=adj.ident or "",
        )
    return application


class BaseWSGIServer:
    """A server over one or more listening sockets.

    Sockets are bound when the server is created (so a bad address fails at once and
    ``effective_port`` is known); threads start and connections are accepted in run().
    """

    def __init__(
        self,
        application: WSGIApplication,
        adj: Adjustments,
        listening: list[_Listening],
        _metrics_block: tuple[int, int, object] | None = None,
    ) -> None:
        if application is None:
            raise ValueError(
                'The "app" passed to ``create_server`` was ``None``.  You forgot '
                "to return a WSGI app within your application."
            )
        self.application = application
        self.adj = adj
        self._listening = listening
        self.server_name = adj.server_name
        self._closed = False
        self._running = False
        self._run_done = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Called once (with the GIL, on the run() thread) when a stop begins.
        self.on_stop: list[Callable[[], None]] = []
        #: The metrics listener (metrics_listen), in a server without workers; a worker
        #: keeps its metrics in ``_metrics_block``, shared with the master that serves them.
        self._metrics_listening: _Listening | None = None
        if adj.ssl_certfile is not None and all(each.is_unix for each in listening):
            logger.warning("ssl_certfile applies to TCP listeners only: the Unix socket "
                           "serves plain HTTP")
        try:
            metrics_fd = None
            if adj.metrics_address is not None and _metrics_block is None:
                self._metrics_listening = _tcp_listening(adj.metrics_address, adj)
                metrics_fd = self._metrics_listening.socket.fileno()
            self._core = _core.Server(
                _wrap_application(application, adj),
                [
                    (each.socket.fileno(), str(each.effective_port), each.is_unix)
                    for each in listening
                ],
                adj,
                metrics_fd,
                _metrics_block,
            )
        except BaseException:
            self._close_sockets()
            raise

    # What Waitress users read off a single-socket server.
    @property
    def socket(self) -> socket.socket:
        return self._listening[0].socket

    @property
    def effective_host(self) -> str:
        return self._listening[0].effective_host

    @property
    def effective_port(self) -> str:
        return self._listening[0].effective_port

    @property
    def effective_listen(self) -> list[tuple[str, str]]:
        return [(each.effective_host, each.effective_port) for each in self._listening]

    @property
    def family(self) -> AddressFamily:
        return self.socket.family

    def print_listen(self, format_str: str) -> None:
        """Logs ``format_str.format(host, port)`` for each listening socket, IPv6 hosts
        in brackets."""
        for host, port in self.effective_listen:
            if ":" in host:
                host = f"[{host}]"
            logger.info(format_str.format(host, port))

    def run(self) -> None:
        """Serves until close() is called or SIGINT/SIGTERM arrives, then finishes the
        requests in progress (within ``graceful_timeout``) and returns. A second signal
        during that drain stops at once."""
        if self._closed:
            raise RuntimeError("this server was closed")
        self._running = True
        self._run_done.clear()
        _RUNNING.add(self)
        restore_sigterm = self._install_sigterm()
        restore_sighup = self._install_sighup()
        wakeup = _SignalWakeup.install()
        self._start_threads()
        try:
            on_tick = None
            if self.adj.access_log:
                self._route_access_log()
                on_tick = self._route_access_log
            self._core.run(wakeup.fileno() if wakeup else None, self._stopping, on_tick)
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            if wakeup is not None:
                wakeup.uninstall()
            if restore_sigterm is not None:
                signal.signal(signal.SIGTERM, restore_sigterm)
            if restore_sighup is not None:
                signal.signal(signal.SIGHUP, restore_sighup)
            self._core.close()
            self._stop_threads()
            self._running = False
            self._close_sockets()
            _RUNNING.discard(self)
            self._run_done.set()

    def _route_access_log(self) -> None:
        """Lets the core write access lines to the logging handlers' files itself when
        that is exactly what logging would do (rswaitress.access explains when)."""
        from rswaitress.access import fast_sinks

        try:
            _core.set_access_sinks(fast_sinks())
        except OSError:
            _core.set_access_sinks(None)

    def _stopping(self) -> None:
        """A stop has begun: the core no longer accepts; the sockets are closed here too
        (so that new connections are refused), then the on_stop hooks run."""
        self._close_sockets(metrics=False)
        for hook in self.on_stop:
            try:
                hook()
            except Exception:
                logger.exception("Exception in an on_stop hook")

    def _stop_for_exit(self) -> None:
        self._core.close()
        grace = float(getattr(self.adj, "graceful_timeout", 0)) + THREAD_JOIN_TIMEOUT + 1
        if not self._run_done.wait(grace):
            self._core.abort()
            self._run_done.wait(THREAD_JOIN_TIMEOUT + 1)

    def close(self) -> None:
        """Stops a running server (from any thread) or releases an idle one's sockets."""
        self._core.close()
        if not self._running:
            self._core.release()
            self._close_sockets()

    def _install_sigterm(self) -> _Handler:
        """SIGTERM stops the server like Ctrl-C, when run() owns the main thread and no
        handler of the application's is installed."""
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            current = signal.getsignal(signal.SIGTERM)
        except (AttributeError, ValueError):
            return None
        if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return None

        def _terminate(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, _terminate)
        return current

    def reload_tls(self) -> None:
        """Loads the TLS certificate and key files again (after a renewal): connections
        accepted from now on use them, those open keep theirs. Raises ValueError, and
        keeps serving with the previous ones, when the files cannot be loaded."""
        if self.adj.ssl_certfile is None:
            raise ValueError("this server has no TLS listener (ssl_certfile is not set)")
        self._core.reload_tls()

    def _reload_tls_on_signal(self) -> None:
        try:
            self.reload_tls()
        except ValueError as exc:
            logger.error("TLS certificate not reloaded, the previous one stays in use: %s", exc)
        else:
            logger.info("Reloaded the TLS certificate from %s", self.adj.ssl_certfile)

    def _install_sighup(self) -> _Handler:
        """SIGHUP reloads the TLS certificate of a server with TLS, when run() owns the
        main thread and the application has no SIGHUP handler of its own (an ignored
        SIGHUP, as under nohup, is no handler: the reload still works there)."""
        if self.adj.ssl_certfile is None or not hasattr(signal, "SIGHUP"):
            return None
        if threading.current_thread() is not threading.main_thread():
            return None
        current = signal.getsignal(signal.SIGHUP)
        if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return None

        def _reload(signum: int, frame: FrameType | None) -> None:
            self._reload_tls_on_signal()

        signal.signal(signal.SIGHUP, _reload)
        return current

    def _start_threads(self) -> None:
        for n in range(self.adj.threads):
            t = threading.Thread(
                target=self._core.serve_worker, name=f"rswaitress-{n}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _stop_threads(self) -> None:
        self._core.stop_workers(len(self._threads))
        for t in self._threads:
            t.join(THREAD_JOIN_TIMEOUT)
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            logger.warning("%d thread(s) still running", len(alive))
        self._threads = []

    @property
    def metrics_address(self) -> tuple[str, str] | None:
        """(host, port) of the metrics listener, when there is one."""
        if self._metrics_listening is None:
            return None
        return (self._metrics_listening.effective_host, self._metrics_listening.effective_port)

    def _close_sockets(self, metrics: bool = True) -> None:
        """Closes the listening sockets (all, or those of the application only: the
        metrics listener answers /readyz during a drain)."""
        if not self._closed:
            self._closed = True
            for each in self._listening:
                each.socket.close()
        if metrics and self._metrics_listening is not None:
            self._metrics_listening.socket.close()


def _adjustments(adj: Adjustments | None, kw: ServerOptions) -> Adjustments:
    return adj if adj is not None else Adjustments(**kw)


class TcpWSGIServer(BaseWSGIServer):
    """One TCP listening socket (the first of ``listen`` unless ``sockinfo`` says)."""

    def __init__(
        self,
        application: WSGIApplication,
        map: dict[int, Any] | None = None,
        _start: bool = True,
        _sock: socket.socket | None = None,
        dispatcher: object = None,
        adj: Adjustments | None = None,
        sockinfo: ListenAddress | None = None,
        bind_socket: bool = True,
        **kw: Unpack[ServerOptions],
    ) -> None:
        adj = _adjustments(adj, kw)
        if sockinfo is None:
            sockinfo = adj.listen[0]
        listening = _tcp_listening(sockinfo, adj, None if bind_socket and _sock is None else _sock)
        super().__init__(application, adj, [listening])


WSGIServer = TcpWSGIServer


class UnixWSGIServer(BaseWSGIServer):
    """One Unix-domain listening socket at ``unix_socket``."""

    def __init__(
        self,
        application: WSGIApplication,
        map: dict[int, Any] | None = None,
        _start: bool = True,
        _sock: socket.socket | None = None,
        dispatcher: object = None,
        adj: Adjustments | None = None,
        sockinfo: ListenAddress | None = None,
        bind_socket: bool = True,
        **kw: Unpack[ServerOptions],
    ) -> None:
        adj = _adjustments(adj, kw)
        listening = _unix_listening(adj, None if bind_socket and _sock is None else _sock)
        super().__init__(application, adj, [listening])


class MultiSocketServer(BaseWSGIServer):
    """Several listening sockets served by one reactor and one thread pool."""


def create_server(
    application: WSGIApplication,
    map: dict[int, Any] | None = None,
    _start: bool = True,
    _sock: socket.socket | None = None,
    _dispatcher: object = None,
    **kw: Unpack[ServerOptions],
) -> BaseWSGIServer:
    """Binds the sockets the arguments describe and returns a server ready to run()."""
    if application is None:
        raise ValueError(
            'The "app" passed to ``create_server`` was ``None``.  You forgot '
            "to return a WSGI app within your application."
        )
    adj = Adjustments(**kw)
    from rswaitress.supervisor import AppRef

    if isinstance(application, AppRef) and not adj.uses_supervisor():
        application = application.load()
    listening = bind_listening(adj)
    if adj.uses_supervisor():
        from rswaitress.supervisor import Supervisor

        return Supervisor(application, adj, listening)  # type: ignore[return-value]
    if len(listening) == 1:
        cls = UnixWSGIServer if listening[0].is_unix else TcpWSGIServer
        server = cls.__new__(cls)
        BaseWSGIServer.__init__(server, application, adj, listening)
        return server
    return MultiSocketServer(application, adj, listening)


def bind_listening(adj: Adjustments) -> list[_Listening]:
    """Binds (or adopts) every listening socket the settings describe, as Waitress
    does; on an error the sockets bound so far are closed."""
    listening: list[_Listening] = []
    try:
        if adj.unix_socket and hasattr(socket, "AF_UNIX"):
            listening.append(_unix_listening(adj))
        elif adj.sockets:
            for sock in adj.sockets:
                if hasattr(socket, "AF_UNIX") and sock.family == socket.AF_UNIX:
                    listening.append(_unix_listening(adj, sock))
                else:
                    info = (sock.family, sock.type, sock.proto, sock.getsockname())
                    listening.append(_tcp_listening(info, adj, sock))
        else:
            for sockinfo in adj.listen:
                listening.append(_tcp_listening(sockinfo, adj))
    except BaseException:
        for each in listening:
            each.socket.close()
        raise
    return listening
