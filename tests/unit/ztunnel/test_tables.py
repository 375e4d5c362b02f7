"""`shoal ztunnel-config` tables from a config dump in ztunnel's layout."""

from __future__ import annotations

import orjson

from shoal.core.records import Authorization
from shoal.ztunnel import configdump, tables
from tests.unit.ztunnel.conftest import make_view

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def make_dump(policies=(), certificates=()):
    d = configdump.ztunnel_dump(make_view(list(policies)), "Kubernetes")
    d["certificates"] = list(certificates)
    return orjson.loads(orjson.dumps(d))       # what the CLI gets over HTTP


def _dump():
    pol = Authorization(name="deny-all", namespace="default", scope="NAMESPACE", action="DENY")
    return make_dump([pol], [{"identity": SLEEP, "state": "Initializing", "certChain": [],
                              "rootCerts": []}])


def test_workloads_table():
    out = tables.workloads(_dump())
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "NAME", "ADDRESS", "NODE", "WAYPOINT",
                                "PROTOCOL"]
    row = next(line.split() for line in lines if " server-a " in line)
    assert row == ["default", "server-a", "10.0.1.1", "n1", "None", "HBONE"]
    row = next(line.split() for line in lines if " behind " in line)
    assert row[4] == "waypoint"


def test_services_table_counts_healthy_endpoints():
    out = tables.services(_dump(), namespace="default")
    row = next(r for r in map(str.split, out.splitlines()) if r[:2] == ["default", "echo"])
    assert row == ["default", "echo", "10.96.0.10", "None", "2/3"]
    assert "other" not in out


def test_policies_table_uses_ztunnel_names():
    out = tables.policies(_dump())
    assert out.splitlines()[1].split() == ["default", "deny-all", "Deny", "Namespace"]


def test_certificates_table_prints_na_like_istioctl():
    # istioctl's allsummary.txt: an Initializing identity is "NA ... false NA NA NA".
    out = tables.certificates(_dump())
    assert out.splitlines()[1].split() == [SLEEP, "NA", "Initializing", "false", "NA", "NA", "NA"]
    unavailable = {"identity": SLEEP, "state": "Unavailable: CA unreachable", "certChain": []}
    row = tables.certificates({"certificates": [unavailable]}).splitlines()[1].split()
    assert row[2] == "Unavailable"


def test_certificates_table_serial_in_hex_from_decimal():
    cert = {"serialNumber": "305554775863395697262503895661564044819",
            "validFrom": "2023-03-21T13:02:57Z", "expirationTime": "2033-03-22T13:04:57Z"}
    d = {"certificates": [{"identity": SLEEP, "state": "Available", "certChain": [cert],
                           "rootCerts": []}]}
    row = tables.certificates(d).splitlines()[1].split()
    # istioctl's dump.json / allsummary.txt pair: decimal in, hex out.
    assert row[:5] == [SLEEP, "Leaf", "Available", "true", "e5dfb59150b2ba7f108d93dcec5aa613"]


def test_connections_and_all():
    d = _dump()
    d["workloadState"] = {"u": {"info": {"name": "server-a", "namespace": "default",
                                         "trustDomain": "cluster.local", "serviceAccount": "x"},
                                "connections": {"inbound": [{"src": "10.0.0.1:4000",
                                                             "originalDst": "10.0.1.1:8080",
                                                             "actualDst": "10.0.1.1:8080"}],
                                                "outbound": []}}}
    out = tables.connections(d)
    assert out.splitlines()[1].split() == ["server-a.default", "Inbound", "server-a.default:8080",
                                           "client.default:4000", "HBONE"]
    everything = tables.all_tables(d)
    for header in ("POD NAME", "SERVICE NAME", "POLICY NAME", "CERTIFICATE NAME", "DIRECTION"):
        assert header in everything
