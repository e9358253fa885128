# Types of the compiled extension module rswaitress._core (src/lib.rs, src/wsgi/).
# `python -m mypy.stubtest rswaitress._core` checks this file against the built module.

from typing import Any, Callable, final

from _typeshed.wsgi import WSGIApplication

from rswaitress.adjustments import Adjustments

__all__ = [
    "Server", "FileWrapper", "InputStream", "ClientDisconnected", "check_access_log_format",
    "DEFAULT_ACCESS_LOG_FORMAT", "set_access_sinks", "MetricsServer", "METRICS_SIZE", "check_tls",
]

DEFAULT_ACCESS_LOG_FORMAT: str

def check_access_log_format(format: str) -> None:
    """Checks an access log format (Gunicorn's syntax); ValueError says what is wrong."""

def check_tls(adj: Adjustments) -> None:
    """Loads the ``ssl_*`` settings' files as a server would; ValueError names the file
    and the problem."""

def set_access_sinks(sinks: list[tuple[int, bytes, bytes]] | None) -> None:
    """Sends access log lines straight to these files, or through logging (None)."""

@final
class Server:
    """One server: its listening sockets, its reactor and the state its workers share."""

    def __new__(
        cls,
        app: WSGIApplication,
        listeners: list[tuple[int, str, bool]],
        adj: Adjustments,
        metrics_fd: int | None = None,
        metrics_block: tuple[int, int, object] | None = None,
    ) -> Server:
        """``listeners`` are ``(fd, server_port, is_unix)``: listening sockets (the core
        works on duplicates). ``metrics_fd``: the metrics listener. ``metrics_block``:
        ``(address, size, keep)``, memory shared with a master for this worker's metrics."""

    def run(
        self,
        wakeup_fd: int | None = None,
        on_stop: Callable[[], object] | None = None,
        on_tick: Callable[[], object] | None = None,
    ) -> None:
        """Runs the reactor on a thread of its own and waits for it, handling signals and
        log delivery meanwhile. ``wakeup_fd`` is the reading end of the socket given to
        ``signal.set_wakeup_fd``; ``on_stop`` is called once when a stop begins. A
        signal's exception starts a graceful stop and is raised once it is over."""

    def serve_worker(self) -> None:
        """The loop of one pool thread; returns once stop_workers() is called."""

    def reload_tls(self) -> None:
        """Loads the TLS certificate and key again; ValueError (the previous ones stay in
        use) when they cannot be loaded."""

    def close(self) -> None:
        """Asks run() to stop accepting, finish what is in progress and return."""

    def abort(self) -> None:
        """Asks run() to close every connection and return at once."""

    def release(self) -> None:
        """Closes the core's copies of the listening sockets of a server that never ran."""

    def stop_workers(self, count: int) -> None:
        """Tells ``count`` pool threads to return once the queue is empty."""

    @property
    def requests_served(self) -> int:
        """Responses completed so far."""

    @property
    def recycling(self) -> bool:
        """Whether the stop under way was started by max_requests."""

    @property
    def connection_count(self) -> int:
        """Number of open client connections."""

@final
class MetricsServer:
    """A master's metrics listener, over every worker's metrics block."""

    def __new__(cls, fd: int, adj: Adjustments) -> MetricsServer: ...
    def start(self) -> None: ...
    def attach(self, label: str, address: int, size: int, keep: object, restarts: int) -> None: ...
    def detach(self, label: str) -> None: ...
    def set_master(self, workers_configured: int, ready: bool) -> None: ...
    def close(self) -> None: ...

#: Bytes of one worker's metrics block.
METRICS_SIZE: int

@final
class FileWrapper:
    """``environ["wsgi.file_wrapper"]``: iterates ``filelike`` in blocks, or is sent
    with sendfile when it wraps a regular file."""

    def __new__(cls, filelike: Any, block_size: int = 8192) -> FileWrapper: ...
    @property
    def filelike(self) -> Any: ...
    @property
    def block_size(self) -> int: ...
    def __iter__(self) -> FileWrapper: ...
    def __next__(self) -> bytes: ...
    def close(self) -> None: ...

@final
class InputStream:
    """``environ["wsgi.input"]``: the request body, read from memory or its spool file."""

    def read(self, size: int | None = None) -> bytes: ...
    def readline(self, size: int | None = None) -> bytes: ...
    def readlines(self, hint: int | None = None) -> list[bytes]: ...
    def __iter__(self) -> InputStream: ...
    def __next__(self) -> bytes: ...
    def readable(self) -> bool: ...
    def close(self) -> None: ...

class ClientDisconnected(Exception):
    """The client closed the connection before the response was sent."""
