"""Driving the local mesh the way the Gateway API suite drives a cluster.

The suite execs its echo client inside a mesh pod, retries each expected
exchange until it holds REQUIRED_CONSECUTIVE times in a row (config
changes reach proxies eventually), and compares what the client saw with
what was expected: status, response headers, and what the echo backend
says it received (headers, path, pod, namespace). `Case` and `check` are
that comparison; `Mesh.expect` the retry loop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps")
MANIFESTS = os.path.join(HERE, "manifests")
SHOAL = [sys.executable, "-m", "shoal.cli", "mesh"]
NS = "gateway-conformance-mesh"
CONSUMER_NS = "gateway-conformance-mesh-consumer"
# conformance/utils/config/timeout.go: three successes in a row within 30 s.
REQUIRED_CONSECUTIVE = 3
MAX_TIME_TO_CONSISTENCY_S = 30.0
EXEC_TIMEOUT_S = 120       # one client run (a weight batch of a few hundred requests)
# conformance/utils/weight: 500 requests, every backend's share within 5
# percentage points of its weight, up to 10 tries before failing.
SPLIT_REQUESTS = 500
SPLIT_TOLERANCE = 0.05
SPLIT_TRIES = 10


@dataclass
class Case:
    """One request and what must come back (the suite's ExpectedResponse)."""
    name: str
    path: str = "/"
    host: str = "echo"
    method: str = "GET"
    protocol: str = "http"
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    backend: str = ""                   # the serving pod's name starts with this
    namespace: str = ""                 # ... and it runs in this namespace
    echoed_path: str | None = None      # the path the backend received
    request_headers: dict[str, str] = field(default_factory=dict)   # received, joined by ","
    absent_request_headers: tuple[str, ...] = ()
    response_headers: dict[str, str] = field(default_factory=dict)
    absent_response_headers: tuple[str, ...] = ()
    redirect: dict[str, str] | None = None    # scheme/host/port/path of Location

    def request(self, count: int = 1) -> dict:
        return {"protocol": self.protocol, "host": self.host, "path": self.path,
                "method": self.method, "headers": self.headers, "count": count}


def check(case: Case, resp: dict) -> str | None:
    """What differs between `resp` (from apps/client.py) and `case`; None if nothing."""
    if resp.get("code") != case.status:
        return f"status {resp.get('code')} ({resp.get('error', '')}), want {case.status}"
    echo = resp.get("echo") or {}
    if case.backend and not echo.get("hostname", "").startswith(case.backend):
        return f"served by {echo.get('hostname')!r}, want {case.backend}-*"
    if case.namespace and echo.get("namespace") != case.namespace:
        return f"served from namespace {echo.get('namespace')!r}, want {case.namespace}"
    if case.echoed_path is not None and echo.get("path") != case.echoed_path:
        return f"backend got path {echo.get('path')!r}, want {case.echoed_path!r}"
    got = {k.lower(): ",".join(v) for k, v in (echo.get("headers") or {}).items()}
    for name, want in case.request_headers.items():
        if got.get(name.lower()) != want:
            return f"backend got {name}: {got.get(name.lower())!r}, want {want!r}"
    for name in case.absent_request_headers:
        if name.lower() in got:
            return f"backend got {name}: {got[name.lower()]!r}, want it absent"
    rh = {k.lower(): v for k, v in (resp.get("headers") or {}).items()}
    for name, want in case.response_headers.items():
        if (rh.get(name.lower()) or [None])[0] != want:
            return f"response {name}: {rh.get(name.lower())}, want {want!r}"
    for name in case.absent_response_headers:
        if name.lower() in rh:
            return f"response {name}: {rh[name.lower()]}, want it absent"
    if case.redirect is not None:
        return _check_location(case, (rh.get("location") or [""])[0])
    return None


def _check_location(case: Case, location: str) -> str | None:
    """Location against the expected parts; a part not given must be what
    the request had (scheme http, the request's host, its path, no port)."""
    u = urlsplit(location)
    want = {"scheme": "http", "host": case.host.rsplit(":", 1)[0], "port": "",
            "path": case.path.split("?")[0], **case.redirect}
    got = {"scheme": u.scheme, "host": u.hostname or "", "port": str(u.port or ""),
           "path": u.path}
    if got != want:
        return f"Location {location!r}: {got}, want {want}"
    return None


class Mesh:
    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.pods: dict = {}

    def shoal(self, *args, timeout=150, check=True):
        r = subprocess.run([*SHOAL, *args, "--run-dir", self.run_dir], capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"shoal mesh {args[0]} failed:\n{r.stdout}\n{r.stderr}")
        return r

    def refresh(self) -> None:
        status = json.loads(self.shoal("status", "-o", "json").stdout)
        self.pods = {p["pod"]: p for p in status["pods"]}

    def pod_ip(self, namespace: str, prefix: str) -> str:
        return next(p["ip"] for k, p in sorted(self.pods.items())
                    if k.startswith(f"{namespace}/{prefix}-"))

    def apply(self, manifest: str) -> None:
        self.shoal("apply", "-f", os.path.join(MANIFESTS, manifest))

    def delete(self, manifest: str) -> None:
        self.shoal("delete", "-f", os.path.join(MANIFESTS, manifest))

    def send(self, client: str, requests: list[dict]) -> list[list[dict]]:
        """Run apps/client.py in pod `client` ("ns/deployment"); its responses."""
        r = subprocess.run([*SHOAL, "exec", "--run-dir", self.run_dir, client, "--",
                            sys.executable, os.path.join(APPS, "client.py"), json.dumps(requests)],
                           capture_output=True, text=True, timeout=EXEC_TIMEOUT_S)
        if r.returncode != 0:
            raise AssertionError(f"client in {client} failed ({r.returncode}): {r.stderr[-2000:]}")
        return json.loads(r.stdout)

    def expect(self, cases: list[Case], client: str = f"{NS}/echo-v1") -> None:
        """Every case holds REQUIRED_CONSECUTIVE times in a row, within
        MAX_TIME_TO_CONSISTENCY_S (each case counts on its own)."""
        streak = {c.name: 0 for c in cases}
        last: dict[str, str] = {}
        deadline = time.monotonic() + MAX_TIME_TO_CONSISTENCY_S
        while True:
            pending = [c for c in cases if streak[c.name] < REQUIRED_CONSECUTIVE]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError("not consistent within "
                                     f"{MAX_TIME_TO_CONSISTENCY_S:.0f}s:\n" +
                                     "\n".join(f"  {n}: {last.get(n)}" for n in
                                               (c.name for c in pending)))
            for c, resp in zip(pending, self.send(client, [c.request() for c in pending])):
                err = check(c, resp[0])
                if err is None:
                    streak[c.name] += 1
                else:
                    streak[c.name], last[c.name] = 0, err

    def batch(self, case: Case, count: int, client: str = f"{NS}/echo-v1") -> list[dict]:
        return self.send(client, [case.request(count)])[0]

    def expect_split(self, case: Case, weights: dict[str, float]) -> None:
        """Batches of SPLIT_REQUESTS until one has every backend (pod name
        prefix) within SPLIT_TOLERANCE of its weight; SPLIT_TRIES at most."""
        errors = []
        for _ in range(SPLIT_TRIES):
            got = self.batch(case, SPLIT_REQUESTS)
            bad = [r for r in got if check(case, r) is not None]
            assert not bad, f"{len(bad)} failed requests, e.g. {check(case, bad[0])}"
            shares = {b: sum(r["echo"]["hostname"].startswith(b + "-") for r in got) / len(got)
                      for b in weights}
            if sum(shares.values()) == 1 and \
                    all(abs(shares[b] - w) <= SPLIT_TOLERANCE for b, w in weights.items()):
                return
            errors.append(shares)
        raise AssertionError(f"no batch within {SPLIT_TOLERANCE:.0%} of {weights}: {errors}")
