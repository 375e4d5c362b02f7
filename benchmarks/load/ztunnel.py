"""Load run: two ztunnels against two stunnels and two haproxies, same run.

    python -m shoal.benchmarks.load.ztunnel [--seconds 5] [--workers 2] [--idle-conns 10000]

Measures, on loopback, in one run (so ratios are fair; absolute numbers
drift between machines and with other load on this 2-core box):
1. iperf3 throughput, one stream, both directions: direct, 2×haproxy
   (plaintext), 2×stunnel (mutual TLS 1.3), 2×ztunnel (HBONE);
2. connection rate (connect, 1 byte echo, close; 16 in parallel) through each;
3. CPU per 1,000 req/s of 1 KB request / 1 KB response over 4 persistent
   connections (Istio's setup; Istio publishes 0.06 vCPU per ztunnel),
   for the ztunnels and for the stunnels at the same load, with each
   request's p50 and p99, and the same load's latency on the direct path
   (what a pair adds is its p99 less the direct one); the three paths take
   turns in 5 blocks each, so they share the machine's drift;
4. RSS and PSS (smaps_rollup) of each ztunnel worker, idle and with
   10,000 open idle connections through the pair.

Writes benchmarks/out/ztunnel.json and docs/img/ztunnel_bench.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.ztunnel_mesh import Mesh  # noqa: E402
from tests.helpers.ports import APP_PORT, free_port  # noqa: E402
from tests.helpers.ztunnel_peers import (Proc, haproxy_pair, iperf3_run,  # noqa: E402
                                         iperf3_server, stunnel_pair)

IPERF_PORT = 15201
VIP = "10.96.0.10"
IPERF_VIP = "10.96.0.11"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- process accounting ---------------------------------------------------------

def cpu_seconds(pids) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])       # utime + stime
    return total / CLK_TCK


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    return [pid, *[p for c in children(pid) for p in tree(c)]]


def listener_pids(port: int) -> set[int]:
    out = subprocess.run(["ss", "-ltnpH", f"( sport = :{port} )"], capture_output=True,
                         text=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def memory(pid: int) -> dict:
    """RSS and PSS in KiB from smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower() + "_kib"] = int(rest.split()[0])
    return out


def workers_of(mesh: Mesh, node: str) -> list[int]:
    n = mesh.nodes[node]
    sup = mesh.supervisor_pid(node)
    # Workers (and the supervisor's handoff copies) hold the admin listener;
    # the config watcher holds none.
    return sorted(listener_pids(n.admin) - {sup})


# -- load generators ---------------------------------------------------------------

async def _conn_rate(host, port, seconds, source=None, parallel=16) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def loop():
        nonlocal done
        while time.monotonic() < stop:
            r, w = await asyncio.open_connection(host, port,
                                                 local_addr=(source, 0) if source else None)
            w.write(b"x")
            await r.readexactly(1)
            w.close()
            done += 1
    start = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(parallel)))
    return done / (time.monotonic() - start)


# Istio's request/response setup (fortio -c 4 -qps 1000): 4 connections.
RR_CONNS = 4
# Each path's measuring time is cut into this many blocks, interleaved with
# the other paths' (rotating which goes first), so a drift of the machine
# (another tenant, a frequency change) falls on every path alike: a p99 of
# one 10 s window moved by about 0.1 ms between windows, as much as a pair
# adds, and the paths had been measured one after the other.
RR_BLOCKS = 5
# Before each block, this long at the same load untimed: a path idle through
# the other paths' blocks starts with cold caches (a Python worker's far more
# than stunnel's), and its first requests measured the wake-up, not the
# steady state at 1,000 req/s the figure is about.
RR_WARMUP = 0.2


class RrPath(NamedTuple):
    """A request/response path: where to connect, the source address to bind
    (None: any) and, for CPU accounting, (client-side pids, server-side pids)."""
    host: str
    port: int
    source: str | None = None
    cpu_pids: tuple[list[int], list[int]] | None = None


async def _open_rr(path: RrPath, conns: int, payload: bytes) -> list:
    """`conns` connections, opened together as a client starting up would,
    each warmed by one untimed request (a new connection's first request
    also waits for the pair's tunnel set-up)."""
    async def one():
        r, w = await asyncio.open_connection(
            path.host, path.port, local_addr=(path.source, 0) if path.source else None)
        w.write(payload)
        await r.readexactly(len(payload))
        return r, w
    return list(await asyncio.gather(*(one() for _ in range(conns))))


async def _paced(conns: list, rate: float, seconds: float, payload: bytes, lat: list,
                 sent: list | None = None) -> None:
    """`rate` req/s over `conns` for `seconds`, each request's latency into `lat`
    (and, given `sent`, its send time on time.monotonic() at the same index)."""
    interval = len(conns) / rate

    async def one(r, w):
        t0 = time.monotonic()
        i = 0
        while (due := t0 + i * interval) < t0 + seconds:
            if due > (now := time.monotonic()):
                await asyncio.sleep(due - now)
            s = time.monotonic()
            w.write(payload)
            await r.readexactly(len(payload))
            lat.append(time.monotonic() - s)
            if sent is not None:
                sent.append(s)
            i += 1
    await asyncio.gather(*(one(r, w) for r, w in conns))


def turns(names: list[str], blocks: int) -> Iterator[str]:
    """The paths' turns over `blocks` blocks, the first path rotating, so a
    drift of the machine falls on every path alike."""
    for b in range(blocks):
        yield from names[b % len(names):] + names[:b % len(names)]


def quantile(sorted_values: list[float], q: float) -> float:
    """The `q` quantile (0 <= q < 1) of a sorted list, by rank (no interpolation)."""
    return sorted_values[int(len(sorted_values) * q)]


def latency_ms(lat: list[float]) -> dict[str, float]:
    """p50 and p99 of latencies in seconds, in ms (sorts `lat`)."""
    lat.sort()
    return {"p50_ms": 1000 * quantile(lat, 0.5), "p99_ms": 1000 * quantile(lat, 0.99)}


async def close_rr(conns: dict[str, list]) -> None:
    for cs in conns.values():
        for _, w in cs:
            w.close()
            await w.wait_closed()


async def rr_interleaved(paths: dict[str, RrPath], rate: float, seconds: float,
                         blocks: int = RR_BLOCKS, size: int = 1024) -> dict[str, dict]:
    """`rate` req/s of `size`-byte request/response through each path for
    `seconds` in all, in `blocks` interleaved blocks on the same connections:
    per path the p50 and p99 of every request, and with `cpu_pids` the vCPU
    of each side during that path's own blocks."""
    payload = b"q" * size
    conns = {name: await _open_rr(p, RR_CONNS, payload) for name, p in paths.items()}
    lat: dict[str, list[float]] = {name: [] for name in paths}
    cpu = {name: [0.0, 0.0, 0.0] for name in paths}          # client s, server s, wall s
    for name in turns(list(paths), blocks):
        pids = paths[name].cpu_pids
        await _paced(conns[name], rate, RR_WARMUP, payload, [])
        c0 = [cpu_seconds(p) for p in pids] if pids else [0.0, 0.0]
        t0 = time.monotonic()
        await _paced(conns[name], rate, seconds / blocks, payload, lat[name])
        cpu[name][2] += time.monotonic() - t0
        if pids:
            cpu[name][0] += cpu_seconds(pids[0]) - c0[0]
            cpu[name][1] += cpu_seconds(pids[1]) - c0[1]
    await close_rr(conns)
    return {name: _rr_summary(lat[name], cpu[name], paths[name].cpu_pids is not None)
            for name in paths}


def _rr_summary(lat: list[float], cpu: list[float], with_cpu: bool) -> dict:
    """`cpu`: client-side CPU s, server-side CPU s, wall s of the path's blocks."""
    ca, cb, wall = cpu
    out = {"requests": len(lat), "rps": len(lat) / wall, **latency_ms(lat)}
    if with_cpu:
        per_k = 1000 / out["rps"]
        out |= {"vcpu_client_side": ca / wall, "vcpu_server_side": cb / wall,
                "vcpu_per_1000rps_client_side": ca / wall * per_k,
                "vcpu_per_1000rps_server_side": cb / wall * per_k}
    return out


def rr_paths(mesh: Mesh, stunnel_port: int,
             stunnel_pids: tuple[list[int], list[int]]) -> dict[str, RrPath]:
    """The request/response phase's paths, by the load run's names: the
    ztunnel pair (CPU: each node's process tree), the direct path to the
    echo app, and the stunnel pair listening on `stunnel_port`."""
    a = mesh.nodes["node-a"]
    nodes = (tree(mesh.supervisor_pid("node-a")), tree(mesh.supervisor_pid("node-b")))
    return {"ztunnel x2": RrPath(a.proxy_ip, a.fixed[(VIP, 80)], mesh.pods["client"].ip, nodes),
            "direct": RrPath(mesh.pods["echo"].ip, APP_PORT),
            "stunnel x2": RrPath("127.0.0.1", stunnel_port, None, stunnel_pids)}


async def _paced_rr(host, port, rate, seconds, source=None) -> dict:
    """One path, one block: p50/p99 of `rate` req/s of 1 KB for `seconds`."""
    return (await rr_interleaved({"path": RrPath(host, port, source)}, rate, seconds, 1))["path"]


def cpu_under_load(pids_a, pids_b, host, port, seconds, source=None, rate=1000) -> dict:
    """One path, one block, with the CPU of `pids_a` (client side) and `pids_b`."""
    path = RrPath(host, port, source, (pids_a, pids_b))
    return asyncio.run(rr_interleaved({"path": path}, rate, seconds, 1))["path"]


async def _hold_idle(host, port, n, source) -> list:
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(host, port, local_addr=(source, 0))
            w.write(b"i")
            await r.readexactly(1)
            conns.append(w)
    await asyncio.gather(*(one() for _ in range(n)))
    return conns


# -- the run -----------------------------------------------------------------------------

def build_mesh(tmp: Path, workers: int, extra_args: tuple[str, ...] = ()) -> tuple[Mesh, Proc]:
    """The load run's mesh; `extra_args` go to both nodes' `ztunnel run`."""
    m = Mesh(tmp, workers=workers, extra_args=extra_args)
    m.pod("client", node="node-a", sa="sleep")
    m.pod("echo", node="node-b", app="echo", port=APP_PORT)
    m.pod("iperf", node="node-b", app="iperf")
    m.service("echo", vip=VIP, port=80, target=APP_PORT, app="echo")
    m.service("iperf", vip=IPERF_VIP, port=5201, target=IPERF_PORT, app="iperf")
    m.fix("node-a", VIP, 80)
    m.fix("node-a", IPERF_VIP, 5201)
    iperf = iperf3_server(m.pods["iperf"].ip, IPERF_PORT, m.logs)
    try:
        m.start()               # stops what it started if it fails
    except BaseException:
        iperf.stop()
        raise
    return m, iperf


@contextlib.contextmanager
def rr_setup(tmp: Path, flags: tuple[str, ...] = (), workers: int = 2
             ) -> Iterator[tuple[Mesh, tuple[Proc, Proc], dict[str, RrPath]]]:
    """The request/response phase on its own: the load run's mesh (`flags`
    to both nodes), a stunnel pair to the same echo app, the tunnel and
    certificates warmed by a second of light load; yields (mesh, (client-side
    stunnel, server-side stunnel), rr_paths) and stops them all after."""
    mesh, iperf = build_mesh(tmp, workers, flags)
    procs = [iperf]
    try:
        (server_side, client_side), front = echo_stunnel(tmp, mesh, "echo-peers")
        procs += [server_side, client_side]
        a = mesh.nodes["node-a"]
        asyncio.run(_paced_rr(a.proxy_ip, a.fixed[(VIP, 80)], 100, 1, mesh.pods["client"].ip))
        yield (mesh, (client_side, server_side),
               rr_paths(mesh, front, ([client_side.pid], [server_side.pid])))
    finally:
        for p in procs:
            p.stop()
        mesh.stop()


def echo_stunnel(tmp: Path, mesh: Mesh, folder: str) -> tuple[list[Proc], int]:
    """A stunnel pair to the mesh's echo app, its files in tmp/folder:
    ([server side, client side], the client side's port)."""
    port = (free_port(), free_port())
    (tmp / folder).mkdir()
    return stunnel_pair(*port, (mesh.pods["echo"].ip, APP_PORT), tmp / folder), port[0]


@contextlib.contextmanager
def second_stunnel(tmp: Path, mesh: Mesh) -> Iterator[RrPath]:
    """Another stunnel pair to the same echo app, as rr_setup's: yields its
    request/response path and stops it after."""
    procs, front = echo_stunnel(tmp, mesh, "echo-peers-b")
    try:
        yield RrPath("127.0.0.1", front, None, ([procs[1].pid], [procs[0].pid]))
    finally:
        for p in procs:
            p.stop()


# -- the request/response studies' command line (ztunnel_sched, ztunnel_tail) -----

def study_options(doc: str, rounds: int, seconds: float, out: Path,
                  second_peer: bool = False) -> argparse.Namespace:
    """--rounds, --seconds, --flags (the ztunnels') and --out, with these
    defaults; --second-peer too if the study offers it."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--flags", default="", help="ztunnel flags, e.g. --no-cpu-steering")
    ap.add_argument("--out", type=Path, default=out)
    if second_peer:
        ap.add_argument("--second-peer", action="store_true",
                        help="a second stunnel pair as one more path (an A/A check)")
    return ap.parse_args()


@contextlib.contextmanager
def study_mesh(args: argparse.Namespace, prefix: str
               ) -> Iterator[tuple[Path, Mesh, tuple[Proc, Proc], dict[str, RrPath]]]:
    """rr_setup in a new temporary folder with the study's --flags; yields
    (folder, mesh, stunnel pair, paths)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    with rr_setup(tmp, tuple(shlex.split(args.flags))) as (mesh, stunnel, paths):
        yield tmp, mesh, stunnel, paths


def save_study(args: argparse.Namespace, body: dict) -> None:
    """The study's result, with its --flags, into --out."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"flags": args.flags, **body}, indent=1))


def run(args) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.idle_conns * 2 + 2000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-ztunnel-"))
    mesh, iperf = build_mesh(tmp, args.workers)
    procs: list[Proc] = [iperf]
    out: dict = {"machine": {"cpus": os.cpu_count(), "workers_per_ztunnel": args.workers},
                 "seconds": args.seconds}
    try:
        a = mesh.nodes["node-a"]
        client_ip, iperf_ip, echo_ip = (mesh.pods[p].ip for p in ("client", "iperf", "echo"))
        # name -> (host, port, source address to bind or None)
        paths: dict[str, tuple[str, int, str | None]] = {"direct": (iperf_ip, IPERF_PORT, None)}
        hp = (free_port(), free_port())
        procs += haproxy_pair(*hp, (iperf_ip, IPERF_PORT), tmp)
        paths["haproxy x2"] = ("127.0.0.1", hp[0], None)
        st = (free_port(), free_port())
        procs += stunnel_pair(*st, (iperf_ip, IPERF_PORT), tmp)
        paths["stunnel x2"] = ("127.0.0.1", st[0], None)
        paths["ztunnel x2"] = (a.proxy_ip, a.fixed[(IPERF_VIP, 5201)], client_ip)
        tput = {}
        for name, (host, port, src) in paths.items():
            tput[name] = {"up_gbps": iperf3_run(host, port, args.seconds, bind=src),
                          "down_gbps": iperf3_run(host, port, args.seconds, bind=src,
                                                  reverse=True)}
            print(f"iperf3 {name}: {tput[name]}", flush=True)
        out["iperf3"] = tput

        # Echo paths for connection rate and request/response CPU.
        hp2, st2 = (free_port(), free_port()), (free_port(), free_port())
        (tmp / "echo-peers").mkdir()
        hap = haproxy_pair(*hp2, (echo_ip, APP_PORT), tmp / "echo-peers")
        stp = stunnel_pair(*st2, (echo_ip, APP_PORT), tmp / "echo-peers")
        procs += hap + stp
        echo_paths = {"direct": (echo_ip, APP_PORT, None),
                      "haproxy x2": ("127.0.0.1", hp2[0], None),
                      "stunnel x2": ("127.0.0.1", st2[0], None),
                      "ztunnel x2": (a.proxy_ip, a.fixed[(VIP, 80)], client_ip)}
        rate = {}
        for name, (host, port, src) in echo_paths.items():
            rate[name] = asyncio.run(_conn_rate(host, port, args.seconds, src))
            print(f"connections/s {name}: {rate[name]:.0f}", flush=True)
        out["connection_rate"] = rate

        # The direct path at the same load, interleaved with the pairs: the
        # p99 a pair *adds* is its path's p99 less this one (issue 15's "p99
        # added latency").
        rr = asyncio.run(rr_interleaved(rr_paths(mesh, st2[0], ([stp[1].pid], [stp[0].pid])),
                                        1000, args.seconds * 2))
        out["latency_1kb_rr_direct"] = rr.pop("direct")
        for name, c in rr.items():
            print(f"1 KB rr {name}: {json.dumps(c)}", flush=True)
        print(f"1 KB rr direct: {json.dumps(out['latency_1kb_rr_direct'])}", flush=True)
        out["cpu_1kb_rr"] = rr

        mem = {"idle": {n: {str(p): memory(p) for p in workers_of(mesh, n)}
                        for n in ("node-a", "node-b")}}
        conns = asyncio.run(_idle_phase(a, client_ip, args.idle_conns, mesh, mem))
        out["memory"] = mem
        out["idle_connections"] = conns
        print(f"memory: {json.dumps(mem)}", flush=True)
    finally:
        for p in procs:
            p.stop()
        mesh.stop()
    return out


async def _idle_phase(a, client_ip, n, mesh, mem) -> int:
    conns = await _hold_idle(a.proxy_ip, a.fixed[(VIP, 80)], n, client_ip)
    await asyncio.sleep(1)
    mem[f"with_{n}_idle_connections"] = {nd: {str(p): memory(p) for p in workers_of(mesh, nd)}
                                         for nd in ("node-a", "node-b")}
    held = len(conns)
    for w in conns:
        w.close()
    return held


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    names = list(result["iperf3"])
    up = [result["iperf3"][n]["up_gbps"] for n in names]
    down = [result["iperf3"][n]["down_gbps"] for n in names]
    x = range(len(names))
    axes[0].bar([i - 0.2 for i in x], up, 0.4, label="client→server")
    axes[0].bar([i + 0.2 for i in x], down, 0.4, label="server→client")
    axes[0].set_xticks(list(x), names)
    axes[0].set_ylabel("Gbit/s (iperf3, 1 stream)")
    axes[0].legend()
    axes[0].set_title("Throughput")
    rn = list(result["connection_rate"])
    axes[1].bar(rn, [result["connection_rate"][n] for n in rn], color="tab:green")
    axes[1].set_ylabel("connections/s")
    axes[1].set_title("Connection rate (1-byte echo)")
    cn = list(result["cpu_1kb_rr"])
    side_a = [result["cpu_1kb_rr"][n]["vcpu_per_1000rps_client_side"] for n in cn]
    side_b = [result["cpu_1kb_rr"][n]["vcpu_per_1000rps_server_side"] for n in cn]
    axes[2].bar([i - 0.2 for i in range(len(cn))], side_a, 0.4, label="client-side proxy")
    axes[2].bar([i + 0.2 for i in range(len(cn))], side_b, 0.4, label="server-side proxy")
    axes[2].axhline(0.06, color="red", linestyle="--", label="Istio ztunnel (published)")
    axes[2].set_xticks(list(range(len(cn))), cn)
    axes[2].set_ylabel("vCPU per 1,000 req/s (1 KB)")
    axes[2].legend(fontsize=8)
    axes[2].set_title("CPU")
    mem = result["memory"]
    busy = next(k for k in mem if k != "idle")
    labels, idle, loaded = [], [], []
    for node in ("node-a", "node-b"):
        for i, pid in enumerate(sorted(mem["idle"][node])):
            labels.append(f"{node[-1]}/w{i}")
            idle.append(mem["idle"][node][pid]["pss_kib"] / 1024)
            loaded.append(mem[busy][node].get(pid, {}).get("pss_kib", 0) / 1024)
    xs = range(len(labels))
    axes[3].bar([i - 0.2 for i in xs], idle, 0.4, label="idle")
    axes[3].bar([i + 0.2 for i in xs], loaded, 0.4, label=busy.replace("_", " "))
    axes[3].set_xticks(list(xs), labels)
    axes[3].set_ylabel("PSS per worker (MiB)")
    axes[3].legend(loc="upper left", fontsize=8)
    axes[3].set_title("Memory (node/worker)")
    fig.suptitle("shoal ztunnel vs peers, loopback, 2 cores (noisy: shared machine)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--idle-conns", type=int, default=10000)
    p.add_argument("--plot-only", action="store_true", help="re-plot the --out file")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ztunnel.json")
    p.add_argument("--plot", default=str(ROOT / "docs" / "img" / "ztunnel_bench.png"),
                   help="PNG to write ('' for none)")
    args = p.parse_args()
    if args.plot_only:
        result = json.loads(args.out.read_text())
    else:
        result = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    if args.plot:       # Path('') would be '.', so the flag stays a str
        plot(result, Path(args.plot))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
