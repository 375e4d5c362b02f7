"""The waypoint end to end in the local mesh (issue 6, section 4).

One mesh (2 nodes) for the module, from `apps/mesh.yaml`: an ambient
namespace `wp`, a waypoint Gateway whose replicas are pods of the mesh, the
service `echo` enrolled with `istio.io/use-waypoint`, two backend versions
(`apps/echo.py` answers with its version and echoes the request), a mirror
target and two client identities (`client`, `other`). Every request takes
the real path: client pod -> ztunnel -> HBONE -> waypoint replica -> HBONE
-> ztunnel -> backend pod.

Under `pytest -n 2` the tests of this file may land on both workers; each
worker then builds its own mesh (unique id and address base), which costs
time but not correctness: no test depends on another's state except through
its own mesh, and scaling runs last in file order.
"""

import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.local_mesh import binomial_bounds, free_base
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHOAL = [sys.executable, "-m", "shoal.cli"]
APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")
NS = "wp"
# A false failure of the weighted split once in 10,000 runs: small enough
# never to flake, while the bounds still exclude a 50/50 split.
SPLIT_ALPHA = 1e-4
SPLIT_REQUESTS = 200
V2_WEIGHT = 25 / (75 + 25)        # apps/mesh.yaml: echo-v1 75, echo-v2 25
METRICS_FLUSH_S = 1.0             # docs/waypoint.md: workers flush metrics every second


# ------------------------------------------------------------------ helpers

def shoal(*args, run_dir, timeout=120, check=True):
    r = subprocess.run([*SHOAL, "mesh", *args, "--run-dir", run_dir],
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"shoal mesh {args[0]} failed:\n{r.stdout}\n{r.stderr}")
    return r


def pexec(run_dir, pod, *cmd, timeout=60):
    """Run `cmd` in a pod's netns; returns the CompletedProcess."""
    return subprocess.run([*SHOAL, "mesh", "exec", "--run-dir", run_dir, f"{NS}/{pod}", "--", *cmd],
                          capture_output=True, text=True, timeout=timeout)


def curl(mesh, pod, path, *opts, host="echo"):
    """(status, headers dict, body) of one request from `pod` to the echo service."""
    r = pexec(mesh["run_dir"], pod, "curl", "-s", "-m", "10", "-D", "-", *opts, f"http://{host}{path}")
    assert r.returncode == 0, f"curl {path} from {pod} failed ({r.returncode}): {r.stderr}"
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def echo(mesh, pod, path, *opts):
    status, _, body = curl(mesh, pod, path, *opts)
    assert status == 200, f"{path}: {status} {body}"
    return json.loads(body)


def metric_sum(run_dir, pod, name, **labels):
    """Sum of a counter over the series matching `labels`, from a waypoint replica's :15020."""
    r = pexec(run_dir, pod, "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics")
    assert r.returncode == 0, r.stderr
    total = 0.0
    for line in r.stdout.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def settled(run_dir, pod, labels):
    """istio_requests_total once earlier tests' requests are all in it.

    Workers flush their aggregated metrics every METRICS_FLUSH_S, and no
    event says a flush happened: the value is settled when it has not moved
    for longer than one flush interval."""
    value = metric_sum(run_dir, pod, "istio_requests_total", **labels)
    since = time.monotonic()
    deadline = since + 15
    while time.monotonic() - since < METRICS_FLUSH_S * 1.5:
        assert time.monotonic() < deadline, "istio_requests_total never settled"
        time.sleep(0.2)
        now = metric_sum(run_dir, pod, "istio_requests_total", **labels)
        if now != value:
            value, since = now, time.monotonic()
    return value


# ------------------------------------------------------------------ the mesh

@pytest.fixture(scope="module")
def mesh():
    mid = "w" + secrets.token_hex(3)
    # Short: the agents' unix socket paths live under it (AF_UNIX: 107 bytes).
    ctx = {"run_dir": f"/tmp/shoal-mesh-{mid}", "id": mid, "base": free_base()}
    try:
        shoal("up", "-f", APPS, "--nodes", "2", "--id", mid, "--cidr-base", str(ctx["base"]),
              run_dir=ctx["run_dir"], timeout=150)
        status = json.loads(shoal("status", "-o", "json", run_dir=ctx["run_dir"]).stdout)
        ctx["pods"] = {p["pod"]: p for p in status["pods"]}
        # Through the waypoint once, before any test (the first HBONE legs).
        wait_for(lambda: pexec(ctx["run_dir"], "client", "curl", "-sf", "-m", "5",
                               "http://echo/v2/ready").returncode == 0,
                 timeout=30, what="client -> echo through the waypoint")
        yield ctx
    except AssertionError:
        logs = os.path.join(ctx["run_dir"], "logs")
        if os.path.isdir(logs):
            for f in sorted(os.listdir(logs)):
                sys.stderr.write(f"--- {f}\n{open(os.path.join(logs, f)).read()[-2000:]}\n")
        raise
    finally:
        shoal("down", run_dir=ctx["run_dir"], check=False)
        shutil.rmtree(ctx["run_dir"], ignore_errors=True)


# ------------------------------------------------------------------ routing

@pytest.mark.timeout(150)
def test_waypoint_is_a_pod_of_the_mesh_and_serves_the_service(mesh):
    wp = mesh["pods"][f"{NS}/waypoint-0"]
    assert wp["running"] and not wp["enrolled"]          # dataplane-mode none: not captured
    assert wp["identity"] == f"spiffe://cluster.local/ns/{NS}/sa/waypoint"
    assert mesh["pods"][f"{NS}/client"]["enrolled"]
    # Only the waypoint adds these: the request went through it.
    body = echo(mesh, "client", "/v2/hello")
    assert body["headers"]["x-request-id"] and body["headers"]["traceparent"].startswith("00-")


@pytest.mark.timeout(150)
def test_both_hbone_legs_cross_the_bridge_encrypted(mesh, tmp_path):
    """client (node-2) -> waypoint-0 (node-1) -> echo-v2 (node-2): both legs
    cross the host bridge, and only TLS does; the waypoint saw the client's
    identity from its HBONE peer certificate."""
    pods = mesh["pods"]
    assert pods[f"{NS}/client"]["node"] == "node-2" and pods[f"{NS}/waypoint-0"]["node"] == "node-1"
    assert [p["node"] for k, p in pods.items() if k.startswith(f"{NS}/echo-v2-")] == ["node-2"]
    marker = "shoal-plaintext-" + secrets.token_hex(6)
    pcap = str(tmp_path / "bridge.pcap")
    dump = subprocess.Popen(["tcpdump", "-i", f"{mesh['id']}-br", "--immediate-mode", "-U", "-s", "0",
                             "-w", pcap, "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([dump.stderr], [], [], 15)
        assert ready and b"listening on" in dump.stderr.readline()
        body = echo(mesh, "client", f"/v2/{marker}", "-H", f"x-marker: {marker}")
        assert body["version"] == "v2" and body["headers"]["x-marker"] == marker
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    with open(pcap, "rb") as f:
        captured = f.read()
    assert len(captured) > 2000, "the capture saw no traffic on the bridge"
    assert marker.encode() not in captured
    wait_for(lambda: metric_sum(mesh["run_dir"], "waypoint-0", "istio_requests_total",
                                connection_security_policy="mutual_tls",
                                source_principal=f"spiffe://cluster.local/ns/{NS}/sa/client",
                                destination_service_name="echo-v2") > 0,
             timeout=10, what="the client's mTLS identity in the waypoint's metrics")


@pytest.mark.timeout(150)
def test_routing_by_path(mesh):
    versions = [echo(mesh, "client", f"/v2/path{i}")["version"] for i in range(5)]
    assert versions == ["v2"] * 5
    assert echo(mesh, "client", "/v2/path")["path"] == "/v2/path"     # no rewrite on this rule


@pytest.mark.timeout(150)
def test_routing_by_header_with_request_header_modifier(mesh):
    r = pexec(mesh["run_dir"], "client", "curl", "-s", "-m", "10", "-w", "\n", "-H", "x-version: v2",
              "http://echo/hdr/[1-20]")
    bodies = [json.loads(line) for line in r.stdout.splitlines() if line]
    assert len(bodies) == 20
    assert {b["version"] for b in bodies} == {"v2"}
    assert all(b["headers"].get("x-routed-by") == "header-rule" for b in bodies)
    # Another value of the header falls through to the weighted default
    # (all 20 on v2 by chance: 0.25**20).
    r = pexec(mesh["run_dir"], "client", "curl", "-s", "-m", "10", "-w", "\n", "-H", "x-version: v1",
              "http://echo/hdr/[1-20]")
    bodies = [json.loads(line) for line in r.stdout.splitlines() if line]
    assert "v1" in {b["version"] for b in bodies}
    assert not any("x-routed-by" in b["headers"] for b in bodies)


@pytest.mark.timeout(150)
def test_weighted_split_within_binomial_bounds(mesh):
    lo, hi = binomial_bounds(SPLIT_REQUESTS, V2_WEIGHT, SPLIT_ALPHA)
    # The bounds have power: a 50/50 split (or no split) would fall outside.
    assert hi < SPLIT_REQUESTS // 2 and lo > 0
    r = pexec(mesh["run_dir"], "client", "curl", "-s", "-m", "60", "-w", "\n",
              f"http://echo/split/[1-{SPLIT_REQUESTS}]", timeout=90)
    versions = [json.loads(line)["version"] for line in r.stdout.splitlines() if line]
    assert len(versions) == SPLIT_REQUESTS
    v2 = versions.count("v2")
    assert versions.count("v1") + v2 == SPLIT_REQUESTS
    assert lo <= v2 <= hi, f"{v2}/{SPLIT_REQUESTS} on v2, expected {lo}..{hi} (weight {V2_WEIGHT})"


@pytest.mark.timeout(150)
def test_request_redirect(mesh):
    status, headers, body = curl(mesh, "client", "/old/page?q=1")
    assert status == 301
    # ReplacePrefixMatch /old -> /new, query kept, port 80 left out.
    assert headers["location"] == "http://echo/new/page?q=1"
    assert body == ""


@pytest.mark.timeout(150)
def test_url_rewrite_of_path_and_host(mesh):
    body = echo(mesh, "client", "/rewrite/a/b?x=y")
    assert body["version"] == "v1"
    assert body["path"] == "/rewritten/a/b?x=y"
    assert body["headers"]["host"] == "rewritten.example"


@pytest.mark.timeout(150)
def test_request_mirror_reaches_the_shadow_backend(mesh):
    marker = "m" + secrets.token_hex(6)
    body = echo(mesh, "client", f"/mirror/{marker}")
    assert body["version"] == "v1"                      # the primary answered
    logs = os.path.join(mesh["run_dir"], "logs")
    shadow = [f for f in os.listdir(logs) if f.startswith(f"{NS}_shadow-")][0]

    def mirrored():
        with open(os.path.join(logs, shadow)) as f:
            return [ln for ln in f if marker in ln]
    wait_for(lambda: mirrored(), timeout=10, what="the mirrored copy at the shadow backend")
    (line,) = mirrored()                                 # exactly one copy
    assert line.strip() == f"shadow GET /mirror/{marker} host=echo-shadow"


# ------------------------------------------------------------------ timeouts, retries

@pytest.mark.timeout(150)
def test_request_timeout_against_a_slow_backend(mesh):
    t0 = time.monotonic()
    status, _, body = curl(mesh, "client", "/slow?ms=4000")
    elapsed = time.monotonic() - t0
    assert status == 504 and body == "upstream request timeout"
    assert elapsed < 3.5, f"504 after {elapsed:.1f} s; the route's timeout is 1 s"
    assert echo(mesh, "client", "/slow?ms=50")["version"] == "v1"     # within the timeout


@pytest.mark.timeout(150)
def test_retries_against_a_failing_backend(mesh):
    key = secrets.token_hex(4)
    # Fails twice then answers: the route's 2 retries make it succeed.
    body = echo(mesh, "client", f"/flaky?key={key}&fail=2")
    assert body["attempt"] == 3
    # Fails 5 times: 1 try + 2 retries, all 503, reach the client...
    key = secrets.token_hex(4)
    status, _, body = curl(mesh, "client", f"/flaky?key={key}&fail=5")
    assert status == 503 and json.loads(body)["attempt"] == 3
    # ...and exactly 3 attempts were made: the next request's tries are 4, 5, 6.
    assert echo(mesh, "client", f"/flaky?key={key}&fail=5")["attempt"] == 6


# ------------------------------------------------------------------ policy, HTTP/2, telemetry

@pytest.mark.timeout(150)
def test_l7_authorization_deny_by_method_and_path_for_one_identity(mesh):
    status, _, body = curl(mesh, "other", "/admin/users", "-X", "POST")
    assert (status, body) == (403, "RBAC: access denied")
    # The same identity: another method, another path -> allowed.
    assert curl(mesh, "other", "/admin/users")[0] == 200
    assert curl(mesh, "other", "/public", "-X", "POST")[0] == 200
    # Another identity: the same request is allowed.
    body = echo(mesh, "client", "/admin/users", "-X", "POST")
    assert body["method"] == "POST" and body["path"] == "/admin/users"


@pytest.mark.timeout(150)
def test_http2_prior_knowledge_with_nghttp_and_h2load(mesh):
    r = pexec(mesh["run_dir"], "client", "nghttp", "-v", "http://echo/v2/h2?via=nghttp")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", r.stdout), r.stdout
    assert '"path": "/v2/h2?via=nghttp"' in r.stdout and '"version": "v2"' in r.stdout
    r = pexec(mesh["run_dir"], "client", "h2load", "-n", "200", "-c", "2", "-m", "10",
              "http://echo/v2/h2load", timeout=90)
    assert "200 total, 200 started, 200 done, 200 succeeded, 0 failed" in r.stdout, r.stdout
    assert "status codes: 200 2xx, 0 3xx, 0 4xx, 0 5xx" in r.stdout


@pytest.mark.timeout(150)
def test_istio_requests_total_counts_every_request(mesh):
    run = mesh["run_dir"]
    n = 25
    labels = {"reporter": "waypoint", "response_code": "200", "source_workload": "client",
              "source_principal": f"spiffe://cluster.local/ns/{NS}/sa/client",
              "destination_service_name": "echo-v2", "destination_service_namespace": NS,
              "destination_principal": f"spiffe://cluster.local/ns/{NS}/sa/echo",
              "destination_workload": "echo-v2", "destination_workload_namespace": NS,
              "connection_security_policy": "mutual_tls", "request_protocol": "http"}
    before = settled(run, "waypoint-0", labels)
    r = pexec(run, "client", "curl", "-s", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}\n",
              "-H", "x-version: v2", f"http://echo/count/[1-{n}]")
    assert r.stdout.split() == ["200"] * n
    wait_for(lambda: metric_sum(run, "waypoint-0", "istio_requests_total", **labels) >= before + n,
             timeout=10, what="the waypoint's counter to reach the requests sent")
    assert metric_sum(run, "waypoint-0", "istio_requests_total", **labels) == before + n
    # The denied request is counted too, with Envoy's response flag.
    denied = {"reporter": "waypoint", "response_code": "403", "response_flags": "RBAC",
              "source_workload": "other"}
    before = settled(run, "waypoint-0", denied)
    assert curl(mesh, "other", "/admin/x", "-X", "POST")[0] == 403
    wait_for(lambda: metric_sum(run, "waypoint-0", "istio_requests_total", **denied) == before + 1,
             timeout=10, what="the 403 in istio_requests_total")


RAW_CLIENT = """
import socket, sys
s = socket.create_connection(("echo", 80), timeout=10)
s.sendall(sys.argv[1].encode().decode("unicode_escape").encode("latin-1"))
data = b""
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    print("EOF " + data.decode("latin-1"))
except ConnectionResetError:
    print("RESET " + data.decode("latin-1"))
"""


@pytest.mark.timeout(150)
def test_malformed_request_gets_400_and_a_clean_close(mesh):
    """Envoy's answer to a malformed request: 400 and close. The close must
    be a FIN through both tunnels, never a reset that could drop the 400."""
    for _ in range(5):
        r = pexec(mesh["run_dir"], "client", "python3", "-c", RAW_CLIENT, r"GARBAGE\r\n\r\n")
        assert r.stdout.startswith("EOF HTTP/1.1 400 Bad Request\n"), r.stdout + r.stderr  # text mode: \r\n read as \n
        assert "connection: close" in r.stdout.lower()
    # A keep-alive pair of requests, then the client's FIN: both answered,
    # and the tunnel ends cleanly too.
    r = pexec(mesh["run_dir"], "client", "python3", "-c", RAW_CLIENT,
              r"GET /v2/a HTTP/1.1\r\nHost: echo\r\n\r\nGET /v2/b HTTP/1.1\r\nHost: echo\r\n"
              r"Connection: close\r\n\r\n")
    assert r.stdout.startswith("EOF ") and r.stdout.count("HTTP/1.1 200 OK") == 2, r.stdout
    # The client-side ztunnel logged no reset for any of these tunnels.
    with open(os.path.join(mesh["run_dir"], "logs", "ztunnel-node-2.log")) as f:
        resets = [ln for ln in f if "reset by peer" in ln and "10.{}.128.".format(mesh["base"]) in ln]
    assert not resets, resets[:3]


# ------------------------------------------------------------------ scaling (last: changes replicas)

def _served(run, pod, **labels):
    return metric_sum(run, pod, "istio_requests_total", reporter="waypoint", **labels)


def _loop(run, path, stop, *flags):
    """apps/loop.py in the client pod, until `stop` exists."""
    return subprocess.Popen([*SHOAL, "mesh", "exec", "--run-dir", run, f"{NS}/client", "--",
                             "python3", os.path.join(APPS, "loop.py"), f"http://echo{path}", stop,
                             *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _started(loop, stop):
    wait_for(lambda: os.path.exists(stop + ".started") or loop.poll() is not None, timeout=20,
             what="a client loop's first answer")
    assert loop.poll() is None, loop.communicate()


def _replicas(run):
    st = json.loads(shoal("status", "-o", "json", run_dir=run).stdout)
    return sorted(p["pod"] for p in st["pods"] if p["pod"].startswith(f"{NS}/waypoint-"))


@pytest.mark.timeout(170)
def test_scale_waypoint_up_and_down_under_load_without_failures(mesh, tmp_path):
    """Two kinds of clients run throughout: one opens a connection per request
    (to /v2/..., so the ztunnel picks a replica each time), two keep one
    connection open (to the weighted default route: echo-v1 in the metrics
    tells their requests apart). Scaling 1 -> 3 -> 1 fails no request; a
    keep-alive client whose replica goes away is told `connection: close`
    and reconnects, never meeting a closed connection (`stale_retries`, the
    requests a client would have to re-send, stays 0)."""
    run = mesh["run_dir"]
    stop = str(tmp_path / "stop")
    loops = []
    try:
        loops.append(_loop(run, "/v2/loop", stop + "0"))
        _started(loops[0], stop + "0")
        shoal("scale", "waypoint", f"{NS}/waypoint", "3", run_dir=run)
        assert _replicas(run) == [f"{NS}/waypoint-{i}" for i in range(3)]
        # The ztunnels spread new connections over the new replicas too.
        for pod in ("waypoint-1", "waypoint-2"):
            wait_for(lambda: _served(run, pod, destination_service_name="echo-v2") > 0, timeout=20,
                     what=f"traffic through {pod}")
        for i in (1, 2):
            loops.append(_loop(run, "/keepalive", stop + str(i), "--keepalive"))
            _started(loops[i], stop + str(i))
        # Where the keep-alive clients landed (once their requests are counted).
        wait_for(lambda: sum(_served(run, f"waypoint-{i}", destination_service_name="echo-v1")
                             for i in range(3)) >= 20, timeout=15, what="keep-alive traffic counted")
        on_leaving = sum(_served(run, pod, destination_service_name="echo-v1")
                         for pod in ("waypoint-1", "waypoint-2")) > 0
        shoal("scale", "waypoint", f"{NS}/waypoint", "1", run_dir=run)
        assert _replicas(run) == [f"{NS}/waypoint-0"]
        # Every loop keeps going through the remaining replica.
        after = _served(run, "waypoint-0")
        wait_for(lambda: _served(run, "waypoint-0") >= after + 30, timeout=20,
                 what="traffic through waypoint-0 after scaling down")
    finally:
        for i in range(len(loops)):
            open(stop + str(i), "w").close()
        results = [(json.loads(out or "{}"), err) for out, err in
                   (loop.communicate(timeout=30) for loop in loops)]
    for result, err in results:
        assert set(result["codes"]) == {"200"}, f"failed requests while scaling: {result} {err}"
        assert result["codes"]["200"] >= 20, result
        assert result["stale_retries"] == 0, result
    per_request, keepalive = results[0][0], [r for r, _ in results[1:]]
    print(f"scaling under load: per-request client {per_request}, keep-alive clients {keepalive}, "
          f"a keep-alive client on a leaving replica: {on_leaving}")
    assert per_request["connections"] == sum(per_request["codes"].values())
    if on_leaving:        # a keep-alive client was on a replica that went away
        assert any(r["connections"] >= 2 for r in keepalive), keepalive
    # No tunnel through a leaving replica was cut: the client-side ztunnel
    # logged no lost HBONE connection or reset for the echo service.
    with open(os.path.join(run, "logs", "ztunnel-node-2.log")) as f:
        cut = [ln for ln in f if '"level":"error"' in ln and f"10.{mesh['base']}.128." in ln]
    assert not cut, cut[:3]
