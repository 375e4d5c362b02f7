"""Waypoint load run: wrk through the waypoint vs nginx as a reverse proxy.

    python -m shoal.benchmarks.load.waypoint [--duration 5] [--connections 32] [--plot]
        [--tools wrk,h2load] [--general] [--no-hbone] [--workers 1,2]

Same run, same backend (nginx answering 1 KiB bodies), HTTP/1.1 keep-alive:
- direct: wrk -> backend (the ceiling of this machine);
- nginx:  wrk -> nginx reverse proxy (upstream keepalive) -> backend;
- shoal:  wrk -> `shoal waypoint run` (plaintext test listener, routing by
  Host through the HTTPRoute-free service path, plaintext upstream) -> backend;
for 1 and 2 proxy workers each, with wrk (HTTP/1.1) and h2load (HTTP/2
prior knowledge, 4 connections x 8 streams). Access logs are off on both.
CPU per 1,000 req/s is the proxy's CPU time (all its processes, from
/proc) over the run divided by thousands of req/s served — Istio measures
its waypoint the same way (0.25 vCPU per 1,000 rps).

Writes benchmarks/out/load_waypoint.json and, with --plot,
docs/img/waypoint_load.png. wrk, the backend and the proxy share the
machine's 2 cores: absolute numbers are noisy, compare ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.manifests import documents, service, waypoint_namespace
from tests.helpers.pki import write_credential_dir

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "out"
HOST = "echo.default.svc.cluster.local:8080"

BACKEND_CONF = """
worker_processes 1;
pid {dir}/backend.pid;
error_log {dir}/backend-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ default_type text/plain; return 200 "{body}"; }}
  }}
}}
"""

PROXY_CONF = """
worker_processes {workers};
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    listen 127.0.0.1:{h2port} http2 reuseport;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
  }}
}}
"""


def mesh_yaml(backend: int) -> str:
    """The waypoint's config: one service, echo, whose one pod is the
    backend listening on port `backend`."""
    return documents(
        waypoint_namespace("default"),
        service("echo", "default", "10.96.50.50",
                f"[{{name: http, port: 8080, targetPort: {backend}}}]"),
        f"""apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: default, labels: {{app: echo}}}}
spec:
  containers: [{{name: app, ports: [{{containerPort: {backend}}}]}}]
status: {{podIP: 127.0.0.1}}
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, host: str | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    req = f"GET / HTTP/1.1\r\nHost: {host or '127.0.0.1'}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(req)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answering 200 on port {port}")


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def parse_wrk(text: str) -> dict:
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m is None:
        raise RuntimeError(f"wrk printed no Requests/sec: {text[-500:]!r}")
    rps = float(m.group(1))
    lat = {}
    for pct, val, unit in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", text):
        lat[pct] = float(val) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return {"rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "non_2xx": int(errors.group(1)) if errors else 0}


def best_of(fn, *a):
    """Run `fn` args.repeat times, keep the median by req/s (the machine is shared)."""
    args = a[1]
    runs = sorted((fn(*a) for _ in range(args.repeat)), key=lambda r: r["rps"])
    return runs[len(runs) // 2]


def run_wrk(port: int, args, host: str | None, pids: list[int]) -> dict:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    cmd.append(f"http://127.0.0.1:{port}/")
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 30).stdout
    cpu1, t1 = cpu_seconds(pids), time.monotonic()
    res = parse_wrk(out)
    cores = (cpu1 - cpu0) / (t1 - t0)
    res["proxy_cores"] = round(cores, 3)
    res["cpu_per_1k_rps"] = round(cores / (res["rps"] / 1000.0), 4) if res["rps"] and pids else None
    return res


def run_h2load(port: int, args, host: str | None, pids: list[int]) -> dict:
    """HTTP/2 prior knowledge (h2c), 4 connections x 8 concurrent streams."""
    cmd = ["h2load", "-D", str(args.duration), "-c", "4", "-m", "8", "-t", "1"]
    if host:
        cmd += ["-H", f":authority: {host}"]
    cmd.append(f"http://127.0.0.1:{port}/")
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 30).stdout
    cpu1, t1 = cpu_seconds(pids), time.monotonic()
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    mean = re.search(r"time for request:\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s)", out)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    rps = float(m.group(1)) if m else 0.0
    cores = (cpu1 - cpu0) / (t1 - t0)
    return {"rps": rps, "mean_ms": float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)] if mean else None,
            "ok_2xx": int(ok.group(1)) if ok else 0, "proxy_cores": round(cores, 3),
            "cpu_per_1k_rps": round(cores / (rps / 1000.0), 4) if rps else None}


def start_nginx(conf: str, d: Path, name: str) -> subprocess.Popen:
    path = d / f"{name}.conf"
    path.write_text(conf)
    return subprocess.Popen(["nginx", "-c", str(path), "-p", str(d), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# The load generators here are single threads, so CPU steering (the default,
# docs/operations.md) would hand all their connections to one worker and the
# 2-worker runs would measure one; nginx, the peer, spreads by hash. The
# waypoint spreads by hash too here.
NO_STEERING = ("--no-cpu-steering",)


def start_waypoint(d: Path, port: int, workers: int, general: bool = False) -> subprocess.Popen:
    """`general`: SHOAL_WAYPOINT_FAST=0, the coroutine path alone."""
    cmd = [sys.executable, "-m", "shoal.cli", "waypoint", "run", "--name", "waypoint",
           "--namespace", "default", "--hbone-port", "0", "--plaintext-port", str(port),
           "--bind", "127.0.0.1", "--upstream-plaintext", "--no-access-log",
           "--config", str(d / "mesh"), "--workers", str(workers), "--admin-port", "0", *NO_STEERING,
           "--metrics-port", "0", "--readiness-port", "0", "--log-level", "warning"]
    env = dict(os.environ, SHOAL_WAYPOINT_FAST="0") if general else None
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)


# -- HBONE mode ---------------------------------------------------------------
# wrk cannot speak HBONE, so a Python client (core.hbone) drives the waypoint's
# real :15008 listener: 16 tunnels, one HTTP/1.1 request at a time each. The
# client is the bottleneck (it shares the 2 cores); the figure that matters
# is the waypoint's CPU per 1,000 req/s with mTLS + HTTP/2 CONNECT in front.

WAYPOINT_ID = "spiffe://cluster.local/ns/default/sa/waypoint"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/loadgen"


async def _hbone_client(port: int, authority: str, duration: float, conc: int, cred: str) -> dict:
    from shoal.core.hbone.pool import HbonePool
    from shoal.core.identity.caclient import load_credential
    from shoal.core.identity.tls import client_context
    from shoal.waypoint.http1 import H1ResponseParser, MessageEnded
    cert = load_credential(cred)
    pool = HbonePool(lambda _src: client_context(cert))
    req = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    lat: list[float] = []
    errors = 0
    end = time.monotonic() + duration

    async def one() -> None:
        nonlocal errors
        stream = await pool.open(src=CLIENT_ID, dst_identities=(WAYPOINT_ID,),
                                 address=("127.0.0.1", port), authority=authority)
        while time.monotonic() < end:
            t0 = time.monotonic()
            await stream.write(req)
            p, done = H1ResponseParser("GET"), False
            while not done:
                data = await stream.read(65536)
                if not data:
                    errors += 1
                    return
                done = any(isinstance(e, MessageEnded) for e in p.receive_data(data))
            lat.append(time.monotonic() - t0)
        stream.close()

    t0 = time.monotonic()
    import asyncio
    await asyncio.gather(*(one() for _ in range(conc)))
    took = time.monotonic() - t0
    await pool.close()
    return {"lat": lat, "took": took, "errors": errors}


def _client_process(job: tuple) -> dict:
    """One load-generator process: its own event loop and HBONE pool."""
    import asyncio

    import uvloop
    uvloop.install()
    return asyncio.run(_hbone_client(*job))


def hbone_load(port: int, authority: str, duration: float, conc: int, cred: str,
               procs: int) -> dict:
    """`conc` tunnels spread over `procs` client processes, results merged.

    One Python client saturates one core before a multi-worker waypoint
    does; the generators are forked with `multiprocess` (dill pickles the
    job and the results back) so the client is not what is measured.
    """
    import multiprocess
    jobs = [(port, authority, duration, conc // procs + (i < conc % procs), cred)
            for i in range(procs)]
    with multiprocess.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_client_process, jobs)
    lat = sorted(x for p in parts for x in p["lat"])
    took = max(p["took"] for p in parts)
    pick = (lambda q: round(lat[min(int(q * len(lat)), len(lat) - 1)] * 1000, 2)) if lat else (lambda q: None)
    return {"rps": round(len(lat) / took, 1), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "errors": sum(p["errors"] for p in parts), "client_procs": procs}


# Concurrent tunnels of the HBONE load, one request in flight on each: enough
# to keep two waypoint workers busy on this machine class.
HBONE_TUNNELS = 16

# The "pod" side of the full path: a destination-ztunnel stand-in (core.hbone
# server) on POD_IP:15008 forwarding to the backend. POD_IP is a loopback
# address no test uses, so Istio's fixed HBONE port is free there.
POD_IP = "127.0.77.77"


async def _pod_server(backend_port: int, cred: str) -> None:
    import asyncio

    from shoal.core.hbone.server import Accept, HboneServer
    from shoal.core.identity.caclient import load_credential
    from shoal.core.identity.tls import server_context
    from shoal.core.pipe import connect_tcp
    cert = load_credential(cred)

    async def handler(req):
        return Accept(upstream=await connect_tcp("127.0.0.1", backend_port))

    server = HboneServer(handler)
    await server.listen(POD_IP, 15008, server_context(cert), trust_domain="cluster.local")
    print("ready", flush=True)
    await asyncio.Event().wait()


def run_hbone(d: Path, args, workers: int, upstream_hbone: bool, backend_port: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.pki import TestPKI
    pki = TestPKI()
    write_credential_dir(pki.issue(WAYPOINT_ID), d / "wp-cred")
    write_credential_dir(pki.issue(CLIENT_ID), d / "client-cred")
    write_credential_dir(pki.issue("spiffe://cluster.local/ns/default/sa/default"), d / "pod-cred")
    hport = free_port()
    cfg = d / ("mesh-hbone" if upstream_hbone else "mesh")
    if upstream_hbone:
        cfg.mkdir(exist_ok=True)
        (cfg / "mesh.yaml").write_text(mesh_yaml(backend_port).replace(
            "istio.io/use-waypoint: waypoint}", "istio.io/use-waypoint: waypoint, "
            "istio.io/dataplane-mode: ambient}").replace("podIP: 127.0.0.1", f"podIP: {POD_IP}"))
    cmd = [sys.executable, "-m", "shoal.cli", "waypoint", "run", "--name", "waypoint",
           "--namespace", "default", "--hbone-port", str(hport), "--cert-dir", str(d / "wp-cred"),
           "--bind", "127.0.0.1", "--no-access-log",
           "--config", str(cfg), "--workers", str(workers), "--admin-port", "0", *NO_STEERING,
           "--metrics-port", "0", "--readiness-port", "0", "--log-level", "warning"]
    if not upstream_hbone:
        cmd.append("--upstream-plaintext")
    pod = None
    if upstream_hbone:
        pod = subprocess.Popen([sys.executable, "-m", "shoal.benchmarks.load.waypoint", "--pod-server",
                                f"{backend_port},{d / 'pod-cred'}"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert pod.stdout is not None
        pod.stdout.readline()
    wp = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", hport), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        pids = tree_pids(wp.pid)
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        res = hbone_load(hport, "10.96.50.50:8080", args.duration, HBONE_TUNNELS,
                         str(d / "client-cred"), args.client_procs)
        cpu1, t1 = cpu_seconds(pids), time.monotonic()
        cores = (cpu1 - cpu0) / (t1 - t0)
        res["proxy_cores"] = round(cores, 3)
        res["cpu_per_1k_rps"] = round(cores / (res["rps"] / 1000.0), 4) if res["rps"] else None
        return res
    finally:
        stop(wp)
        if pod is not None:
            stop(pod)


def measure(results: dict, key: str, proc: subprocess.Popen, h1port: int, h2port: int,
            host: str | None, args) -> None:
    """wrk (and h2load when installed) through one running proxy, then stop it."""
    try:
        wait_http(h1port, host)
        time.sleep(0.5)        # let every worker bind before measuring
        pids = tree_pids(proc.pid)
        if "wrk" in args.tools:
            results["runs"][key] = best_of(run_wrk, h1port, args, host, pids)
            print(key, results["runs"][key], flush=True)
        if "h2load" in args.tools and shutil.which("h2load"):
            results["h2"][key] = best_of(run_h2load, h2port, args, host, pids)
            print(key, "h2load", results["h2"][key], flush=True)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the median is kept")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--plot-only", action="store_true",
                    help="re-plot benchmarks/out/load_waypoint.json without running")
    ap.add_argument("--no-hbone", action="store_true", help="skip the HBONE-mode run")
    ap.add_argument("--general", action="store_true",
                    help="also measure shoal with SHOAL_WAYPOINT_FAST=0 (the coroutine path "
                         "the fast paths fall back to), key shoal_general_wN")
    ap.add_argument("--tools", default="wrk,h2load",
                    help="load generators for the plain cases: wrk, h2load or both "
                         "(e.g. --tools h2load --no-hbone for the HTTP/2 rows alone)")
    ap.add_argument("--out", type=Path, default=OUT / "load_waypoint.json")
    ap.add_argument("--client-procs", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="HBONE load-generator processes (default: half the cores)")
    ap.add_argument("--pod-server", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text()))
        return
    if args.pod_server:
        import asyncio

        import uvloop
        port, cred = args.pod_server.split(",")
        uvloop.install()
        asyncio.run(_pod_server(int(port), cred))
        return
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk nginx-light)")
    d = Path(tempfile.mkdtemp(prefix="shoal-wp-load-"))
    (d / "mesh").mkdir()
    results: dict = {"duration_s": args.duration, "repeat": args.repeat, "connections": args.connections,
                     "body_bytes": 1024, "runs": {}, "h2": {}}
    bport = free_port()
    backend = start_nginx(BACKEND_CONF.format(dir=d, port=bport, body="x" * 1024), d, "backend")
    (d / "mesh" / "mesh.yaml").write_text(mesh_yaml(bport))
    try:
        wait_http(bport)
        if "wrk" in args.tools:
            results["runs"]["direct"] = best_of(run_wrk, bport, args, None, [])
            print("direct", results["runs"]["direct"], flush=True)
        for w in (int(x) for x in args.workers.split(",")):
            nport, n2port = free_port(), free_port()
            nginx = start_nginx(PROXY_CONF.format(dir=d, port=nport, h2port=n2port, backend=bport,
                                                  workers=w), d, f"proxy{w}")
            measure(results, f"nginx_w{w}", nginx, nport, n2port, None, args)
            wport = free_port()
            measure(results, f"shoal_w{w}", start_waypoint(d, wport, w), wport, wport, HOST, args)
            if args.general:
                gport = free_port()
                measure(results, f"shoal_general_w{w}", start_waypoint(d, gport, w, general=True),
                        gport, gport, HOST, args)
            n, s = results["runs"].get(f"nginx_w{w}"), results["runs"].get(f"shoal_w{w}")
            if n and s:
                results[f"ratio_rps_w{w}"] = round(s["rps"] / n["rps"], 3)
            h2n, h2s = results["h2"].get(f"nginx_w{w}"), results["h2"].get(f"shoal_w{w}")
            if h2n and h2s and h2n["rps"]:
                results[f"ratio_h2_rps_w{w}"] = round(h2s["rps"] / h2n["rps"], 3)
            for kind, table in (("rps", "runs"), ("h2_rps", "h2")):
                g, peer = (results[table].get(f"shoal_general_w{w}"),
                           results[table].get(f"nginx_w{w}"))
                if g and peer and peer["rps"]:
                    results[f"ratio_{kind}_general_w{w}"] = round(g["rps"] / peer["rps"], 3)
            if n and s and s["cpu_per_1k_rps"] and n["cpu_per_1k_rps"]:
                results[f"ratio_cpu_per_1k_w{w}"] = round(s["cpu_per_1k_rps"] / n["cpu_per_1k_rps"], 2)
        if not args.no_hbone:
            results["hbone_in_plain_out_w1"] = run_hbone(d, args, 1, False, bport)
            print("shoal HBONE in, plain out", results["hbone_in_plain_out_w1"], flush=True)
            results["hbone_in_hbone_out_w1"] = run_hbone(d, args, 1, True, bport)
            print("shoal HBONE in, HBONE out", results["hbone_in_hbone_out_w1"], flush=True)
    finally:
        stop(backend)
        shutil.rmtree(d, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if args.plot:
        plot(results)


def plot(results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs, h2 = results["runs"], results.get("h2", {})
    names = [k for k in runs if k != "direct"]
    colour = lambda n: "tab:blue" if n.startswith("nginx") else "tab:orange"  # noqa: E731
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    a.bar(["direct", *names], [runs["direct"]["rps"], *(runs[n]["rps"] for n in names)],
          color=["grey"] + [colour(n) for n in names])
    a.set_title("HTTP/1.1 keep-alive, 1 KiB (wrk -c32)")
    a.set_ylabel("requests/s")
    if h2:
        b.bar(list(h2), [h2[n]["rps"] for n in h2], color=[colour(n) for n in h2])
    b.set_title("HTTP/2 prior knowledge (h2load -c4 -m8)")
    b.set_ylabel("requests/s")
    cpu = {n: runs[n]["cpu_per_1k_rps"] or 0 for n in names}
    for key, label in (("hbone_in_plain_out_w1", "w1 hbone\nin"),
                       ("hbone_in_hbone_out_w1", "w1 hbone\nin+out")):
        if results.get(key):
            cpu[label] = results[key]["cpu_per_1k_rps"] or 0
    c.bar(list(cpu), list(cpu.values()), color=[colour(n) for n in cpu])
    c.axhline(0.25, color="red", linestyle="--", label="Istio Envoy waypoint (0.25)")
    c.set_title("proxy CPU per 1,000 req/s (HTTP/1.1)")
    c.set_ylabel("vCPU")
    c.tick_params(axis="x", labelsize=8)
    c.legend(fontsize=8)
    fig.tight_layout()
    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    fig.savefig(img / "waypoint_load.png", dpi=100)
    print(f"wrote {img / 'waypoint_load.png'}")


if __name__ == "__main__":
    main()
