"""Per-operation costs of the supervisor machinery.

- a worker's heartbeat stamp (one 8-byte store into shared memory),
- the supervisor's stale check over 64 workers (one pass of its loop),
- a labelled Istio counter increment through `IstioMetrics.inc` in
  prometheus_client's multiprocess mode (what each connection pays),
  against the same counter in prometheus_client's default in-memory mode
  (the peer).

    .venv/bin/python -m pytest benchmarks/bench_shards_heartbeat.py \
        -o python_files='bench_*.py' --benchmark-enable -p no:xdist
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from shoal.shards.heartbeat import HeartbeatTable


@pytest.fixture(scope="module")
def table():
    t = HeartbeatTable.create(slots=64)
    for i in range(64):
        t.assign(t.allocate(), 1, time.monotonic())
    yield t
    t.unlink()


def test_heartbeat_stamp(benchmark, table):
    benchmark(table.stamp, 3, 123.0)


def test_supervisor_stale_check_64_workers(benchmark, table):
    def check():
        now = time.monotonic()
        return sum(1 for i in range(64) if now - table.last(i) > 30.0)
    benchmark(check)


SCRIPT = r"""
import sys, tempfile, timeit
from shoal.core import metrics
mode = sys.argv[1]
if mode != "bare-child":
    metrics.use_dir(tempfile.mkdtemp())
m = metrics.istio()
labels = {"reporter": "destination", "source_workload": "sleep", "destination_workload": "echo"}
if mode == "bare-child":      # in-memory prometheus_client, child bound once: the peer
    c = m.child(m.tcp_opened, labels)
    fn = c.inc
elif mode == "mp-child":      # multiprocess mode, child bound once per connection
    c = m.child(m.tcp_opened, labels)
    fn = c.inc
else:                         # multiprocess mode through the labels-dict helper
    fn = lambda: m.inc(m.tcp_opened, labels)
n = 20000
print(min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6)
"""


@pytest.mark.parametrize("mode", ["bare-child", "mp-child", "mp-helper"])
def test_metric_inc_us(benchmark, mode):
    # Each mode in a fresh interpreter: prometheus_client picks its value
    # class per process. The figure is µs per increment (min of 5 runs).
    def run():
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             check=True)
        return float(out.stdout)
    us = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["us_per_inc"] = us
    print(f"\n{mode}: {us:.2f} µs per increment")
