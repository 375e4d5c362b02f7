"""An idle `shoal ztunnel run` node wakes rarely: every idle node of a cluster
(a DaemonSet) pays its periodic wakeups, traffic or not.

A worker has one periodic wakeup (shards/ticker.py: heartbeat, log control,
routing quiesce and the app's generation check ride the same tick), the
supervisor sleeps until its next deadline. Wakeups are counted by the kernel:
/proc/<pid>/task/*/schedstat's third field is how many times each thread was
scheduled in, i.e. woke (one wakeup, one run, when a run is shorter than a
time slice, as an idle tick's is).
"""

from __future__ import annotations

import glob
import time

import pytest

from shoal.shards.ticker import TICK_INTERVAL
from tests.helpers.shards_proc import children
from tests.helpers.ztunnel_mesh import Mesh

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

# Windows measured back to back; each process is judged by its quietest.
# A node just started still finishes its boot for a moment (certificates,
# the first routing generation, log lines), and under a loaded CI run
# that spills into a window: 27 wakeups/s in one run where idle is 10.
# A polling loop wakes in every window, so the quietest still shows it.
WINDOWS = 4
# Long enough to average out a stray wakeup (a log line, a metrics flush).
WINDOW = 1.5
# One tick per TICK_INTERVAL plus slack for the rare extra run (a heartbeat
# stamp rides a tick; a preemption counts twice). Two timers drifting apart
# (a tick plus a second sleeping loop) are ~2 / TICK_INTERVAL.
WORKER_MAX_PER_S = 1.3 / TICK_INTERVAL
# The supervisor has nothing to do on an idle node before a heartbeat could
# go stale (worker_timeout, 30 s by default): a polling loop was 5/s.
SUPERVISOR_MAX_PER_S = 1.0


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


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("ztidle"), workers=2, nodes=("node-a",))
    m.pod("client", node="node-a", sa="sleep")
    m.pod("echo", node="node-a", app="echo", port=18080)
    try:
        m.start()
        yield m
    finally:
        m.stop()


def test_idle_node_wakes_once_per_tick_per_worker_and_rarely_in_the_supervisor(node):
    sup = node.supervisor_pid("node-a")
    workers = node.worker_pids("node-a")
    assert len(workers) == 2 and workers <= children(sup)
    rates: dict[int, list[float]] = {pid: [] for pid in (sup, *workers)}
    for _ in range(WINDOWS):
        before = {pid: runs(pid) for pid in rates}
        t0 = time.monotonic()
        time.sleep(WINDOW)      # the measured interval, not a synchronisation
        elapsed = time.monotonic() - t0
        for pid in rates:
            rates[pid].append((runs(pid) - before[pid]) / elapsed)
    rate = {pid: min(r) for pid, r in rates.items()}
    for pid in workers:
        assert rate[pid] <= WORKER_MAX_PER_S, \
            f"idle worker {pid} woke {rate[pid]:.1f} times/s at the quietest " \
            f"(one tick is {1 / TICK_INTERVAL:.0f}/s; each window: {rates[pid]})"
    assert rate[sup] <= SUPERVISOR_MAX_PER_S, \
        f"idle supervisor woke {rate[sup]:.1f} times/s at the quietest (each window: {rates[sup]})"
