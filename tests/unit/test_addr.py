"""core.addr: the one place addresses are printed and parsed."""

import pytest

from shoal.core import addr


@pytest.mark.parametrize("host,port,want", [
    ("10.0.0.1", 80, "10.0.0.1:80"), ("fd00::1", 15008, "[fd00::1]:15008"),
    ("web.default.svc", 8080, "web.default.svc:8080"),
])
def test_hostport(host, port, want):
    assert addr.hostport(host, port) == want
    assert addr.parse_authority(want) == (host, port)


@pytest.mark.parametrize("a,expect", [
    ("10.0.0.1:80", ("10.0.0.1", 80)), ("[fd00::1]:15008", ("fd00::1", 15008)),
    ("web.default.svc.cluster.local:80", ("web.default.svc.cluster.local", 80)),
    ("1.2.3.4:65535", ("1.2.3.4", 65535)),
])
def test_parse_authority_ok(a, expect):
    assert addr.parse_authority(a) == expect


@pytest.mark.parametrize("a", ["", ":80", "1.2.3.4", "1.2.3.4:0", "1.2.3.4:65536", "[::1]80",
                               "[zz]:80", "fd00::1:80", "a b:80", "1.2.3.4:8x", "[::1]",
                               "1.2.3.4:000080", "[::1:80", "1.2.3.4:-1"])
def test_parse_authority_bad(a):
    with pytest.raises(ValueError):
        addr.parse_authority(a)


@pytest.mark.parametrize("a,ok", [
    ("10.0.0.1:80", True), ("[fd00::1]:80", True), ("web:80", False), ("10.0.0.1", False),
])
def test_parse_ip_port(a, ok):
    if ok:
        assert addr.parse_ip_port(a)[1] == 80
    else:
        with pytest.raises(ValueError):
            addr.parse_ip_port(a)


@pytest.mark.parametrize("authority,default,want", [
    ("a.b:80", 0, ("a.b", 80)), ("a.b", 8080, ("a.b", 8080)), ("[::1]:443", 0, ("::1", 443)),
    ("[::1]", 5, ("::1", 5)), ("a:bad", 7, ("a", 7)), ("10.0.0.1:15008", 0, ("10.0.0.1", 15008)),
    ("fd00::1", 9, ("fd00::1", 9)), ("[zz", 3, ("[zz", 3)), ("a:99999", 1, ("a", 1)),
])
def test_split_host_port_is_lenient(authority, default, want):
    assert addr.split_host_port(authority, default) == want


def test_forwarded_round_trip():
    assert addr.forwarded(None) is None
    assert addr.forwarded(("10.0.0.1", 5000)) == 'for="10.0.0.1:5000"'
    v6 = addr.forwarded(("fd00::7", 1), "web.default.svc.cluster.local")
    assert v6 == 'for="[fd00::7]:1";host=web.default.svc.cluster.local'
    assert addr.forwarded_for(v6) == ("fd00::7", 1)
    assert addr.parse_forwarded(v6) == {"for": "[fd00::7]:1", "host": "web.default.svc.cluster.local"}


@pytest.mark.parametrize("value,want", [
    ('for="10.0.0.1:5000"', ("10.0.0.1", 5000)),
    ("for=10.0.0.1", ("10.0.0.1", 0)),
    ('For="[fd00::1]"', ("fd00::1", 0)),
    ('for="10.0.0.1:5000", for=10.9.9.9', ("10.0.0.1", 5000)),   # first element only
    ("for=_hidden", None), ("for=unknown", None), ("host=x", None), ("", None),
    ('for="fd00::1:80"', None),                                   # v6 without brackets
])
def test_forwarded_for(value, want):
    assert addr.forwarded_for(value) == want


def test_parsers_take_any_byte_prefix_without_crashing():
    """Every prefix of a valid value either parses or raises ValueError."""
    for whole in ("[fd00::1]:15008", "web.default.svc:80", 'for="[fd00::7]:1";host=x'):
        for n in range(len(whole) + 1):
            part = whole[:n]
            try:
                addr.parse_authority(part)
            except ValueError:
                pass
            addr.split_host_port(part, 1)
            addr.forwarded_for(part)
