"""Tests for the rswaitress-serve command line (rswaitress.runner)."""

import http.client
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rswaitress
from helpers import WAIT
from procs import free_port, wait_listening
from rswaitress import adjustments, runner

APP_SOURCE = textwrap.dedent(
    """
    FACTORY_CALLS = []


    def app(environ, start_response):
        body = "|".join(
            [environ.get("SCRIPT_NAME", ""), environ["PATH_INFO"],
             environ.get("QUERY_STRING", "")]
        ).encode()
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        return [body]


    def make_app():
        FACTORY_CALLS.append(True)
        return app


    class Holder:
        wsgi = staticmethod(app)


    holder = Holder()
    """
)


def _env():
    """The environment for CLI subprocesses: the installed package, as a user has it."""
    return dict(os.environ)


def cli(*args, cwd=None, timeout=60):
    """Run ``python -m rswaitress ARGS`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "rswaitress", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def app_module(tmp_path, monkeypatch):
    """A module file in a fresh directory that is made the cwd.  Returns its
    name; sys.path and sys.modules are restored afterwards."""
    name = "rsw_cli_app_" + tmp_path.name.replace("-", "_")
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


class FakeServe:
    def __init__(self):
        self.calls = []

    def __call__(self, app, **kw):
        self.calls.append((app, kw))


def run_in_process(argv, capsys):
    serve = FakeServe()
    code = runner.run(["rswaitress-serve", *argv], _serve=serve)
    out, err = capsys.readouterr()
    return code, serve.calls, out, err


# ------------------------------------------------------------ in process


def test_module_object(app_module, capsys):
    code, calls, out, err = run_in_process([f"{app_module}:app"], capsys)
    assert code == 0, err
    module = sys.modules[app_module]
    assert calls == [(module.app, {})]
    assert out == "" and err == ""


def test_module_object_attribute(app_module, capsys):
    code, calls, _, err = run_in_process([f"{app_module}:holder.wsgi"], capsys)
    assert code == 0, err
    assert calls[0][0] is sys.modules[app_module].app


def test_dotted_name_without_colon(app_module, capsys):
    code, calls, _, err = run_in_process([f"{app_module}.app"], capsys)
    assert code == 0, err
    assert calls[0][0] is sys.modules[app_module].app


def test_call_uses_the_factory(app_module, capsys):
    code, calls, _, err = run_in_process(["--call", f"{app_module}:make_app"], capsys)
    assert code == 0, err
    module = sys.modules[app_module]
    assert module.FACTORY_CALLS == [True]
    assert calls == [(module.app, {})]


def test_without_call_the_factory_is_served_itself(app_module, capsys):
    code, calls, _, _ = run_in_process([f"{app_module}:make_app"], capsys)
    assert code == 0
    module = sys.modules[app_module]
    assert calls[0][0] is module.make_app and module.FACTORY_CALLS == []


def test_app_option(app_module, capsys):
    code, calls, _, err = run_in_process(["--port=9000", f"--app={app_module}:app"], capsys)
    assert code == 0, err
    assert calls == [(sys.modules[app_module].app, {"port": "9000"})]


def test_app_option_and_positional_conflict(app_module, capsys):
    code, calls, out, err = run_in_process(
        [f"--app={app_module}:app", f"{app_module}:app"], capsys
    )
    assert (code, calls, out) == (1, [], "")
    assert err.startswith("Error: Specify one application only\n")


def test_options_forwarded_as_raw_strings(app_module, capsys):
    code, calls, _, err = run_in_process(
        ["--listen=127.0.0.1:1", "--listen=[::1]:2", "--no-ipv6", "--expose-tracebacks",
         "--threads=3", "--url-prefix=/p/", f"{app_module}:app"],
        capsys,
    )
    assert code == 0, err
    assert calls[0][1] == {
        "listen": " 127.0.0.1:1 [::1]:2", "ipv6": "false", "expose_tracebacks": "true",
        "threads": "3", "url_prefix": "/p/",
    }


def test_current_directory_added_to_sys_path(app_module, capsys):
    assert os.getcwd() not in sys.path
    code, _, _, _ = run_in_process([f"{app_module}:app"], capsys)
    assert code == 0
    assert sys.path[-1] == os.getcwd()


@pytest.mark.parametrize("argv", [[], ["a:a", "b:b"]])
def test_exactly_one_application(argv, capsys):
    code, calls, out, err = run_in_process(argv, capsys)
    assert (code, calls, out) == (1, [], "")
    assert err.startswith("Error: Specify one application only\n\nUsage:\n")


def test_bad_option(capsys):
    code, calls, out, err = run_in_process(["--bad-opt", "x:y"], capsys)
    assert (code, calls, out) == (1, [], "")
    assert err.startswith("Error: option --bad-opt not recognized\n\nUsage:\n")


def test_missing_attribute(app_module, capsys):
    code, calls, _, err = run_in_process([f"{app_module}:nope"], capsys)
    assert (code, calls) == (1, [])
    assert err.startswith(f"Error: module '{app_module}' has no attribute 'nope'\n")
    assert "There was an exception (AttributeError) importing your module." in err


def test_help(capsys):
    code, calls, out, err = run_in_process(["--help", "ignored:app"], capsys)
    assert (code, calls, err) == (0, [], "")
    assert out.startswith("Usage:\n\n    rswaitress-serve [OPTS] MODULE:OBJECT\n")


def test_help_documents_every_option(capsys):
    runner.run(["rswaitress-serve", "--help"], _serve=FakeServe())
    out = capsys.readouterr().out
    for setting in adjustments.SETTINGS:
        if setting.name == "sockets":  # needs socket objects; not for the CLI
            continue
        option = setting.name.replace("_", "-")
        if setting.convert is adjustments.to_bool:
            assert f"--[no-]{option}\n" in out, option
        else:
            assert f"--{option}=" in out, option
    for option in ("--help\n", "--call\n", "--app="):
        assert option in out
    assert "'rswaitress'" in out  # our ident default


@pytest.mark.parametrize(
    "argv0, shown",
    [
        ("/usr/local/bin/rswaitress-serve", "rswaitress-serve"),
        ("my-wrapper", "my-wrapper"),
        ("/x/rswaitress/__main__.py", "rswaitress-serve"),
        ("", "rswaitress-serve"),
    ],
)
def test_program_name(argv0, shown, capsys):
    assert runner.run([argv0, "--help"], _serve=FakeServe()) == 0
    assert capsys.readouterr().out.startswith(f"Usage:\n\n    {shown} [OPTS]")


def test_default_serve_is_rswaitress_serve(app_module, capsys, monkeypatch):
    fake = FakeServe()
    monkeypatch.setattr(rswaitress, "serve", fake, raising=False)
    assert runner.run(["rswaitress-serve", "--port=1", f"{app_module}:app"]) == 0
    assert fake.calls == [(sys.modules[app_module].app, {"port": "1"})]


def test_logger_level(app_module, capsys, monkeypatch):
    logger = logging.getLogger("rswaitress")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    run_in_process([f"{app_module}:app"], capsys)
    assert logger.level == logging.INFO
    logger.level = logging.ERROR
    run_in_process([f"{app_module}:app"], capsys)
    assert logger.level == logging.ERROR


# ------------------------------------------------- parity with waitress-serve

PARITY_ARGV = [
    [],
    ["{m}:app"],
    ["{m}:holder.wsgi"],
    ["{m}.app"],
    ["--call", "{m}:make_app"],
    ["--port=9000", "--no-ipv4", "--listen=a:1", "{m}:app"],
    ["{m}:app", "--port=1"],
    ["{m}:nope"],
    ["{m}"],
    ["nonexistent_rsw_module:app"],
    ["bad name:"],
    ["a:a", "b:b"],
    ["--bad-opt"],
    ["--port"],
]


def _split_output(text):
    # The usage text itself differs (program name, our wording); everything
    # before it (the error) and after it (the import report) must not.
    before, _, rest = text.partition("Usage:\n")
    _, _, after = rest.partition("There was an exception")
    return before, after


@pytest.mark.parametrize("template", PARITY_ARGV, ids=repr)
def test_parity_with_waitress_serve(template, app_module, capsys):
    waitress_runner = pytest.importorskip("waitress.runner")
    argv = [arg.format(m=app_module) for arg in template]
    results = []
    for run in (runner.run, waitress_runner.run):
        serve = FakeServe()
        code = run(["serve", *argv], _serve=serve)
        out, err = capsys.readouterr()
        results.append((code, serve.calls, out.startswith("Usage:"), _split_output(err)))
    assert results[0] == results[1]


# ----------------------------------------------------------- as a process


def test_cli_help():
    proc = cli("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage:\n\n    rswaitress-serve [OPTS] MODULE:OBJECT\n")
    assert "--listen=ip:port" in proc.stdout
    assert proc.stderr == ""


def test_cli_bad_option():
    proc = cli("--no-such-option", "x:y")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: option --no-such-option not recognized\n")
    assert "Usage:" in proc.stderr
    assert proc.stdout == ""


def test_cli_no_application():
    proc = cli("--port=1")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: Specify one application only\n")


def test_cli_unimportable_module(tmp_path):
    proc = cli("rsw_surely_missing_module:app", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: No module named 'rsw_surely_missing_module'\n")
    assert (
        "There was an exception (ModuleNotFoundError) importing your module.\n\n"
        "It had these arguments: \n"
        "1. No module named 'rsw_surely_missing_module'\n"
    ) in proc.stderr


def test_cli_module_without_attribute(tmp_path):
    (tmp_path / "rsw_noattr.py").write_text("something_else = 1\n")
    proc = cli("rsw_noattr:application", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        "Error: module 'rsw_noattr' has no attribute 'application'\n"
    )
    assert "There was an exception (AttributeError) importing your module." in proc.stderr


def test_cli_error_raised_by_module_is_reported(tmp_path):
    (tmp_path / "rsw_broken.py").write_text("import rsw_dependency_that_is_missing\n")
    proc = cli("rsw_broken:app", cwd=tmp_path)
    assert proc.returncode == 1
    assert "No module named 'rsw_dependency_that_is_missing'" in proc.stderr


def test_cli_invalid_setting_fails():
    # Values are validated by serve()/Adjustments, so this needs the core.
    pytest.importorskip("rswaitress._core")
    proc = cli("--threads=lots", "--listen=127.0.0.1:0", "http.server:test", timeout=30)
    assert proc.returncode != 0
    assert "invalid literal for int()" in proc.stderr


# ------------------------------------------------ against the real server


def _stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, getattr(signal, "SIGKILL", signal.SIGTERM))
            proc.wait(timeout=WAIT)


def _log_text(log):
    log.flush()
    return Path(log.name).read_text(errors="replace")


@pytest.fixture
def served(tmp_path):
    """Start ``python -m rswaitress`` with the given options on a free port;
    yields a function returning the port.  The process is stopped by PID."""
    pytest.importorskip("rswaitress._core")
    (tmp_path / "rsw_served_app.py").write_text(APP_SOURCE)
    procs = []

    def start(*options, listen=True):
        port = free_port()
        address = [f"--listen=127.0.0.1:{port}"] if listen else [
            "--host=127.0.0.1", f"--port={port}"
        ]
        # Output goes to a file, not a pipe nobody reads, so that a chatty
        # server can never block on a full pipe.
        log = open(tmp_path / f"server-{port}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "rswaitress", *address, *options],
            cwd=tmp_path,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log = log
        procs.append(proc)
        wait_listening(port, proc, lambda: _log_text(log))
        return port

    yield start
    for proc in procs:
        _stop(proc)
        proc.log.close()


def _get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Server"), response.read()
    finally:
        conn.close()


def test_serves_a_request(served):
    port = served("--threads=2", "rsw_served_app:app")
    status, server, body = _get(port, "/hello?x=1")
    assert status == 200
    assert server == "rswaitress"
    assert body == b"|/hello|x=1"


def test_serves_with_call_prefix_and_ident(served):
    port = served(
        "--call", "--url-prefix=pre/", "--ident=custom-ident",
        "rsw_served_app:make_app", listen=False,
    )
    status, server, body = _get(port, "/pre/x")
    assert (status, server, body) == (200, "custom-ident", b"/pre|/x|")
