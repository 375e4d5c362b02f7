"""`shoal waypoint run` as a real process tree: supervisor, 2 workers, the
config watcher reading Kubernetes YAML, the plaintext test listener, real
backends; metrics summed over the workers on the metrics port."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.manifests import documents, service, service_route, waypoint_namespace
from tests.helpers.waypoint_mesh import reserve_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(90)]

HTTP_8080 = "[{name: http, port: 8080, targetPort: http}]"


def config(p1: int, ip1: str, p2: int, ip2: str) -> str:
    """echo (both pods) and echo-v2 (the v2 pod), with a route sending /v2 to echo-v2."""
    return documents(
        waypoint_namespace("default"),
        service("echo", "default", "10.96.77.7", HTTP_8080),
        service("echo-v2", "default", "10.96.77.8", HTTP_8080, selector="{app: echo, version: v2}"),
        f"""apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: default, labels: {{app: echo, version: v1}}}}
spec:
  containers: [{{name: app, ports: [{{name: http, containerPort: {p1}}}]}}]
status: {{podIP: {ip1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-2, namespace: default, labels: {{app: echo, version: v2}}}}
spec:
  containers: [{{name: app, ports: [{{name: http, containerPort: {p2}}}]}}]
status: {{podIP: {ip2}}}
""", service_route("echo", "default", "echo", port=8080) + """  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - backendRefs: [{name: echo, port: 8080}]
""")


def get(port: int, path: str, host: str = "echo.default.svc.cluster.local:8080"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        return r.status, r.getheader("x-backend"), r.read()
    finally:
        c.close()


def test_waypoint_run_under_the_supervisor(backends, tmp_path):
    v1, v2 = backends("v1"), backends("v2")
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(config(v1.port, v1.host, v2.port, v2.host))
    sp, sm = reserve_port(), reserve_port("0.0.0.0")
    port, mport = sp.getsockname()[1], sm.getsockname()[1]
    cmd = [sys.executable, "-m", "shoal.cli", "waypoint", "run", "--name", "waypoint",
           "--namespace", "default", "--hbone-port", "0", "--plaintext-port", str(port),
           "--bind", "127.0.0.1", "--upstream-plaintext", "--config", str(cfg),
           "--workers", "2", "--admin-port", "0", "--readiness-port", "0",
           "--metrics-port", str(mport), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[3],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "SHOAL_LOG_LEVEL": "warning"})
    try:
        deadline = time.monotonic() + 30
        last = None
        while time.monotonic() < deadline:
            try:
                last = get(port, "/ready")
                if last[0] == 200:
                    break
            except OSError as e:
                last = e
            time.sleep(0.1)
        assert last and last[0] == 200, (last, proc.poll())
        results = [get(port, p) for p in ["/a", "/v2/b"] * 10]
        assert {r[1] for r in results[0::2]} == {"v1", "v2"}      # service echo: both pods
        assert {r[1] for r in results[1::2]} == {"v2"}            # /v2 -> echo-v2
        total, deadline = 0.0, time.monotonic() + 10   # workers flush every second
        while total < 21 and time.monotonic() < deadline:
            c = http.client.HTTPConnection("127.0.0.1", mport, timeout=5)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
            total = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                        if ln.startswith("istio_requests_total{") and 'reporter="waypoint"' in ln
                        and 'response_code="200"' in ln)
            time.sleep(0.2)
        assert total >= 21       # 20 + the readiness probe(s), summed over both workers
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        sp.close()
        sm.close()
    assert rc == 0, proc.stderr.read().decode()[-2000:]
