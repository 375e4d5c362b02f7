"""Load run: a shoal HBONE pair against two stunnels, same certificates, same run.

    python -m shoal.benchmarks.load.hbone [--seconds 5] [--rounds 2] [--short-seconds 5]
        [--baseline DIR]     # also run shoal from another source tree (before/after)

Path under test (both variants, one process per side):
    iperf3 -c -> entry (plaintext in) -> mutual TLS 1.3 tunnel -> exit -> iperf3 -s
- shoal:   `python -m tests.helpers.hbone_tools entry|exit` (HBONE: TLS 1.3 + HTTP/2 CONNECT,
           one stream per TCP connection on a pooled connection)
- stunnel: stunnel4 client + server, TLS 1.3, AES-GCM suites, client certs required
           (a new TLS connection per TCP connection)

Reports throughput (1 and 8 iperf3 streams) as shoal/stunnel ratios and CPU
seconds per GB for each proxy process (utime+stime from /proc/<pid>/stat), and
short connections (1 KB request/response, a new TCP connection each through
the pair): connections/s and p50/p99 latency. Writes JSON to
benchmarks/out/load_hbone.json. The machine has 2 cores shared with the load
generator and the target: absolute numbers are noisy, compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.hbone_procs import free_port, start_shoal_tool, stop, wait_port  # noqa: E402
from tests.helpers.pki import TestPKI, write_pem  # noqa: E402

SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime + stime


class Pair:
    """Two proxy processes: entry (plaintext listener) and exit (to target)."""

    def __init__(self, name: str, entry, exit_, port: int) -> None:
        self.name, self.entry, self.exit, self.port = name, entry, exit_, port

    def cpu(self) -> tuple[float, float]:
        return cpu_seconds(self.entry.pid), cpu_seconds(self.exit.pid)

    def stop(self) -> None:
        stop(self.entry)
        stop(self.exit)


def _start_tool(args: list[str], log: Path, cwd: Path) -> tuple[subprocess.Popen, int]:
    """`python -m tests.helpers.hbone_tools ...` run from `cwd` (whose `core` package wins)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.hbone_tools", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"tool in {cwd} did not start: {line!r} {log.read_text()[-2000:]}")
    return proc, int(line.split()[1])


def start_shoal_baseline(root: Path):
    """A starter for shoal as it is in another source tree (`--baseline`)."""
    def start(tmp: Path, files, target_port: int) -> Pair:
        pair = start_shoal(tmp, files, target_port,
                           starter=lambda a, log: _start_tool(a, log, root))
        pair.name = "shoal_before"
        return pair
    return start


def start_shoal(tmp: Path, files, target_port: int, starter=start_shoal_tool) -> Pair:
    s, c = files
    exit_, eport = starter(["exit", "--listen", "127.0.0.1:0", "--cert", str(s.cert),
                            "--key", str(s.key), "--ca", str(s.ca),
                            "--target", f"127.0.0.1:{target_port}"], tmp / "exit.log")
    entry, nport = starter(["entry", "--listen", "127.0.0.1:0", "--peer",
                            f"127.0.0.1:{eport}", "--authority",
                            f"127.0.0.1:{target_port}", "--expect", SERVER_ID,
                            "--cert", str(c.cert), "--key", str(c.key), "--ca",
                            str(c.ca)], tmp / "entry.log")
    return Pair("shoal", entry, exit_, nport)


def start_stunnel(tmp: Path, files, target_port: int) -> Pair:
    s, c = files
    tls = ("sslVersionMin = TLSv1.3\n"
           "ciphersuites = TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256\n")
    sport, cport = free_port(), free_port()
    (tmp / "stunnel-s.conf").write_text(
        f"foreground = yes\npid =\ndebug = 3\n[hbone-s]\naccept = 127.0.0.1:{sport}\n"
        f"connect = 127.0.0.1:{target_port}\ncert = {s.cert}\nkey = {s.key}\n"
        f"CAfile = {s.ca}\nverifyChain = yes\nrequireCert = yes\n{tls}")
    (tmp / "stunnel-c.conf").write_text(
        f"foreground = yes\npid =\ndebug = 3\n[hbone-c]\nclient = yes\n"
        f"accept = 127.0.0.1:{cport}\nconnect = 127.0.0.1:{sport}\ncert = {c.cert}\n"
        f"key = {c.key}\nCAfile = {c.ca}\nverifyChain = yes\n{tls}")
    procs = []
    for name, port in (("s", sport), ("c", cport)):
        p = subprocess.Popen(["stunnel4", str(tmp / f"stunnel-{name}.conf")],
                             stdout=subprocess.DEVNULL, stderr=open(tmp / f"stunnel-{name}.log", "w"))
        wait_port(port, p)
        procs.append(p)
    return Pair("stunnel", procs[1], procs[0], cport)


def start_iperf_server(attempts: int = 3) -> tuple[subprocess.Popen, int]:
    """iperf3 -s on a free port; another process may grab the port between
    free_port() and iperf3's bind (other helpers test on this machine): retry."""
    for attempt in range(attempts):
        port = free_port()
        proc = subprocess.Popen(["iperf3", "-s", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_port(port, proc)
            return proc, port
        except RuntimeError:
            err = proc.stderr.read().strip()
            print(f"iperf3 -s on port {port} failed ({err}); retrying", file=sys.stderr)
    raise RuntimeError("iperf3 -s did not start")


def iperf(port: int, seconds: float, streams: int) -> dict:
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                          "-P", str(streams), "-J"], capture_output=True, text=True,
                         timeout=seconds + 30)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    recv = data["end"]["sum_received"]
    return {"bits_per_second": recv["bits_per_second"], "bytes": recv["bytes"]}


def throughput(pair: Pair, seconds: float, streams: int) -> dict:
    e0, x0 = pair.cpu()
    r = iperf(pair.port, seconds, streams)
    e1, x1 = pair.cpu()
    gb = r["bytes"] / 1e9
    return {"gbit_s": r["bits_per_second"] / 1e9, "bytes": r["bytes"],
            "cpu_s_per_gb_entry": (e1 - e0) / gb, "cpu_s_per_gb_exit": (x1 - x0) / gb}


# -- short connections --------------------------------------------------------

REQUEST = b"q" * 1024
RESPONSE = b"r" * 1024


async def rr_server() -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader, writer):
        try:
            await reader.readexactly(len(REQUEST))
            writer.write(RESPONSE)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    return server, server.sockets[0].getsockname()[1]


async def short_connections(port: int, seconds: float, concurrency: int = 8) -> dict:
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds

    async def worker():
        nonlocal errors
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(REQUEST)
                await reader.readexactly(len(RESPONSE))
                writer.close()
                latencies.append(time.perf_counter() - t0)
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [0] * 99
    return {"conns_per_s": len(latencies) / elapsed, "p50_ms": q[49] * 1e3,
            "p99_ms": q[98] * 1e3, "errors": errors, "count": len(latencies)}


def run_short(pair: Pair, target_port: int, seconds: float) -> dict:
    import uvloop
    return uvloop.run(short_connections(pair.port, seconds))


def start_rr_server(tmp: Path) -> tuple[subprocess.Popen, int]:
    code = ("import asyncio, sys, uvloop; sys.path.insert(0, %r)\n"
            "from shoal.benchmarks.load.hbone import rr_server\n"
            "async def main():\n"
            "    s, p = await rr_server(); print(p, flush=True); await asyncio.Event().wait()\n"
            "uvloop.run(main())\n") % str(ROOT)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--short-seconds", type=float, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "load_hbone.json"))
    ap.add_argument("--plot", help="also write a PNG plot here (e.g. docs/img/hbone_load.png)")
    ap.add_argument("--streams", default="1,8", help="iperf3 -P values, comma-separated")
    ap.add_argument("--baseline", help="a source tree (a copy of an older `core/`) whose "
                    "HBONE pair also runs, as `shoal_before`, in the same rounds")
    args = ap.parse_args(argv)
    for tool in ("iperf3", "stunnel4"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (make host-deps)")
    tmp = Path(tempfile.mkdtemp(prefix=f"shoal-hbone-bench-{os.getpid()}-"))
    pki = TestPKI()
    files = (write_pem(pki.issue(SERVER_ID), tmp, "server"),
             write_pem(pki.issue(CLIENT_ID), tmp, "client"))
    iperf_srv, iperf_port = start_iperf_server()
    rr, rr_port = start_rr_server(tmp)
    results: dict = {"seconds": args.seconds, "rounds": args.rounds, "cores": os.cpu_count(),
                     "throughput": {}, "short": {}}
    starters = {"shoal": start_shoal, "stunnel": start_stunnel}
    if args.baseline:
        starters["shoal_before"] = start_shoal_baseline(Path(args.baseline).resolve())
    try:
        for streams in (int(x) for x in args.streams.split(",")):
            runs: dict[str, list] = {name: [] for name in starters}
            for _ in range(args.rounds):
                for name, start in starters.items():     # alternate: same conditions
                    runs[name].append(_attempt(start, tmp, files, iperf_port, args.seconds,
                                               streams, results))
            results["throughput"][f"P{streams}"] = _summary(runs)
        runs = {"shoal": [], "stunnel": []}
        for start in (start_shoal, start_stunnel):
            pair = start(tmp, files, rr_port)
            try:
                runs[pair.name].append(run_short(pair, rr_port, args.short_seconds))
            finally:
                pair.stop()
        results["short"] = {k: v[0] for k, v in runs.items()}
        s, t = results["short"]["shoal"], results["short"]["stunnel"]
        results["short"]["ratio"] = {
            "conns_per_s": s["conns_per_s"] / t["conns_per_s"],
            "p50": s["p50_ms"] / t["p50_ms"], "p99": s["p99_ms"] / t["p99_ms"]}
    finally:
        stop(iperf_srv)
        stop(rr)
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if args.plot:
        plot(results, Path(args.plot))


def plot(results: dict, path: Path) -> None:
    """Bars: throughput (P1, P8) and CPU s/GB per side, shoal vs stunnel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 4))
    keys = list(results["throughput"])
    names = tuple(n for n in ("shoal_before", "shoal", "stunnel")
                  if n in results["throughput"][keys[0]])
    colors = {"shoal_before": "tab:orange", "shoal": "tab:blue", "stunnel": "tab:gray"}
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(keys))]
        ax1.bar(xs, [results["throughput"][k][name]["gbit_s"] for k in keys], width,
                label=name, color=colors[name])
        cpu = [results["throughput"][k][name]["cpu_s_per_gb_entry"] +
               results["throughput"][k][name]["cpu_s_per_gb_exit"] for k in keys]
        ax2.bar(xs, cpu, width, label=name, color=colors[name])
    for ax, title in ((ax1, "iperf3 throughput (Gbit/s)"), (ax2, "CPU s per GB (entry+exit)")):
        ax.set_xticks(range(len(keys)), [f"{k[1:]} stream(s)" for k in keys])
        ax.set_title(title)
        ax.legend(fontsize=8, loc="lower right")
    short, snames = results["short"], ("shoal", "stunnel")
    ax3.bar([0, 1], [short[n]["conns_per_s"] for n in snames],
            color=[colors[n] for n in snames])
    ax3.set_xticks([0, 1], [f"{n}\np50 {short[n]['p50_ms']:.1f} ms, p99 {short[n]['p99_ms']:.1f} ms"
                            for n in snames])
    ax3.set_title("short connections (1 KB req/resp): conns/s")
    fig.suptitle("HBONE pair vs two stunnels, mutual TLS 1.3, same run (2 shared cores: noisy)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def _attempt(start, tmp, files, iperf_port, seconds, streams, results) -> dict:
    """One iperf3 run through a fresh pair; a failed run is retried once and recorded."""
    for attempt in (1, 2):
        pair = start(tmp, files, iperf_port)
        try:
            return throughput(pair, seconds, streams)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            results.setdefault("failures", []).append(
                {"variant": pair.name, "streams": streams, "attempt": attempt, "error": str(e)})
            print(f"{pair.name} P{streams} attempt {attempt} failed: {e}", file=sys.stderr)
            time.sleep(1)          # let iperf3 -s finish the broken test
        finally:
            pair.stop()
    raise RuntimeError(f"{pair.name}: iperf3 failed twice; see failures")


def _summary(runs: dict[str, list]) -> dict:
    out = {}
    for name, rs in runs.items():
        out[name] = {k: statistics.mean(r[k] for r in rs)
                     for k in ("gbit_s", "cpu_s_per_gb_entry", "cpu_s_per_gb_exit")}
        out[name]["runs_gbit_s"] = [r["gbit_s"] for r in rs]
    out["ratio_gbit_s"] = out["shoal"]["gbit_s"] / out["stunnel"]["gbit_s"]
    if "shoal_before" in out:
        out["ratio_before_gbit_s"] = out["shoal_before"]["gbit_s"] / out["stunnel"]["gbit_s"]
    return out


if __name__ == "__main__":
    main()
