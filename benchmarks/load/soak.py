"""Soak run: ztunnel worker RSS over many short connections (a leak detector).

    python -m shoal.benchmarks.load.soak [--connections 200000] [--workers 1]
        [--parallel 32] [--mixed-seconds 600]

A two-node ztunnel pair on loopback (tests/helpers/ztunnel_mesh.py: real CA,
real mTLS HBONE), a client that opens a new connection per request (connect,
16-byte echo, close), and a sampler reading every ztunnel worker's RSS from
/proc every `--sample-every` connections. The growth is the least-squares
slope of RSS against connections after the warm-up (the first
WARMUP_FRACTION of the run: pools, caches and allocator arenas fill first),
in KiB per 1,000 connections, per worker.

`--mixed-seconds` adds a second phase: for that long, new short connections
plus long-lived connections streaming 64 KiB chunks plus bursts of 200
parallel connections (a mix close to a busy node), RSS sampled once a second.

Writes benchmarks/out/soak.json and docs/img/soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shoal.benchmarks.load.ztunnel import memory, workers_of  # noqa: E402
from tests.helpers.ports import SOAK_APP_PORT as APP_PORT  # noqa: E402
from tests.helpers.ztunnel_mesh import Mesh  # noqa: E402

VIP = "10.96.0.20"
PAYLOAD = b"0123456789abcdef"
# Pools, decode caches, prometheus children and malloc arenas fill during
# the first part of a run; the slope is taken over the rest.
WARMUP_FRACTION = 0.2
# Long-lived streams in the mixed phase and the size of each write.
MIXED_STREAMS = 8
MIXED_CHUNK = 64 * 1024
MIXED_BURST = 200
# Samples between partial dumps of a long run (benchmarks/out/soak.json.partial).
PARTIAL_EVERY = 10


def slope_kib_per_1000(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of (connections, rss_kib) in KiB per 1,000 connections."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return 1000 * sxy / sxx if sxx else 0.0


async def _one(host: str, port: int, source: str) -> bool:
    try:
        r, w = await asyncio.open_connection(host, port, local_addr=(source, 0))
        w.write(PAYLOAD)
        await r.readexactly(len(PAYLOAD))
        w.close()
        await w.wait_closed()
        return True
    except (OSError, asyncio.IncompleteReadError):
        return False


async def short_connections(host, port, source, total, parallel, on_progress) -> int:
    """`total` connections, `parallel` at a time; returns the failures."""
    done = failed = 0
    lock = asyncio.Lock()

    async def loop():
        nonlocal done, failed
        while done < total:
            done += 1
            ok = await _one(host, port, source)
            failed += not ok
            async with lock:
                on_progress(done)
    await asyncio.gather(*(loop() for _ in range(parallel)))
    return failed


def rss_of(pids: list[int]) -> dict[str, int]:
    out = {}
    for pid in pids:
        try:
            out[str(pid)] = memory(pid)["rss_kib"]
        except OSError:
            pass
    return out


def connection_phase(mesh: Mesh, args, pids: list[int]) -> dict:
    node = mesh.nodes["node-a"]
    host, port = node.proxy_ip, node.fixed[(VIP, 80)]
    source = mesh.pods["client"].ip
    samples: list[dict] = []
    t0 = time.monotonic()
    next_at = [0]

    def on_progress(done: int) -> None:
        if done >= next_at[0]:
            next_at[0] = done + args.sample_every
            samples.append({"connections": done, "t": time.monotonic() - t0, "rss_kib": rss_of(pids)})
            if len(samples) % PARTIAL_EVERY == 0:   # a long run killed midway keeps its data
                Path(args.out + ".partial").write_text(json.dumps(samples))
    failed = asyncio.run(short_connections(host, port, source, args.connections, args.parallel,
                                           on_progress))
    samples.append({"connections": args.connections, "t": time.monotonic() - t0,
                    "rss_kib": rss_of(pids)})
    per_worker = {}
    for worker in pids:
        pid = str(worker)
        pts = [(s["connections"], s["rss_kib"][pid]) for s in samples if pid in s["rss_kib"]]
        warm = [p for p in pts if p[0] >= WARMUP_FRACTION * args.connections]
        per_worker[pid] = {
            "rss_start_kib": pts[0][1], "rss_after_warmup_kib": warm[0][1], "rss_end_kib": pts[-1][1],
            "slope_kib_per_1000_after_warmup": round(slope_kib_per_1000(warm), 3),
            "slope_kib_per_1000_whole_run": round(slope_kib_per_1000(pts), 3)}
    elapsed = time.monotonic() - t0
    return {"connections": args.connections, "failed": failed, "seconds": round(elapsed, 1),
            "conn_per_s": round(args.connections / elapsed), "workers": per_worker,
            "samples": samples}


async def _mixed(host, port, source, seconds, pids, samples) -> dict:
    stop = time.monotonic() + seconds
    counts = {"short": 0, "short_failed": 0, "stream_bytes": 0, "bursts": 0}

    async def shorts():
        while time.monotonic() < stop:
            ok = await _one(host, port, source)
            counts["short"] += 1
            counts["short_failed"] += not ok

    async def stream():
        r, w = await asyncio.open_connection(host, port, local_addr=(source, 0))
        chunk = b"s" * MIXED_CHUNK
        while time.monotonic() < stop:
            w.write(chunk)
            await r.readexactly(len(chunk))
            counts["stream_bytes"] += len(chunk)
        w.close()

    async def bursts():
        while time.monotonic() < stop:
            await asyncio.gather(*(_one(host, port, source) for _ in range(MIXED_BURST)))
            counts["bursts"] += 1
            await asyncio.sleep(5)

    async def sampler():
        t0 = time.monotonic()
        while time.monotonic() < stop:
            samples.append({"t": round(time.monotonic() - t0, 1), "rss_kib": rss_of(pids)})
            await asyncio.sleep(1)

    await asyncio.gather(*(shorts() for _ in range(8)), *(stream() for _ in range(MIXED_STREAMS)),
                         bursts(), sampler())
    return counts


def mixed_phase(mesh: Mesh, seconds: float, pids: list[int]) -> dict:
    node = mesh.nodes["node-a"]
    samples: list[dict] = []
    counts = asyncio.run(_mixed(node.proxy_ip, node.fixed[(VIP, 80)], mesh.pods["client"].ip,
                                seconds, pids, samples))
    per_worker = {}
    for worker in pids:
        pid = str(worker)
        pts = [(s["t"], s["rss_kib"][pid]) for s in samples if pid in s["rss_kib"]]
        warm = [p for p in pts if p[0] >= WARMUP_FRACTION * seconds]
        per_worker[pid] = {"rss_start_kib": pts[0][1], "rss_end_kib": pts[-1][1],
                                "rss_max_kib": max(y for _, y in pts),
                                "slope_kib_per_minute_after_warmup":
                                    round(slope_kib_per_1000(warm) * 60 / 1000, 2)}
    return {"seconds": seconds, **counts, "workers": per_worker, "samples": samples}


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = 2 if out.get("mixed") else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    conn = out["connections"]
    for pid, role in out["roles"].items():
        pts = [(s["connections"], s["rss_kib"][pid] / 1024) for s in conn["samples"]
               if pid in s["rss_kib"]]
        ax.plot([x for x, _ in pts], [y for _, y in pts], label=f"{role} worker")
    ax.axvline(WARMUP_FRACTION * conn["connections"], color="grey", ls=":", label="end of warm-up")
    ax.set_xlabel("connections")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"ztunnel worker RSS, {conn['connections']:,} short connections")
    ax.set_ylim(bottom=0)
    ax.legend()
    if panels == 2:
        ax = axes[0][1]
        for pid, role in out["roles"].items():
            pts = [(s["t"] / 60, s["rss_kib"][pid] / 1024) for s in out["mixed"]["samples"]
                   if pid in s["rss_kib"]]
            ax.plot([x for x, _ in pts], [y for _, y in pts], label=f"{role} worker")
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title("mixed load (short + streams + bursts)")
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--sample-every", type=int, default=2000)
    ap.add_argument("--mixed-seconds", type=float, default=0.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "soak.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "soak.png"))
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)   # partial dumps go there too
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    mesh = Mesh(Path(tempfile.mkdtemp(prefix="shoal-soak-")), workers=args.workers)
    mesh.pod("client", node="node-a", sa="sleep")
    mesh.pod("echo", node="node-b", app="echo", port=APP_PORT)
    mesh.service("echo", vip=VIP, port=80, target=APP_PORT, app="echo")
    mesh.fix("node-a", VIP, 80)
    mesh.start()
    try:
        roles = {str(p): "node-a (outbound)" for p in workers_of(mesh, "node-a")}
        roles |= {str(p): "node-b (inbound)" for p in workers_of(mesh, "node-b")}
        pids = [int(p) for p in roles]
        out = {"cpu": _cpu_model(), "workers_per_ztunnel": args.workers, "roles": roles,
               "command": " ".join(["python -m shoal.benchmarks.load.soak", *sys.argv[1:]])}
        out["connections"] = connection_phase(mesh, args, pids)
        if args.mixed_seconds:
            out["mixed"] = mixed_phase(mesh, args.mixed_seconds, pids)
    finally:
        mesh.stop()
    Path(args.out).write_text(json.dumps(out, indent=1))
    plot(out, Path(args.plot))
    summary = {k: v for k, v in out["connections"].items() if k != "samples"}
    if "mixed" in out:
        summary["mixed"] = {k: v for k, v in out["mixed"].items() if k != "samples"}
    print(json.dumps(summary, indent=1))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
