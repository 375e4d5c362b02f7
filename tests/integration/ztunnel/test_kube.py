"""Two `shoal ztunnel run --kubeconfig` nodes that learn pods and services
only from the Kubernetes API (the test API server) and obtain their pods'
certificates with a ServiceAccount token (the CA checks it with TokenReview
and reads pods from the same API): traffic flows, and pod changes reach
every worker of a running ztunnel."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.request

import pytest

from tests.helpers.kube_apiserver import KubeApiServer
from tests.helpers.ports import APP_PORT
from tests.helpers.shards_proc import next_cpu, on_cpu
from tests.helpers.ztunnel_mesh import Mesh, echo
from tests.helpers.ztunnel_peers import python_app

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

VIP = "10.96.0.20"
WORKERS = 2
DEADLINE = 15.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    api = KubeApiServer().start()
    m = Mesh(tmp_path_factory.mktemp("ztkube"), workers=WORKERS, api=api)
    m.pod("client", node="node-a", sa="sleep")
    m.pod("echo-1", node="node-b", app="echo", port=APP_PORT)
    m.service("echo", vip=VIP, port=80, target=APP_PORT, app="echo")
    m.fix("node-a", VIP, 80)
    try:
        m.start()
        yield m
    finally:
        m.stop()
        api.stop()


def every_worker(mesh, node, check, what):
    """`check(dump)` holds in a /config_dump answered by each worker of `node`."""
    url = f"http://127.0.0.1:{mesh.nodes[node].admin}/config_dump"
    deadline = time.monotonic() + DEADLINE
    ok: dict[int, bool] = {}
    while time.monotonic() < deadline:
        with on_cpu(next_cpu()), urllib.request.urlopen(url, timeout=5) as r:
            d = json.loads(r.read())
        ok[d["worker"]["pid"]] = bool(check(d["routing"]))
        if len(ok) == WORKERS and all(ok.values()):
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not seen by every worker of {node}: {ok}")


def workload(dump, name):
    return next((w for w in dump["workloads"] if w["name"] == name), None)


def test_traffic_between_pods_learned_from_the_api(mesh):
    assert b"ping" in echo(mesh, "client", (VIP, 80))
    d = mesh.config_dump("node-a")["routing"]
    assert d["status"]["source"].startswith("kubernetes:http://127.0.0.1:")
    assert d["status"]["kubernetes"]["synced"]
    metrics = mesh.metrics("node-a")
    assert 'shoal_kube_synced{resource="pods"} 1.0' in metrics
    assert 'shoal_kube_objects{resource="services"} 1.0' in metrics
    # ztunnel's names for its config-source stream.
    assert re.search(r'istio_xds_message_total\{url="pods"\} [1-9]', metrics), metrics
    assert re.search(r'istio_xds_message_bytes_total\{url="pods"\} [1-9]', metrics)


def test_pod_add_ip_change_ready_flip_delete_reach_every_worker(mesh):
    spec = dataclasses.replace(mesh.pods["echo-1"], name="echo-9", ip=mesh._ip())
    mesh.api.create(mesh.pod_doc(spec))
    for node in mesh.nodes:
        every_worker(mesh, node, lambda d: workload(d, "echo-9"), "the new pod")
    moved = dataclasses.replace(spec, ip=mesh._ip())
    mesh.api.update(mesh.pod_doc(moved))
    for node in mesh.nodes:
        every_worker(mesh, node, lambda d: workload(d, "echo-9")["ips"] == [moved.ip], "the new IP")
    # The moved pod serves traffic at its new address (learned from the API only).
    app = python_app("echo-9", f"{moved.ip}:{APP_PORT}", mesh.logs)
    try:
        replies = {echo(mesh, "client", (VIP, 80), b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n") for _ in range(20)}
        assert any(b"echo-9" in r for r in replies), replies
    finally:
        app.stop()
    mesh.api.update(mesh.pod_doc(moved, ready=False))
    for node in mesh.nodes:
        every_worker(mesh, node, lambda d: workload(d, "echo-9")["status"] == "UNHEALTHY",
                     "the Ready flip")
    mesh.api.delete("pods", "default", "echo-9")
    for node in mesh.nodes:
        every_worker(mesh, node, lambda d: workload(d, "echo-9") is None, "the delete")
