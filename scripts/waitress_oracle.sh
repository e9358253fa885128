#!/usr/bin/env bash
# Runs Waitress 3.0.2's own functional test suite (tests/test_functional.py with its
# fixture apps, from the sdist on PyPI) against rswaitress, as a compatibility oracle.
#
# Nothing of Waitress is kept in this repository: the sdist is downloaded into a
# temporary directory and the suite's server classes are pointed at a small shim around
# rswaitress.server. The shim changes two settings: the Server header's product name
# (ident="waitress"), which the suite asserts, and allow_missing_host=True, since the suite
# sends HTTP/1.1 requests without Host (which RFC 9112, and rswaitress by default, refuse).
#
# Usage: scripts/waitress_oracle.sh [extra pytest args]
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download --quiet --no-deps --no-binary :all: waitress==3.0.2 -d "$work"
tar xzf "$work"/waitress-3.0.2.tar.gz -C "$work"
cd "$work/waitress-3.0.2"
python -m pip install --quiet waitress==3.0.2  # the suite imports waitress.compat/utilities
cat > rswaitress_shim.py <<'PY'
"""The server classes the Waitress suite subclasses, backed by rswaitress."""
from rswaitress import server as _server


class TcpWSGIServer(_server.TcpWSGIServer):
    def __init__(self, application, **kw):
        kw.setdefault("ident", "waitress")
        kw.setdefault("allow_missing_host", True)
        super().__init__(application, **kw)


class UnixWSGIServer(_server.UnixWSGIServer):
    def __init__(self, application, **kw):
        kw.setdefault("ident", "waitress")
        kw.setdefault("allow_missing_host", True)
        super().__init__(application, **kw)
PY
sed -i 's/^from waitress import server$/import rswaitress_shim as server/' tests/test_functional.py
grep -q '^import rswaitress_shim as server$' tests/test_functional.py
python -m pytest tests/test_functional.py -q -p no:cacheprovider -o addopts= "$@"
