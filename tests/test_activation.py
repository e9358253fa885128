"""Socket activation (sd_listen_fds protocol): a supervisor binds the listening sockets,
starts the server with them as descriptors 3, 4, ... and sets LISTEN_FDS / LISTEN_PID.

Each test starts a real child process the way systemd does: a small wrapper gets the
pre-bound sockets (subprocess pass_fds), moves them to 3.., sets LISTEN_PID to its own
pid and execs the server (``python -m rswaitress``, i.e. rswaitress-serve, or a script
calling ``serve()``). Then a real client talks to the inherited socket. Broken or
hostile environments must give a clear error or be ignored, never a traceback.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from rawhttp import RawClient, request
from test_smoke import Child

# Socket activation passes descriptors to a child process.
pytestmark = pytest.mark.posix

#: Moves the descriptors named in the spec to 3.., sets the activation variables (as
#: systemd does: LISTEN_PID is the pid of the process that will serve), then applies
#: the spec's overrides and execs the command.
_WRAPPER = r"""
import fcntl, json, os, sys
spec = json.loads(sys.argv[1])
held = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in spec["fds"]]
for fd in spec["fds"]:
    os.close(fd)
for i, fd in enumerate(held):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(held))
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ.update(spec.get("env", {}))
os.execv(spec["argv"][0], spec["argv"])
"""

#: The served application reports what the process sees of the activation.
_APP = """
import json, os

def app(environ, start_response):
    body = json.dumps({
        "pid": os.getpid(),
        "env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")},
        "fd3_inheritable": os.get_inheritable(3),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""

#: serve() with no address argument, from a script.
_SERVE = """
import sys
sys.path.insert(0, sys.argv[1])
import rswaitress
from actapp import app
rswaitress.serve(app, threads=2)
"""

#: listen_fds() itself: what it returns or raises, and what it leaves behind.
_PROBE = r"""
import json, os
from rswaitress.activation import ActivationError, listen_fds

out = {}
try:
    socks = listen_fds()
    out["sockets"] = [
        {"fd": s.fileno(), "family": s.family.name, "type": s.type.name,
         "inheritable": os.get_inheritable(s.fileno())}
        for s in socks
    ]
except ActivationError as exc:
    out["error"] = str(exc)
out["env"] = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
try:
    os.fstat(3)
    out["fd3_open"] = True
except OSError:
    out["fd3_open"] = False
print(json.dumps(out))
"""


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "actapp.py").write_text(_APP)
    return tmp_path


@pytest.fixture
def spawn(app_dir):
    """``spawn(argv, fds, env=None)`` -> Child running ``argv`` under the
    activation wrapper with ``fds`` (descriptors of this process) as 3...; the parent's
    copies stay open until the fixture ends."""
    started = []

    def start(argv, fds, env=None):
        spec = json.dumps({"argv": argv, "fds": fds, "env": env or {}})
        s = Child([sys.executable, "-c", _WRAPPER, spec], pass_fds=fds, cwd=str(app_dir))
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _tcp_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _unix_listener(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


def _cli(*args):
    return [sys.executable, "-m", "rswaitress", *args, "actapp:app"]


def _serve_script(app_dir):
    return [sys.executable, "-c", _SERVE, str(app_dir)]


def _get_json(addr):
    with RawClient(addr) as c:
        c.send(request(headers=[("Connection", "close")]))
        r = c.read_response()
    assert r.status == 200, r
    return json.loads(r.body)


def _stop(s):
    s.proc.send_signal(signal.SIGTERM)
    assert s.wait_exit() == 0
    assert "Traceback" not in s.text(), s.text()


@pytest.mark.posix_signals
@pytest.mark.parametrize("launcher", ["rswaitress-serve", "serve()"])
def test_inherited_tcp_socket_is_served(spawn, app_dir, launcher):
    listener = _tcp_listener()
    port = listener.getsockname()[1]
    argv = _cli("--threads=2") if launcher == "rswaitress-serve" else _serve_script(app_dir)
    s = spawn(argv, [listener.fileno()])
    line = s.wait_for_line(lambda line: "Serving on http://" in line)
    # The inherited socket is served, not the default 0.0.0.0:8080.
    assert line.endswith(f"Serving on http://127.0.0.1:{port}"), line
    listener.close()  # only the child holds it now
    seen = _get_json(("127.0.0.1", port))
    assert seen["pid"] == s.pid
    # The variables are consumed and the descriptor is not passed on to children.
    assert seen["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
    assert seen["fd3_inheritable"] is False
    _get_json(("127.0.0.1", port))  # and again, on a new connection
    _stop(s)


@pytest.mark.unix_sockets
@pytest.mark.posix_signals
@pytest.mark.parametrize("launcher", ["rswaitress-serve", "serve()"])
def test_inherited_unix_socket_is_served(spawn, app_dir, tmp_path, launcher):
    path = tmp_path / "act.sock"
    listener = _unix_listener(path)
    argv = _cli() if launcher == "rswaitress-serve" else _serve_script(app_dir)
    s = spawn(argv, [listener.fileno()])
    line = s.wait_for_line(lambda line: "Serving on http://" in line)
    assert line.endswith(f"Serving on http://unix:{path}"), line
    listener.close()
    seen = _get_json(str(path))
    assert seen["pid"] == s.pid
    assert seen["env"]["LISTEN_FDS"] is None
    _stop(s)


@pytest.mark.posix_signals
def test_two_inherited_sockets_are_both_served(spawn):
    first, second = _tcp_listener(), _tcp_listener()
    ports = [first.getsockname()[1], second.getsockname()[1]]
    s = spawn(_cli(), [first.fileno(), second.fileno()])
    lines = [s.wait_for_line(lambda line: "Serving on http://" in line) for _ in ports]
    assert sorted(int(line.rsplit(":", 1)[1]) for line in lines) == sorted(ports)
    for port in ports:
        assert _get_json(("127.0.0.1", port))["pid"] == s.pid
    first.close()
    second.close()
    _stop(s)


@pytest.mark.posix_signals
def test_an_address_argument_wins_over_inherited_sockets(spawn):
    listener = _tcp_listener()
    s = spawn(_cli("--listen=127.0.0.1:0"), [listener.fileno()])
    line = s.wait_for_line(lambda line: "Serving on http://" in line)
    port = int(line.rsplit(":", 1)[1])
    assert port != listener.getsockname()[1]
    seen = _get_json(("127.0.0.1", port))
    # Not consumed: the variables are still there for whoever they were meant for.
    assert seen["env"]["LISTEN_FDS"] == "1"
    listener.close()
    _stop(s)


@pytest.mark.unix_sockets
@pytest.mark.posix_signals
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_systemd_socket_activate_starts_the_cli(app_dir, tmp_path):
    """systemd's own implementation of the protocol (the tool it ships for testing
    socket-activated services) in front of rswaitress-serve."""
    path = tmp_path / "sd.sock"
    s = Child(["systemd-socket-activate", "-l", str(path), sys.executable, "-m",
               "rswaitress", "actapp:app"], cwd=str(app_dir))
    try:
        s.wait_for_line(lambda line: "Listening on" in line)
        # The tool starts the server on the first connection, then hands it the socket.
        seen = _get_json(str(path))
        assert seen["env"]["LISTEN_FDS"] is None
        s.wait_for_line(lambda line: f"Serving on http://unix:{path}" in line)
        assert _get_json(str(path))["pid"] == seen["pid"]
        os.kill(seen["pid"], signal.SIGTERM)
        assert s.wait_exit() == 0
    finally:
        s.stop()


# --- broken and hostile environments --------------------------------------------------


def _probe(spawn, fds, env=None):
    s = spawn([sys.executable, "-c", _PROBE], fds, env)
    assert s.wait_exit() == 0
    assert "Traceback" not in s.text(), s.text()
    return json.loads(s.text("stdout"))


@pytest.mark.unix_sockets
def test_listen_fds_takes_listening_sockets(spawn, tmp_path):
    tcp, unix = _tcp_listener(), _unix_listener(tmp_path / "u.sock")
    out = _probe(spawn, [tcp.fileno(), unix.fileno()])
    assert out["sockets"] == [
        {"fd": 3, "family": "AF_INET", "type": "SOCK_STREAM", "inheritable": False},
        {"fd": 4, "family": "AF_UNIX", "type": "SOCK_STREAM", "inheritable": False},
    ]
    assert out["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


def test_listen_pid_of_another_process_is_ignored(spawn):
    listener = _tcp_listener()
    out = _probe(spawn, [listener.fileno()], {"LISTEN_PID": str(os.getpid())})
    assert out["sockets"] == []
    assert out["fd3_open"] is True  # left alone
    assert out["env"]["LISTEN_FDS"] is None  # and not passed on either


@pytest.mark.parametrize("pid", ["", "abc", "-1", "0x10"])
def test_listen_pid_that_is_no_pid_is_ignored(spawn, pid):
    listener = _tcp_listener()
    out = _probe(spawn, [listener.fileno()], {"LISTEN_PID": pid})
    assert out["sockets"] == [] and out["fd3_open"] is True


@pytest.mark.parametrize("value, message", [
    ("abc", "LISTEN_FDS='abc' is not a number of file descriptors"),
    ("", "LISTEN_FDS='' is not a number of file descriptors"),
    ("1.5", "LISTEN_FDS='1.5' is not a number of file descriptors"),
    ("-1", "LISTEN_FDS='-1' is negative"),
])
def test_listen_fds_that_is_no_count_is_an_error(spawn, value, message):
    listener = _tcp_listener()
    out = _probe(spawn, [listener.fileno()], {"LISTEN_FDS": value})
    assert out["error"] == message
    assert out["fd3_open"] is True
    assert out["env"]["LISTEN_PID"] is None


def test_listen_fds_zero_means_no_sockets(spawn):
    out = _probe(spawn, [], {"LISTEN_FDS": "0"})
    assert out["sockets"] == []


def test_descriptor_that_is_not_open_is_an_error(spawn):
    listener = _tcp_listener()
    out = _probe(spawn, [listener.fileno()], {"LISTEN_FDS": "3"})
    assert out["error"].startswith("LISTEN_FDS: descriptor 4 is not open")
    assert out["fd3_open"] is True  # the socket already looked at is not closed


def test_descriptor_that_is_a_file_is_an_error(spawn, tmp_path):
    with open(tmp_path / "plain.txt", "w") as f:
        out = _probe(spawn, [f.fileno()])
    assert out["error"] == "LISTEN_FDS: descriptor 3 is not a socket"
    assert out["fd3_open"] is True


def test_datagram_socket_is_an_error(spawn):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    out = _probe(spawn, [udp.fileno()])
    assert out["error"].startswith("LISTEN_FDS: descriptor 3 is not a TCP or Unix stream socket")
    udp.close()


@pytest.mark.skipif(not hasattr(socket, "SO_ACCEPTCONN"), reason="no SO_ACCEPTCONN here")
def test_stream_socket_that_is_not_listening_is_an_error(spawn):
    idle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    idle.bind(("127.0.0.1", 0))  # bound, never listen()ed
    out = _probe(spawn, [idle.fileno()])
    assert out["error"] == "LISTEN_FDS: socket 3 is not listening"
    idle.close()


def test_cli_reports_a_broken_activation_and_exits_1(spawn, tmp_path):
    with open(tmp_path / "plain.txt", "w") as f:
        s = spawn(_cli(), [f.fileno()])
        assert s.wait_exit() == 1
    assert "Error: LISTEN_FDS: descriptor 3 is not a socket" in s.text()
    assert "Traceback" not in s.text(), s.text()


def test_serve_raises_a_clear_error_for_a_broken_activation(spawn, app_dir):
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import rswaitress
        from rswaitress.activation import ActivationError
        from actapp import app
        try:
            rswaitress.serve(app)
        except ActivationError as exc:
            print("ActivationError:", exc)
    """)
    s = spawn([sys.executable, "-c", code, str(app_dir)], [], {"LISTEN_FDS": "many"})
    assert s.wait_exit() == 0
    assert s.text("stdout") == (
        "ActivationError: LISTEN_FDS='many' is not a number of file descriptors"
    )


def test_no_activation_variables_means_no_sockets(monkeypatch):
    from rswaitress.activation import listen_fds

    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert listen_fds() == []


# --- the example systemd units --------------------------------------------------------

UNITS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "examples", "systemd")


def _unit(name):
    path = os.path.join(UNITS, name)
    if not os.path.exists(path):
        pytest.skip("examples/systemd is not beside the tests")
    return open(path, encoding="utf-8").read()


def _setting(text, key):
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def _local_service(tmp_path):
    """rswaitress.service with its ExecStart pointing at this installation's
    rswaitress-serve and WorkingDirectory at ``tmp_path`` (which holds myapp.py)."""
    import sysconfig

    script = os.path.join(sysconfig.get_path("scripts"), "rswaitress-serve")
    if not os.path.exists(script):
        pytest.skip("no rswaitress-serve beside this Python")
    text = _unit("rswaitress.service")
    (exec_start,) = _setting(text, "ExecStart")
    (workdir,) = _setting(text, "WorkingDirectory")
    argv = exec_start.split()
    text = text.replace(exec_start, " ".join([script] + argv[1:]))
    text = text.replace("WorkingDirectory=" + workdir, f"WorkingDirectory={tmp_path}")
    (tmp_path / "myapp.py").write_text(_APP)
    return text, [script] + argv[1:]


def test_service_unit_leaves_the_address_to_the_socket_unit(tmp_path):
    _text, argv = _local_service(tmp_path)
    assert argv[-1] == "myapp:app"
    address_options = ("--listen", "--host", "--port", "--unix-socket")
    assert not [a for a in argv if a.startswith(address_options)], argv
    assert _setting(_unit("rswaitress.socket"), "ListenStream") == ["127.0.0.1:8080"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_example_units_pass_systemd_analyze_verify(tmp_path):
    text, _argv = _local_service(tmp_path)
    (tmp_path / "rswaitress.service").write_text(text)
    (tmp_path / "rswaitress.socket").write_text(_unit("rswaitress.socket"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "rswaitress.socket"),
         str(tmp_path / "rswaitress.service")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    # Unknown keys or bad values are only warnings for verify: none may be printed.
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.unix_sockets
@pytest.mark.posix_signals
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_service_command_serves_the_socket_systemd_passes(tmp_path):
    """The ExecStart command of the example service, started by systemd's activation
    tool on a socket it bound (a Unix one here, not the unit's fixed TCP port)."""
    _text, argv = _local_service(tmp_path)
    path = tmp_path / "unit.sock"
    s = Child(["systemd-socket-activate", "-l", str(path)] + argv, cwd=str(tmp_path))
    try:
        s.wait_for_line(lambda line: "Listening on" in line)
        seen = _get_json(str(path))
        assert seen["env"]["LISTEN_FDS"] is None
        os.kill(seen["pid"], signal.SIGTERM)  # what systemctl stop sends
        assert s.wait_exit() == 0
    finally:
        s.stop()
