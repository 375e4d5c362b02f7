"""The scheduler slice each worker asks for (`--sched-slice-us`, core/sched.py):
workers run on it (their threads inherit it: tests/unit/shards/test_sched.py);
the supervisor keeps the kernel's default. Each is read from /proc/PID/sched (`se.slice`), not
through core.sched."""

from __future__ import annotations

import json
import os
import re

import pytest

from shoal.core.sched import MIN_SLICE_NS, SliceUnsupported, slice_of
from tests.helpers.shards_proc import http


def proc_slice(pid: int) -> int | None:
    with open(f"/proc/{pid}/sched") as f:
        m = re.search(r"^se\.slice\s*:\s*(\d+)", f.read(), re.M)
    return int(m.group(1)) if m else None


def honoured() -> bool:
    # sched_getattr reports a fair task's slice from 6.12, the version that honours the request.
    try:
        return slice_of() != 0 and proc_slice(os.getpid()) is not None
    except SliceUnsupported:
        return False


pytestmark = [
    pytest.mark.integration, pytest.mark.timeout(60),
    pytest.mark.skipif(not honoured(), reason="the kernel ignores a requested slice (before 6.12)"),
]


def test_workers_run_on_the_shortest_slice_by_default(shards):
    s = shards()
    default = proc_slice(s.pid)
    assert default != MIN_SLICE_NS, "the supervisor is not on the data path: kernel default"
    assert {proc_slice(p) for p in s.worker_pids()} == {MIN_SLICE_NS}
    status, body = http(s.admin, "/config_dump")
    assert status == 200 and json.loads(body)["worker"]["sched_slice_ns"] == MIN_SLICE_NS


def test_a_chosen_slice_and_zero_for_the_kernels_default(shards):
    s = shards(extra=["--sched-slice-us", "2000"])
    assert {proc_slice(p) for p in s.worker_pids()} == {2_000_000}
    s0 = shards(extra=["--sched-slice-us", "0"])
    assert {proc_slice(p) for p in s0.worker_pids()} == {proc_slice(s0.pid)}
