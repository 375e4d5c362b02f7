"""Load run: a ztunnel pair with 1 and with 2 workers per node, same run.

    python -m shoal.benchmarks.load.shard_scaling [--seconds 5] [--conns 16]

Each round, for W in (1, 2): a two-node mesh on loopback with W workers per
ztunnel, then CONNS persistent connections each doing closed-loop 1 KB
request/response (send, wait for the echo, repeat) for SECONDS. Reports
req/s, the ztunnels' CPU (utime+stime of every process of each node) per
1,000 req/s, and how busy the load generator was (its CPU over wall time):
with a generator near one full core, the rate is the generator's, and the
comparable figure is the CPU per request. Writes
benchmarks/out/shard_scaling.json. See docs/bench/shards.md ("Scaling").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from shoal.benchmarks.load.ztunnel import ROOT, VIP, build_mesh, cpu_seconds, tree

# 1 KB each way, as the ztunnel load run's request/response phase.
SIZE = 1024


async def _closed_loop(host: str, port: int, source: str, conns: int, seconds: float) -> int:
    payload = b"q" * SIZE
    done = 0
    stop = time.monotonic() + seconds

    async def one():
        nonlocal done
        r, w = await asyncio.open_connection(host, port, local_addr=(source, 0))
        while time.monotonic() < stop:
            w.write(payload)
            await r.readexactly(SIZE)
            done += 1
        w.close()
    await asyncio.gather(*(one() for _ in range(conns)))
    return done


def measure(workers: int, seconds: float, conns: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-scaling-"))
    mesh, iperf = build_mesh(tmp, workers)
    try:
        a = mesh.nodes["node-a"]
        client = mesh.pods["client"].ip
        host, port = a.proxy_ip, a.fixed[(VIP, 80)]
        asyncio.run(_closed_loop(host, port, client, conns, 0.5))      # warm: pools, certs
        ta, tb = tree(mesh.supervisor_pid("node-a")), tree(mesh.supervisor_pid("node-b"))
        ca, cb, t0, g0 = cpu_seconds(ta), cpu_seconds(tb), time.monotonic(), time.process_time()
        done = asyncio.run(_closed_loop(host, port, client, conns, seconds))
        wall = time.monotonic() - t0
        rps = done / wall
        ca, cb = cpu_seconds(ta) - ca, cpu_seconds(tb) - cb
        return {"workers": workers, "rps": rps,
                "vcpu_client_side": ca / wall, "vcpu_server_side": cb / wall,
                "vcpu_per_1000rps_client_side": ca / wall * 1000 / rps,
                "vcpu_per_1000rps_server_side": cb / wall * 1000 / rps,
                "load_generator_vcpu": (time.process_time() - g0) / wall}
    finally:
        iperf.stop()
        mesh.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    runs = []
    for _ in range(args.rounds):
        for workers in (1, 2):
            r = measure(workers, args.seconds, args.conns)
            print(json.dumps(r), flush=True)
            runs.append(r)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "shard_scaling.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
