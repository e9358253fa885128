"""Tests for rswaitress.adjustments: its own behaviour, then side-by-side
parity with waitress.adjustments from Waitress 3.0.2."""

import getopt
import re
import socket
import warnings

import pytest

from rswaitress import adjustments as adj
from rswaitress.adjustments import Adjustments

TCP = (socket.SOCK_STREAM, socket.IPPROTO_TCP)


def _ipv6_loopback_usable():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _ipv6_loopback_usable(), reason="no usable IPv6 loopback"
)


def make(**kw):
    """Build Adjustments, failing the test on any unexpected warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Adjustments(**kw)


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1", True), ("t", True), ("true", True), ("TRUE", True), (" yes\n", True),
        ("y", True), ("on", True), ("On", True), (True, True), (1, True),
        ("0", False), ("false", False), ("no", False), ("off", False), ("", False),
        ("enabled", False), ("2", False), (2, False), (1.0, False), (None, False),
        (False, False),
    ],
)
def test_to_bool(value, expected):
    assert adj.to_bool(value) is expected


def test_to_octal():
    assert adj.to_octal("600") == 384
    assert adj.to_octal("0o755") == 493
    with pytest.raises(ValueError):
        adj.to_octal("8")
    with pytest.raises(TypeError):
        adj.to_octal(0o600)


def test_to_list_and_to_lines():
    assert adj.to_list(" a  b\n\n c\td \n") == ["a", "b", "c", "d"]
    assert adj.to_list(["a b", "c"]) == ["a", "b", "c"]
    assert adj.to_list(("x",)) == ["x"]
    assert adj.to_lines(" a b \n\n c ") == ["a b", "c"]
    assert adj.to_set("b a b") == {"a", "b"}
    with pytest.raises(AttributeError):
        adj.to_list([("127.0.0.1", 80)])


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("", ""), ("   ", ""), ("/", "/"), ("app", "/app"), ("/app/", "/app"),
        ("//app//sub///", "/app//sub"), (" app/ ", "/app"),
    ],
)
def test_to_url_prefix(raw, expected):
    assert adj.to_url_prefix(raw) == expected


def test_to_optional_str_and_only_sockets():
    assert adj.to_optional_str("") is None
    assert adj.to_optional_str(0) is None
    assert adj.to_optional_str(5) == "5"
    with socket.socket() as sock:
        assert adj.only_sockets([sock, "x", 3]) == [sock]
    assert adj.only_sockets("text") == []


def test_waitress_helper_names_are_available():
    assert adj.asbool is adj.to_bool
    assert adj.aslist is adj.to_list
    assert adj.asoctal is adj.to_octal
    assert adj.slash_fixed_str is adj.to_url_prefix


# --------------------------------------------------------------- defaults

EXPECTED_DEFAULTS = {
    "host": "0.0.0.0",
    "port": 8080,
    "ipv4": True,
    "ipv6": True,
    "threads": 4,
    "trusted_proxy": None,
    "trusted_proxy_count": 1,
    "trusted_proxy_headers": set(),
    "log_untrusted_proxy_headers": False,
    "clear_untrusted_proxy_headers": True,
    "url_scheme": "http",
    "url_prefix": "",
    "ident": "rswaitress",
    "backlog": 1024,
    "recv_bytes": 8192,
    "send_bytes": 1,
    "outbuf_overflow": 1048576,
    "outbuf_high_watermark": 16777216,
    "inbuf_overflow": 524288,
    "connection_limit": 100,
    "cleanup_interval": 30,
    "channel_timeout": 120,
    "log_socket_errors": True,
    "max_request_header_size": 262144,
    "max_request_body_size": 1073741824,
    "expose_tracebacks": False,
    "unix_socket": None,
    "unix_socket_perms": 0o600,
    "asyncore_loop_timeout": 1,
    "asyncore_use_poll": False,
    "channel_request_lookahead": 0,
    "server_name": "waitress.invalid",
    "sockets": [],
    # rswaitress's own
    "allow_missing_host": False,
    "graceful_timeout": 30.0,
    "workers": 1,
    "max_requests": 0,
    "max_requests_jitter": 0,
    "touch_reload": None,
    "access_log": False,
    "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
    "metrics_listen": None,
    "ssl_certfile": None,
    "ssl_keyfile": None,
    "ssl_keyfile_password": None,
    "ssl_ca_certs": None,
    "ssl_cert_reqs": "none",
    "ssl_min_version": "TLSv1.2",
}


def test_defaults():
    a = make()
    for name, expected in EXPECTED_DEFAULTS.items():
        assert getattr(a, name) == expected, name
    # The default listen entry 0.0.0.0:8080 resolves to one IPv4 address.
    assert a.listen == [(socket.AF_INET, *TCP, ("0.0.0.0", 8080))]
    # Nagle's algorithm off on accepted connections (SOL_TCP == IPPROTO_TCP).
    assert a.socket_options == [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


@pytest.mark.parametrize("kw, name, expected", [
    ({"allow_missing_host": "yes"}, "allow_missing_host", True),
    ({"allow_missing_host": "0"}, "allow_missing_host", False),
    ({"allow_missing_host": True}, "allow_missing_host", True),
    ({"graceful_timeout": "2.5"}, "graceful_timeout", 2.5),
    ({"graceful_timeout": 7}, "graceful_timeout", 7.0),
])
def test_rswaitress_settings_coerce_strings(kw, name, expected):
    assert getattr(make(**kw), name) == expected


def test_rswaitress_setting_errors_name_the_value():
    with pytest.raises(ValueError, match="could not convert string to float: 'soon'"):
        make(graceful_timeout="soon")
    with pytest.raises(ValueError, match="workers must be at least 1, not 0"):
        make(workers="0")
    with pytest.raises(ValueError, match="max_requests must be at least 0, not -5"):
        make(max_requests=-5)
    with pytest.raises(ValueError, match="graceful_timeout must not be negative"):
        make(graceful_timeout=-1)


@pytest.mark.parametrize("kw, supervised", [
    ({}, False), ({"workers": "1"}, False), ({"workers": "2"}, True),
    ({"max_requests": "100"}, True),
    ({"touch_reload": "/tmp/x"}, True), ({"touch_reload": ""}, False),
])
def test_which_settings_start_a_master(kw, supervised):
    assert make(**kw).uses_supervisor() is supervised


def test_rswaitress_only_settings_are_unknown_to_waitress():
    for name in adj.RSWAITRESS_ONLY:
        assert name in adj.SETTINGS_BY_NAME
        assert not hasattr(waitress_adjustments.Adjustments, name)


def test_every_setting_has_a_documented_default():
    assert set(adj.SETTINGS_BY_NAME) == set(EXPECTED_DEFAULTS) | {"listen"}
    assert all(setting.why for setting in adj.SETTINGS)


def test_class_level_defaults_readable():
    assert Adjustments.threads == 4
    assert Adjustments.host == "0.0.0.0"
    assert Adjustments.port == 8080
    assert Adjustments.trusted_proxy_count is None  # only instances get 1


def test_mutable_defaults_not_shared():
    first, second = make(), make()
    first.trusted_proxy_headers.add("forwarded")
    first.sockets.append("x")
    assert second.trusted_proxy_headers == set()
    assert second.sockets == []
    assert Adjustments.sockets == []


# ---------------------------------------------------------- coercion (.ini)


def test_string_values_as_from_ini():
    a = make(
        host="127.0.0.1",
        port="9090",
        threads="8",
        backlog=" 64 ",
        expose_tracebacks="yes",
        log_socket_errors="off",
        asyncore_use_poll="1",
        unix_socket_perms="755",
        url_prefix="app/",
        ident="",
        channel_request_lookahead="5",
        max_request_body_size="100",
    )
    assert (a.host, a.port, a.threads, a.backlog) == ("127.0.0.1", 9090, 8, 64)
    assert a.expose_tracebacks is True
    assert a.log_socket_errors is False
    assert a.asyncore_use_poll is True
    assert a.unix_socket_perms == 0o755
    assert a.url_prefix == "/app"
    assert a.ident is None
    assert a.channel_request_lookahead == 5
    assert a.max_request_body_size == 100
    assert a.listen == [(socket.AF_INET, *TCP, ("127.0.0.1", 9090))]


def test_native_values():
    a = make(port=9091, threads=2, expose_tracebacks=True, host="127.0.0.1")
    assert (a.port, a.threads, a.expose_tracebacks) == (9091, 2, True)


def test_bad_int_reports_builtin_error():
    with pytest.raises(ValueError, match=r"invalid literal for int\(\) with base 10: 'many'"):
        make(threads="many")
    with pytest.raises(TypeError):
        make(threads=None)


def test_unix_socket_perms_must_be_text():
    with pytest.raises(TypeError):
        make(unix_socket_perms=0o600)
    with pytest.raises(ValueError):
        make(unix_socket_perms="9")


def test_unknown_adjustment():
    with pytest.raises(ValueError) as info:
        make(nonsense=1)
    assert str(info.value) == "Unknown adjustment 'nonsense'"


def test_errors_reported_in_keyword_order():
    with pytest.raises(ValueError, match="Unknown adjustment 'bogus'"):
        make(bogus=1, port="x")
    with pytest.raises(ValueError, match="invalid literal"):
        make(port="x", bogus=1)


def test_send_bytes_deprecated():
    with pytest.warns(DeprecationWarning) as record:
        a = Adjustments(send_bytes="9000")
    assert [str(w.message) for w in record] == [
        "send_bytes will be removed in a future release"
    ]
    assert a.send_bytes == 9000


# --------------------------------------------------------- mutual exclusion


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"listen": "127.0.0.1:1", "host": "h"}, "host or port may not be set if listen is set."),
        ({"listen": "127.0.0.1:1", "port": 1}, "host or port may not be set if listen is set."),
        ({"listen": "127.0.0.1:1", "sockets": []}, "socket may not be set if listen is set."),
        ({"sockets": [], "host": "h"}, "host or port may not be set if sockets is set."),
        ({"sockets": [], "port": 1}, "host or port may not be set if sockets is set."),
        ({"sockets": [], "unix_socket": "/tmp/s"}, "unix_socket may not be set if sockets is set"),
        ({"unix_socket": "/tmp/s", "host": "h"},
         "unix_socket may not be set if host or port is set"),
        ({"unix_socket": "/tmp/s", "port": 1}, "unix_socket may not be set if host or port is set"),
        ({"unix_socket": "/tmp/s", "listen": "x:1"}, "unix_socket may not be set if listen is set"),
    ],
)
def test_conflicting_settings(kw, message):
    with pytest.raises(ValueError) as info:
        make(**kw)
    assert str(info.value) == message


def test_conflicts_checked_before_unknown_names():
    with pytest.raises(ValueError, match="listen is set"):
        make(bogus=1, listen="127.0.0.1:1", port=1)


def test_unix_socket_keeps_default_listen():
    a = make(unix_socket="/tmp/rsw.sock", unix_socket_perms="660")
    assert a.unix_socket == "/tmp/rsw.sock"
    assert a.unix_socket_perms == 0o660
    assert a.listen == [(socket.AF_INET, *TCP, ("0.0.0.0", 8080))]


# ------------------------------------------------------------------ listen


def test_listen_ipv4():
    a = make(listen="127.0.0.1:9000")
    assert a.listen == [(socket.AF_INET, *TCP, ("127.0.0.1", 9000))]
    assert a.host == "0.0.0.0" and a.port == 8080  # untouched by listen


@needs_ipv6
def test_listen_ipv6_bracketed_port_zero():
    a = make(listen="[::1]:0")
    assert a.listen == [(socket.AF_INET6, *TCP, ("::1", 0, 0, 0))]


def test_listen_bracketed_ipv6_without_port_gets_default_port():
    a = make(listen="[::1]")
    assert [entry[3][:2] for entry in a.listen] == [("::1", 8080)]


def test_listen_bare_host_gets_default_port():
    assert make(listen="127.0.0.1").listen == [(socket.AF_INET, *TCP, ("127.0.0.1", 8080))]


def test_listen_wildcard_respects_families():
    v4 = make(listen="*:9001", ipv6="false")
    assert v4.listen == [(socket.AF_INET, *TCP, ("0.0.0.0", 9001))]
    v6 = make(listen="*:9001", ipv4=False)
    assert [entry[0] for entry in v6.listen] == [socket.AF_INET6]
    assert v6.listen[0][3][:2] == ("::", 9001)


def test_listen_both_families_off_means_unrestricted():
    both = make(listen="*:9002")
    neither = make(listen="*:9002", ipv4=False, ipv6=False)
    assert neither.listen == both.listen
    assert socket.AF_INET in {entry[0] for entry in both.listen}


def test_listen_multiple_spaces_newlines_and_lists():
    expected = [
        (socket.AF_INET, *TCP, ("127.0.0.1", 9003)),
        (socket.AF_INET, *TCP, ("127.0.0.2", 9004)),
        (socket.AF_INET, *TCP, ("127.0.0.3", 9005)),
    ]
    assert make(listen="127.0.0.1:9003 127.0.0.2:9004\n  127.0.0.3:9005\n").listen == expected
    assert make(listen=["127.0.0.1:9003 127.0.0.2:9004", "127.0.0.3:9005"]).listen == expected


def test_listen_duplicates_dropped_except_port_zero():
    assert len(make(listen="127.0.0.1:9006 127.0.0.1:9006").listen) == 1
    assert len(make(listen="127.0.0.1:0 127.0.0.1:0").listen) == 2


def test_listen_localhost_and_service_names():
    local = make(listen="localhost:9007").listen
    assert local and all(entry[3][1] == 9007 for entry in local)
    assert all(entry[3][0] in ("127.0.0.1", "::1") for entry in local)
    assert make(listen="127.0.0.1:http").listen[0][3] == ("127.0.0.1", 80)


def test_host_and_port_become_listen():
    assert make(host="127.0.0.1", port=9008).listen == [
        (socket.AF_INET, *TCP, ("127.0.0.1", 9008))
    ]
    # Only the port given: the default host is used with it.
    assert make(port="9009").listen == [(socket.AF_INET, *TCP, ("0.0.0.0", 9009))]


@needs_ipv6
def test_host_ipv6_with_port():
    a = make(host="::1", port="0")
    assert a.listen == [(socket.AF_INET6, *TCP, ("::1", 0, 0, 0))]


def test_empty_listen_gives_no_sockets():
    assert make(listen="").listen == []


@pytest.mark.parametrize(
    "kw",
    [
        {"listen": "127.0.0.1:notaservice"},
        {"listen": "name.invalid:80"},
        {"host": "127.0.0.1", "port": -1},
    ],
)
def test_invalid_host_port(kw):
    with pytest.raises(ValueError) as info:
        make(**kw)
    assert str(info.value) == "Invalid host/port specified."


# ----------------------------------------------------------- trusted proxy


def test_trusted_proxy_count_requires_proxy():
    with pytest.raises(ValueError) as info:
        make(trusted_proxy_count="2")
    assert str(info.value) == "trusted_proxy_count has no meaning without setting trusted_proxy"


def test_trusted_proxy_headers_require_proxy():
    with pytest.raises(ValueError) as info:
        make(trusted_proxy_headers="x-forwarded-for")
    assert str(info.value) == (
        "trusted_proxy_headers has no meaning without setting trusted_proxy"
    )
    # An empty header list means nothing is trusted and is fine.
    assert make(trusted_proxy_headers="").trusted_proxy_headers == set()


def test_trusted_proxy_headers_normalised():
    a = make(
        trusted_proxy="10.0.0.1",
        trusted_proxy_count="2",
        trusted_proxy_headers="X-Forwarded-For\n x-forwarded-PROTO x-forwarded-for",
    )
    assert a.trusted_proxy == "10.0.0.1"
    assert a.trusted_proxy_count == 2
    assert a.trusted_proxy_headers == {"x-forwarded-for", "x-forwarded-proto"}


def test_trusted_proxy_unknown_header():
    with pytest.raises(ValueError) as info:
        make(trusted_proxy="*", trusted_proxy_headers="x-forwarded-for x-bogus")
    assert str(info.value) == (
        "Received unknown trusted_proxy_headers value (x-bogus) expected one of "
        "forwarded, x-forwarded-by, x-forwarded-for, x-forwarded-host, "
        "x-forwarded-port, x-forwarded-proto"
    )


def test_forwarded_excludes_x_forwarded():
    with pytest.raises(ValueError) as info:
        make(trusted_proxy="*", trusted_proxy_headers=["forwarded", "x-forwarded-for"])
    assert str(info.value) == (
        "The Forwarded proxy header and the X-Forwarded-{By,Host,Proto,Port,For} "
        "headers are mutually exclusive. Can't trust both!"
    )
    assert make(trusted_proxy="*", trusted_proxy_headers="Forwarded").trusted_proxy_headers == {
        "forwarded"
    }


def test_trusted_proxy_alone_trusts_proto_with_warning():
    with pytest.warns(DeprecationWarning, match="Implicitly trusting X-Forwarded-Proto"):
        a = Adjustments(trusted_proxy="127.0.0.1")
    assert a.trusted_proxy_headers == {"x-forwarded-proto"}
    assert a.trusted_proxy_count == 1


def test_empty_trusted_proxy_is_none():
    a = make(trusted_proxy="")
    assert a.trusted_proxy is None
    with pytest.raises(ValueError, match="trusted_proxy_count has no meaning"):
        make(trusted_proxy="", trusted_proxy_count=1)


# ----------------------------------------------------------------- sockets


def test_sockets_filtered_and_checked():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inet:
        a = make(sockets=[inet, "not a socket"])
        assert a.sockets == [inet]
    assert make(sockets="text").sockets == []


@pytest.mark.unix_sockets
def test_sockets_inet_and_unix_not_mixed():
    with socket.socket(socket.AF_INET) as inet, socket.socket(socket.AF_UNIX) as unix:
        with pytest.raises(ValueError) as info:
            make(sockets=[inet, unix])
        assert str(info.value) == "Internet and UNIX sockets may not be mixed."
        assert make(sockets=[unix]).sockets == [unix]


def test_sockets_must_be_stream():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError) as info:
            make(sockets=[udp])
    assert str(info.value) == "Only Internet or UNIX stream sockets may be used."


# --------------------------------------------------------------- parse_args


def test_parse_args_defaults():
    assert Adjustments.parse_args([]) == ({"help": False, "call": False}, [])


def test_parse_args_values_are_raw_strings():
    kw, args = Adjustments.parse_args(
        ["--port=8000", "--threads", "7", "--call", "--no-ipv6", "--expose-tracebacks",
         "--no-log-socket-errors", "--url-prefix=/x/", "pkg.mod:app"]
    )
    assert args == ["pkg.mod:app"]
    assert kw == {
        "help": False, "call": True, "port": "8000", "threads": "7", "ipv6": "false",
        "expose_tracebacks": "true", "log_socket_errors": "false", "url_prefix": "/x/",
    }
    # ...and they are accepted by the constructor.
    assert make(**{k: v for k, v in kw.items() if k not in ("help", "call")}).threads == 7


def test_parse_args_repeated_listen_joined():
    kw, _ = Adjustments.parse_args(["--listen=127.0.0.1:1", "--listen", "[::1]:2"])
    assert kw["listen"] == " 127.0.0.1:1 [::1]:2"


def test_parse_args_every_setting_has_an_option():
    for setting in adj.SETTINGS:
        option = "--" + setting.name.replace("_", "-")
        if setting.convert is adj.to_bool:
            on, _ = Adjustments.parse_args([option])
            off, _ = Adjustments.parse_args(["--no-" + option[2:]])
            assert (on[setting.name], off[setting.name]) == ("true", "false")
        else:
            kw, _ = Adjustments.parse_args([option + "=v"])
            assert kw[setting.name] == ("v" if setting.name != "listen" else " v")


def test_parse_args_app_option():
    kw, args = Adjustments.parse_args(["--app=pkg:app", "--port=1"])
    assert kw["app"] == "pkg:app" and args == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus"], "option --bogus not recognized"),
        (["--port"], "option --port requires argument"),
        (["--ipv4=yes"], "option --ipv4 must not have an argument"),
        (["--c"], "option --c not a unique prefix"),
        (["--no-port=1"], "option --no-port not recognized"),
    ],
)
def test_parse_args_errors(argv, message):
    with pytest.raises(getopt.GetoptError) as info:
        Adjustments.parse_args(argv)
    assert str(info.value) == message


# ===================================================== parity with Waitress

waitress_adjustments = pytest.importorskip("waitress.adjustments")

# Waitress's settings (rswaitress's own extensions are checked on their own below).
SETTING_NAMES = [s.name for s in adj.SETTINGS if s.name not in adj.RSWAITRESS_ONLY]
SETTING_NAMES.append("socket_options")

_UNKNOWN_HEADER = re.compile(
    r"^Received unknown trusted_proxy_headers value \((.*)\) expected one of (.*)$"
)


def _normalise_message(message):
    # Waitress prints both header sets in hash order, which varies from run
    # to run; compare them as sets.
    match = _UNKNOWN_HEADER.match(message)
    if match:
        return ("unknown-headers",) + tuple(
            frozenset(part.split(", ")) for part in match.groups()
        )
    return message


def _outcome(cls, kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            instance = cls(**kw)
        except Exception as exc:  # noqa: BLE001 - the exception is the result
            result = ("error", type(exc), _normalise_message(str(exc)))
        else:
            attrs = {name: getattr(instance, name) for name in SETTING_NAMES}
            if "ident" not in kw:
                attrs.pop("ident")  # the one intended difference
            result = ("ok", attrs)
    return result, [(w.category, str(w.message)) for w in caught]


PARITY_KW = [
    {},
    {"host": "127.0.0.1", "port": "9000"},
    {"port": 0},
    {"port": "9010"},
    {"host": "localhost"},
    {"host": "::1", "port": "0"},
    {"host": "[::1]", "port": 8081},
    {"host": Adjustments.host},
    {"listen": "127.0.0.1:9001 [::1]:9002"},
    {"listen": "*:9003"},
    {"listen": "*:9003", "ipv4": "false"},
    {"listen": "*:9003", "ipv6": "no"},
    {"listen": "*:9003", "ipv4": False, "ipv6": False},
    {"listen": "127.0.0.1:9004\n127.0.0.1:9005\n  "},
    {"listen": ["127.0.0.1:9006", "localhost:9007"]},
    {"listen": "127.0.0.1"},
    {"listen": "[::1]"},
    {"listen": "::1:9011"},
    {"listen": "127.0.0.1:9000 127.0.0.1:9000"},
    {"listen": "127.0.0.1:0 127.0.0.1:0"},
    {"listen": "127.0.0.1:http"},
    {"listen": ""},
    {"listen": "127.0.0.1:notaservice"},
    {"listen": "name.invalid:80"},
    {"listen": [("127.0.0.1", 80)]},
    {"listen": 5},
    {"expose_tracebacks": "yes"},
    {"expose_tracebacks": "y", "log_socket_errors": "t"},
    {"expose_tracebacks": " TRUE "},
    {"expose_tracebacks": "on", "log_socket_errors": "0"},
    {"expose_tracebacks": "nope"},
    {"expose_tracebacks": None},
    {"expose_tracebacks": 1},
    {"expose_tracebacks": 2},
    {"threads": "8"},
    {"threads": " 8 "},
    {"threads": 8.7},
    {"threads": True},
    {"threads": "abc"},
    {"threads": None},
    {"threads": "0x10"},
    {"backlog": "64", "recv_bytes": "1", "outbuf_overflow": "2", "inbuf_overflow": "3"},
    {"outbuf_high_watermark": "5", "connection_limit": "6", "cleanup_interval": "7"},
    {"channel_timeout": "8", "max_request_header_size": "9", "max_request_body_size": "10"},
    {"asyncore_loop_timeout": "2", "asyncore_use_poll": "true"},
    {"channel_request_lookahead": "5", "server_name": "example.com", "url_scheme": "https"},
    {"trusted_proxy": ""},
    {"trusted_proxy": "127.0.0.1"},
    {"trusted_proxy": "*", "trusted_proxy_count": "2"},
    {"trusted_proxy": "*", "trusted_proxy_headers": "X-Forwarded-For x-forwarded-proto"},
    {"trusted_proxy": "*", "trusted_proxy_headers": ["x-forwarded-host"]},
    {"trusted_proxy": "*", "trusted_proxy_headers": "forwarded"},
    {"trusted_proxy": "*", "trusted_proxy_headers": "forwarded x-forwarded-for"},
    {"trusted_proxy": "*", "trusted_proxy_headers": "x-bogus"},
    {"trusted_proxy": "*", "trusted_proxy_headers": "x-bogus x-other forwarded"},
    {"trusted_proxy": "*", "trusted_proxy_headers": ""},
    {"trusted_proxy_count": "2"},
    {"trusted_proxy_headers": "x-forwarded-for"},
    {"trusted_proxy_headers": ""},
    {"clear_untrusted_proxy_headers": "false", "log_untrusted_proxy_headers": "yes"},
    {"url_prefix": ""},
    {"url_prefix": "  "},
    {"url_prefix": "/"},
    {"url_prefix": "foo"},
    {"url_prefix": "//foo//bar//"},
    {"url_prefix": 5},
    {"ident": ""},
    {"ident": None},
    {"ident": "myserver"},
    {"ident": 0},
    {"unix_socket": "/tmp/x.sock"},
    {"unix_socket": None},
    {"unix_socket_perms": "600"},
    {"unix_socket_perms": "0o755"},
    {"unix_socket_perms": 0o600},
    {"unix_socket_perms": "8"},
    {"send_bytes": "9000"},
    {"send_bytes": "x"},
    {"bogus": 1},
    {"port": "x", "bogus": 1},
    {"bogus": 1, "port": "x"},
    {"listen": "127.0.0.1:1", "host": "h"},
    {"listen": "127.0.0.1:1", "port": 1},
    {"listen": "127.0.0.1:1", "sockets": []},
    {"sockets": [], "host": "h"},
    {"sockets": [], "port": 1},
    {"sockets": [], "unix_socket": "/tmp/s"},
    {"unix_socket": "/tmp/s", "host": "h"},
    {"unix_socket": "/tmp/s", "listen": "x:1"},
    {"sockets": "text"},
    {"sockets": None},
]


@pytest.mark.parametrize("kw", PARITY_KW, ids=repr)
def test_parity_with_waitress(kw):
    ours = _outcome(Adjustments, kw)
    theirs = _outcome(waitress_adjustments.Adjustments, kw)
    assert ours == theirs


def _socket_sets():
    sets = {
        "inet": lambda: [socket.socket(socket.AF_INET, socket.SOCK_STREAM)],
        "inet6": lambda: [socket.socket(socket.AF_INET6, socket.SOCK_STREAM)],
        "udp": lambda: [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)],
        "inet+junk": lambda: [socket.socket(socket.AF_INET), "junk", 1],
    }
    unix = {
        "unix": lambda: [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)],
        "unix+inet": lambda: [
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
            socket.socket(socket.AF_INET, socket.SOCK_STREAM),
        ],
        "unix-dgram": lambda: [socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)],
    }
    params = [pytest.param(name, factory, id=name) for name, factory in sets.items()]
    params += [pytest.param(name, factory, id=name, marks=pytest.mark.unix_sockets)
               for name, factory in unix.items()]
    return sorted(params, key=lambda p: p.id)


@pytest.mark.parametrize("name, factory", _socket_sets())
def test_parity_sockets(name, factory):
    socks = factory()
    try:
        ours = _outcome(Adjustments, {"sockets": socks})
        theirs = _outcome(waitress_adjustments.Adjustments, {"sockets": socks})
        assert ours == theirs
    finally:
        for sock in socks:
            if isinstance(sock, socket.socket):
                sock.close()


PARITY_ARGV = [
    [],
    ["--help"],
    ["--he"],
    ["--call", "a:b"],
    ["--port=80", "--host", "x", "m:a"],
    ["--listen=a:1", "--listen=b:2"],
    ["--listen", "*:8080"],
    ["--no-ipv4", "--ipv6"],
    ["--expose-tracebacks", "--no-expose-tracebacks"],
    ["--no-log-socket-errors", "--log-untrusted-proxy-headers"],
    ["--asyncore-use-poll", "--no-asyncore-use-poll", "--asyncore-loop-timeout=3"],
    ["--no-clear-untrusted-proxy-headers"],
    ["--unix-socket=/tmp/s", "--unix-socket-perms=777"],
    ["--trusted-proxy=1.2.3.4", "--trusted-proxy-headers=x-forwarded-for x-forwarded-proto"],
    ["--trusted-proxy-count=2"],
    ["--thr=5", "--back=1"],
    ["--send-bytes=1", "--sockets=x", "--url-prefix=/x", "--ident="],
    ["--server-name=s", "--url-scheme=https", "--channel-request-lookahead=2"],
    ["--recv-bytes=1", "--outbuf-overflow=2", "--outbuf-high-watermark=3"],
    ["--inbuf-overflow=4", "--connection-limit=5", "--cleanup-interval=6"],
    ["--channel-timeout=7", "--max-request-header-size=8", "--max-request-body-size=9"],
    ["app:a", "--port=1"],
    ["--", "--port"],
    ["a:b", "c:d"],
    ["--bogus"],
    ["--port"],
    ["--ipv4=yes"],
    ["--call=1"],
    ["--c"],
    ["--no-port=1"],
    ["--h"],
    ["-p", "80"],
]


def _parse_outcome(cls, argv):
    try:
        return ("ok",) + cls.parse_args(list(argv))
    except Exception as exc:  # noqa: BLE001 - the exception is the result
        return ("error", type(exc), str(exc))


@pytest.mark.parametrize("argv", PARITY_ARGV, ids=repr)
def test_parse_args_parity_with_waitress(argv):
    assert _parse_outcome(Adjustments, argv) == _parse_outcome(
        waitress_adjustments.Adjustments, argv
    )
