"""Instructions per 1 KB round trip of each stunnel of a pair, under callgrind.

    python -m shoal.benchmarks.load.stunnel_callgrind [--trips 200]

The scale for the ztunnel's per-hop counts (bench_ztunnel_relay, which
counts both ztunnels in one process): the load run's stunnel pair
(tests.helpers.ztunnel_peers.stunnel_pair) runs under valgrind twice, in
front of the load run's echo app (tests.helpers.ztunnel_apps), and one
connection makes WARM_TRIPS round trips of 1 KB, one at a time, then
--trips more in the second run. Start-up, the handshake and the shutdown are in both runs, so
the difference of each stunnel's totals over --trips is one round trip
through it: a request and a response, one SSL_read and one SSL_write.
Kernel work (the syscalls) is not counted. Prints each side's count and
its instructions in libc's memset (stunnel clears its buffers) and in
OpenSSL.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
from pathlib import Path

from shoal.benchmarks.load.waypoint_callgrind import totals
from tests.helpers.ports import free_port
from tests.helpers.ztunnel_mesh import echo_exact
from tests.helpers.ztunnel_peers import python_app, stunnel_pair

WARM_TRIPS = 20
PAYLOAD = b"q" * 1024
# Valgrind starts a stunnel in a few seconds; a loaded machine takes longer.
START_TIMEOUT = 120.0
SIDES = ("server", "client")      # stunnel_pair's order
# What main() breaks out of each side's count: callgrind_annotate's lines
# (one per function, its own instructions) that name these.
PARTS = {"memset": ("memset",), "OpenSSL": ("libcrypto.so", "libssl.so")}


def run(d: Path, backend: tuple[str, int], trips: int) -> dict[str, Path]:
    """One pair under callgrind, WARM_TRIPS + `trips` round trips through it;
    each side's callgrind output."""
    logdir = d / str(trips)
    logdir.mkdir()
    front, mid = free_port(), free_port()
    procs = stunnel_pair(front, mid, backend, logdir,
                         wrap=("valgrind", "--tool=callgrind",
                               f"--callgrind-out-file={logdir}/callgrind.%p"),
                         timeout=START_TIMEOUT)
    try:
        with socket.create_connection(("127.0.0.1", front)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(WARM_TRIPS + trips):
                echo_exact(s, PAYLOAD)
    finally:
        for p in procs:
            p.stop()            # SIGTERM: valgrind writes its output as stunnel exits
    return {side: logdir / f"callgrind.{p.pid}" for side, p in zip(SIDES, procs)}


def parts(path: Path) -> dict[str, int]:
    """The instructions of `path` in each of PARTS."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", str(path)],
                         capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    return {name: sum(int(line.split()[0].replace(",", "")) for line in lines
                      if any(n in line for n in needles))
            for name, needles in PARTS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trips", type=int, default=200)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="shoal-stunnel-callgrind-"))
    backend = ("127.0.0.1", free_port())
    app = python_app("echo", f"{backend[0]}:{backend[1]}", d)   # the load run's echo app
    try:
        base, more = run(d, backend, 0), run(d, backend, args.trips)
    finally:
        app.stop()
    for side in SIDES:
        total = (totals(more[side]) - totals(base[side])) / args.trips
        have, had = parts(more[side]), parts(base[side])
        print(f"{side}-side stunnel, per 1 KB round trip: {total:,.0f} instructions; "
              + ", ".join(f"{name} {(have[name] - had[name]) / args.trips:,.0f}" for name in PARTS))
    print(f"outputs in {d}")


if __name__ == "__main__":
    main()
