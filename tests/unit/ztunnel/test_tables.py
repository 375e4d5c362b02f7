"""`shoal ztunnel-config` tables from a config dump."""

from __future__ import annotations

import orjson

from shoal.core.records import Authorization
from tests.unit.ztunnel.conftest import make_view
from shoal.ztunnel import dump, tables


def _dump():
    pol = Authorization(name="deny-all", namespace="default", scope="NAMESPACE", action="DENY")
    d = dump.config_dump(make_view([pol]), [("spiffe://cluster.local/ns/default/sa/sleep", None)])
    return tables.flatten(orjson.loads(orjson.dumps(d)))   # what the CLI gets over HTTP


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


def test_policies_and_certificates_tables():
    out = tables.policies(_dump())
    assert out.splitlines()[1].split() == ["default", "deny-all", "Deny", "Namespace", "default"]
    out = tables.certificates(_dump())
    assert "spiffe://cluster.local/ns/default/sa/sleep" in out and "Leaf" in out
