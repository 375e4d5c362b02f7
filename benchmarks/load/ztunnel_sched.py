"""Where a burst's time goes: the scheduler's view of each request/response path.

    python -m shoal.benchmarks.load.ztunnel_sched [--rounds 2] [--seconds 3] [--flags="--no-cpu-steering"]

Builds the ztunnel load run's mesh and stunnel pair (ztunnel_ab's set-up)
and runs its request/response load (1,000 req/s of 1 KB over 4 connections,
which the pacing sends as bursts of 4 every 4 ms) through the ztunnel pair,
the stunnel pair and the direct path in turn, each under `perf sched record`
(clock CLOCK_MONOTONIC, so the window is cut exactly). From `perf sched
timehist` it reads every run of the path's tasks (the load client, the two
proxies' processes and threads, the echo app) and groups them into bursts:
per path, the burst's span (first run's start to last run's end), the CPU
time of each role within it, the CPU time left idle while the burst was in
progress (CPUs × span, less the busy time), and how often the client-side
proxy's first run of a burst is on the client's CPU. A path that does less
work per burst but leaves more idle is limited by its dependencies (who
waits for whom), not by its CPU. Needs perf and root; hold
/tmp/shoal-netns.lock. Writes benchmarks/out/ztunnel_sched.json.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Iterable, NamedTuple

from shoal.benchmarks.load import ztunnel as Z

OUT = Path("benchmarks/out")
# The pacing sends a burst every 4 ms (4 connections at 1,000 req/s) and a
# burst takes about 0.6 ms, so 1 ms with none of a path's tasks on a CPU
# separates one burst from the next.
BURST_GAP = 0.001
# Load before the window, untimed: the perf session starts and the path's
# caches warm while it runs (ztunnel.RR_WARMUP's reason).
LEAD_IN = 0.5
# perf sets up its ring buffers before it reads its control fifo: about
# 0.15 s here, and slower machines get ample room.
PERF_ACK_TIMEOUT = 10.0

_LINE = re.compile(r"^\s*(?P<t>\d+\.\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<comm>.*?)"
                   r"\[(?P<tid>\d+)(?:/(?P<pid>\d+))?\]\s+[\d.]+\s+[\d.]+\s+(?P<run>[\d.]+)\s*$")


class Run(NamedTuple):
    """One stretch on a CPU, seconds on CLOCK_MONOTONIC."""
    start: float
    end: float
    cpu: int
    pid: int


def parse_timehist(text: str) -> list[Run]:
    """`perf sched timehist` lines (time, [cpu], comm[tid/pid], wait, delay,
    run time in ms) as runs, by start; idle and header lines are skipped."""
    runs = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            end = float(m["t"])
            runs.append(Run(end - float(m["run"]) / 1000, end, int(m["cpu"]),
                            int(m["pid"] or m["tid"])))
    return sorted(runs)


def bursts(runs: Iterable[Run], gap: float = BURST_GAP) -> list[list[Run]]:
    """Runs (by start) grouped where none runs for more than `gap`."""
    out: list[list[Run]] = []
    last_end = float("-inf")
    for r in runs:
        if r.start - last_end > gap:
            out.append([])
        out[-1].append(r)
        last_end = max(last_end, r.end)
    return out


def burst_figures(burst: list[Run], roles: dict[int, str], cpus: int) -> dict:
    """One burst: span, CPU time per role, idle CPU time during the span (µs),
    and whether the client-side proxy first ran on the client's CPU."""
    span = max(r.end for r in burst) - burst[0].start
    busy: dict[str, float] = {}
    first_cpu: dict[str, int] = {}
    for r in burst:
        role = roles[r.pid]
        busy[role] = busy.get(role, 0.0) + (r.end - r.start) * 1e6
        first_cpu.setdefault(role, r.cpu)
    return {"span_us": span * 1e6, "busy_us": busy,
            "idle_us": cpus * span * 1e6 - sum(busy.values()),
            "proxy_on_client_cpu": ("proxy-in" in first_cpu
                                    and first_cpu["proxy-in"] == first_cpu.get("client"))}


def summary(figures: list[dict]) -> dict:
    spans = sorted(f["span_us"] for f in figures)
    roles = sorted({k for f in figures for k in f["busy_us"]})
    return {"bursts": len(figures),
            "span_us": {q: Z.quantile(spans, p) for q, p in
                        (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
            "busy_us": {k: statistics.mean(f["busy_us"].get(k, 0.0) for f in figures)
                        for k in roles},
            "idle_us": statistics.mean(f["idle_us"] for f in figures),
            "proxy_on_client_cpu": sum(f["proxy_on_client_cpu"] for f in figures) / len(figures)}


# -- I/O ---------------------------------------------------------------------------


class SchedRecorder:
    """`perf sched record -a` on CLOCK_MONOTONIC, started disabled and
    switched on and off through its control fifos (each switch acknowledged),
    so the recorded window starts when `enable` returns."""

    def __init__(self, tmp: Path) -> None:
        self.data, self.err = tmp / "sched.data", tmp / "perf.err"
        ctl, ack = tmp / "ctl", tmp / "ack"
        for f in (ctl, ack):
            if f.exists():
                f.unlink()
            os.mkfifo(f)
        # Read-write opens do not wait for perf to open its ends, so a perf
        # that fails to start is an error from _say, not a hang here.
        self.ctl = os.open(ctl, os.O_RDWR)
        self.ack = os.open(ack, os.O_RDWR)
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                ["perf", "sched", "record", "-k", "mono", "-a", "-D", "-1",
                 "--control", f"fifo:{ctl},{ack}", "-o", str(self.data)],
                stdout=subprocess.DEVNULL, stderr=err)

    def _say(self, word: str) -> None:
        os.write(self.ctl, word.encode() + b"\n")
        ready, _, _ = select.select([self.ack], [], [], PERF_ACK_TIMEOUT)
        # perf answers "ack\n" and the NUL of its C string.
        if not ready or b"ack" not in os.read(self.ack, 64):
            self.proc.kill()
            raise RuntimeError(f"perf did not acknowledge {word!r}: "
                               f"{self.err.read_text()[-500:]}")

    def enable(self) -> None:
        self._say("enable")

    def finish(self) -> str:
        """Stop recording; the timehist text."""
        try:
            self._say("disable")
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait()
        finally:
            os.close(self.ctl)
            os.close(self.ack)
        return subprocess.run(["perf", "sched", "timehist", "-i", str(self.data)],
                              capture_output=True, text=True, check=True).stdout


def roles_of(mesh, stunnel: tuple[Z.Proc, Z.Proc]) -> dict[str, dict[int, str]]:
    """Per path, pid -> role: the load client (this process), the proxies'
    client-side and server-side processes, the echo app."""
    common = {os.getpid(): "client", mesh.apps["echo"].pid: "echo"}
    st_client, st_server = stunnel
    return {
        "ztunnel x2": common | {p: "proxy-in" for p in Z.workers_of(mesh, "node-a")}
        | {p: "proxy-out" for p in Z.workers_of(mesh, "node-b")},
        "stunnel x2": common | {st_client.pid: "proxy-in", st_server.pid: "proxy-out"},
        "direct": dict(common)}


async def measure(paths: dict[str, Z.RrPath], roles: dict[str, dict[int, str]],
                  rounds: int, seconds: float, tmp: Path) -> dict[str, list[dict]]:
    payload = b"q" * 1024
    conns = {name: await Z._open_rr(p, Z.RR_CONNS, payload) for name, p in paths.items()}
    out: dict[str, list[dict]] = {name: [] for name in paths}
    for name in Z.turns(list(paths), rounds):
        rec = SchedRecorder(tmp)
        await Z._paced(conns[name], 1000, LEAD_IN, payload, [])
        rec.enable()
        t0 = time.monotonic()
        lat: list[float] = []
        await Z._paced(conns[name], 1000, seconds, payload, lat)
        t1 = time.monotonic()
        runs = [r for r in parse_timehist(rec.finish())
                if r.pid in roles[name] and t0 <= r.start and r.end <= t1]
        # The first and last groups may be cut by the window's edges.
        figures = [burst_figures(b, roles[name], os.cpu_count() or 1)
                   for b in bursts(runs)[1:-1]]
        if not figures:
            raise RuntimeError(f"perf recorded no burst of {name}'s tasks "
                               f"({len(runs)} runs in the window)")
        out[name].append(summary(figures) | Z.latency_ms(lat))
        print(f"{time.strftime('%H:%M:%S')} {name}: " + _line(out[name][-1]), flush=True)
    await Z.close_rr(conns)
    return out


def _line(s: dict) -> str:
    return (f"p50 {s['p50_ms']:.3f} p99 {s['p99_ms']:.3f} ms; burst span p50 "
            f"{s['span_us']['p50']:.0f} p90 {s['span_us']['p90']:.0f} µs, busy "
            f"{sum(s['busy_us'].values()):.0f} µs ("
            + ", ".join(f"{k} {v:.0f}" for k, v in s["busy_us"].items())
            + f"), idle {s['idle_us']:.0f} µs, proxy on client's CPU "
            f"{100 * s['proxy_on_client_cpu']:.0f}%")


def main() -> None:
    args = Z.study_options(__doc__, rounds=2, seconds=3.0, out=OUT / "ztunnel_sched.json")
    with Z.study_mesh(args, "shoal-ztunnel-sched-") as (tmp, mesh, stunnel, paths):
        result = asyncio.run(measure(paths, roles_of(mesh, stunnel), args.rounds,
                                     args.seconds, tmp))
    for name, rs in result.items():
        print(f"{name}: median of {len(rs)} rounds: burst span p50 "
              f"{statistics.median(r['span_us']['p50'] for r in rs):.0f} µs, busy "
              f"{statistics.median(sum(r['busy_us'].values()) for r in rs):.0f} µs, idle "
              f"{statistics.median(r['idle_us'] for r in rs):.0f} µs")
    Z.save_study(args, {"paths": result})


if __name__ == "__main__":
    main()
