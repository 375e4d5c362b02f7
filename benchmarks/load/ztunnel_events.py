"""Where a ztunnel worker's time goes per read event: the loop's share and ours.

    python -m shoal.benchmarks.load.ztunnel_events [--seconds 4] [--burst 4]

Builds the ztunnel load run's mesh (ztunnel.rr_setup), sends bursts of
--burst requests of 1 KB through the ztunnel pair (one a connection, every
GAP), and records both nodes' workers with `perf record`: uprobes on entry
to and return from the C pumps' `buffer_updated` (core/hbone/native/plain.c
for a plain socket's read, tlspump.c for a TLS connection's), and the
epoll_pwait, read and write system calls. Each read event of a worker is
then cut into (µs; `segments`):
- A, loop in: epoll_pwait's return (or the last event's end) to the read:
  libuv's dispatch and uvloop's get_buffer call;
- B, the read system call;
- C, loop on: the read's return to our buffer_updated: uvloop's on_read;
- D, our work before the first write (decrypt or frame and seal);
- E, each write system call (on loopback it runs the receiver's TCP);
- F, the last write's return to buffer_updated's return;
- G, loop out: buffer_updated's return to the next epoll_pwait.
A, C and G are the event loop's; D and F are shoal's. Each uprobe costs a
trap (about 1.5-2 µs on this VM) that falls in C, and the return probe's
in F and G: read them as upper bounds. With the pumps' reads moved off
uvloop onto a C epoll (a scratch build, docs/bench/ztunnel.md) A, C and G
read the same, so most of each is the probes'. Needs perf, root, a _native built with symbols (the
package's build keeps them); hold /tmp/shoal-netns.lock. Writes
benchmarks/out/ztunnel_events.json.
"""

from __future__ import annotations

import argparse
import json
import re
import selectors
import signal
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from shoal.benchmarks.load import ztunnel as Z
from shoal.benchmarks.load.relay_dispatch import burst, connect
from shoal.core.hbone.native import _native

OUT = Path("benchmarks/out")
GAP = 0.004            # between bursts: the load run's pacing (4 connections, 1,000 req/s)
WARM_BURSTS = 200      # untimed, before perf starts
PAYLOAD = b"q" * 1024
# The pumps whose buffer_updated is probed: probe name -> C file.
PUMPS = {"plain": "plain.c", "tls": "tlspump.c"}
SYSCALLS = ("epoll_pwait", "read", "write")

_SCRIPT_LINE = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+\S+:(\S+):")


def segments(events: Iterable[tuple[int, float, str]]) -> dict[str, list[float]]:
    """Cut each thread's (tid, time µs, event) sequence into the A-G
    segments of the module docstring. Events: sys_enter_/sys_exit_ +
    SYSCALLS, a PUMPS name (buffer_updated entered) and that name +
    "__return". A segment is "first " or "next " for the first event after
    epoll_pwait's return or a later one in the same wakeup (A and C)."""
    by_thread: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for tid, t, name in events:
        by_thread[tid].append((t, name))
    out: dict[str, list[float]] = defaultdict(list)
    for evs in by_thread.values():
        mark = None             # where loop-in time starts: epoll's return or an event's end
        first = ended = False
        read_at = read_done = entered = wrote = write_at = None
        pump = ""
        for t, name in evs:
            if name == "sys_exit_epoll_pwait":
                mark, first, ended = t, True, False
            elif name == "sys_enter_read":
                if mark is not None:
                    out[("first " if first else "next ") + "A loop in"].append(t - mark)
                read_at = t
            elif name == "sys_exit_read" and read_at is not None:
                out["B read"].append(t - read_at)
                read_done = t
            elif name in PUMPS and read_done is not None:
                pump, entered, wrote = name, t, None
                out[("first " if first else "next ") + "C loop on"].append(t - read_done)
            elif name == "sys_enter_write" and entered is not None:
                if wrote is None:
                    out[f"D {pump}: work before the write"].append(t - entered)
                write_at = t
            elif name == "sys_exit_write" and write_at is not None:
                out["E write"].append(t - write_at)
                wrote = t
            elif name.endswith("__return") and entered is not None:
                out[f"{pump}: whole buffer_updated"].append(t - entered)
                if wrote is not None:
                    out["F after the last write"].append(t - wrote)
                mark, first, ended = t, False, True
                entered = read_done = None
            elif name == "sys_enter_epoll_pwait":
                if ended and mark is not None:
                    out["G loop out"].append(t - mark)
                mark, ended = None, False
    return dict(out)


def summary(segs: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"n": len(v), "p50_us": statistics.median(v),
                "p90_us": sorted(v)[len(v) * 9 // 10]} for k, v in sorted(segs.items())}


# -- I/O ---------------------------------------------------------------------------

def pump_addresses(so: str) -> dict[str, str]:
    """PUMPS' buffer_updated addresses in the shared object (nm with lines)."""
    found = {}
    for line in subprocess.run(["nm", "--line-numbers", so], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "pump_buffer_updated":
            for name, source in PUMPS.items():
                if parts[3].rsplit(":", 1)[0].endswith("/" + source):
                    found[name] = "0x" + parts[0].lstrip("0")
    if set(found) != set(PUMPS):
        raise SystemExit(f"{so}: no symbols for {sorted(set(PUMPS) - set(found))}")
    return found


def add_probes(so: str) -> list[str]:
    """The uprobes, as perf event names."""
    names = []
    for name, addr in pump_addresses(so).items():
        for probe in (f"{name}={addr}", f"{name}={addr}%return"):
            subprocess.run(["perf", "probe", "-q", "-x", so, "-a", probe], check=True)
        names += [f"probe__native:{name}", f"probe__native:{name}__return"]
    return names


def record(out: Path, probes: list[str], pids: list[int], seconds: float, burst) -> int:
    args = ["perf", "record", "-q", "-o", str(out)]
    for e in probes + [f"syscalls:sys_{d}_{c}" for c in SYSCALLS for d in ("enter", "exit")]:
        args += ["-e", e]
    perf = subprocess.Popen(args + ["-p", ",".join(map(str, pids))], stderr=subprocess.DEVNULL)
    time.sleep(1.0)           # perf attaches to every thread before the window
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        burst()
        n += 1
        time.sleep(GAP)
    perf.send_signal(signal.SIGINT)
    perf.wait()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--burst", type=int, default=4)
    ap.add_argument("--out", type=Path, default=OUT / "ztunnel_events.json")
    args = ap.parse_args()
    so = _native.__file__
    tmp = Path(tempfile.mkdtemp(prefix="shoal-ztunnel-events-"))
    probes = add_probes(so)
    try:
        with Z.rr_setup(tmp) as (mesh, _stunnel, paths):
            socks = [connect(paths["ztunnel x2"]) for _ in range(args.burst)]
            with selectors.DefaultSelector() as sel:
                for _ in range(WARM_BURSTS):
                    burst(socks, sel)
                pids = Z.workers_of(mesh, "node-a") + Z.workers_of(mesh, "node-b")
                n = record(tmp / "perf.data", probes, pids, args.seconds,
                           lambda: burst(socks, sel))
            for s in socks:
                s.close()
    finally:
        subprocess.run(["perf", "probe", "-q", "-d", "probe__native:*"], check=False)
    text = subprocess.run(["perf", "script", "--ns", "-i", str(tmp / "perf.data"), "-F", "tid,time,event"],
                          capture_output=True, text=True, check=True).stdout
    events = [(int(m[1]), float(m[2]) * 1e6, m[3]) for m in map(_SCRIPT_LINE.match, text.splitlines())
              if m]
    result = summary(segments(events))
    print(f"{n} bursts of {args.burst}")
    for k, f in result.items():
        print(f"{k:36s} n={f['n']:6d}  p50 {f['p50_us']:6.1f}  p90 {f['p90_us']:6.1f} µs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"burst": args.burst, "bursts": n, "segments": result}, indent=1))


if __name__ == "__main__":
    main()
