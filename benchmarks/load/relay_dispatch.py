"""What a relay's event loop costs per request: plain relays beside the pairs.

    python -m shoal.benchmarks.load.relay_dispatch [--bursts 2000] [--burst 4] [--gap 0.004]

Builds the ztunnel load run's mesh and stunnel pair (ztunnel.rr_setup) and
adds three pairs of plain TCP relays (no TLS) to the same echo app:
haproxy (one C event loop a process), socat (a process a connection) and
uvloop x2 (benchmarks/load/uvrelay.py: asyncio.Protocol on uvloop, the
loop's own cost with nothing of shoal's). A client on blocking sockets sends
a burst of --burst requests of 1 KB, one a connection, waits for every
answer, sleeps --gap, and so on: --bursts bursts a path, the paths taking
turns in BLOCKS blocks. --burst 1 is one request at a time. Prints each
path's p50 and p99 and what it adds to the direct path's (µs), and writes
benchmarks/out/relay_dispatch.json. Hold /tmp/shoal-netns.lock.

A plain pair next to a TLS pair of the same design (socat and stunnel: a
thread or process a connection; uvloop x2 and the ztunnels: one loop a
process) separates what TLS adds from what the loop costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from shoal.benchmarks.load import ztunnel as Z
from tests.helpers.ports import free_port
from tests.helpers.ztunnel_peers import Proc, haproxy_pair, wait_listener

OUT = Path("benchmarks/out")
PAYLOAD = b"q" * 1024
BLOCKS = 10
WARM_BURSTS = 50       # untimed, per path, before the first block


def added_us(lat_us: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each path's p50, p90 and p99 (µs) and the same less the direct path's."""
    out = {}
    for name, v in lat_us.items():
        s = sorted(v)
        out[name] = {f"p{q}": Z.quantile(s, q / 100) for q in (50, 90, 99)}
    direct = out["direct"]
    for f in out.values():
        f.update({f"added_{k}": f[k] - direct[k] for k in list(f)})
    return out


# -- I/O ---------------------------------------------------------------------------

@contextlib.contextmanager
def plain_pairs(tmp: Path, echo: tuple[str, int]) -> Iterator[dict[str, Z.RrPath]]:
    """haproxy, socat and uvrelay pairs in front of `echo`; their paths."""
    procs: list[Proc] = []

    def hop(name: str, cmd: list[str], port: int) -> None:
        procs.append(Proc(name, cmd, tmp))
        wait_listener("127.0.0.1", port, procs[-1])

    try:
        paths = {}
        h = (free_port(), free_port())
        (tmp / "haproxy").mkdir()
        procs += haproxy_pair(*h, echo, tmp / "haproxy")
        paths["haproxy x2"] = Z.RrPath("127.0.0.1", h[0])
        for name, cmd in (("socat", lambda port, host, to: [
                              "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay",
                              f"TCP:{host}:{to},nodelay"]),
                          ("uvloop", lambda port, host, to: [
                              sys.executable, "-m", "shoal.benchmarks.load.uvrelay",
                              str(port), host, str(to)])):
            front, mid = free_port(), free_port()
            hop(f"{name}-b", cmd(mid, *echo), mid)
            hop(f"{name}-a", cmd(front, "127.0.0.1", mid), front)
            paths[f"{name} x2"] = Z.RrPath("127.0.0.1", front)
        yield paths
    finally:
        for p in procs:
            p.stop()


def connect(path: Z.RrPath) -> socket.socket:
    s = socket.socket()
    if path.source:
        s.bind((path.source, 0))
    s.connect((path.host, path.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def burst(socks: list[socket.socket], sel: selectors.BaseSelector) -> list[float]:
    """One request on each socket at once; each answer's latency (µs)."""
    t0 = time.perf_counter_ns()
    for s in socks:
        s.sendall(PAYLOAD)
    left = {s: len(PAYLOAD) for s in socks}
    for s in socks:
        sel.register(s, selectors.EVENT_READ, s)
    out = []
    while left:
        for key, _ in sel.select():
            s = key.data            # the socket (registered as its own data)
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("a relay closed the connection")
            left[s] -= len(chunk)
            if left[s] <= 0:
                del left[s]
                sel.unregister(s)
                out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def measure(paths: dict[str, Z.RrPath], bursts: int, size: int, gap: float) -> dict[str, list[float]]:
    socks = {n: [connect(p) for _ in range(size)] for n, p in paths.items()}
    lat: dict[str, list[float]] = {n: [] for n in paths}
    with selectors.DefaultSelector() as sel:
        for ss in socks.values():
            for _ in range(WARM_BURSTS):
                burst(ss, sel)
        for name in Z.turns(list(paths), BLOCKS):
            for _ in range(bursts // BLOCKS):
                lat[name].extend(burst(socks[name], sel))
                time.sleep(gap)
    for ss in socks.values():
        for s in ss:
            s.close()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bursts", type=int, default=2000)
    ap.add_argument("--burst", type=int, default=4, help="requests sent together (1: one at a time)")
    ap.add_argument("--gap", type=float, default=0.004, help="seconds between bursts")
    ap.add_argument("--out", type=Path, default=OUT / "relay_dispatch.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shoal-relay-dispatch-"))
    with Z.rr_setup(tmp) as (mesh, _stunnel, paths):
        with plain_pairs(tmp, (mesh.pods["echo"].ip, Z.APP_PORT)) as plain:
            lat = measure({**paths, **plain}, args.bursts, args.burst, args.gap)
    result = added_us(lat)
    for name, f in result.items():
        print(f"{name:12s} p50 {f['p50']:6.1f} p99 {f['p99']:6.1f} µs; added p50 "
              f"{f['added_p50']:6.1f} p90 {f['added_p90']:6.1f} p99 {f['added_p99']:6.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"burst": args.burst, "bursts": args.bursts, "gap": args.gap,
                                    "paths": result}, indent=1))


if __name__ == "__main__":
    main()
