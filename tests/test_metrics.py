"""The metrics listener (``metrics_listen``): ``/metrics`` in the OpenMetrics text format,
parsed strictly (``prometheus_client``'s OpenMetrics parser), ``/healthz`` and ``/readyz``,
over real sockets, with and without workers.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

import apps
from helpers import WAIT
from procs import PythonChild, stop_processes
from rawhttp import RawClient, parse_response, request, send_raw, wait_until

parser = pytest.importorskip("prometheus_client.openmetrics.parser")

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def scrape(addr, path="/metrics"):
    conn = http.client.HTTPConnection(*addr, timeout=WAIT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read().decode()
    finally:
        conn.close()


def families(addr):
    """The parsed families of a scrape, by name (the parser raises on anything malformed)."""
    status, ctype, text = scrape(addr)
    assert status == 200
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def samples(fams, family, sample_name=None, **labels):
    """The values of a family's samples whose labels include ``labels``."""
    sample_name = sample_name or family
    return [s.value for s in fams[family].samples
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]


def total(fams, family, sample_name, **labels):
    return sum(samples(fams, family, sample_name, **labels))


def check_histograms(fams):
    for name in ("rswaitress_request_duration_seconds", "rswaitress_request_queue_wait_seconds"):
        fam = fams[name]
        assert fam.type == "histogram"
        by_process = {}
        for s in fam.samples:
            key = s.labels.get("worker")
            by_process.setdefault(key, {"buckets": [], "count": None})
            if s.name.endswith("_bucket"):
                by_process[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                by_process[key]["count"] = s.value
        for seen in by_process.values():
            bounds = [b for b, _ in seen["buckets"]]
            counts = [c for _, c in seen["buckets"]]
            assert bounds == sorted(bounds) and bounds[-1] == float("inf")
            assert counts == sorted(counts), "buckets are cumulative"
            assert counts[-1] == seen["count"], "+Inf equals _count"


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/status/"):
        code = path.rsplit("/", 1)[1]
        start_response(f"{code} X", [("Content-Length", "0")])
        return [b""]
    return apps.hello(environ, start_response)


def test_counters_equal_the_requests_made(make_server):
    srv = make_server(_app, metrics_listen="127.0.0.1:0")
    maddr = (srv.server.metrics_address[0], int(srv.server.metrics_address[1]))
    with RawClient(srv.addr) as c:
        for _ in range(7):
            c.send(request("GET", "/"))
            assert c.read_response().status == 200
        for _ in range(3):
            c.send(request("GET", "/status/404"))
            assert c.read_response().status == 404
    for _ in range(2):
        assert parse_response(send_raw(srv.addr, b"GET / HTTP/1.1\r\n\r\n")).status == 400
    assert wait_until(lambda: total(families(maddr), "rswaitress_connections_closed",
                                    "rswaitress_connections_closed_total") == 3)
    fams = families(maddr)
    assert samples(fams, "rswaitress_requests", "rswaitress_requests_total", code="200") == [7]
    assert samples(fams, "rswaitress_requests", "rswaitress_requests_total", code="404") == [3]
    assert samples(fams, "rswaitress_requests_refused", "rswaitress_requests_refused_total",
                   code="400") == [2]
    assert samples(fams, "rswaitress_connections_accepted",
                   "rswaitress_connections_accepted_total") == [3]
    assert samples(fams, "rswaitress_connections_closed", "rswaitress_connections_closed_total",
                   reason="refused") == [2]
    assert samples(fams, "rswaitress_connections_closed", "rswaitress_connections_closed_total",
                   reason="client") == [1]
    assert samples(fams, "rswaitress_requests_in_flight") == [0]
    assert samples(fams, "rswaitress_connections_open") == [0]
    assert total(fams, "rswaitress_received_bytes", "rswaitress_received_bytes_total") > 0
    assert total(fams, "rswaitress_sent_bytes", "rswaitress_sent_bytes_total") > 0
    assert samples(fams, "rswaitress_request_duration_seconds",
                   "rswaitress_request_duration_seconds_count") == [10]
    assert samples(fams, "rswaitress_ready") == [1]
    check_histograms(fams)


def test_queue_wait_shows_saturation(make_server):
    gate = threading.Event()

    def app(environ, start_response):
        gate.wait(WAIT)
        return apps.hello(environ, start_response)

    srv = make_server(app, threads=1, metrics_listen="127.0.0.1:0")
    maddr = (srv.server.metrics_address[0], int(srv.server.metrics_address[1]))
    clients = [RawClient(srv.addr) for _ in range(3)]
    for c in clients:
        c.send(request("GET", "/"))
    assert wait_until(lambda: samples(families(maddr), "rswaitress_requests_in_flight") == [3])
    assert wait_until(lambda: samples(families(maddr), "rswaitress_threads_busy") == [1])
    gate.set()
    for c in clients:
        assert c.read_response().status == 200
        c.close()
    fams = families(maddr)
    waited = samples(fams, "rswaitress_request_queue_wait_seconds",
                     "rswaitress_request_queue_wait_seconds_bucket", le="0.0001")
    count = samples(fams, "rswaitress_request_queue_wait_seconds",
                    "rswaitress_request_queue_wait_seconds_count")
    assert count == [3]
    assert waited[0] < 3, "two requests waited for the one thread"
    check_histograms(fams)


def test_health_and_readiness_during_a_drain(make_server):
    gate = threading.Event()
    started = threading.Event()

    def app(environ, start_response):
        started.set()
        gate.wait(WAIT)
        return apps.hello(environ, start_response)

    srv = make_server(app, metrics_listen="127.0.0.1:0")
    maddr = (srv.server.metrics_address[0], int(srv.server.metrics_address[1]))
    assert scrape(maddr, "/healthz")[::2] == (200, "ok\n")
    assert scrape(maddr, "/readyz")[::2] == (200, "ready\n")
    c = RawClient(srv.addr)
    c.send(request("GET", "/slow"))
    assert started.wait(WAIT)
    srv.server.close()  # a graceful stop: the request in progress holds it open
    assert wait_until(lambda: scrape(maddr, "/readyz")[0] == 503)
    assert scrape(maddr, "/readyz")[2] == "draining\n"
    assert scrape(maddr, "/healthz")[0] == 200
    gate.set()
    assert c.read_response().status == 200
    c.close()


def test_other_paths_and_methods(make_server):
    srv = make_server(_app, metrics_listen="127.0.0.1:0")
    maddr = (srv.server.metrics_address[0], int(srv.server.metrics_address[1]))
    assert scrape(maddr, "/nope")[0] == 404
    resp = parse_response(send_raw(maddr, request("POST", "/metrics", body=b"x")))
    assert resp.status == 405 and resp.header("Allow") == "GET, HEAD"
    resp = parse_response(send_raw(maddr, request("HEAD", "/healthz")), method="HEAD")
    assert resp.status == 200 and resp.body == b""
    # Hostile input gets the server's strict parser and a closed connection.
    assert parse_response(send_raw(maddr, b"GET /metrics HTTP/1.1\nHost: x\n\n")).status == 400
    assert parse_response(send_raw(maddr, b"GET /metrics HTTP/1.1\r\n" + b"a:b\r\n" * 60000
                                   + b"\r\n")).status == 431
    # The application's counters are untouched by scrapes.
    fams = families(maddr)
    assert samples(fams, "rswaitress_connections_accepted",
                   "rswaitress_connections_accepted_total") == [0]


_HOLDER = r"""
import ctypes, sys
sys.path.insert(0, sys.argv[2])
import rswaitress
fd = int(sys.argv[1])
libc = ctypes.PyDLL(None)
def app(environ, start_response):
    print("HOLDING", flush=True)
    buf = ctypes.create_string_buffer(1)
    libc.read(fd, buf, 1)  # the GIL stays held until the test writes a byte
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
srv = rswaitress.create_server(app, host="127.0.0.1", port=0, metrics_listen="127.0.0.1:0")
print("PORTS", srv.effective_port, srv.metrics_address[1], flush=True)
srv.run()
"""


@pytest.mark.posix
def test_metrics_answer_while_the_application_holds_the_gil():
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(r), TESTS_DIR],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(r,))
    os.close(r)
    try:
        _, port, mport = proc.stdout.readline().split()
        holder = RawClient(("127.0.0.1", int(port)), timeout=WAIT)
        holder.send(request("GET", "/"))
        assert proc.stdout.readline().strip() == b"HOLDING"
        maddr = ("127.0.0.1", int(mport))
        assert scrape(maddr, "/healthz")[0] == 200
        assert wait_until(lambda: samples(families(maddr), "rswaitress_threads_busy") == [1])
        assert samples(families(maddr), "rswaitress_requests_in_flight") == [1]
        os.write(w, b"x")
        assert holder.read_response().status == 200
        holder.close()
    finally:
        os.close(w)
        proc.kill()
        proc.wait(WAIT)
        proc.stdout.close()
        proc.stderr.close()


_MASTER = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, sys.argv[1])
import apps, rswaitress
spec = json.loads(sys.argv[2])
if __name__ == "__main__":
    server = rswaitress.create_server(getattr(apps, spec["app"]), **spec["kw"])
    print("PORTS", server.effective_port, server.metrics_address[1], flush=True)
    server.run()
"""


@pytest.mark.posix_signals
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_one_endpoint_covers_every_worker(start):
    kw = {"listen": "127.0.0.1:0", "workers": 2, "metrics_listen": "127.0.0.1:0"}
    child = PythonChild(_MASTER, TESTS_DIR, json.dumps({"app": "worker_info", "kw": kw}),
                        env={"RSWAITRESS_WORKER_START": start})
    try:
        line = child.stdout.wait_for(lambda line: line.startswith("PORTS"))
        _, port, mport = line.split()
        maddr = ("127.0.0.1", int(mport))
        child.stderr.wait_for(lambda line: "is serving" in line)
        child.stderr.wait_for(lambda line: "is serving" in line)
        pids = set()
        for _ in range(40):
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=WAIT)
            conn.request("GET", "/")
            pids.add(json.loads(conn.getresponse().read())["pid"])
            conn.close()
        fams = families(maddr)
        per_worker = {s.labels["worker"]: s.value for s in fams["rswaitress_requests"].samples
                      if s.name == "rswaitress_requests_total" and s.labels["code"] == "200"}
        assert sum(per_worker.values()) == 40
        assert set(per_worker) <= {"0", "1"}
        assert samples(fams, "rswaitress_workers_configured") == [2]
        assert samples(fams, "rswaitress_master_ready") == [1]
        check_histograms(fams)
        # A worker that dies is replaced: its slot's restarts go up.
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=WAIT)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.request("GET", "/crash")
            conn.getresponse()
        conn.close()
        assert wait_until(lambda: total(families(maddr), "rswaitress_worker_restarts",
                                        "rswaitress_worker_restarts_total") == 1)
        child.proc.terminate()
        assert child.proc.wait(WAIT) == 0
    finally:
        stop_processes([child.proc])


def test_metrics_listen_must_be_an_address():
    import rswaitress

    with pytest.raises(ValueError, match="metrics_listen: 'nowhere:port' is not a HOST:PORT"):
        rswaitress.create_server(_app, host="127.0.0.1", port=0, metrics_listen="nowhere:port")


def test_a_busy_metrics_port_fails_at_once(make_server):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        import rswaitress

        with pytest.raises(OSError):
            rswaitress.create_server(_app, host="127.0.0.1", port=0,
                                     metrics_listen=f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()
