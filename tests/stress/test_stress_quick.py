"""Stress checks in the pytest suite.

- ``test_aborted_connections_leave_no_fds_or_threads`` always runs (a few seconds):
  300 connections abandoned in each style of ``stresslib.ABORT_STYLES`` against the
  stress server in a subprocess; descriptors must come back to the baseline (+-2) and
  the thread count must not change.
- ``test_run_stress_quick`` runs ``run_stress.py --quick`` (100k requests under wrk,
  2,000 aborts) and ``test_run_isolation_quick`` runs ``run_isolation.py --quick``
  (worst-case heads, slow readers, a GIL-holding call) only when RSWAITRESS_STRESS is set:

      RSWAITRESS_STRESS=1 python -m pytest tests/stress -v
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import stresslib as L  # noqa: E402
from helpers import WAIT  # noqa: E402  (tests/, put on sys.path by conftest.py)

PER_STYLE = 300


@pytest.mark.procfs  # counts descriptors and threads through /proc
def test_aborted_connections_leave_no_fds_or_threads():
    with L.ServerProcess(threads=4, connection_limit=2000) as srv:
        # Traffic first, so that lazily created state is not counted as a leak.
        assert L.server_answers(srv.port)
        fds0, thr0 = L.stable_counts(srv.pid)
        total = PER_STYLE * len(L.ABORT_STYLES)
        res = L.abort_connections(srv.port, total, batch=200, time_limit=WAIT)
        assert not res["timed_out"], f"the aborts were still going after {WAIT} s: {res}"
        assert res["done"] == total, res
        assert all(n == PER_STYLE for n in res["per_style"].values()), res
        fds1, thr1, waited = L.settle(srv.pid, fds0, thr0, timeout=WAIT, tolerance=2)
        assert abs(fds1 - fds0) <= 2, (
            f"fds {fds0} -> {fds1} after {waited:.1f} s: {L.fd_kinds(srv.pid)}")
        assert thr1 == thr0, f"threads {thr0} -> {thr1}"
        assert srv.alive(), srv.stderr_text()
        assert L.server_answers(srv.port), "server stopped answering after the aborts"


@pytest.mark.procfs
@pytest.mark.skipif(not os.environ.get("RSWAITRESS_STRESS"), reason="set RSWAITRESS_STRESS=1")
@pytest.mark.timeout(100)
def test_run_stress_quick(tmp_path):
    _run_quick("run_stress.py", tmp_path / "results.md", 90)


@pytest.mark.skipif(not os.environ.get("RSWAITRESS_STRESS"), reason="set RSWAITRESS_STRESS=1")
@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="ctypes.PyDLL(None), pass_fds and /proc/net/tcp")
@pytest.mark.timeout(150)
def test_run_isolation_quick(tmp_path):
    _run_quick("run_isolation.py", tmp_path / "results-isolation.md", 140)


def _run_quick(script, out, timeout):
    """Runs `script --quick`, which must exit 0 and report every target met."""
    try:
        p = subprocess.run(
            [sys.executable, os.path.join(HERE, script), "--quick", "--out", str(out)],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:  # run() has killed it
        pytest.fail(f"{script} --quick took over {timeout} s:\n{e.stdout}")
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "ALL TARGETS MET" in p.stdout
