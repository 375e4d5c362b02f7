"""Load run: new connections per second through shards vs a bare uvloop echo.

Each target gets the same client: CONCURRENCY asyncio tasks (uvloop) that
connect, send one line, read it back and close, for DURATION seconds per
round; rounds are interleaved across targets and the median round is kept.
Targets: bare uvloop echo (one process, the peer), shards with 1 and with 2
workers. Writes benchmarks/out/shards_load.json and docs/img/shards_load.png.

    .venv/bin/python -m shoal.benchmarks.load.shards [--duration 1] [--rounds 5] [--concurrency 32]

The machine has 2 cores and the client needs one of them: 2 workers cannot
double the rate here; the point is the framework's cost against the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time

from shoal.benchmarks.load.bench_shards_accept import PEER, _serving
from tests.helpers.ports import free_port
from tests.helpers.shards_proc import PYTHON, ROOT, Shards
from tests.helpers.wait import wait_for


async def _client(port: int, duration: float, concurrency: int) -> dict:
    done = errors = 0
    lat: list[float] = []
    stop_at = time.monotonic() + duration

    async def one():
        nonlocal done, errors
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"ping\n")
                if await r.readline() != b"ping\n":
                    errors += 1
                w.close()
                done += 1
                lat.append(time.perf_counter() - t0)
            except OSError:
                errors += 1
    await asyncio.gather(*(one() for _ in range(concurrency)))
    lat.sort()
    return {"conn_per_s": done / duration, "errors": errors,
            "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}


def measure(port: int, duration: float, concurrency: int) -> dict:
    import uvloop
    return uvloop.run(_client(port, duration, concurrency))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    targets: dict[str, int] = {}
    port = free_port()
    peer = subprocess.Popen([PYTHON, "-c", PEER, str(port)], cwd=ROOT, stdout=subprocess.PIPE)
    assert peer.stdout is not None
    peer.stdout.readline()
    targets["bare uvloop (peer)"] = port
    started = []
    try:
        for n in (1, 2):
            s = Shards(workers=n, tmp=tempfile.gettempdir(), extra=["--log-level", "warning"])
            started.append(s)
            s.start()
            wait_for(lambda: _serving(s.echo), 5, "echo")
            targets[f"shards, {n} worker{'s' if n > 1 else ''}"] = s.echo
        rounds: dict[str, list[dict]] = {name: [] for name in targets}
        for name, p in targets.items():
            measure(p, 0.3, args.concurrency)   # warm-up
        # Interleaved rounds: load from other work on the machine hits every
        # target alike instead of whichever happened to run during a spike.
        for _ in range(args.rounds):
            for name, p in targets.items():
                rounds[name].append(measure(p, args.duration, args.concurrency))
    finally:
        peer.terminate()
        peer.wait(5)
        for s in started:
            s.stop()
            s.kill_all()
    results = {name: median_round(rs) for name, rs in rounds.items()}
    base = results["bare uvloop (peer)"]["conn_per_s"]
    for r in results.values():
        r["ratio_vs_peer"] = round(r["conn_per_s"] / base, 3)
    out = {"duration_s": args.duration, "rounds": args.rounds, "concurrency": args.concurrency,
           "results": results, "lifecycle_s": lifecycle(), "all_rounds": rounds}
    os.makedirs(os.path.join(ROOT, "benchmarks", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "out", "shards_load.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps({k: v for k, v in out.items() if k != "all_rounds"}, indent=2))
    plot(results)


def lifecycle() -> dict:
    """Seconds, with 2 workers: kill -9 -> replacement serving; SIGHUP -> all
    workers of the new generation serving; SIGUSR2 -> old supervisor gone."""
    import signal
    from tests.helpers.shards_proc import worker_of
    out = {}
    s = Shards(workers=2, tmp=tempfile.gettempdir(), extra=["--log-level", "warning"])
    try:
        s.start()
        victim = min(s.worker_pids())
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(s.seen_pids(6) - {victim}) == 2, 10, "replacement")
        out["kill9_to_replacement_serving"] = round(time.monotonic() - t0, 3)
        t0 = time.monotonic()
        s.signal(signal.SIGHUP)
        wait_for(lambda: {worker_of(s.echo)[2] for _ in range(8)} == {2} and
                 len(s.worker_pids()) == 2, 20, "roll")
        out["sighup_roll_2_workers"] = round(time.monotonic() - t0, 3)
        t0 = time.monotonic()
        s.signal(signal.SIGUSR2)
        s.proc.wait(30)
        out["sigusr2_upgrade_old_gone"] = round(time.monotonic() - t0, 3)
    finally:
        s.kill_all()
    return out


def median_round(rs: list[dict]) -> dict:
    """The round with the median rate (its latencies come with it)."""
    rs = sorted(rs, key=lambda r: r["conn_per_s"])
    return dict(rs[len(rs) // 2])


def plot(results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(names, [results[n]["conn_per_s"] for n in names], color=["#888", "#3a7", "#2a6"])
    for i, n in enumerate(names):
        ax.text(results[n]["conn_per_s"], i, f" {results[n]['conn_per_s']:.0f}/s "
                f"(x{results[n]['ratio_vs_peer']})", va="center", fontsize=8)
    ax.set_xlabel("new connections per second (connect, 1 echo, close)")
    ax.set_title("shards accept+echo vs bare uvloop, 2-core VM (noisy)", fontsize=9)
    ax.set_xlim(0, max(r["conn_per_s"] for r in results.values()) * 1.45)
    fig.tight_layout()
    os.makedirs(os.path.join(ROOT, "docs", "img"), exist_ok=True)
    fig.savefig(os.path.join(ROOT, "docs", "img", "shards_load.png"), dpi=110)


if __name__ == "__main__":
    main()
