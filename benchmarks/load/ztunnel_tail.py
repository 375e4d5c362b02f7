"""The request/response tail of each path, pooled over many rounds.

    python -m shoal.benchmarks.load.ztunnel_tail [--rounds 8] [--seconds 5] [--flags="--no-cpu-steering"]

The load run's figure is one run's p99 (10,000 requests a path): its 100
slowest requests, a few dozen stalls of a 2-vCPU machine, so a single run's
ratio to stunnel's spreads widely and the median of several runs' ratios
reads low (a ratio of two noisy figures is skewed). This tool runs the load
run's request/response phase (ztunnel.rr_setup's mesh and stunnel pair;
1,000 req/s of 1 KB over 4 connections, sent as bursts of 4) through the
ztunnel pair, the stunnel pair and the direct path in turns, and reports,
per path, over every request of every round:
- p50, p99 and p99.5, and the *added* p50 and p99 (less the direct path's)
  as ratios to stunnel's; also each round's added-p99 ratio (median, range);
- requests over 1 ms per 10,000;
- how the slow requests (at or above the pooled p99) come: grouped when
  sent within CLUSTER_GAP of each other, the mean group size and the share
  of groups of a whole burst (4 or more). A path whose slow requests come as
  whole bursts stalls all of a client's connections at once.
Hold /tmp/shoal-netns.lock. Writes benchmarks/out/ztunnel_tail.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import tempfile
import time
from pathlib import Path

from shoal.benchmarks.load import ztunnel as Z

OUT = Path("benchmarks/out")
# Bursts leave every 4 ms (4 connections at 1,000 req/s); slow requests sent
# less than 10 ms apart (within two bursts of each other) are one stall.
CLUSTER_GAP = 0.010
SLOW_MS = 1.0
LEAD_IN = 0.5          # untimed load before each round (RR_WARMUP's reason)
PATHS = ("ztunnel x2", "stunnel x2", "direct")


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(int(len(sorted_values) * q), len(sorted_values) - 1)]


def slow_clusters(sent: list[float], lat: list[float], threshold: float,
                  gap: float = CLUSTER_GAP) -> list[int]:
    """Sizes of the groups of requests with latency >= `threshold`, grouped
    by send time where consecutive ones are under `gap` apart."""
    sizes: list[int] = []
    last = float("-inf")
    for t in sorted(t for t, l in zip(sent, lat) if l >= threshold):
        if t - last < gap:
            sizes[-1] += 1
        else:
            sizes.append(1)
        last = t
    return sizes


def path_figures(sent: list[float], lat: list[float]) -> dict:
    """One path's pooled figures (ms) and how its slow requests group."""
    s = sorted(lat)
    p99 = quantile(s, 0.99)
    sizes = slow_clusters(sent, lat, p99)
    return {"requests": len(s), "p50_ms": 1e3 * quantile(s, 0.5), "p99_ms": 1e3 * p99,
            "p995_ms": 1e3 * quantile(s, 0.995),
            "over_1ms_per_10k": 1e4 * sum(x > SLOW_MS / 1e3 for x in s) / len(s),
            "slow_per_cluster": statistics.mean(sizes),
            "whole_burst_share": sum(n >= Z.RR_CONNS for n in sizes) / len(sizes)}


def added_ratio(path: dict, peer: dict, direct: dict, key: str) -> float:
    """(path - direct) / (peer - direct) of figure `key`."""
    return (path[key] - direct[key]) / (peer[key] - direct[key])


def summary(rounds: dict[str, list[tuple[list[float], list[float]]]]) -> dict:
    """rounds: path -> [(sent, lat) per round] (PATHS' names)."""
    pooled = {n: path_figures([t for s, _ in rs for t in s], [x for _, l in rs for x in l])
              for n, rs in rounds.items()}
    per_round = []
    for i in range(len(rounds[PATHS[0]])):
        zt_i, st_i, d_i = (path_figures(*rounds[n][i]) for n in PATHS)
        per_round.append(added_ratio(zt_i, st_i, d_i, "p99_ms"))
    zt, st, d = (pooled[n] for n in PATHS)
    return {"paths": pooled,
            "added_p50_ratio": added_ratio(zt, st, d, "p50_ms"),
            "added_p99_ratio": added_ratio(zt, st, d, "p99_ms"),
            "round_added_p99_ratio": {"median": statistics.median(per_round),
                                      "min": min(per_round), "max": max(per_round),
                                      "rounds": per_round}}


# -- I/O ---------------------------------------------------------------------------


async def measure(paths: dict[str, Z.RrPath], rounds: int, seconds: float) -> dict:
    payload = b"q" * 1024
    conns = {n: await Z._open_rr(paths[n], Z.RR_CONNS, payload) for n in PATHS}
    out: dict[str, list[tuple[list[float], list[float]]]] = {n: [] for n in PATHS}
    for name in Z.turns(list(PATHS), rounds):
        await Z._paced(conns[name], 1000, LEAD_IN, payload, [])
        sent: list[float] = []
        lat: list[float] = []
        await Z._paced(conns[name], 1000, seconds, payload, lat, sent)
        out[name].append((sent, lat))
        print(f"{time.strftime('%H:%M:%S')} {name}: p99 "
              f"{1e3 * quantile(sorted(lat), 0.99):.3f} ms", flush=True)
    await Z.close_rr(conns)
    return summary(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--flags", default="", help="ztunnel flags, e.g. --no-cpu-steering")
    ap.add_argument("--out", type=Path, default=OUT / "ztunnel_tail.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shoal-ztunnel-tail-"))
    with Z.rr_setup(tmp, tuple(shlex.split(args.flags))) as (_mesh, _stunnel, paths):
        result = asyncio.run(measure(paths, args.rounds, args.seconds))
    for name, f in result["paths"].items():
        print(f"{name}: {f['requests']} requests, p50 {f['p50_ms']:.3f} p99 {f['p99_ms']:.3f} "
              f"p99.5 {f['p995_ms']:.3f} ms, over 1 ms {f['over_1ms_per_10k']:.0f} per 10k, "
              f"slow requests per stall {f['slow_per_cluster']:.1f}, whole bursts "
              f"{100 * f['whole_burst_share']:.0f}%")
    r = result["round_added_p99_ratio"]
    print(f"added p50 {result['added_p50_ratio']:.2f}x, added p99 {result['added_p99_ratio']:.2f}x "
          f"stunnel's (pooled); per round {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"flags": args.flags, **result}, indent=1))


if __name__ == "__main__":
    main()
