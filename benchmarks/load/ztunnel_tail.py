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
`--second-peer` adds a second stunnel pair, the same as the first, as one
more path: its ratios to the first (`a_a`) are what this machine reads for
two identical proxies, the noise any single round's or run's ratio carries.
Hold /tmp/shoal-netns.lock. Writes benchmarks/out/ztunnel_tail.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
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
SECOND_PEER = "stunnel x2 (b)"


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
    p99 = Z.quantile(s, 0.99)
    sizes = slow_clusters(sent, lat, p99)
    return {"requests": len(s), "p50_ms": 1e3 * Z.quantile(s, 0.5), "p99_ms": 1e3 * p99,
            "p995_ms": 1e3 * Z.quantile(s, 0.995),
            "over_1ms_per_10k": 1e4 * sum(x > SLOW_MS / 1e3 for x in s) / len(s),
            "slow_per_cluster": statistics.mean(sizes),
            "whole_burst_share": sum(n >= Z.RR_CONNS for n in sizes) / len(sizes)}


def added_ratio(path: float, peer: float, direct: float) -> float:
    """What `path` adds to the direct path, as a ratio to what `peer` adds."""
    return (path - direct) / (peer - direct)


def ratios(rounds: dict[str, list[tuple[list[float], list[float]]]],
           pooled: dict[str, dict], path: str, peer: str) -> dict:
    """`path`'s added p50 and p99 as ratios to `peer`'s, pooled, and each
    round's added-p99 ratio."""
    per_round = [added_ratio(*(Z.quantile(sorted(rounds[n][i][1]), 0.99)
                               for n in (path, peer, "direct")))
                 for i in range(len(rounds[path]))]
    p, q, d = pooled[path], pooled[peer], pooled["direct"]
    return {"added_p50_ratio": added_ratio(p["p50_ms"], q["p50_ms"], d["p50_ms"]),
            "added_p99_ratio": added_ratio(p["p99_ms"], q["p99_ms"], d["p99_ms"]),
            "round_added_p99_ratio": {"median": statistics.median(per_round),
                                      "min": min(per_round), "max": max(per_round),
                                      "rounds": per_round}}


def summary(rounds: dict[str, list[tuple[list[float], list[float]]]]) -> dict:
    """rounds: path -> [(sent, lat) per round] (PATHS' names, and SECOND_PEER
    if it ran: then `a_a` holds its ratios to the first stunnel pair)."""
    pooled = {n: path_figures([t for s, _ in rs for t in s], [x for _, l in rs for x in l])
              for n, rs in rounds.items()}
    out = {"paths": pooled, **ratios(rounds, pooled, "ztunnel x2", "stunnel x2")}
    if SECOND_PEER in rounds:
        out["a_a"] = ratios(rounds, pooled, SECOND_PEER, "stunnel x2")
    return out


# -- I/O ---------------------------------------------------------------------------


async def measure(paths: dict[str, Z.RrPath], rounds: int, seconds: float) -> dict:
    payload = b"q" * 1024
    names = [n for n in (*PATHS, SECOND_PEER) if n in paths]
    conns = {n: await Z._open_rr(paths[n], Z.RR_CONNS, payload) for n in names}
    out: dict[str, list[tuple[list[float], list[float]]]] = {n: [] for n in names}
    for name in Z.turns(names, rounds):
        await Z._paced(conns[name], 1000, LEAD_IN, payload, [])
        sent: list[float] = []
        lat: list[float] = []
        await Z._paced(conns[name], 1000, seconds, payload, lat, sent)
        out[name].append((sent, lat))
        print(f"{time.strftime('%H:%M:%S')} {name}: p99 "
              f"{1e3 * Z.quantile(sorted(lat), 0.99):.3f} ms", flush=True)
    await Z.close_rr(conns)
    return summary(out)


def main() -> None:
    args = Z.study_options(__doc__, rounds=8, seconds=5.0, out=OUT / "ztunnel_tail.json",
                           second_peer=True)
    with Z.study_mesh(args, "shoal-ztunnel-tail-") as (tmp, mesh, _stunnel, paths):
        with contextlib.ExitStack() as stack:
            if args.second_peer:
                paths = {**paths, SECOND_PEER: stack.enter_context(Z.second_stunnel(tmp, mesh))}
            result = asyncio.run(measure(paths, args.rounds, args.seconds))
    for name, f in result["paths"].items():
        print(f"{name}: {f['requests']} requests, p50 {f['p50_ms']:.3f} p99 {f['p99_ms']:.3f} "
              f"p99.5 {f['p995_ms']:.3f} ms, over 1 ms {f['over_1ms_per_10k']:.0f} per 10k, "
              f"slow requests per stall {f['slow_per_cluster']:.1f}, whole bursts "
              f"{100 * f['whole_burst_share']:.0f}%")
    r = result["round_added_p99_ratio"]
    print(f"added p50 {result['added_p50_ratio']:.2f}x, added p99 {result['added_p99_ratio']:.2f}x "
          f"stunnel's (pooled); per round {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})")
    if "a_a" in result:
        a = result["a_a"]
        r = a["round_added_p99_ratio"]
        print(f"A/A, the second stunnel pair to the first: added p50 {a['added_p50_ratio']:.2f}x, "
              f"added p99 {a['added_p99_ratio']:.2f}x (pooled); per round {r['median']:.2f}x "
              f"({r['min']:.2f}-{r['max']:.2f})")
    Z.save_study(args, result)


if __name__ == "__main__":
    main()
