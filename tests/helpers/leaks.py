"""Reference and memory leak measurement for the C data-path tests."""

from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
from typing import Any, Callable

# Batches run while references and memory are watched (after one to warm up).
LEAK_BATCHES = 10
# What a C call may leave allocated after the watched batches (tracemalloc's
# own bookkeeping and interned strings) without a per-call leak behind it:
# one lost object per call would be tens of kilobytes over the batches.
SMALL_GROWTH_BYTES = 16 * 1024
# None is shared by everything running (tracemalloc's snapshots move it by
# a few hundred): only a per-call loss (thousands over the batches) shows.
NONE_DRIFT = 1000


def leaks(objs: list, batch: Callable[[], Any], count: Callable[[], int]):
    """Run `batch` once to warm up, then LEAK_BATCHES times watched: the
    reference-count changes of `objs` as (index, change), the bytes still
    allocated, and how much the `count()` counter moved."""
    batch()
    gc.collect()
    before = [sys.getrefcount(o) for o in objs]
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    count0 = count()
    for _ in range(LEAK_BATCHES):
        batch()
    gc.collect()
    grown = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(snap0, "filename")
                if d.size_diff > 0)
    tracemalloc.stop()
    after = [sys.getrefcount(o) for o in objs]
    return [(i, a - b) for i, (a, b) in enumerate(zip(after, before)) if a != b], grown, \
        count() - count0


def assert_nothing_kept(objs: list, batch: Callable[[], Any]) -> None:
    """`batch` (calls into C) keeps no reference to `objs` nor to None and
    leaves no more than SMALL_GROWTH_BYTES allocated."""
    # Earlier tests' garbage, collected inside leaks(), would take its
    # references to None with it (a drop of thousands): collected first.
    gc.collect()
    nones = sys.getrefcount(None)
    leaked, grown, _ = leaks(objs, batch, lambda: 0)
    assert leaked == []
    assert grown < SMALL_GROWTH_BYTES, grown
    assert abs(sys.getrefcount(None) - nones) < NONE_DRIFT


def assert_child_prints(script: str, expected: str) -> None:
    """`script` run in a fresh interpreter (where it may change the
    collector's thresholds and callbacks) prints `expected`."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.stdout.strip() == expected, (out.returncode, out.stdout, out.stderr[-2000:])
