"""Socket activation: listening sockets handed over by systemd (or any supervisor that
follows the same protocol, sd_listen_fds(3)).

The supervisor binds the sockets, starts the server with them open as descriptors
3, 4, ... and sets ``LISTEN_FDS`` to their number and ``LISTEN_PID`` to the server's
process id (``LISTEN_FDNAMES`` may name them). ``serve()`` and ``rswaitress-serve``
use them when they are given no address of their own (no ``listen``, ``host``,
``port``, ``unix_socket`` or ``sockets``).
"""

from __future__ import annotations

import os
import socket
import stat

__all__ = ["ActivationError", "listen_fds", "LISTEN_FDS_START"]

#: The first inherited descriptor (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

_FAMILIES = tuple(
    getattr(socket, name) for name in ("AF_INET", "AF_INET6", "AF_UNIX") if hasattr(socket, name)
)


class ActivationError(ValueError):
    """The environment says sockets were passed to this process, but they cannot be
    used (LISTEN_FDS is not a count, or a descriptor is not a listening stream socket).
    """


def _count(value: str) -> int:
    try:
        count = int(value, 10)
    except ValueError:
        raise ActivationError(
            f"LISTEN_FDS={value!r} is not a number of file descriptors"
        ) from None
    if count < 0:
        raise ActivationError(f"LISTEN_FDS={value!r} is negative")
    return count


def _adopt(fd: int) -> socket.socket:
    """A socket object for inherited descriptor ``fd``, once it is known to be a
    listening TCP or Unix stream socket."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ActivationError(f"LISTEN_FDS: descriptor {fd} is not open ({exc.strerror})") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"LISTEN_FDS: descriptor {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    try:
        if sock.family not in _FAMILIES or sock.type != socket.SOCK_STREAM:
            raise ActivationError(
                f"LISTEN_FDS: descriptor {fd} is not a TCP or Unix stream socket "
                f"({sock.family!r}, {sock.type!r})"
            )
        acceptconn = getattr(socket, "SO_ACCEPTCONN", None)
        if acceptconn is not None and not sock.getsockopt(socket.SOL_SOCKET, acceptconn):
            raise ActivationError(f"LISTEN_FDS: socket {fd} is not listening")
    except BaseException:
        sock.detach()  # not ours to close
        raise
    return sock


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The listening sockets passed to this process, in descriptor order; an empty list
    when there are none.

    Sockets are only taken when ``LISTEN_PID`` is this process's id: variables meant
    for another process (a parent that was activated and leaked them, say) are ignored.
    A malformed ``LISTEN_FDS`` or a descriptor that is not a listening stream socket
    raises :class:`ActivationError` (and no descriptor is taken or closed). The
    descriptors are made non-inheritable, and with ``unset_environment`` (the default)
    the three variables are removed, so that child processes do not take the sockets
    for theirs.
    """
    if os.name == "nt":
        return []
    try:
        pid = os.environ.get("LISTEN_PID")
        if pid is None:
            return []
        try:
            if int(pid, 10) != os.getpid():
                return []
        except ValueError:
            return []  # not a process id: not addressed to us
        count = _count(os.environ.get("LISTEN_FDS", "0"))
        sockets: list[socket.socket] = []
        try:
            for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
                sockets.append(_adopt(fd))
        except BaseException:
            for sock in sockets:
                sock.detach()
            raise
        for sock in sockets:
            sock.set_inheritable(False)
        return sockets
    finally:
        if unset_environment:
            for name in _VARIABLES:
                os.environ.pop(name, None)
