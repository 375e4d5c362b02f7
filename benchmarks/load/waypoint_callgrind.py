"""Instructions per request of one waypoint worker, under callgrind.

    python -m shoal.benchmarks.load.waypoint_callgrind [--seconds 10]

The machine is shared and has no hardware counters (perf stat says
"not supported"), so req/s and CPU seconds swing with the neighbours';
callgrind's instruction count (user space) does not. Two waypoints (1
worker, the load run's options: plaintext, no access log) run under
valgrind one after the other against the load run's nginx backend; the
first serves wrk for WARMUP_SECONDS, the second for WARMUP_SECONDS and
then --seconds more. Start-up, config load, the first requests and the
shutdown are in both, so the difference of the worker's totals over the
difference of the request counts is the cost of a warm request (the method
of attr_calls.py). Kernel work (the syscalls) is not counted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from shoal.benchmarks.load import waypoint as load

# Long enough for the plans, the pool and the balancers to be warm.
WARMUP_SECONDS = 3
# Connections: enough to keep the slowed-down worker busy (valgrind runs
# it ~50x slower), few enough that wrk is not the cost.
CONNECTIONS = 8
# Valgrind's start-up of Python and the imports take a minute or two.
START_TIMEOUT = 300.0


def wrk(port: int, seconds: int) -> int:
    """Requests wrk completed against the waypoint on `port`."""
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H",
                          f"Host: {load.HOST}", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise RuntimeError(f"wrk printed no request count: {out[-300:]!r}")
    return int(m.group(1))


def totals(path: Path) -> int:
    """A callgrind.out file's total instruction count."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return 0


def serve(d: Path, extra: int) -> tuple[int, int]:
    """(requests, worker instructions) of one waypoint under callgrind."""
    port = load.free_port()
    out = d / f"cg{extra}"
    out.mkdir()
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
           sys.executable, "-m", "shoal.cli", "waypoint", "run", "--name", "waypoint",
           "--namespace", "default", "--hbone-port", "0", "--plaintext-port", str(port),
           "--bind", "127.0.0.1", "--upstream-plaintext", "--no-access-log",
           "--config", str(d / "mesh"), "--workers", "1", "--admin-port", "0",
           "--metrics-port", "0", "--readiness-port", "0", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=load.ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        load.wait_http(port, load.HOST, timeout=START_TIMEOUT)
        n = wrk(port, WARMUP_SECONDS)
        if extra:
            n += wrk(port, extra)
    finally:
        proc.terminate()
        proc.wait(timeout=START_TIMEOUT)
    # One file per process (supervisor, watcher, worker): the worker did the most.
    return n, max((totals(p) for p in out.iterdir()), default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="measured wrk run (after warm-up)")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="shoal-wp-callgrind-"))
    (d / "mesh").mkdir()
    bport = load.free_port()
    backend = load.start_nginx(load.BACKEND_CONF.format(dir=d, port=bport, body="x" * 1024),
                               d, "backend")
    (d / "mesh" / "mesh.yaml").write_text(load.mesh_yaml(bport))
    try:
        load.wait_http(bport)
        n0, i0 = serve(d, 0)
        n1, i1 = serve(d, args.seconds)
    finally:
        load.stop(backend)
        shutil.rmtree(d, ignore_errors=True)
    print(f"short: {n0} requests, {i0} Ir; long: {n1} requests, {i1} Ir; "
          f"Ir per request: {(i1 - i0) / (n1 - n0):.0f}")


if __name__ == "__main__":
    main()
