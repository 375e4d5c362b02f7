"""Is a process alive? (reader slots and segment names carry pids; routing/shm.py)."""

from __future__ import annotations

import os

import posix_ipc


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


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")
