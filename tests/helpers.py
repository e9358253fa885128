"""Helpers shared by the test modules that are neither HTTP (``rawhttp.py``) nor child
processes (``procs.py``): which platform features are here, and how long a test waits.
"""

import os
import socket
import sys

#: How long a test waits for something that must happen (a response, a close, a log
#: record, a thread or a process ending) before it fails. Only a guard against a hang:
#: a passing run never waits this long, and no test reads speed into it.
WAIT = 30.0


# --- platform features -----------------------------------------------------------------

#: A test that needs one of these carries the marker of that name (registered in
#: pyproject.toml); conftest.py skips it where the platform lacks the feature (the GitHub
#: workflow also runs the suite on Windows and macOS). Name -> (test, what is missing).
PLATFORM_FEATURES = {
    "unix_sockets": (lambda: hasattr(socket, "AF_UNIX") and sys.platform != "win32",
                     "no Unix sockets"),
    "posix_signals": (lambda: sys.platform != "win32",
                      "no POSIX signals (SIGINT/SIGTERM delivered to a process)"),
    "procfs": (lambda: sys.platform.startswith("linux"), "no /proc"),
    "posix": (lambda: os.name == "posix", "no POSIX descriptor passing or libc through ctypes"),
}

#: Comma-separated feature names (or "all") to treat as missing although the platform
#: has them: for checking on one machine which tests another platform would skip.
PRETEND_MISSING_ENV = "RSWAITRESS_TESTS_PRETEND_MISSING"


def pretended_missing():
    """The feature names that PRETEND_MISSING_ENV asks to treat as missing."""
    words = {w.strip() for w in os.environ.get(PRETEND_MISSING_ENV, "").split(",")}
    words.discard("")
    if "all" in words:
        return set(PLATFORM_FEATURES)
    unknown = words - set(PLATFORM_FEATURES)
    if unknown:
        raise ValueError(f"{PRETEND_MISSING_ENV}: unknown feature(s) {sorted(unknown)}; "
                         f"known: {sorted(PLATFORM_FEATURES)} or all")
    return words


def platform_has(feature):
    """Whether the platform has ``feature`` (a key of PLATFORM_FEATURES)."""
    present, _ = PLATFORM_FEATURES[feature]
    return feature not in pretended_missing() and present()
