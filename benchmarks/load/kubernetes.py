"""Kubernetes API source load run (docs/bench/kubernetes.md).

    flock /tmp/shoal-netns.lock .venv/bin/python -m shoal.benchmarks.load.kubernetes \\
        [--pods 100000 --services 10000 --policies 1000 --events 20000 --samples 300 --readers 2]

One test API server (tests/helpers/kube_apiserver.py, the real wire protocol
over HTTP on loopback, in this process), one watcher process
(`python -m shoal.routing.watcher --table T kubernetes:KUBECONFIG`, i.e.
lightkube + KubeSource + IncrementalCompiler + the shared table) and
--readers reader processes attached to the table as workers are:

1. initial sync: from spawning the watcher to the first published table
   (process start and imports included), and the watcher's peak RSS (VmHWM);
2. sustained pod events: --events pod IP changes written at once; events/s
   until the table shows the last one (the API server's serialisation runs
   on the same 2 cores, inside the figure);
3. event -> all workers: --samples single pod changes, one at a time; the
   time from the API write to the moment the last reader process sees it.

Writes benchmarks/out/kubernetes.json. Objects are compact (~0.6 KiB per
pod: no managedFields), so list bytes are smaller than a real cluster's.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import orjson

from shoal.routing.runtime import TableHandle, attach_view
from tests.helpers.kube_apiserver import KubeApiServer

OUT = pathlib.Path("benchmarks/out")
PODS_PER_NS, PODS_PER_SERVICE, PODS_PER_POLICY, PODS_PER_NODE = 1000, 10, 100, 100
TABLE_SIZE = 1 << 30        # 100k workloads + 10k services fit in ~256 MiB; room for churn
SYNC_TIMEOUT = 600.0
READER_POLL = 0.0002        # a reader's check interval: bounds the measured latency's floor


def _ip(prefix: int, i: int) -> str:
    return f"{prefix}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def pod(i: int, ip_prefix: int = 10) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod-{i}", "namespace": f"ns-{i // PODS_PER_NS}",
                         "labels": {"app": f"svc-{i // PODS_PER_SERVICE}", "pol": f"p-{i // PODS_PER_POLICY}",
                                    "pod-template-hash": "5d9c7b8f6"}},
            "spec": {"nodeName": f"node-{i // PODS_PER_NODE}", "serviceAccountName": f"sa-{i % 7}",
                     "containers": [{"name": "app", "image": "registry.local/app:1.0",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": _ip(ip_prefix, i),
                       "podIPs": [{"ip": _ip(ip_prefix, i)}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def cluster(n_pods: int, n_services: int, n_policies: int) -> list[dict]:
    out: list[dict] = [{"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": f"ns-{k}", "labels": {"istio.io/dataplane-mode": "ambient"}}}
                       for k in range((n_pods + PODS_PER_NS - 1) // PODS_PER_NS)]
    out += [pod(i) for i in range(n_pods)]
    for s in range(n_services):
        ns = f"ns-{(s * PODS_PER_SERVICE) // PODS_PER_NS}"
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{s}", "namespace": ns},
                    "spec": {"clusterIP": _ip(11, s), "selector": {"app": f"svc-{s}"},
                             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    for p in range(n_policies):
        ns = f"ns-{(p * PODS_PER_POLICY) // PODS_PER_NS}"
        spec: dict = {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["ns-0"]}}]}]}
        if p % 10:
            spec["selector"] = {"matchLabels": {"pol": f"p-{p}"}}
        out.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": f"pol-{p}", "namespace": ns}, "spec": spec})
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reader(table: str, n: int, prefix: int) -> None:
    """A worker stand-in: reports when it first sees each sample's IP."""
    view = attach_view(table)
    print("ready", flush=True)
    seen = []
    for j in range(n):
        ip = _ip(prefix, j)
        while view.workload_by_ip(ip) is None:
            time.sleep(READER_POLL)
        seen.append(time.monotonic())
    print(orjson.dumps(seen).decode(), flush=True)


def wait(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.001)
    raise TimeoutError(what)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pods", type=int, default=100_000)
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--policies", type=int, default=1_000)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--reader", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reader:
        return reader(args.reader[0], int(args.reader[1]), int(args.reader[2]))
    tmp = tempfile.mkdtemp(prefix="shoal-kube-bench-")
    api = KubeApiServer().start()
    kubeconfig = api.write_kubeconfig(os.path.join(tmp, "kubeconfig"))
    objs = cluster(args.pods, args.services, args.policies)
    api.bulk_load(objs)
    handle = TableHandle.create(size=TABLE_SIZE)
    procs: list[subprocess.Popen] = []
    result: dict = {"machine": {"cpu": platform.processor() or _cpu_model(), "cpus": os.cpu_count()},
                    "objects": {"pods": args.pods, "services": args.services, "policies": args.policies}}
    try:
        t0 = time.monotonic()
        w = subprocess.Popen([sys.executable, "-m", "shoal.routing.watcher", "--table", handle.name,
                              "kubernetes:" + kubeconfig], stderr=subprocess.DEVNULL)
        procs.append(w)
        view = attach_view(handle.name)
        wait(lambda: view.generation > 0 and view.status().get("kubernetes"), SYNC_TIMEOUT, "sync")
        sync_s = time.monotonic() - t0
        assert view.workload_by_ip(_ip(10, args.pods - 1)) is not None
        result["initial_sync"] = {"seconds": round(sync_s, 2), "watcher_peak_rss_mib": round(vm(w.pid, "VmHWM") / 2**20, 1),
                                  "watcher_rss_after_mib": round(vm(w.pid, "VmRSS") / 2**20, 1)}
        print(orjson.dumps(result["initial_sync"]).decode(), flush=True)

        # 2. sustained events: every event moves one pod to a new IP (prefix 12).
        n = min(args.events, args.pods)
        burst = [pod(i, ip_prefix=12) for i in range(n)]
        t1 = time.monotonic()
        api.call(lambda: [api._write("MODIFIED", o) for o in burst])
        written = time.monotonic() - t1
        wait(lambda: view.workload_by_ip(_ip(12, n - 1)) is not None, SYNC_TIMEOUT, "burst")
        burst_s = time.monotonic() - t1
        result["sustained_events"] = {"events": n, "seconds": round(burst_s, 2),
                                      "events_per_s": round(n / burst_s), "api_write_s": round(written, 2)}
        print(orjson.dumps(result["sustained_events"]).decode(), flush=True)

        # 3. event -> all workers, one change at a time (prefix 13).
        readers = []
        for _ in range(args.readers):
            r = subprocess.Popen([sys.executable, "-m", "shoal.benchmarks.load.kubernetes", "--reader",
                                  handle.name, str(args.samples), "13"], stdout=subprocess.PIPE, text=True)
            procs.append(r)
            assert r.stdout is not None and r.stdout.readline().strip() == "ready"
            readers.append(r)
        sent = []
        for j in range(args.samples):
            obj = pod(j, ip_prefix=13)
            sent.append(time.monotonic())
            api.update(obj)
            wait(lambda: view.workload_by_ip(_ip(13, j)) is not None, 30, "sample")
            time.sleep(0.005)
        seen = [orjson.loads(r.communicate(timeout=60)[0]) for r in readers]
        lat = [(max(s[j] for s in seen) - sent[j]) * 1000 for j in range(args.samples)]
        result["event_to_all_workers_ms"] = {"readers": args.readers, "samples": args.samples,
                                             "p50": round(pct(lat, 0.5), 2), "p99": round(pct(lat, 0.99), 2),
                                             "max": round(max(lat), 2)}
        print(orjson.dumps(result["event_to_all_workers_ms"]).decode(), flush=True)
        view.close()
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.terminate()
                pr.wait(10)
        handle.unlink()
        api.stop()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "kubernetes.json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    main()
