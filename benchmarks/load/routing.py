"""Routing-table load study: lookups, update cost vs size, memory, reload latency.

    python -m shoal.benchmarks.load.routing [--sizes 1000,10000,100000] [--reloads 50]

Writes benchmarks/out/routing.json and docs/img/routing.png. Every figure is
from this one run on this machine (2 cores shared with other work: noisy).
"""

from __future__ import annotations

import argparse
import os
import gc
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import orjson

from shoal.benchmarks.bench_routing_synth import synth_config, synth_pod
from shoal.routing.incremental import IncrementalCompiler
from shoal.routing.runtime import TableHandle, attach_view
from shoal.routing.shm import TableWriter, unlink
from shoal.routing.view import StaticView

OUT = pathlib.Path("benchmarks/out")
LOOKUPS = 200_000


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def build(n: int, **kw):
    cfg = synth_config(n, **kw)
    comp = IncrementalCompiler()
    t0 = time.perf_counter()
    delta = comp.update(cfg)
    compile_s = time.perf_counter() - t0
    writer = TableWriter.create(size=512 << 20)
    t0 = time.perf_counter()
    writer.apply(delta.changes)
    load_s = time.perf_counter() - t0
    gc.freeze()         # as the watcher does after its first load (p99: no full-heap GC scans)
    return cfg, comp, writer, compile_s, load_s


def update_study(sizes: list[int], rounds: int = 200) -> list[dict]:
    rows = []
    for n in sizes:
        cfg, comp, writer, compile_s, load_s = build(n)
        publish, publish_cpu, incremental = [], [], []
        for r in range(rounds):
            change = {f"w/Kubernetes//Pod/ns-0/pod-{r % 50}": b'{"bench":%d}' % r}
            t0, c0 = time.perf_counter(), time.thread_time()
            writer.apply(change)
            publish.append(time.perf_counter() - t0)
            publish_cpu.append(time.thread_time() - c0)
        for r in range(min(rounds, 50)):
            pod = synth_pod(r % 50, generation=r + 1)       # a one-pod change set
            t0 = time.perf_counter()
            writer.apply(comp.update_resources(upserts=[pod]).changes)
            incremental.append(time.perf_counter() - t0)
        stats = writer.stats()
        rows.append({"workloads": n, "full_compile_s": compile_s, "initial_load_s": load_s,
                     "publish_one_pod_p50_ms": 1e3 * statistics.median(publish),
                     "publish_one_pod_p99_ms": 1e3 * pct(publish, 0.99),
                     # CPU time excludes preemption by other processes on a busy host
                     "publish_one_pod_cpu_p99_ms": 1e3 * pct(publish_cpu, 0.99),
                     "compile_and_publish_one_pod_p50_ms": 1e3 * statistics.median(incremental),
                     "compile_and_publish_one_pod_p99_ms": 1e3 * pct(incremental, 0.99),
                     "shm_used_bytes": stats["used"],
                     "shm_bytes_per_1k_workloads": stats["used"] * 1000 // n})
        writer.close()
        unlink(writer.name)
        print(orjson.dumps(rows[-1]).decode(), flush=True)
    return rows


def memory_study() -> dict:
    _, _, writer, compile_s, load_s = build(100_000, n_services=10_000, n_policies=1_000)
    stats = writer.stats()
    writer.close()
    unlink(writer.name)
    out = {"workloads": 100_000, "services": 10_000, "policies": 1_000,
           "shm_used_bytes": stats["used"], "shm_used_mib": stats["used"] / 2**20,
           "full_compile_s": compile_s, "initial_load_s": load_s}
    print(orjson.dumps(out).decode(), flush=True)
    return out


def lookup_study() -> dict:
    cfg = synth_config(10_000)
    comp = IncrementalCompiler()
    h = TableHandle.create(size=64 << 20, clean_stale=False)
    w = TableWriter.attach(h.name)
    w.apply(comp.update(cfg).changes)
    view = attach_view(h.name)
    static = StaticView.from_records(comp.records())
    ips = [f"10.0.{(i >> 8) & 255}.{i & 255}" for i in range(0, 10_000, 37)]
    peer = {ip: i for i, ip in enumerate(ips)}

    def rate(fn) -> float:
        for ip in ips:
            fn(ip)
        t0 = time.perf_counter()
        n = 0
        while n < LOOKUPS:
            for ip in ips:
                fn(ip)
            n += len(ips)
        return n / (time.perf_counter() - t0)

    from shoal.routing.shm import lookup, split_root
    gen, root = split_root(view._reader.root_word())
    keys = [f"i/ip//{ip}".encode() for ip in ips]
    out = {"warm_routingview_per_s": rate(view.workload_by_ip),
           "staticview_per_s": rate(static.workload_by_ip),
           "dict_get_peer_per_s": rate(peer.get)}
    t0 = time.perf_counter()
    for _ in range(LOOKUPS // len(keys)):
        for k in keys:
            lookup(view._mm, root, k)
    out["shm_raw_per_s"] = (LOOKUPS // len(keys)) * len(keys) / (time.perf_counter() - t0)

    def cold(ip):
        view._cache.clear()
        view._by_ip.clear()
        return view.workload_by_ip(ip)
    out["shm_decode_per_s"] = rate(cold) if LOOKUPS else 0
    spent = 0.0
    for ip in ips:
        view.workload_by_ip(ip)              # warm: measure revalidation, not decode
    for n, ip in enumerate(ips * 3):
        w.apply({"n/bench-unrelated": b'{"name":"x%d"}' % n})       # a new generation
        t0 = time.perf_counter()
        view.workload_by_ip(ip)
        spent += time.perf_counter() - t0
    out["after_generation_change_us"] = 1e6 * spent / (3 * len(ips))
    out["warm_vs_dict_ratio"] = out["warm_routingview_per_s"] / out["dict_get_peer_per_s"]
    view.close()
    w.close()
    h.unlink()
    print(orjson.dumps(out).decode(), flush=True)
    return out


POD_YAML = """apiVersion: v1
kind: Pod
metadata: {{name: pod-{i}, namespace: ns-{ns}, labels: {{app: a{app}, rev: "{rev}"}}}}
spec: {{nodeName: node-{node}}}
status: {{podIP: 10.{ns}.{hi}.{lo}}}
---
"""


def write_ns(d: pathlib.Path, ns: int, pods: int, rev: int, marker: int | None = None) -> None:
    text = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: " \
           f"{{istio.io/dataplane-mode: ambient}}}}\n---\n"
    text += "".join(POD_YAML.format(i=i, ns=ns, app=i // 10, rev=rev if i == 0 else 0,
                                    node=i // 100, hi=i >> 8, lo=i & 255) for i in range(pods))
    if marker is not None:
        text += (f"apiVersion: v1\nkind: Service\nmetadata: {{name: marker, namespace: ns-{ns}}}\n"
                 f"spec: {{clusterIP: 10.255.{marker >> 8 & 255}.{marker & 255}, ports: [{{port: 80}}]}}\n")
    tmp = d / f".ns-{ns}.tmp"
    tmp.write_text(text)
    tmp.rename(d / f"ns-{ns}.yaml")          # atomic, as kubectl-style tools write


def write_marker(d: pathlib.Path, r: int) -> None:
    text = (f"apiVersion: v1\nkind: Service\nmetadata: {{name: marker, namespace: ns-0}}\n"
            f"spec: {{clusterIP: 10.255.{r >> 8 & 255}.{r & 255}, ports: [{{port: 80}}]}}\n")
    tmp = d / ".marker.tmp"
    tmp.write_text(text)
    tmp.rename(d / "marker.yaml")


def reload_study(reloads: int, namespaces: int = 10, pods: int = 100,
                 big_file: bool = False) -> dict:
    """File write -> a reader process sees the change. One-resource change in its
    own file (default), or a pod relabelled in a file of `pods` pods (`big_file`)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    for ns in range(namespaces):
        write_ns(d, ns, pods, 0)
    h = TableHandle.create(size=64 << 20, clean_stale=False)
    watcher = subprocess.Popen([sys.executable, "-m", "shoal.routing.watcher", "--table", h.name, str(d)],
                               stderr=subprocess.DEVNULL)
    view = attach_view(h.name)
    try:
        deadline = time.monotonic() + 60
        while view.generation < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        latencies = []
        for r in range(1, reloads + 1):
            t0 = time.perf_counter()
            if big_file:
                write_ns(d, r % namespaces, pods, r, marker=r)
            else:
                write_marker(d, r)
            vip = f"10.255.{r >> 8 & 255}.{r & 255}"
            while view.service_by_vip(vip) is None:
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError("reload not seen within 10 s")
                time.sleep(0.0002)          # poll without starving the watcher (2 cores)
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)
    finally:
        view.close()
        watcher.terminate()
        watcher.wait(timeout=10)
        h.unlink()
        shutil.rmtree(d)
    out = {"workloads": namespaces * pods, "reloads": reloads,
           "change": f"one pod in a {pods}-pod file" if big_file else "one-resource file",
           "p50_ms": 1e3 * statistics.median(latencies), "p99_ms": 1e3 * pct(latencies, 0.99),
           "max_ms": 1e3 * max(latencies), "latencies_ms": [1e3 * x for x in latencies]}
    print(orjson.dumps({k: v for k, v in out.items() if k != "latencies_ms"}).decode(), flush=True)
    return out


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    rows = result["update"]
    sizes = [r["workloads"] for r in rows]
    for key, label, style in (("publish_one_pod_p50_ms", "publish (shm) p50", "o-"),
                              ("publish_one_pod_p99_ms", "publish (shm) p99 wall", "o--"),
                              ("publish_one_pod_cpu_p99_ms", "publish (shm) p99 CPU time", "o:"),
                              ("compile_and_publish_one_pod_p50_ms", "compile + publish p50", "s-"),
                              ("compile_and_publish_one_pod_p99_ms", "compile + publish p99", "s--")):
        a.plot(sizes, [r.get(key, float("nan")) for r in rows], style, label=label)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_title("one-pod update (ms) vs table size")
    a.set_xlabel("workloads in table")
    a.set_ylabel("ms (log)")
    a.axhline(1.0, ls=":", color="r", label="target: publish <= 1 ms")
    a.legend(fontsize=8)
    for key, label in (("reload", "one-resource file"), ("reload_big_file", "100-pod file")):
        lat = sorted(result[key]["latencies_ms"])
        b.plot(lat, [i / len(lat) for i in range(len(lat))], label=label)
    b.axvline(50, ls="--", color="r", label="target p99 50 ms")
    b.set_title("file write -> reader sees it (CDF)")
    b.set_xlabel("ms")
    b.legend()
    lk = result["lookup"]
    names = ["dict.get (peer)", "RoutingView warm", "StaticView", "shm raw", "shm + decode"]
    vals = [lk["dict_get_peer_per_s"], lk["warm_routingview_per_s"], lk["staticview_per_s"],
            lk["shm_raw_per_s"], lk["shm_decode_per_s"]]
    c.barh(names, vals)
    c.set_xscale("log")
    c.axvline(1e6, ls="--", color="r", label="target 1M/s warm")
    c.set_title("lookups per second, one core (log)")
    c.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--reloads", type=int, default=200)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = p.parse_args()
    if args.replot:
        plot(orjson.loads((OUT / "routing.json").read_bytes()), pathlib.Path("docs/img/routing.png"))
        return
    result = {"host": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
              "lookup": lookup_study(), "reload": reload_study(args.reloads),
              "reload_big_file": reload_study(args.reloads, big_file=True),
              "update": update_study([int(s) for s in args.sizes.split(",")])}
    if not args.skip_memory:
        result["memory"] = memory_study()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "routing.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    plot(result, pathlib.Path("docs/img/routing.png"))


if __name__ == "__main__":
    main()
