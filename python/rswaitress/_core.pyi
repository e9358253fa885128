# Types of the compiled extension module rswaitress._core (src/lib.rs, src/wsgi/).
# `python -m mypy.stubtest rswaitress._core` checks this file against the built module.

from typing import Any, final

from _typeshed.wsgi import WSGIApplication

from rswaitress.adjustments import Adjustments

__all__ = ["Server", "FileWrapper", "InputStream", "ClientDisconnected"]

@final
class Server:
    """One server: its listening sockets, its reactor and the state its workers share."""

    def __new__(
        cls, app: WSGIApplication, listeners: list[tuple[int, str, bool]], adj: Adjustments
    ) -> Server:
        """``listeners`` are ``(fd, server_port, is_unix)``; the Python socket objects
        keep owning the descriptors."""

    def run(self) -> None:
        """Runs the reactor until close() or a signal; re-raises a signal's exception."""

    def serve_worker(self) -> None:
        """The loop of one pool thread; returns once stop_workers() is called."""

    def close(self) -> None:
        """Asks run() to stop accepting, finish what is in progress and return."""

    def stop_workers(self, count: int) -> None:
        """Tells ``count`` pool threads to return once the queue is empty."""

    @property
    def connection_count(self) -> int:
        """Number of open client connections."""

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
