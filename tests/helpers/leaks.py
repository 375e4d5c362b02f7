"""Reference and memory leak measurement for the C data-path tests."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any, Callable

# Batches run while references and memory are watched (after one to warm up).
LEAK_BATCHES = 10


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
