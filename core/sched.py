"""The CPU scheduler slice a latency-sensitive process asks for (Linux EEVDF).

Since Linux 6.12 a SCHED_OTHER task may suggest its own slice with
sched_setattr(2)'s `sched_runtime` ("sched/eevdf: Allow shorter slices to
wakeup-preempt"). The kernel clamps it to 0.1-100 ms; without it a task gets
the base slice, 0.7 ms x (1 + log2 CPUs): 1.4 ms on 2 CPUs, 3.5 ms on 32.

A short slice gives the task an earlier virtual deadline, so when it wakes
it runs before a busier task on a longer slice, and a task that the worker
wakes (the client it just answered) does not preempt it in the middle of a
burst. The task's weight does not change: on a contended CPU it gets the
same share, in shorter turns. A proxy worker's turn per wakeup is tens of
microseconds, so it never uses a long slice anyway. No privilege is needed.

Python's os module has no sched_setattr, so ctypes calls it by number.
Kernels before 6.12 accept the value and ignore it for fair tasks (their
sched_getattr reports 0), which `request_slice` reads back to tell.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

# sched_setattr / sched_getattr syscall numbers (asm/unistd.h) of the
# architectures a node runs on; elsewhere the hint is reported unsupported.
SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275),
            "ppc64le": (355, 356), "s390x": (345, 346)}

# struct sched_attr, SCHED_ATTR_SIZE_VER0: size, policy, flags, nice,
# priority, runtime, deadline, period.
ATTR = struct.Struct("=IIQiIQQQ")

# Policies whose tasks EEVDF schedules; a slice means nothing to the
# real-time and deadline classes, which are left alone.
SCHED_OTHER, SCHED_BATCH, SCHED_IDLE = 0, 3, 5
FAIR_POLICIES = (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE)
# The one flag carried over from the current attributes: the others ask
# for utilisation clamps or deadline behaviour this request does not set.
SCHED_FLAG_RESET_ON_FORK = 0x01

# The kernel's clamp (kernel/sched/syscalls.c): values outside it are
# refused by the options instead of silently moved.
MIN_SLICE_NS = 100_000
MAX_SLICE_NS = 100_000_000

_libc = ctypes.CDLL(None, use_errno=True)


class SliceUnsupported(OSError):
    """The slice hint cannot be applied here; the message says why."""


def _numbers() -> tuple[int, int]:
    try:
        return SYSCALLS[platform.machine()]
    except KeyError:
        raise SliceUnsupported(f"no sched_setattr number known for {platform.machine()}") from None


def _get(tid: int) -> tuple:
    buf = ctypes.create_string_buffer(ATTR.size)
    if _libc.syscall(_numbers()[1], tid, buf, ATTR.size, 0) != 0:
        err = ctypes.get_errno()
        raise SliceUnsupported(err, f"sched_getattr: {os.strerror(err)}")
    return ATTR.unpack(buf.raw)


def slice_of(tid: int = 0) -> int:
    """The slice in ns of thread `tid` (0: the calling one); 0 when the
    kernel does not report one (before 6.12, or not a fair task)."""
    _, policy, _, _, _, runtime, _, _ = _get(tid)
    return runtime if policy in FAIR_POLICIES else 0


def request_slice(ns: int) -> None:
    """Ask for an `ns` slice for the calling thread; the threads and
    processes it starts afterwards inherit it. `ns` 0 returns the thread to
    the kernel's default. The policy, nice value and reset-on-fork flag are
    kept. Raises SliceUnsupported with the reason when it cannot apply."""
    if ns and not MIN_SLICE_NS <= ns <= MAX_SLICE_NS:
        raise ValueError(f"a slice is 0 or {MIN_SLICE_NS}-{MAX_SLICE_NS} ns, not {ns}")
    _, policy, flags, nice, prio, _, _, _ = _get(0)
    if policy not in FAIR_POLICIES:
        raise SliceUnsupported(f"scheduling policy {policy} is not a fair (EEVDF) one")
    attr = ATTR.pack(ATTR.size, policy, flags & SCHED_FLAG_RESET_ON_FORK, nice, prio, ns, 0, 0)
    if _libc.syscall(_numbers()[0], 0, ctypes.create_string_buffer(attr, ATTR.size), 0) != 0:
        err = ctypes.get_errno()
        raise SliceUnsupported(err, f"sched_setattr: {os.strerror(err)}")
    if ns and slice_of(0) == 0:
        raise SliceUnsupported(f"the kernel ignores a fair task's slice (Linux {platform.release()}"
                               f" < 6.12)")
