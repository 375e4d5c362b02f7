"""Run the shards echo app (`python -m tests.helpers.shards_echo`) as a real process in tests.

Every port is a fresh free port; the supervisor gets its own session so a
test can always end the whole tree by its process-group id.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from tests.helpers.ports import free_port
from tests.helpers.wait import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable


def children(pid: int) -> set[int]:
    """Direct children of `pid` (from /proc)."""
    out = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def runs(pid: int) -> int:
    """Times the process's threads were scheduled in so far."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[2])
        except (OSError, IndexError, ValueError):
            pass    # a thread that just ended
    return total


def wakeup_rates(limits: dict[int, float], window: float,
                 max_windows: int) -> dict[int, list[float]]:
    """Each process's runs per second (schedstat's count, see `runs`) in
    back-to-back windows of `window` s, until every process (`limits`' keys)
    has had a window at or under its limit, or `max_windows` were measured.

    An idle process is judged by its quietest window. Measuring until each has
    had one, rather than a fixed number of windows, lets a process just started
    finish its boot on a loaded CI machine (it spilled over 6 s once); a loop
    that polls wakes in every window and still fails, after `max_windows`."""
    rates: dict[int, list[float]] = {pid: [] for pid in limits}
    for _ in range(max_windows):
        before = {pid: runs(pid) for pid in rates}
        t0 = time.monotonic()
        time.sleep(window)      # the measured interval, not a synchronisation
        elapsed = time.monotonic() - t0
        for pid in rates:
            rates[pid].append((runs(pid) - before[pid]) / elapsed)
        if all(min(r) <= limits[pid] for pid, r in rates.items()):
            break
    return rates


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


# The CPUs this test may run on. A supervisor steers a connection to the
# worker of the CPU its SYN was handled on (--cpu-steering, the default), and
# a loopback SYN is handled on the connecting thread's CPU: `ask` connects
# from each CPU in turn, as clients on every CPU would, so that it reaches
# every worker.
CPUS = sorted(os.sched_getaffinity(0))
_turn = itertools.count()


def next_cpu() -> int:
    """The next CPU in turn."""
    return CPUS[next(_turn) % len(CPUS)]


@contextmanager
def on_cpu(cpu: int):
    """Run the calling thread on `cpu` only, for the duration."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def ask(port: int, line: bytes = b"pid", timeout: float = 5.0, cpu: int | None = None) -> bytes:
    """Send one line on a new connection made from `cpu` (else the next CPU in
    turn) and return the answer line."""
    with on_cpu(next_cpu() if cpu is None else cpu):
        conn = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with conn as s:
        s.sendall(line + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf


def worker_of(port: int, cpu: int | None = None) -> tuple[int, int, int]:
    """(pid, worker id, generation) of the worker that served one connection."""
    pid, wid, gen = ask(port, cpu=cpu).split()
    return int(pid), int(wid), int(gen)


def http(port: int, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with on_cpu(next_cpu()), urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def shm_segments(pid: int) -> list[str]:
    return glob.glob(f"/dev/shm/shoal-hb-{pid}-*")


def metrics_dirs(pid: int) -> list[str]:
    import tempfile
    return glob.glob(os.path.join(tempfile.gettempdir(), f"shoal-metrics-{pid}-*"))


@dataclass
class Shards:
    """One supervisor started with `python -m tests.helpers.shards_echo`."""
    workers: int = 2
    extra: list[str] = field(default_factory=list)
    tmp: str = "/tmp"

    def __post_init__(self) -> None:
        self.echo = free_port()
        self.admin, self.metrics, self.readiness = free_port(), free_port(), free_port()
        self.pidfile = os.path.join(self.tmp, f"shards-{os.getpid()}-{self.echo}.pid")
        self.log_path = os.path.join(self.tmp, f"shards-{os.getpid()}-{self.echo}.log")

    def start(self, wait_ready: bool = True) -> "Shards":
        cmd = [PYTHON, "-m", "tests.helpers.shards_echo", "--workers", str(self.workers), "--echo-port", str(self.echo),
               "--admin-port", str(self.admin), "--metrics-port", str(self.metrics),
               "--readiness-port", str(self.readiness), "--pidfile", self.pidfile,
               "--test-hooks", *self.extra]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pgid = self.proc.pid
        if wait_ready:
            self.wait_workers(self.workers)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def worker_pids(self, supervisor: int | None = None) -> set[int]:
        """Children of the supervisor (workers, and the watcher with --config)."""
        return children(supervisor or self.pid)

    def wait_workers(self, n: int, supervisor: int | None = None, timeout: float = 10.0) -> set[int]:
        """Wait until `n` workers run and each one answered on the echo port."""
        sup = supervisor or self.pid

        watchers = 1 if "--config" in self.extra else 0

        def check():
            pids = self.worker_pids(sup)
            if len(pids) != n + watchers:
                return None
            if watchers:
                seen = self.seen_pids(n * 12)
                return seen if len(seen) == n and seen <= pids else None
            seen = self.seen_pids(n * 12)
            return pids if pids <= seen else None
        return wait_for(check, timeout, lambda: f"{n} serving workers under {sup}: children "
                        f"{self.worker_pids(sup)}, serving {self.seen_pids(n * 12)}\n{self.log()[-3000:]}")

    def seen_pids(self, tries: int) -> set[int]:
        seen = set()
        for _ in range(tries):
            try:
                seen.add(worker_of(self.echo)[0])
            except (OSError, ValueError):
                pass
        return seen

    def signal(self, sig: int, pid: int | None = None) -> None:
        os.kill(pid or self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """Test teardown: stop gracefully, then end the tree we started by group id."""
        pids = [self.pid]
        try:
            pids.append(int(open(self.pidfile).read()))   # a supervisor from SIGUSR2
        except (OSError, ValueError):
            pass
        for pid in set(pids):
            if alive(pid) and (pid == self.pid or os.getpgid(pid) == self.pgid):
                os.kill(pid, signal.SIGQUIT)
        try:
            wait_for(lambda: not any(alive(p) for p in pids), 5, "supervisors to stop")
        except AssertionError:
            pass
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        for path in (self.pidfile, self.log_path):
            try:
                os.unlink(path)
            except OSError:
                pass


@dataclass
class LoopStats:
    ok: int = 0
    refused: int = 0
    reset: int = 0
    other: list[str] = field(default_factory=list)
    # Which failure when (monotonic seconds, kind, local port), to match a
    # rare one against the proxies' logs and the test's signals.
    failed: list[tuple[float, str, int]] = field(default_factory=list)


class ClientLoop:
    """Many short echo connections from a background thread, counting failures.

    `host`/`source`: where to connect and the source address to bind (a
    mesh client pod's IP); `ok_since(n)` waits for n more successes."""

    def __init__(self, port: int, concurrency: int = 8, stop_on_refused: bool = False,
                 host: str = "127.0.0.1", source: str | None = None) -> None:
        self.port = port
        self.host = host
        self.source = source
        self.concurrency = concurrency
        self.stop_on_refused = stop_on_refused
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> "ClientLoop":
        self._thread.start()
        wait_for(lambda: self.stats.ok > 20, 10, "the client loop to get going")
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def ok_since(self, n: int, timeout: float = 15.0) -> None:
        """Wait until `n` more connections succeeded than now."""
        start = self.stats.ok
        wait_for(lambda: self.stats.ok >= start + n, timeout,
                 lambda: f"{n} more successful connections (stats {self.stats})")

    def stop(self) -> LoopStats:
        self._stop.set()
        self._thread.join(15)
        return self.stats

    async def _main(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.concurrency)))

    async def _one(self) -> None:
        payload = b"hello\n"
        while not self._stop.is_set():
            local = 0                   # not connected yet
            # The connect's SYN is handled on this thread's CPU: move the
            # thread through the CPUs so that steering reaches every worker.
            os.sched_setaffinity(0, {next_cpu()})
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port,
                                            local_addr=(self.source, 0) if self.source else None), 5)
                local = writer.get_extra_info("sockname")[1]
                writer.write(payload)
                reply = await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                if reply != payload:
                    self.stats.reset += 1   # closed without answering
                    self.stats.failed.append((time.monotonic(), f"unanswered {reply!r}", local))
                    continue
                self.stats.ok += 1
            except ConnectionRefusedError:
                self.stats.refused += 1
                if self.stop_on_refused:
                    return
                await asyncio.sleep(0.01)
            except ConnectionResetError as e:
                self.stats.reset += 1
                self.stats.failed.append((time.monotonic(), f"reset {e!r}", local))
            except (OSError, asyncio.TimeoutError) as e:
                self.stats.other.append(repr(e))
