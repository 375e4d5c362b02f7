"""ztunnel -> waypoint -> ztunnel: a service with `istio.io/use-waypoint`.

client (node-a) -> ztunnel A resolves the VIP, sees the waypoint, and opens
HBONE to a waypoint replica's 15008 with `:authority` = VIP:port, expecting
the waypoint's identity -> `shoal waypoint run` routes the HTTP request and
opens HBONE to the chosen pod's 15008 -> ztunnel B accepts it from the
waypoint's identity -> app.

The waypoint dials endpoints on Istio's 15008, so this rig's ztunnels use
15008 too, bound only on the rig's unique 127.x.y.z workload addresses.
"""

from __future__ import annotations

import subprocess
import time

import orjson
import pytest

from tests.helpers.ztunnel_mesh import ROOT, SHOAL, Mesh
from tests.helpers.ports import APP_PORT, free_port
from tests.helpers.ztunnel_peers import Proc

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

VIP = "10.96.3.10"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("ztwp"), workers=1, hbone_port=15008)
    m.pod("client", node="node-a", sa="sleep")
    m.pod("echo-1", node="node-b", app="echo", port=APP_PORT)
    wp = m.pod("waypoint-0", node="node-b", sa="waypoint", app="waypoint",
               labels={"gateway.networking.k8s.io/gateway-name": "waypoint",
                       "istio.io/dataplane-mode": "none"})
    m.service("echo", vip=VIP, port=80, target=APP_PORT, app="echo")
    m.services[-1]["metadata"]["labels"] = {"istio.io/use-waypoint": "waypoint"}
    m.extra_docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                         "metadata": {"name": "waypoint", "namespace": "default",
                                      "labels": {"istio.io/waypoint-for": "service"}},
                         "spec": {"gatewayClassName": "istio-waypoint",
                                  "listeners": [{"name": "mesh", "port": 15008,
                                                 "protocol": "HBONE"}]}})
    m.fix("node-a", VIP, 80)
    waypoint = None
    try:
        m.start()
        cred = m.tmp / "cred-waypoint"
        m.issue_credential(["--waypoint", "default/waypoint"], cred)
        waypoint = Proc("waypoint", [*SHOAL, "waypoint", "run", "--name", "waypoint",
                                     "--namespace", "default", "--bind", wp.ip,
                                     "--hbone-port", "15008", "--config", str(m.config),
                                     "--cert-dir", str(cred), "--workers", "1",
                                     "--admin-port", str(free_port()),
                                     "--metrics-port", str(free_port()),
                                     "--readiness-port", str(free_port())], m.logs, cwd=ROOT)
        from tests.helpers.ztunnel_peers import wait_port
        wait_port(wp.ip, 15008, timeout=30, proc=waypoint)
        m.waypoint = waypoint
        yield m
    finally:
        if waypoint is not None:
            waypoint.stop()
        m.stop()


def _access(mesh, node):
    lines = mesh.nodes[node].proc.log_path.read_text().splitlines()
    return [orjson.loads(line) for line in lines if '"connection complete"' in line]


def test_service_traffic_goes_through_its_waypoint(mesh):
    out = subprocess.run(mesh.curl_args("client", VIP, 80), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr + mesh.waypoint.tail()
    assert out.stdout == "hello from echo-1\n"
    wp_ip = mesh.pods["waypoint-0"].ip
    # The access log line is written when both proxies saw the connection end.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
            [e for e in _access(mesh, "node-a") if e.get("direction") == "outbound"]
            and [e for e in _access(mesh, "node-b") if e.get("direction") == "inbound"]):
        time.sleep(0.05)
    outbound = [e for e in _access(mesh, "node-a") if e.get("direction") == "outbound"]
    assert outbound and outbound[-1]["dst.addr"] == f"{wp_ip}:15008"
    assert outbound[-1]["dst.hbone_addr"] == f"{VIP}:80"
    assert outbound[-1]["dst.identity"] == "spiffe://cluster.local/ns/default/sa/waypoint"
    inbound = [e for e in _access(mesh, "node-b") if e.get("direction") == "inbound"]
    assert inbound and inbound[-1]["src.identity"] == \
        "spiffe://cluster.local/ns/default/sa/waypoint"
    assert inbound[-1]["dst.workload"] == "echo-1"
