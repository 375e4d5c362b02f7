"""core.sched on the real kernel: the slice request, what it keeps, what inherits it.

Each test runs in a thread of its own: the request applies to the calling
thread only, so the test process keeps its slice."""

from __future__ import annotations

import os
import threading

import pytest

from shoal.core import sched


def in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn(threading.get_native_id())
        except BaseException as e:       # re-raised in the test's thread
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def kernel_default() -> int:
    """This thread's slice as the kernel reports it: 0 when it does not (before
    6.12 or on an architecture core.sched has no syscall number for)."""
    try:
        return in_thread(lambda tid: sched.slice_of())
    except sched.SliceUnsupported:
        return 0


pytestmark = pytest.mark.skipif(kernel_default() == 0,
                                reason="the kernel reports no slice for fair tasks (before 6.12)")


def test_request_sets_the_slice_and_zero_restores_the_default():
    default = kernel_default()

    def body(tid):
        sched.request_slice(sched.MIN_SLICE_NS)
        got = sched.slice_of()
        sched.request_slice(0)
        return got, sched.slice_of()
    assert in_thread(body) == (sched.MIN_SLICE_NS, default)


def test_the_nice_value_is_kept():
    def body(tid):
        os.setpriority(os.PRIO_PROCESS, tid, 7)
        sched.request_slice(sched.MIN_SLICE_NS)
        return os.getpriority(os.PRIO_PROCESS, tid), sched.slice_of()
    assert in_thread(body) == (7, sched.MIN_SLICE_NS)


def test_threads_started_afterwards_inherit_it():
    def body(tid):
        sched.request_slice(3 * sched.MIN_SLICE_NS)
        return in_thread(lambda child: sched.slice_of())
    assert in_thread(body) == 3 * sched.MIN_SLICE_NS


def test_the_calling_thread_only():
    in_thread(lambda tid: sched.request_slice(sched.MIN_SLICE_NS))
    assert sched.slice_of() == kernel_default() != sched.MIN_SLICE_NS


@pytest.mark.parametrize("ns", [1, sched.MIN_SLICE_NS - 1, sched.MAX_SLICE_NS + 1])
def test_values_outside_the_kernels_clamp_are_refused(ns):
    with pytest.raises(ValueError, match="a slice is 0 or"):
        sched.request_slice(ns)
