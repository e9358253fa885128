"""Where the access log's lines end up, and whether the core may write them there itself.

Every access line is a record on the ``rswaitress.access`` logger at INFO, so the user's
logging configuration decides what becomes of it. Handing each record to Python's
logging costs several microseconds of GIL time per request, though, which is most of a
small request's cost. When the configuration is one whose effect the core can reproduce
exactly -- every handler the record reaches is a plain ``logging.StreamHandler`` or
``logging.FileHandler`` on a real file, with a ``%``-style formatter that shows only the
message, the logger name and the level, no filters anywhere, INFO enabled -- the core
writes ``prefix + line + suffix + terminator`` to those files itself, in batches, without
the GIL; the bytes are those the handlers would have written. Anything else (a rotating
handler, a filter, a formatter with a time or a thread name, pytest's capture handler)
sends the lines through logging one record each, as before.

The server looks at the configuration when it starts and about once a second while it
runs, so a change takes effect within a second.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
from typing import Any

#: %-style fields whose value is the same for every access record.
_CONSTANT_FIELDS = {"name", "levelname", "levelno", "message"}
_FIELD = re.compile(r"%\((\w+)\)([#0 +-]*\d*(?:\.\d+)?[a-zA-Z%])|%%|%")
_MARK = "\x00rswaitress-message\x00"


def _line_template(formatter: logging.Formatter | None, name: str) -> tuple[str, str] | None:
    """(prefix, suffix) around the message, or None when the formatter shows more."""
    if formatter is None:
        return "", ""
    if type(formatter) is not logging.Formatter:
        return None
    style = getattr(formatter, "_style", None)
    if type(style) is not logging.PercentStyle or getattr(style, "_defaults", None):
        return None
    fmt = style._fmt
    for match in _FIELD.finditer(fmt):
        token = match.group(0)
        if token == "%%":
            continue
        if token == "%" or match.group(1) not in _CONSTANT_FIELDS:
            return None
    text = fmt % {"name": name, "levelname": "INFO", "levelno": logging.INFO, "message": _MARK}
    if text.count(_MARK) != 1:
        return None
    prefix, suffix = text.split(_MARK)
    return prefix, suffix


def _stream_fd(handler: logging.StreamHandler[Any]) -> int | None:
    stream = getattr(handler, "stream", None)
    if stream is None:
        return None
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        if codecs.lookup(encoding).name != "utf-8":
            return None
    except LookupError:
        return None
    if getattr(stream, "closed", False):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def fast_sinks(logger_name: str = "rswaitress.access") -> list[tuple[int, bytes, bytes]] | None:
    """``[(fd, prefix, suffix + terminator), ...]`` for the core to write INFO records of
    ``logger_name`` to directly, or None when logging must handle each record. An empty
    list means no handler would write them (they are dropped, as logging would)."""
    if os.name == "nt":
        return None  # descriptors there are the C runtime's, not the OS's handles
    logger = logging.getLogger(logger_name)
    if logger.disabled or logger.filters or not logger.isEnabledFor(logging.INFO):
        return None if logger.filters else []
    sinks: list[tuple[int, bytes, bytes]] = []
    current: logging.Logger | None = logger
    found = False
    while current is not None:
        for handler in current.handlers:
            found = True
            if type(handler) not in (logging.StreamHandler, logging.FileHandler):
                return None
            if handler.filters:
                return None
            if handler.level > logging.INFO:
                continue
            template = _line_template(handler.formatter, logger_name)
            fd = _stream_fd(handler)  # type: ignore[arg-type]
            if template is None or fd is None:
                return None
            terminator = getattr(handler, "terminator", "\n")
            prefix, suffix = template
            sinks.append((fd, prefix.encode(), (suffix + terminator).encode()))
        if not current.propagate:
            break
        current = current.parent
    if not found:
        # logging's last resort handles WARNING and above only: INFO records go nowhere.
        return []
    return sinks
