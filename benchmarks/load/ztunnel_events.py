"""Where a ztunnel worker's time goes per read event: the loop's share and ours.

    python -m shoal.benchmarks.load.ztunnel_events [--seconds 4] [--burst 4]
    python -m shoal.benchmarks.load.ztunnel_events --syscalls-only [--path "stunnel x2"]

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
A, C and D are each told apart for a wakeup's first event and later ones
(the first runs on caches the path's other processes have just used).
A, C and G are the event loop's; D and F are shoal's. Each uprobe costs a
trap (about 1.5-2 µs on this VM) that falls in C, and the return probe's
in F and G: read them as upper bounds. With the pumps' reads moved off
uvloop onto a C epoll (a scratch build, docs/bench/ztunnel.md) A, C and G
read the same, so most of each is the probes'.

`--syscalls-only` records the system calls alone (no uprobes, so nothing
but the tracepoints' cost is added) and `--path "stunnel x2"` records the
stunnel pair's threads instead of the workers: the same reading for both
peers. A thread's time is then cut into busy spans, from a wait (epoll_pwait,
poll) that blocked to the next one (`busy_spans`), and each span's time into
user time and time in system calls, per write (each hop writes each request
once: stunnel's threads poll for POLLOUT and read a TLS record's header and
body apart, so their system calls per write differ from a worker's).

Needs perf, root, a _native built with symbols (the package's build keeps
them); hold /tmp/shoal-netns.lock. Writes benchmarks/out/ztunnel_events.json.
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
from typing import Iterable, NamedTuple

from shoal.benchmarks.load import ztunnel as Z
from shoal.benchmarks.load.relay_dispatch import burst, connect
from shoal.core.hbone.native import _native

OUT = Path("benchmarks/out")
GAP = 0.004            # between bursts: the load run's pacing (4 connections, 1,000 req/s)
WARM_BURSTS = 200      # untimed, before perf starts
PAYLOAD = b"q" * 1024
# The pumps whose buffer_updated is probed: probe name -> C file.
PUMPS = {"plain": "plain.c", "tls": "tlspump.c"}
SYSCALLS = ("epoll_pwait", "poll", "read", "write")
WAITS = ("epoll_pwait", "poll")
# A wait that returned sooner than this did not block: stunnel's poll for
# POLLOUT before each write returns at once (about 1 µs, with the
# tracepoints). A hop's next request comes tens of µs later at the soonest.
BLOCKED_US = 5.0

_SCRIPT_LINE = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+(?:\S+:(\S+):|PERF_RECORD_SWITCH (IN|OUT))")


def by_thread(events: Iterable[tuple[int, float, str]]) -> list[list[tuple[float, str]]]:
    """Each thread's (time, event) sequence, in the trace's order."""
    threads: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for tid, t, name in events:
        threads[tid].append((t, name))
    return list(threads.values())


def segments(events: Iterable[tuple[int, float, str]]) -> dict[str, list[float]]:
    """Cut each thread's (tid, time µs, event) sequence into the A-G
    segments of the module docstring. Events: sys_enter_/sys_exit_ +
    SYSCALLS, a PUMPS name (buffer_updated entered) and that name +
    "__return". A segment is "first " or "next " for the first event after
    epoll_pwait's return or a later one in the same wakeup (A, C and D):
    the first runs on caches the other processes have just used."""
    out: dict[str, list[float]] = defaultdict(list)
    for evs in by_thread(events):
        mark = None             # where loop-in time starts: epoll's return or an event's end
        first = ended = False
        read_at = read_done = entered = wrote = write_at = None
        pump = order = ""
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
                order = "first " if first else "next "
                out[order + "C loop on"].append(t - read_done)
            elif name == "sys_enter_write" and entered is not None:
                if wrote is None:
                    out[f"{order}D {pump}: work before the write"].append(t - entered)
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


class Span(NamedTuple):
    """A busy span's time, µs: on the CPU outside system calls (user), on
    the CPU in them (syscalls), and off the CPU (preempted: another task ran)."""
    user: float
    syscalls: float
    off: float
    writes: int


def busy_spans(events: Iterable[tuple[int, float, str]]) -> list[Span]:
    """Each thread's busy spans, from a blocking wait's return to the next
    blocking wait's entry; spans that wrote nothing (a timer, an EOF) are
    left out. A wait that returned within BLOCKED_US counts as a system call
    inside the span. "switch_out"/"switch_in" events (perf's switch
    records) mark the time off the CPU, which is taken out of the user or
    system-call time it fell in."""
    spans = []
    for evs in by_thread(events):
        start = entered = left = None
        in_sys = off_user = off_sys = off_before = 0.0
        writes = 0
        for t, name in evs:
            if name == "switch_out":
                left = t
            elif name == "switch_in":
                if left is not None and start is not None:
                    if entered is None:
                        off_user += t - left
                    else:
                        off_sys += t - left
                left = None
            elif name.startswith("sys_enter_"):
                entered, off_before = t, off_sys
            elif name.startswith("sys_exit_") and entered is not None:
                call, took = name[len("sys_exit_"):], t - entered
                if call in WAITS and took >= BLOCKED_US:
                    off_sys = off_before        # blocked in the wait: not the span's
                    if start is not None and writes:
                        spans.append(Span(entered - start - in_sys - off_user,
                                          in_sys - off_sys, off_user + off_sys, writes))
                    start, in_sys, off_user, off_sys, writes = t, 0.0, 0.0, 0.0, 0
                elif start is not None:
                    in_sys += took
                    writes += call == "write"
                entered = None
    return spans


def span_summary(spans: list[Span]) -> dict[str, float]:
    """Per write over every span, and the p50 of the spans with one write."""
    writes = sum(sp.writes for sp in spans)
    if not writes:
        raise ValueError("no busy span wrote anything: the trace holds no relayed request")
    single = [sp for sp in spans if sp.writes == 1]

    def p50(field: str) -> float:
        return statistics.median(getattr(sp, field) for sp in single) if single else 0.0

    return {"spans": len(spans), "writes": writes,
            "user_us_per_write": sum(sp.user for sp in spans) / writes,
            "syscall_us_per_write": sum(sp.syscalls for sp in spans) / writes,
            "off_cpu_us_per_write": sum(sp.off for sp in spans) / writes,
            "one_write_spans": len(single),
            "one_write_user_p50_us": p50("user"),
            "one_write_syscall_p50_us": p50("syscalls"),
            "one_write_off_cpu_p50_us": p50("off")}


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
    args = ["perf", "record", "-q", "--switch-events", "-o", str(out)]
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
    ap.add_argument("--syscalls-only", action="store_true", help="no uprobes: busy spans only")
    ap.add_argument("--path", choices=("ztunnel x2", "stunnel x2"), default="ztunnel x2")
    ap.add_argument("--out", type=Path, default=OUT / "ztunnel_events.json")
    args = ap.parse_args()
    if args.path != "ztunnel x2" and not args.syscalls_only:
        raise SystemExit("the uprobes are in shoal's pumps: --path stunnel x2 needs --syscalls-only")
    tmp = Path(tempfile.mkdtemp(prefix="shoal-ztunnel-events-"))
    probes = [] if args.syscalls_only else add_probes(_native.__file__)
    try:
        with Z.rr_setup(tmp) as (mesh, stunnel, paths):
            socks = [connect(paths[args.path]) for _ in range(args.burst)]
            with selectors.DefaultSelector() as sel:
                for _ in range(WARM_BURSTS):
                    burst(socks, sel)
                pids = (Z.workers_of(mesh, "node-a") + Z.workers_of(mesh, "node-b")
                        if args.path == "ztunnel x2" else [p.pid for p in stunnel])
                n = record(tmp / "perf.data", probes, pids, args.seconds,
                           lambda: burst(socks, sel))
            for s in socks:
                s.close()
    finally:
        if probes:
            subprocess.run(["perf", "probe", "-q", "-d", "probe__native:*"], check=False)
    text = subprocess.run(["perf", "script", "--ns", "-i", str(tmp / "perf.data"), "-F", "tid,time,event",
                           "--show-switch-events"],
                          capture_output=True, text=True, check=True).stdout
    events = [(int(m[1]), float(m[2]) * 1e6, m[3] or "switch_" + m[4].lower())
              for m in map(_SCRIPT_LINE.match, text.splitlines()) if m]
    result = summary(segments(events)) if probes else {}
    spans = span_summary(busy_spans(events))
    print(f"{args.path}: {n} bursts of {args.burst}")
    for k, f in result.items():
        print(f"{k:36s} n={f['n']:6d}  p50 {f['p50_us']:6.1f}  p90 {f['p90_us']:6.1f} µs")
    print("busy spans: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in spans.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"path": args.path, "burst": args.burst, "bursts": n,
                                    "segments": result, "busy_spans": spans}, indent=1))


if __name__ == "__main__":
    main()
