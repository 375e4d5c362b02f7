"""Is a process alive? (reader slots and segment names carry pids; routing/shm.py).

A reader slot stores an owner word: the pid in the low 32 bits and the low 32
bits of the process start time (clock ticks since boot, /proc/<pid>/stat
field 22) above. pid_max is often 32768, so a killed worker's pid may soon
belong to another process; the start time tells them apart, so a dead
reader's slot never pins the table's generation.
"""

from __future__ import annotations

import os

import posix_ipc

from shoal.core.pids import alive  # noqa: F401  (re-exported: routing.shm uses liveness.alive)


def cleanup_stale(prefix: str) -> list[str]:
    """Unlink segments of this prefix whose creator pid is dead; returns their names."""
    removed = []
    for entry in os.listdir("/dev/shm"):
        name = "/" + entry
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            try:
                posix_ipc.unlink_shared_memory(name)
                removed.append(name)
            except posix_ipc.ExistentialError:
                pass
    return removed


PID_MASK = 0xFFFFFFFF
_STARTTIME = 19             # index of stat field 22 in the fields after "(comm) "


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat fields from the state on; None: no such process;
    [] when unreadable (callers then assume alive)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return []
    return stat[stat.rfind(b")") + 2:].split()


def owner_word(pid: int) -> int:
    """The reader-slot owner word of a live process (see module docstring)."""
    fields = _stat_fields(pid) or []
    tag = int(fields[_STARTTIME]) & PID_MASK if len(fields) > _STARTTIME else 0
    return pid | tag << 32


def owner_alive(word: int) -> bool:
    """True while the process that wrote `word` runs (not a zombie, pid not reused)."""
    pid, tag = word & PID_MASK, word >> 32
    if not alive(pid):
        return False
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if not tag or len(fields) <= _STARTTIME:
        return True
    return int(fields[_STARTTIME]) & PID_MASK == tag
