"""Rewrite docs/benchmarks.md's headline table from the load runs' JSON.

    python -m shoal.benchmarks.load.headline benchmarks/out/runs

`make bench-load` runs the HBONE, ztunnel and waypoint load runs REPEAT times
each (files `hbone-N.json`, `ztunnel-N.json`, `waypoint-N.json` in one
folder), then calls this. Every ratio is shoal against its peer measured in
the same run; across runs we give the median and the spread (min-max), so a
ratio that held only once shows as a wide range. The machine (CPU model,
kernel, library and peer versions) is written beside the table, and a plot
of the ratios against the goals of issue 15 goes to docs/img/headline.png.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import ssl
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "headline.png"
BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"


@dataclass(frozen=True)
class Row:
    """One headline figure: how to read it from a run, and the goal it answers."""
    run: str                           # which load run's files: hbone, ztunnel, waypoint
    what: str
    shoal: Callable[[dict], float]
    peer: Callable[[dict], float]
    unit: str
    peer_name: str
    goal: str
    higher_is_better: bool = True      # False for CPU and latency: ratio = shoal/peer either way


def _hb(streams: str, who: str) -> Callable[[dict], float]:
    return lambda r: r["throughput"][streams][who]["gbit_s"]


def _hb_cpu(streams: str, who: str) -> Callable[[dict], float]:
    return lambda r: (r["throughput"][streams][who]["cpu_s_per_gb_entry"]
                      + r["throughput"][streams][who]["cpu_s_per_gb_exit"])


def _zt_cpu(who: str, side: str) -> Callable[[dict], float]:
    return lambda r: r["cpu_1kb_rr"][who][f"vcpu_per_1000rps_{side}_side"]


def _zt_p99(who: str, added: bool = False) -> Callable[[dict], float]:
    """A path's p99, or with `added` what it adds to the direct path's (same run)."""
    return lambda r: (r["cpu_1kb_rr"][who]["p99_ms"]
                      - (r["latency_1kb_rr_direct"]["p99_ms"] if added else 0.0))


def _wp(key: str, who: str, field: str = "rps", table: str = "runs") -> Callable[[dict], float]:
    return lambda r: r[table][key][field]


# HBONE rows name the shoal processes per side. stunnel is one process per
# side whose threads (one per connection) use every core; shoal's default is
# one worker process per core, so on the 2-core machine "2 workers per side"
# (load.hbone's `shoal_2proc`, from `--processes 1,2`) is shoal as deployed
# against stunnel as deployed. One worker per side is kept beside it: it is
# the per-core cost, and a single stream cannot use a second worker anyway.
HB_WORKERS = (("shoal", "1 worker per side"), ("shoal_2proc", "2 workers per side"))

ROWS = [
    *(Row("hbone", f"HBONE pair, iperf3 {n} stream{'s' * (n > 1)}, {label}",
          _hb(f"P{n}", who), _hb(f"P{n}", "stunnel"), "Gbit/s", "2 × stunnel", "≥ 1.0×")
      for n in (1, 8) for who, label in HB_WORKERS),
    *(Row("hbone", f"HBONE CPU per GB (entry + exit), {n} stream{'s' * (n > 1)}, {label}",
          _hb_cpu(f"P{n}", who), _hb_cpu(f"P{n}", "stunnel"), "s/GB", "2 × stunnel",
          "≤ 1.0×", higher_is_better=False)
      for n in (1, 8) for who, label in HB_WORKERS),
    Row("hbone", "HBONE short connections", lambda r: r["short"]["shoal"]["conns_per_s"],
        lambda r: r["short"]["stunnel"]["conns_per_s"], "conn/s", "2 × stunnel", "—"),
    Row("ztunnel", "ztunnel pair, iperf3 up", lambda r: r["iperf3"]["ztunnel x2"]["up_gbps"],
        lambda r: r["iperf3"]["stunnel x2"]["up_gbps"], "Gbit/s", "2 × stunnel", "—"),
    Row("ztunnel", "ztunnel pair, iperf3 down", lambda r: r["iperf3"]["ztunnel x2"]["down_gbps"],
        lambda r: r["iperf3"]["stunnel x2"]["down_gbps"], "Gbit/s", "2 × stunnel", "—"),
    Row("ztunnel", "ztunnel vCPU per 1,000 req/s of 1 KB, client side",
        _zt_cpu("ztunnel x2", "client"), _zt_cpu("stunnel x2", "client"), "vCPU",
        "stunnel", "≤ 1.0×", higher_is_better=False),
    Row("ztunnel", "ztunnel vCPU per 1,000 req/s of 1 KB, server side",
        _zt_cpu("ztunnel x2", "server"), _zt_cpu("stunnel x2", "server"), "vCPU",
        "stunnel", "≤ 1.0×", higher_is_better=False),
    Row("ztunnel", "ztunnel p99 latency per 1 KB request",
        _zt_p99("ztunnel x2"), _zt_p99("stunnel x2"), "ms", "2 × stunnel", "—",
        higher_is_better=False),
    Row("ztunnel", "ztunnel p99 added latency per 1 KB request (less the direct path's)",
        _zt_p99("ztunnel x2", added=True), _zt_p99("stunnel x2", added=True), "ms",
        "2 × stunnel", "≤ 1.0×", higher_is_better=False),
    Row("waypoint", "waypoint wrk HTTP/1.1 keep-alive 1 KB, 1 worker", _wp("shoal_w1", "shoal"),
        _wp("nginx_w1", "nginx"), "req/s", "nginx, 1 worker", "≥ 0.5×"),
    Row("waypoint", "waypoint CPU per request, 1 worker",
        _wp("shoal_w1", "shoal", "cpu_per_1k_rps"), _wp("nginx_w1", "nginx", "cpu_per_1k_rps"),
        "vCPU per 1k req/s", "nginx, 1 worker", "≤ 2.0×", higher_is_better=False),
    Row("waypoint", "waypoint h2load, 1 worker", _wp("shoal_w1", "shoal", table="h2"),
        _wp("nginx_w1", "nginx", table="h2"), "req/s", "nginx, 1 worker", "≥ 0.3×"),
    Row("waypoint", "waypoint wrk, 2 workers", _wp("shoal_w2", "shoal"), _wp("nginx_w2", "nginx"),
        "req/s", "nginx, 2 workers", "—"),
    # The full ambient path (HBONE in from a client ztunnel, HBONE out to the
    # pod's): no peer speaks HBONE, so it stands beside nginx's plaintext
    # proxy of the same run. Its load generator is Python (wrk cannot speak
    # HBONE), so req/s is the client's limit as much as the waypoint's; the
    # CPU per request is the waypoint's own.
    Row("waypoint", "waypoint ambient path (HBONE in and out) 1 KB, 1 worker",
        lambda r: r["hbone_in_hbone_out_w1"]["rps"], _wp("nginx_w1", "nginx"), "req/s",
        "nginx plaintext proxy, 1 worker", "—"),
    Row("waypoint", "waypoint ambient path CPU per request, 1 worker",
        lambda r: r["hbone_in_hbone_out_w1"]["cpu_per_1k_rps"],
        _wp("nginx_w1", "nginx", "cpu_per_1k_rps"), "vCPU per 1k req/s",
        "nginx plaintext proxy, 1 worker", "—", higher_is_better=False),
]


def load_runs(folder: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for f in sorted(folder.glob("*-*.json")):
        runs.setdefault(f.stem.rsplit("-", 1)[0], []).append(orjson.loads(f.read_bytes()))
    return runs


def figures(row: Row, runs: list[dict]) -> tuple[list[float], list[float], list[float]] | None:
    """shoal, peer and the same-run ratio of each run that has this figure."""
    shoal, peer, ratio = [], [], []
    for r in runs:
        try:
            s, p = row.shoal(r), row.peer(r)
        except (KeyError, TypeError):
            continue                    # that run skipped this case (e.g. no h2load)
        if s is None or p is None or p == 0:
            continue
        shoal.append(s)
        peer.append(p)
        ratio.append(s / p)
    return (shoal, peer, ratio) if ratio else None


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _spread(xs: list[float], fmt: Callable[[float], str]) -> str:
    med = fmt(statistics.median(xs))
    return med if len(xs) == 1 else f"{med} ({fmt(min(xs))}–{fmt(max(xs))})"


def table(runs: dict[str, list[dict]]) -> tuple[str, list[tuple[str, float, str]]]:
    lines = ["| what | shoal | peer (same run) | ratio, median (min–max) | goal |",
             "|---|---|---|---|---|"]
    plotted = []
    for row in ROWS:
        got = figures(row, runs.get(row.run, []))
        if got is None:
            continue
        shoal, peer, ratio = got
        lines.append(f"| {row.what} | {_spread(shoal, _num)} {row.unit} | {row.peer_name} "
                     f"{_spread(peer, _num)} | **{_spread(ratio, lambda x: f'{x:.2f}×')}** "
                     f"| {row.goal} |")
        plotted.append((row.what, statistics.median(ratio), row.goal))
    counts = ", ".join(f"{k} × {len(v)}" for k, v in sorted(runs.items()))
    return "\n".join(lines) + f"\n\nRuns: {counts}.\n", plotted


# name, version command, where the version stands in its output
PEERS = [("stunnel", ["stunnel4", "-version"], r"stunnel (\S+)"),
         ("nginx", ["nginx", "-v"], r"nginx/(\S+)"),
         ("iperf3", ["iperf3", "--version"], r"iperf (\S+)"),
         ("wrk", ["wrk", "-v"], r"wrk (\S+)")]


def _version(cmd: list[str], pattern: str) -> str:
    if shutil.which(cmd[0]) is None:
        return "absent"
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    libs = ", ".join(f"{n} {importlib.metadata.version(n)}"
                     for n in ("h2", "uvloop", "cryptography", "httptools"))
    peers = ", ".join(f"{name} {_version(cmd, pattern)}" for name, cmd, pattern in PEERS)
    return (f"Machine: {cpu}, {os.cpu_count()} cores; Linux {platform.release()}; "
            f"Python {platform.python_version()}; {ssl.OPENSSL_VERSION}; {libs}; {peers}.")


def plot(rows: list[tuple[str, float, str]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    names = [r[0] for r in rows][::-1]
    ax.barh(names, [r[1] for r in rows][::-1], color="tab:blue")
    for i, (_, _, goal) in enumerate(rows[::-1]):
        m = re.search(r"([\d.]+)×", goal)
        if m:
            ax.plot([float(m.group(1))] * 2, [i - 0.4, i + 0.4], color="red")
    ax.axvline(1.0, color="gray", linestyle=":")
    ax.set_xlabel("shoal / peer, same run (median); red: the goal")
    ax.set_title("shoal headline ratios")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def rewrite(doc: str, body: str) -> str:
    block = f"{BEGIN}\n{body}{END}"
    if BEGIN in doc and END in doc:
        return doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    head, _, rest = doc.partition("\n\n")         # after the title, before the rest
    return f"{head}\n\n## Headline (`make bench-load`)\n\n{block}\n\n{rest}"


def main(argv: list[str] | None = None) -> None:
    folder = Path((argv or sys.argv[1:] or ["benchmarks/out/runs"])[0])
    runs = load_runs(folder)
    if not runs:
        sys.exit(f"no load-run results in {folder}")
    body, rows = table(runs)
    body = f"{machine()}\n\n{body}\n![headline ratios](img/headline.png)\n"
    DOC.write_text(rewrite(DOC.read_text(), body))
    plot(rows, PLOT)
    print(body)


if __name__ == "__main__":
    main()
