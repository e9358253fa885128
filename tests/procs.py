"""Child processes the tests start: starting a Python child, reading its output line by
line, waiting for it to listen, and ending it, by its own handle only."""

import os
import queue
import selectors
import socket
import subprocess
import sys
import threading
import time

from helpers import WAIT

#: Run first in every Python child: a shell starts background jobs with SIGINT ignored,
#: and Python then keeps it ignored; this gives the child the handler it has when started
#: from a terminal (so that SIGINT raises KeyboardInterrupt there).
SIGINT_DEFAULT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


class Lines:
    """A child's output pipe, read with unbuffered reads of its descriptor (a buffered
    readline() could leave a line in a buffer where select() does not see it)."""

    def __init__(self, pipe, name):
        self.fd = pipe.fileno()
        self.name = name
        self.seen = []  # the lines returned or passed over so far
        self._buf = b""
        self._eof = False
        self._chunks = None
        if os.name == "nt":
            # select() takes only sockets there: a thread reads the pipe instead.
            self._chunks = queue.Queue()
            threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            self._chunks.put(data)
            if not data:
                return

    def _fill(self, deadline):
        """One read; False if ``deadline`` passes first or the pipe is at its end."""
        left = deadline - time.monotonic()
        if self._eof or left <= 0:
            return False
        if self._chunks is not None:
            try:
                data = self._chunks.get(timeout=left)
            except queue.Empty:
                return False
            self._eof = not data
            self._buf += data
            return bool(data)
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ)
            if not sel.select(left):
                return False
        data = os.read(self.fd, 65536)
        self._eof = not data
        self._buf += data
        return bool(data)

    def _next_line(self, deadline):
        while b"\n" not in self._buf:
            if not self._fill(deadline):
                return None
        raw, self._buf = self._buf.split(b"\n", 1)
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self.seen.append(line)
        return line

    def wait_for(self, predicate, timeout=WAIT):
        """Reads lines until one satisfies ``predicate`` and returns it; AssertionError
        if the pipe ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline)
            if line is None:
                how = "the child closed it" if self._eof else f"nothing more within {timeout} s"
                raise AssertionError(f"no matching line on {self.name} ({how}); "
                                     f"got {self.seen!r}")
            if predicate(line):
                return line

    def lines(self, n, timeout=WAIT):
        """The next ``n`` lines; AssertionError if they do not all come."""
        deadline = time.monotonic() + timeout
        out = []
        for _ in range(n):
            line = self._next_line(deadline)
            if line is None:
                raise AssertionError(f"not {n} lines on {self.name}: {out!r} {self._buf!r}")
            out.append(line)
        return out

    def rest(self, timeout=WAIT):
        """All the bytes not read yet, up to the end of the pipe (or what came within
        ``timeout``). For reading a child's output once it has exited."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        data, self._buf = self._buf, b""
        return data


#: On Windows, a child in a process group of its own can be sent CTRL_BREAK_EVENT.
NEW_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)


def start_python(script, *args, stderr=subprocess.PIPE, env=None):
    """``python -c SIGINT_DEFAULT+script args...`` with stdout (and, unless ``stderr``
    says otherwise, stderr) piped and stdin from /dev/null; ``env`` is added to the
    environment."""
    return subprocess.Popen([sys.executable, "-c", SIGINT_DEFAULT + script,
                             *(str(a) for a in args)],
                            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env} if env else None,
                            creationflags=NEW_GROUP)


class PythonChild:
    """A Python child (start_python) with ``stdout`` (and ``stderr`` when piped) as
    Lines."""

    def __init__(self, script, *args, stderr=subprocess.PIPE, env=None):
        self.proc = start_python(script, *args, stderr=stderr, env=env)
        self.stdout = Lines(self.proc.stdout, "stdout")
        self.stderr = Lines(self.proc.stderr, "stderr") if self.proc.stderr else None

    def read_port(self, timeout=WAIT):
        """The port of the child's "PORT <n>" line on stdout."""
        line = self.stdout.wait_for(lambda line: line.startswith("PORT "), timeout)
        return int(line.split()[1])

    def stop(self):
        stop_processes([self.proc])


def stop_processes(procs):
    """Kills those of ``procs`` still running, reaps them and closes their pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port, proc, output=lambda: "", timeout=WAIT):
    """Waits until something accepts connections on 127.0.0.1:``port``; fails at once,
    with ``output()`` (the child's output so far), if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {output()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the server did not start listening on port {port}")
