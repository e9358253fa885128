"""HTTPS (``ssl_certfile`` & co.) over real sockets, with certificates made at test time
(tlspki): every key format, protocol floors checked with ``openssl s_client``, client
certificates required and optional, hostile handshakes, large bodies both ways and a
file_wrapper response checked by hash, certificate reload with and without workers.
"""

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading

import pytest

import rswaitress
from helpers import WAIT
from procs import PythonChild
from rawhttp import wait_until

pytest.importorskip("cryptography")
import tlspki  # noqa: E402  (needs cryptography)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
HAVE_OPENSSL = shutil.which("openssl") is not None


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tlspki.Pki(tmp_path_factory.mktemp("pki"))


def tls_kw(pki, **kw):
    return {"ssl_certfile": pki.certfile, "ssl_keyfile": pki.keyfile, **kw}


def environ_app(environ, start_response):
    keys = ("wsgi.url_scheme", "HTTPS", "SSL_CLIENT_S_DN", "SSL_CLIENT_CERT", "PATH_INFO")
    body = json.dumps({k: environ.get(k) for k in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def https(addr, ctx, method="GET", path="/", body=None, headers=None, conn=None):
    """(status, headers, body) of one request; ``conn`` is reused when given."""
    own = conn is None
    if own:
        conn = http.client.HTTPSConnection(addr[0], addr[1], context=ctx, timeout=WAIT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        if own:
            conn.close()


def connect_tls(addr, ctx, server_hostname="localhost"):
    raw = socket.create_connection(addr, timeout=WAIT)
    return ctx.wrap_socket(raw, server_hostname=server_hostname)


def local(srv):
    """The address to reach a server by the name its certificate carries."""
    return ("localhost", srv.addr[1])


def test_https_environ_keep_alive_and_alpn(make_server, pki):
    srv = make_server(environ_app, **tls_kw(pki))
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    conn = http.client.HTTPSConnection("localhost", srv.addr[1], context=ctx, timeout=WAIT)
    try:
        for i in range(3):
            status, _, body = https(None, ctx, path=f"/n{i}", conn=conn)
            env = json.loads(body)
            assert status == 200
            assert env == {"wsgi.url_scheme": "https", "HTTPS": "on", "SSL_CLIENT_S_DN": None,
                           "SSL_CLIENT_CERT": None, "PATH_INFO": f"/n{i}"}
        assert conn.sock.selected_alpn_protocol() == "http/1.1"
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        conn.close()
    assert srv.server._core.connection_count in (0, 1)


@pytest.mark.parametrize("key_type,fmt", [
    ("rsa", "pkcs8"), ("rsa", "traditional"), ("rsa", "encrypted"),
    ("ec", "pkcs8"), ("ec", "traditional"), ("ec", "encrypted"),
])
def test_every_key_format(make_server, pki, key_type, fmt):
    certfile, keyfile, password = pki.server_files(key_type, fmt, f"{key_type}-{fmt}")
    with open(keyfile) as f:
        text = f.read()
    expected = {"pkcs8": "BEGIN PRIVATE KEY", "encrypted": "BEGIN ENCRYPTED PRIVATE KEY",
                "traditional": "BEGIN RSA PRIVATE KEY" if key_type == "rsa"
                else "BEGIN EC PRIVATE KEY"}[fmt]
    assert expected in text
    srv = make_server(environ_app, ssl_certfile=certfile, ssl_keyfile=keyfile,
                      ssl_keyfile_password=password)
    status, _, body = https(local(srv), pki.client_context())
    assert status == 200 and json.loads(body)["HTTPS"] == "on"


def test_key_in_the_certificate_file(make_server, pki, tmp_path):
    both = tmp_path / "both.pem"
    with open(pki.certfile, "rb") as c, open(pki.keyfile, "rb") as k:
        both.write_bytes(k.read() + c.read())
    srv = make_server(environ_app, ssl_certfile=str(both))
    assert https(local(srv), pki.client_context())[0] == 200


def _error(pki, tmp_path, **kw):
    with pytest.raises(ValueError) as info:
        rswaitress.create_server(environ_app, host="127.0.0.1", port=0, **kw)
    return str(info.value)


def test_bad_files_fail_at_start_naming_the_file(pki, tmp_path):
    missing = str(tmp_path / "missing.pem")
    assert f"ssl_certfile {missing!r}".replace("'", '"') in _error(
        pki, tmp_path, ssl_certfile=missing, ssl_keyfile=pki.keyfile)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    msg = _error(pki, tmp_path, ssl_certfile=str(garbage), ssl_keyfile=pki.keyfile)
    assert "garbage.pem" in msg and "no certificate" in msg
    msg = _error(pki, tmp_path, ssl_certfile=pki.certfile, ssl_keyfile=str(garbage))
    assert "garbage.pem" in msg and "no usable private key" in msg
    # A key that is not the certificate's.
    msg = _error(pki, tmp_path, ssl_certfile=pki.certfile, ssl_keyfile=pki.client_keyfile)
    assert "does not match" in msg and "client-key.pem" in msg
    _, encrypted, _ = pki.server_files("rsa", "encrypted", "enc-bad")
    msg = _error(pki, tmp_path, ssl_certfile=pki.certfile, ssl_keyfile=encrypted)
    assert "encrypted" in msg and "ssl_keyfile_password" in msg
    msg = _error(pki, tmp_path, ssl_certfile=pki.certfile, ssl_keyfile=encrypted,
                 ssl_keyfile_password="wrong")
    assert "wrong ssl_keyfile_password" in msg and "enc-bad-key.pem" in msg
    msg = _error(pki, tmp_path, ssl_certfile=pki.certfile, ssl_keyfile=pki.keyfile,
                 ssl_cert_reqs="required", ssl_ca_certs=missing)
    assert "ssl_ca_certs" in msg and "missing.pem" in msg


def test_settings_are_checked(pki):
    for kw, text in [
        ({"ssl_keyfile": pki.keyfile}, "ssl_keyfile has no meaning without ssl_certfile"),
        ({"ssl_cert_reqs": "required"}, "ssl_cert_reqs has no meaning"),
        ({"ssl_certfile": pki.certfile, "ssl_cert_reqs": "required"}, "needs ssl_ca_certs"),
        ({"ssl_certfile": pki.certfile, "ssl_cert_reqs": "sometimes"}, "none, optional or"),
        ({"ssl_certfile": pki.certfile, "ssl_min_version": "TLSv1.1"}, "not supported"),
        ({"ssl_certfile": pki.certfile, "ssl_min_version": "SSLv2"}, "TLSv1.2 or TLSv1.3"),
    ]:
        with pytest.raises(ValueError, match=text):
            rswaitress.create_server(environ_app, host="127.0.0.1", port=0, **kw)
    from rswaitress.adjustments import Adjustments

    adj = Adjustments(ssl_certfile=pki.certfile, ssl_keyfile=pki.keyfile,
                      ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_ca_certs=pki.ca_file,
                      ssl_min_version=ssl.TLSVersion.TLSv1_3)
    assert (adj.ssl_cert_reqs, adj.ssl_min_version) == ("required", "TLSv1.3")
    adj = Adjustments(ssl_certfile=pki.certfile, ssl_keyfile=pki.keyfile,
                      ssl_cert_reqs="1", ssl_ca_certs=pki.ca_file, ssl_min_version="1.2")
    assert (adj.ssl_cert_reqs, adj.ssl_min_version) == ("optional", "TLSv1.2")


def test_cli_reports_a_bad_key_and_exits_1(pki, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rswaitress", "--listen=127.0.0.1:0",
         f"--ssl-certfile={pki.certfile}", f"--ssl-keyfile={pki.client_keyfile}", "apps:hello"],
        cwd=TESTS_DIR, capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 1
    assert "Error: ssl_keyfile" in proc.stderr and "does not match" in proc.stderr
    assert "Traceback" not in proc.stderr


def run_s_client(pki, port, *flags):
    """Runs ``openssl s_client`` against the port: (handshake completed and the server
    certificate verified, the output)."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
           "-CAfile", pki.ca_file, *flags]
    proc = subprocess.run(cmd, input=b"", capture_output=True, timeout=WAIT)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    done = proc.returncode == 0 and "Verify return code: 0 (ok)" in out
    return done, out


@pytest.mark.skipif(not HAVE_OPENSSL, reason="no openssl command")
def test_protocol_floors_with_openssl(make_server, pki):
    default = make_server(environ_app, **tls_kw(pki))
    port = default.addr[1]
    done, out = run_s_client(pki, port, "-tls1_2")
    assert done and "TLSv1.2" in out, out
    done, out = run_s_client(pki, port, "-tls1_3")
    assert done and "TLSv1.3" in out, out
    # TLS 1.1 is never served (the client is let offer it).
    done, out = run_s_client(pki, port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert not done, out
    strict = make_server(environ_app, **tls_kw(pki, ssl_min_version="TLSv1.3"))
    done, out = run_s_client(pki, strict.addr[1], "-tls1_2")
    assert not done, out
    assert "alert" in out.lower() or "error" in out.lower(), out
    done, out = run_s_client(pki, strict.addr[1], "-tls1_3")
    assert done and "TLSv1.3" in out, out
    # A server with a floor still serves after refusing handshakes.
    assert https(local(strict), pki.client_context())[0] == 200


def _handshake_fails(addr, ctx):
    """Connects and sends a request; True when the TLS session fails (at the handshake,
    or at the first read in TLS 1.3 where the server's verdict comes after it)."""
    try:
        with connect_tls(addr, ctx) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = s.recv(65536)
            return data == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def test_client_certificate_required(make_server, pki):
    srv = make_server(environ_app, **tls_kw(pki, ssl_ca_certs=pki.ca_file,
                                             ssl_cert_reqs="required"))
    addr = local(srv)
    ctx = pki.client_context(pki.client_certfile, pki.client_keyfile)
    status, _, body = https(addr, ctx)
    env = json.loads(body)
    assert status == 200
    assert env["SSL_CLIENT_S_DN"] == "CN=alice\\+ops,O=Example\\, Inc.,C=NL"
    with open(pki.client_certfile) as f:
        expected = ssl.PEM_cert_to_DER_cert(f.read())
    assert ssl.PEM_cert_to_DER_cert(env["SSL_CLIENT_CERT"]) == expected
    assert _handshake_fails(addr, pki.client_context())
    assert _handshake_fails(addr, pki.client_context(pki.rogue_certfile, pki.rogue_keyfile))
    # The refusals took nothing down.
    assert https(addr, ctx)[0] == 200
    assert wait_until(lambda: srv.server._core.connection_count == 0)


def test_client_certificate_optional(make_server, pki):
    srv = make_server(environ_app, **tls_kw(pki, ssl_ca_certs=pki.ca_file,
                                             ssl_cert_reqs="optional"))
    addr = local(srv)
    env = json.loads(https(addr, pki.client_context())[2])
    assert env["HTTPS"] == "on" and env["SSL_CLIENT_S_DN"] is None
    env = json.loads(https(addr, pki.client_context(pki.client_certfile, pki.client_keyfile))[2])
    assert env["SSL_CLIENT_S_DN"].startswith("CN=alice")
    # A certificate given is verified, optional or not.
    assert _handshake_fails(addr, pki.client_context(pki.rogue_certfile, pki.rogue_keyfile))


def read_until_closed(sock):
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def test_plain_http_on_the_tls_port_is_answered_400(make_server, pki):
    srv = make_server(environ_app, **tls_kw(pki))
    with socket.create_connection(srv.addr, timeout=WAIT) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"plain HTTP request was sent to HTTPS port" in answer
    assert b"Connection: close" in answer


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64,          # a record that is no ClientHello
    b"\x16\x03\x03\xff\xff" + os.urandom(2048),          # an oversized handshake record
    # Random bytes; the first one not an uppercase letter, which starts a plain HTTP
    # request (answered in plaintext, see the test above).
    bytes([0x80 | os.urandom(1)[0]]) + os.urandom(4095).replace(b"\x16", b"\x17"),
    b"\x80\x2e\x01\x03\x01" + b"\x00" * 45,              # an SSLv2-style hello
], ids=["bad-hello", "oversized", "random", "sslv2"])
def test_garbage_handshakes_are_closed(make_server, pki, garbage):
    srv = make_server(environ_app, **tls_kw(pki))
    with socket.create_connection(srv.addr, timeout=WAIT) as s:
        s.sendall(garbage)
        answer = read_until_closed(s)
    # At most a TLS alert (content type 21), never an HTTP answer.
    assert answer == b"" or answer[:1] == b"\x15", answer[:40]
    assert https(local(srv), pki.client_context())[0] == 200
    assert wait_until(lambda: srv.server._core.connection_count == 0)


def test_stalled_handshakes_are_closed_and_others_served(make_server, pki):
    srv = make_server(environ_app, **tls_kw(pki, channel_timeout=1, cleanup_interval=1))
    stalled = []
    # Nothing sent; half a ClientHello; a whole one and then silence (the client never
    # finishes the handshake).
    stalled.append(socket.create_connection(srv.addr, timeout=WAIT))
    s = socket.create_connection(srv.addr, timeout=WAIT)
    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    stalled.append(s)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    s = socket.create_connection(srv.addr, timeout=WAIT)
    s.sendall(outgoing.read())
    stalled.append(s)
    # Served meanwhile.
    assert https(local(srv), pki.client_context())[0] == 200
    for s in stalled:
        data = read_until_closed(s)
        assert not data.startswith(b"HTTP/"), data[:40]
        s.close()
    assert wait_until(lambda: srv.server._core.connection_count == 0)


def hash_app(environ, start_response):
    """POST: echoes the body back in 1 MiB pieces, with its SHA-256 in a header."""
    body = environ["wsgi.input"].read()
    digest = hashlib.sha256(body).hexdigest()
    start_response("200 OK", [("Content-Length", str(len(body))), ("X-Sha256", digest)])
    return [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]


def test_sixteen_mebibytes_both_ways(make_server, pki):
    srv = make_server(hash_app, **tls_kw(pki))
    payload = os.urandom(16 << 20)
    status, headers, body = https(local(srv), pki.client_context(), "POST", "/", payload,
                                  {"Content-Type": "application/octet-stream"})
    assert status == 200
    assert headers["X-Sha256"] == hashlib.sha256(payload).hexdigest()
    assert len(body) == len(payload) and hashlib.sha256(body).digest() == \
        hashlib.sha256(payload).digest()


def test_chunked_upload_over_tls(make_server, pki):
    srv = make_server(hash_app, **tls_kw(pki))
    pieces = [os.urandom(100_000) for _ in range(20)]
    # http.client sends an iterable without Content-Length chunked.
    status, headers, body = https(local(srv), pki.client_context(), "POST", "/", iter(pieces))
    assert status == 200
    assert headers["X-Sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_file_wrapper_is_encrypted_byte_exact(make_server, pki, tmp_path):
    path = tmp_path / "eight.bin"
    data = os.urandom(8 << 20)
    path.write_bytes(data)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 65536)

    srv = make_server(app, **tls_kw(pki))
    conn = http.client.HTTPSConnection("localhost", srv.addr[1], context=pki.client_context(),
                                       timeout=WAIT)
    try:
        for _ in range(2):  # twice on one connection: the framing ends exactly
            status, headers, body = https(None, None, conn=conn)
            assert status == 200 and headers["Content-Length"] == str(len(data))
            assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    finally:
        conn.close()


def test_slow_reader_of_a_tls_response_is_timed_out(make_server, pki):
    """A client that asks for a large response and reads none of it is closed after
    channel_timeout, which frees the pool thread writing it."""
    done = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [])
        try:
            for _ in range(256):
                yield b"x" * (1 << 20)
        finally:
            done.set()

    srv = make_server(app, **tls_kw(pki, channel_timeout=1, cleanup_interval=1,
                                    outbuf_high_watermark=1 << 20))
    s = connect_tls(local(srv), pki.client_context())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert done.wait(WAIT), "the writer was not freed"
    s.close()
    assert wait_until(lambda: srv.server._core.connection_count == 0)


@pytest.mark.unix_sockets
def test_unix_socket_stays_plain(make_server, pki, tmp_path, caplog):
    path = str(tmp_path / "plain.sock")
    with caplog.at_level("WARNING", logger="rswaitress"):
        make_server(environ_app, unix_socket=path, **tls_kw(pki))
    assert any("Unix" in r.getMessage() and "ssl_certfile" in r.getMessage()
               for r in caplog.records)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(WAIT)
        c.connect(path)
        c.sendall(b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(c)
    assert answer.startswith(b"HTTP/1.1 200")
    env = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert env["wsgi.url_scheme"] == "http" and env["HTTPS"] is None


@pytest.mark.procfs
def test_no_descriptor_leaks(make_server, pki):
    srv = make_server(environ_app, **tls_kw(pki))
    addr = local(srv)
    ctx = pki.client_context()
    assert https(addr, ctx)[0] == 200
    assert wait_until(lambda: srv.server._core.connection_count == 0)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(30):
        https(addr, ctx)
        with socket.create_connection(srv.addr, timeout=WAIT) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n" if i % 2 else os.urandom(300))
            read_until_closed(s)
        _handshake_fails(addr, ssl.create_default_context())  # does not trust the CA
    assert wait_until(lambda: srv.server._core.connection_count == 0)
    assert wait_until(lambda: len(os.listdir("/proc/self/fd")) <= before)


def peer_serial(port, pki):
    with connect_tls(("localhost", port), pki.client_context()) as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_reload_in_process(make_server, pki, tmp_path):
    certfile = str(tmp_path / "live.pem")
    shutil.copy(pki.certfile, certfile)
    srv = make_server(environ_app, ssl_certfile=certfile, ssl_keyfile=pki.keyfile)
    port = srv.addr[1]
    assert peer_serial(port, pki) == pki.server_rsa.serial_number
    kept = http.client.HTTPSConnection("localhost", port, context=pki.client_context(),
                                       timeout=WAIT)
    assert https(None, None, conn=kept)[0] == 200
    _, renewed = pki.issue_server("renewed.pem", "localhost")
    shutil.copy(os.path.join(pki.dir, "renewed.pem"), certfile)
    srv.server.reload_tls()
    assert peer_serial(port, pki) == renewed.serial_number
    assert https(None, None, conn=kept)[0] == 200, "an open session keeps working"
    with open(certfile, "w") as f:
        f.write("truncated")
    with pytest.raises(ValueError, match="live.pem"):
        srv.server.reload_tls()
    assert peer_serial(port, pki) == renewed.serial_number, "the loaded one stays"
    kept.close()


_SERVE = r"""
import json, signal, sys
sys.path.insert(0, sys.argv[1])
import apps, rswaitress
if __name__ == "__main__":
    if sys.argv[3:] == ["nohup"]:  # started with SIGHUP ignored, as nohup does
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    rswaitress.serve(apps.worker_info, **json.loads(sys.argv[2]))
"""


@pytest.mark.posix_signals
@pytest.mark.parametrize("workers, nohup", [(1, False), (1, True), (2, False)])
def test_reload_on_sighup(pki, tmp_path, workers, nohup):
    certfile = str(tmp_path / "live.pem")
    shutil.copy(pki.certfile, certfile)
    kw = {"listen": "127.0.0.1:0", "ssl_certfile": certfile, "ssl_keyfile": pki.keyfile,
          "workers": workers}
    child = PythonChild(_SERVE, TESTS_DIR, json.dumps(kw), *(["nohup"] if nohup else []))
    try:
        line = child.stderr.wait_for(lambda line: "Serving on https://" in line)
        port = int(line.rsplit(":", 1)[1])
        if workers > 1:
            child.stderr.wait_for(lambda line: "is serving" in line)
        assert peer_serial(port, pki) == pki.server_rsa.serial_number
        _, renewed = pki.issue_server(f"renewed-{workers}.pem", "localhost")
        shutil.copy(os.path.join(pki.dir, f"renewed-{workers}.pem"), certfile)
        child.proc.send_signal(signal.SIGHUP)
        if workers == 1:
            child.stderr.wait_for(lambda line: "Reloaded the TLS certificate" in line)
            assert peer_serial(port, pki) == renewed.serial_number
        else:
            assert wait_until(lambda: peer_serial(port, pki) == renewed.serial_number)
        # A broken file: the reload is refused and the renewed certificate stays.
        with open(certfile, "w") as f:
            f.write("truncated")
        child.proc.send_signal(signal.SIGHUP)
        text = "not reloaded" if workers == 1 else "Not reloading"
        child.stderr.wait_for(lambda line: text in line)
        assert peer_serial(port, pki) == renewed.serial_number
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(WAIT) == 0
    finally:
        child.stop()


def test_metrics_listener_stays_plain(make_server, pki):
    srv = make_server(environ_app, metrics_listen="127.0.0.1:0", **tls_kw(pki))
    host, port = srv.server.metrics_address
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert https(local(srv), pki.client_context())[0] == 200
