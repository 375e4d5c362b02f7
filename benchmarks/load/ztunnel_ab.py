"""A/B of ztunnel flags on the ztunnel load run's request/response test.

    python -m shoal.benchmarks.load.ztunnel_ab --b="--sched-slice-us 0" [--blocks 4] [--rounds 3]

Builds the load run's mesh (shoal.benchmarks.load.ztunnel) once per block,
with the A flags (default: none) or the B flags, in alternated blocks (A B,
B A, A B, ...) so a drift of the machine falls on both. Each round is 8 s of
1,000 req/s of 1 KB over 4 connections through the ztunnel pair, the same
run's stunnel pair and the direct path, interleaved as the load run does
(`ztunnel.rr_interleaved`). Reported
per round and as medians (ranges): CPU per 1k req/s on each side and p50 /
p99 as ratios to stunnel's, and the p99 *added* latency (the path's p99
less the direct path's) as a ratio to stunnel's added p99.

Writes benchmarks/out/ztunnel_ab.json.
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
METRICS = ("client_cpu", "server_cpu", "p50", "p99", "added_p50", "added_p99")


def one_round(paths: dict[str, Z.RrPath], seconds: float) -> dict:
    rr = asyncio.run(Z.rr_interleaved(paths, 1000, seconds))
    z, s, d = rr["ztunnel x2"], rr["stunnel x2"], rr["direct"]
    per_k = "vcpu_per_1000rps_{}_side"
    return {"client_cpu": z[per_k.format("client")] / s[per_k.format("client")],
            "server_cpu": z[per_k.format("server")] / s[per_k.format("server")],
            "p50": z["p50_ms"] / s["p50_ms"], "p99": z["p99_ms"] / s["p99_ms"],
            "added_p50": (z["p50_ms"] - d["p50_ms"]) / (s["p50_ms"] - d["p50_ms"]),
            "added_p99": (z["p99_ms"] - d["p99_ms"]) / (s["p99_ms"] - d["p99_ms"]),
            "ms": {"ztunnel": [z["p50_ms"], z["p99_ms"]], "stunnel": [s["p50_ms"], s["p99_ms"]],
                   "direct": [d["p50_ms"], d["p99_ms"]]}}


def block(flags: tuple[str, ...], rounds: int, seconds: float, label: str) -> list[dict]:
    out = []
    with Z.rr_setup(Path(tempfile.mkdtemp(prefix="shoal-ztunnel-ab-")), flags) as (_, _, paths):
        for _ in range(rounds):
            r = one_round(paths, seconds)
            out.append(r)
            print(f"{time.strftime('%H:%M:%S')} {label} " +
                  " ".join(f"{k} {r[k]:.3f}" for k in METRICS), flush=True)
    return out


def summary(rounds: list[dict]) -> dict:
    return {k: {"median": statistics.median(r[k] for r in rounds),
                "min": min(r[k] for r in rounds), "max": max(r[k] for r in rounds)}
            for k in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", default="", help="flags of variant A (default: none)")
    ap.add_argument("--b", required=True, help='flags of variant B, e.g. "--no-cpu-steering"')
    ap.add_argument("--blocks", type=int, default=4, help="blocks per variant")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per block")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=OUT / "ztunnel_ab.json")
    args = ap.parse_args()
    variants = {"A": tuple(shlex.split(args.a)), "B": tuple(shlex.split(args.b))}
    rounds: dict[str, list] = {"A": [], "B": []}
    for i in range(args.blocks):
        for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
            rounds[name] += block(variants[name], args.rounds, args.seconds, name)
    summaries = {k: summary(v) for k, v in rounds.items()}
    result = {"flags": {k: list(v) for k, v in variants.items()}, "rounds": rounds,
              "summary": summaries}
    for name, s in summaries.items():
        print(f"{name} {shlex.join(variants[name]) or '(defaults)'}: {len(rounds[name])} rounds, "
              + ", ".join(f"{k} {v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f})"
                          for k, v in s.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
