"""Options validation, SO_ORIGINAL_DST decoding and the ztunnel-config CLI."""

from __future__ import annotations

import socket
import struct

import orjson
import pytest
from click.testing import CliRunner

from tests.unit.ztunnel.conftest import make_view
from shoal.ztunnel import cli
from tests.unit.ztunnel.test_tables import make_dump
from shoal.ztunnel.options import FixedTarget, ZtunnelOptions
from shoal.ztunnel.origdst import parse_sockaddr_in


def test_fixed_target_parse():
    f = FixedTarget.parse("outbound:15999=10.96.0.10:80")
    assert (f.kind, f.port, f.target) == ("outbound", 15999, ("10.96.0.10", 80))
    for bad in ("outbound:x=1.2.3.4:80", "sideways:1=1.2.3.4:80", "outbound:1=host:80", "nope"):
        with pytest.raises(ValueError):
            FixedTarget.parse(bad)


@pytest.mark.parametrize("kw, msg", [({"node": ""}, "--node"), ({"mode": "x"}, "--mode"),
                                     ({"hbone_port": 70000}, "--hbone-port"),
                                     ({"ca_address": "nohost"}, "--ca-address")])
def test_options_refuse_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ZtunnelOptions(**{"node": "n1", **kw})


def test_proxy_ports_include_test_listeners():
    o = ZtunnelOptions(node="n1", fixed_targets=(FixedTarget.parse("outbound:16000=1.2.3.4:5"),))
    assert o.proxy_ports == {15001, 15006, 15008, 16000}


def test_sockaddr_in_decoding():
    raw = struct.pack("!HH4s8x", socket.AF_INET, 8080, socket.inet_aton("10.1.2.3"))
    assert parse_sockaddr_in(raw) == ("10.1.2.3", 8080)


@pytest.fixture
def fake_admin(monkeypatch):
    d = make_dump()
    monkeypatch.setattr(cli, "fetch_dump", lambda address: d)


def test_ztunnel_config_commands(fake_admin):
    runner = CliRunner()
    out = runner.invoke(cli.ztunnel_config, ["workloads", "-n", "default"])
    assert out.exit_code == 0 and "server-a" in out.output and "NAMESPACE" in out.output
    out = runner.invoke(cli.ztunnel_config, ["services"])
    assert out.exit_code == 0 and "echo" in out.output
    out = runner.invoke(cli.ztunnel_config, ["workloads", "-o", "json"])
    assert orjson.loads(out.output)[0]["uid"] and "workloadIps" in orjson.loads(out.output)[0]
    import yaml
    for name in ("workloads", "services", "policies", "certificates", "connections", "all"):
        for fmt in ("short", "table", "json", "yaml"):
            out = runner.invoke(cli.ztunnel_config, [name, "-o", fmt])
            assert out.exit_code == 0, (name, fmt, out.output)
            if fmt == "yaml":
                yaml.safe_load(out.output)


def test_ztunnel_config_unreachable_admin_is_a_clear_error():
    out = CliRunner().invoke(cli.ztunnel_config, ["workloads", "--admin", "127.0.0.1:1"])
    assert out.exit_code == 1 and "cannot read http://127.0.0.1:1/config_dump" in out.output
