"""Waypoint load run: wrk through the waypoint vs nginx as a reverse proxy.

    python -m benchmarks.load_waypoint [--duration 5] [--connections 32] [--plot]

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

ROOT = Path(__file__).resolve().parents[1]
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

MESH = """
apiVersion: v1
kind: Namespace
metadata: {{name: default, labels: {{istio.io/use-waypoint: waypoint}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: default}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  clusterIP: 10.96.50.50
  selector: {{app: echo}}
  ports: [{{name: http, port: 8080, targetPort: {backend}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: default, labels: {{app: echo}}}}
spec:
  containers: [{{name: app, ports: [{{containerPort: {backend}}}]}}]
status: {{podIP: 127.0.0.1}}
"""


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
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {}
    for pct, val, unit in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", text):
        lat[pct] = float(val) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return {"rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "non_2xx": int(errors.group(1)) if errors else 0}


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


def start_waypoint(d: Path, port: int, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "core.cli", "waypoint", "run", "--name", "waypoint",
           "--namespace", "default", "--hbone-port", "0", "--plaintext-port", str(port),
           "--bind", "127.0.0.1", "--upstream-plaintext", "--no-access-log",
           "--config", str(d / "mesh"), "--workers", str(workers), "--admin-port", "0",
           "--metrics-port", "0", "--readiness-port", "0", "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk nginx-light)")
    d = Path(tempfile.mkdtemp(prefix="shoal-wp-load-"))
    (d / "mesh").mkdir()
    results: dict = {"duration_s": args.duration, "connections": args.connections,
                     "body_bytes": 1024, "runs": {}, "h2": {}}
    bport = free_port()
    backend = start_nginx(BACKEND_CONF.format(dir=d, port=bport, body="x" * 1024), d, "backend")
    (d / "mesh" / "mesh.yaml").write_text(MESH.format(backend=bport))
    try:
        wait_http(bport)
        results["runs"]["direct"] = run_wrk(bport, args, None, [])
        print("direct", results["runs"]["direct"], flush=True)
        for w in (int(x) for x in args.workers.split(",")):
            nport, n2port = free_port(), free_port()
            nginx = start_nginx(PROXY_CONF.format(dir=d, port=nport, h2port=n2port, backend=bport,
                                                  workers=w), d, f"proxy{w}")
            try:
                wait_http(nport)
                results["runs"][f"nginx_w{w}"] = run_wrk(nport, args, None, tree_pids(nginx.pid))
                if shutil.which("h2load"):
                    results["h2"][f"nginx_w{w}"] = run_h2load(n2port, args, None,
                                                             tree_pids(nginx.pid))
            finally:
                stop(nginx)
            print(f"nginx w{w}", results["runs"][f"nginx_w{w}"], flush=True)
            wport = free_port()
            wp = start_waypoint(d, wport, w)
            try:
                wait_http(wport, HOST)
                time.sleep(0.5)        # let every worker bind before measuring
                results["runs"][f"shoal_w{w}"] = run_wrk(wport, args, HOST, tree_pids(wp.pid))
                if shutil.which("h2load"):
                    results["h2"][f"shoal_w{w}"] = run_h2load(wport, args, HOST, tree_pids(wp.pid))
            finally:
                stop(wp)
            print(f"shoal w{w}", results["runs"][f"shoal_w{w}"], flush=True)
            n, s = results["runs"][f"nginx_w{w}"], results["runs"][f"shoal_w{w}"]
            results[f"ratio_rps_w{w}"] = round(s["rps"] / n["rps"], 3)
            h2n, h2s = results["h2"].get(f"nginx_w{w}"), results["h2"].get(f"shoal_w{w}")
            if h2n and h2s and h2n["rps"]:
                results[f"ratio_h2_rps_w{w}"] = round(h2s["rps"] / h2n["rps"], 3)
            if s["cpu_per_1k_rps"] and n["cpu_per_1k_rps"]:
                results[f"ratio_cpu_per_1k_w{w}"] = round(s["cpu_per_1k_rps"] / n["cpu_per_1k_rps"], 2)
    finally:
        stop(backend)
        shutil.rmtree(d, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load_waypoint.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if args.plot:
        plot(results)


def plot(results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = results["runs"]
    names = [k for k in runs if k != "direct"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(["direct", *names], [runs["direct"]["rps"], *(runs[n]["rps"] for n in names)],
          color=["grey"] + ["tab:blue" if n.startswith("nginx") else "tab:orange" for n in names])
    a.set_title("HTTP/1.1 keep-alive, 1 KiB responses (wrk)")
    a.set_ylabel("requests/s")
    b.bar(names, [runs[n]["cpu_per_1k_rps"] or 0 for n in names],
          color=["tab:blue" if n.startswith("nginx") else "tab:orange" for n in names])
    b.axhline(0.25, color="red", linestyle="--", label="Istio Envoy waypoint (0.25)")
    b.set_title("proxy CPU per 1,000 req/s")
    b.set_ylabel("vCPU")
    b.legend()
    fig.tight_layout()
    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    fig.savefig(img / "waypoint_load.png", dpi=100)
    print(f"wrote {img / 'waypoint_load.png'}")


if __name__ == "__main__":
    main()
