"""Profile a ztunnel pair under the load run's 1 KB request/response.

    python -m shoal.benchmarks.load.profile_ztunnel SECONDS none|pyspy|perf OUT_PREFIX

Builds the ztunnel load run's mesh (shoal.benchmarks.load.ztunnel, 1 worker
per node unless W is set), measures both nodes' idle CPU for 3 s, then runs
1,000 req/s of 1 KB over 4 connections for SECONDS while `py-spy record
--format raw` (collapsed stacks, OUT_PREFIX-<node>-<pid>.txt) or `perf record
-g` (OUT_PREFIX-<node>.perf) samples each worker; prints the CPU figures of
that load. docs/bench/profiles/README.md has the summaries. A load run: hold
/tmp/shoal-netns.lock.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.benchmarks.load.ztunnel import (VIP, _paced_rr, build_mesh, cpu_seconds, cpu_under_load,
                                           tree, workers_of)

# Samples per second: enough for a few thousand samples in 8 s, little
# enough that the profiler's own CPU stays small beside 2 busy workers.
PYSPY_RATE = 250
PERF_FREQ = 999
IDLE_SECONDS = 3


def _profilers(mode: str, seconds: float, out: str, workers: dict) -> list:
    procs = []
    for node, pids in workers.items():
        for pid in pids:
            if mode == "pyspy":
                cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid),
                       "-d", str(int(seconds)), "-r", str(PYSPY_RATE), "--nonblocking",
                       "--format", "raw", "-o", f"{out}-{node}-{pid}.txt"]
            else:
                cmd = ["perf", "record", "-F", str(PERF_FREQ), "-g", "-p", str(pid),
                       "-o", f"{out}-{node}-{pid}.perf", "--", "sleep", str(int(seconds))]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
    return procs


def main() -> None:
    seconds, mode, out = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    mesh, iperf = build_mesh(Path(tempfile.mkdtemp(prefix="shoal-profile-")),
                             int(os.environ.get("W", "1")))
    try:
        a = mesh.nodes["node-a"]
        client = mesh.pods["client"].ip
        host, port = a.proxy_ip, a.fixed[(VIP, 80)]
        asyncio.run(_paced_rr(host, port, 100, 1, client))          # warm: pool, certificates
        ta, tb = tree(mesh.supervisor_pid("node-a")), tree(mesh.supervisor_pid("node-b"))
        c0a, c0b, t0 = cpu_seconds(ta), cpu_seconds(tb), time.monotonic()
        time.sleep(IDLE_SECONDS)
        wall = time.monotonic() - t0
        print(f"idle vCPU: node-a {(cpu_seconds(ta) - c0a) / wall:.4f} "
              f"node-b {(cpu_seconds(tb) - c0b) / wall:.4f}", flush=True)
        procs = [] if mode == "none" else _profilers(
            mode, seconds, out, {"a": workers_of(mesh, "node-a"), "b": workers_of(mesh, "node-b")})
        print(cpu_under_load(ta, tb, host, port, seconds, client), flush=True)
        for p in procs:
            p.wait()
    finally:
        iperf.stop()
        mesh.stop()


if __name__ == "__main__":
    main()
