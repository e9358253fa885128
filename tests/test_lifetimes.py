"""What outlives a request and what does not.

- A connection's socket is closed when the connection ends, even while the application
  keeps its environ (a stored traceback, a debugger, a reference cycle would).
- The disconnect check kept from an environ answers truthfully after the request.
- A process that exits while a server runs on a daemon thread exits cleanly (the server
  is stopped and waited for at exit).
"""

import gc
import json
import os
import subprocess
import sys

import pytest

import apps
from helpers import WAIT
from rawhttp import RawClient, parse_response, request, send_raw, wait_until


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.procfs
def test_sockets_close_while_environs_live_on(make_server):
    kept = []

    def app(environ, start_response):
        kept.append(environ)  # as a stored traceback or a cycle would
        environ["self"] = environ  # and a reference cycle
        return apps.hello(environ, start_response)

    srv = make_server(app)
    send_raw(srv.addr, request(headers=[("Connection", "close")]))
    gc.collect()
    baseline = open_fds()
    for _ in range(20):
        r = parse_response(send_raw(srv.addr, request(headers=[("Connection", "close")])))
        assert r.status == 200
    assert len(kept) == 21
    # No descriptor stays open for the 20 connections whose environs are still alive.
    assert wait_until(lambda: open_fds() <= baseline), (open_fds(), baseline)


def test_disconnect_check_outlives_its_request(make_server):
    checks = []

    def app(environ, start_response):
        checks.append(environ["rswaitress.client_disconnected"])
        return apps.hello(environ, start_response)

    srv = make_server(app)
    c = RawClient(srv.addr)
    c.send(request())
    assert c.read_response().status == 200
    assert checks[0]() is False
    c.close()
    assert wait_until(lambda: checks[0]() is True)


_EXIT = r"""
import sys, threading, urllib.request
sys.path.insert(0, sys.argv[1])
import apps, rswaitress
srv = rswaitress.create_server(apps.hello, host="127.0.0.1", port=0)
t = threading.Thread(target=srv.run, daemon=True)
t.start()
print(urllib.request.urlopen(f"http://127.0.0.1:{srv.effective_port}/").status, flush=True)
if sys.argv[2] == "close":
    srv.close()
print("EXITING", flush=True)
"""


@pytest.mark.parametrize("how", ["close", "running"])
def test_exit_with_a_server_on_a_daemon_thread(how):
    """The interpreter exits while run() is on a daemon thread, after close() or with the
    server still running: exit status 0, no crash."""
    done = subprocess.run(
        [sys.executable, "-c", _EXIT, os.path.dirname(__file__), how],
        capture_output=True, timeout=WAIT,
    )
    assert done.stdout.split() == [b"200", b"EXITING"], done
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def test_environ_of_an_ended_request_is_still_readable(make_server):
    kept = []

    def app(environ, start_response):
        kept.append(environ)
        return apps.echo_environ(environ, start_response)

    srv = make_server(app)
    r = parse_response(send_raw(srv.addr, request("POST", "/p", body=b"payload",
                                                  headers=[("Connection", "close")])))
    assert json.loads(r.body)["_body_len"] == 7
    # The body was read; reading again after the request ended gives b"", not an error.
    assert kept[0]["wsgi.input"].read() == b""
    assert kept[0]["PATH_INFO"] == "/p"
