"""Heartbeats and a control word in one POSIX shared-memory segment.

Layout (little endian, every field naturally aligned so loads and stores of
it are single instructions on x86-64 and arm64, hence never torn):

    0   u32 magic            'SHHB'
    4   u32 slot count
    8   i32 log level        the level every worker should run at
    12  u32 log sequence     bumped on each change; workers compare it
    16  u8[32] scope levels  per core.log.SCOPES entry, 0 = inherit
    48.. 16 reserved
    64  slot[i]: f64 monotonic stamp, i64 pid     (16 bytes each)

The supervisor creates and unlinks the segment; workers write only their own
slot and read the control word. CLOCK_MONOTONIC is system-wide on Linux, so
stamps from different processes compare directly.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct

import posix_ipc

MAGIC = 0x42484853            # 'SHHB'
HEADER = 64
SLOT = struct.Struct("<dq")   # stamp, pid
CONTROL = struct.Struct("<iI")
CONTROL_OFFSET = 8
SCOPES_OFFSET = 16
SCOPES_SIZE = 32              # room for core.log.SCOPES to grow

PREFIX = "/shoal-hb-"
SHM_DIR = "/dev/shm"

# Enough for 256 workers while a SIGHUP roll runs twice as many (old + new)
# and a few crashed ones are being replaced.
MAX_SLOTS = 1024


class HeartbeatTable:
    """One slot per live worker process (not per worker id: rolls overlap)."""

    def __init__(self, name: str, mem: mmap.mmap, slots: int, owner: bool) -> None:
        self.name = name
        self._mem = mem
        self.slots = slots
        self._owner = owner
        self._free = list(range(slots - 1, -1, -1)) if owner else []

    @classmethod
    def create(cls, slots: int = MAX_SLOTS) -> "HeartbeatTable":
        cleanup_stale()
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        size = HEADER + slots * SLOT.size
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            mem = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        struct.pack_into("<II", mem, 0, MAGIC, slots)
        return cls(name, mem, slots, owner=True)

    @classmethod
    def attach(cls, name: str) -> "HeartbeatTable":
        shm = posix_ipc.SharedMemory(name)
        try:
            mem = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        magic, slots = struct.unpack_from("<II", mem, 0)
        if magic != MAGIC:
            raise ValueError(f"shared memory {name} is not a shoal heartbeat table")
        return cls(name, mem, slots, owner=False)

    # -- supervisor side ---------------------------------------------------

    def allocate(self, pid: int = 0) -> int:
        if not self._free:
            raise RuntimeError(f"all {self.slots} heartbeat slots in use")
        index = self._free.pop()
        SLOT.pack_into(self._mem, HEADER + index * SLOT.size, 0.0, pid)
        return index

    def assign(self, index: int, pid: int, now: float) -> None:
        """Give a fresh worker a full timeout before it must stamp."""
        SLOT.pack_into(self._mem, HEADER + index * SLOT.size, now, pid)

    def release(self, index: int) -> None:
        SLOT.pack_into(self._mem, HEADER + index * SLOT.size, 0.0, 0)
        self._free.append(index)

    def last(self, index: int) -> float:
        return SLOT.unpack_from(self._mem, HEADER + index * SLOT.size)[0]

    def set_log_level(self, level: int, scopes: bytes = b"") -> None:
        """Publish a level (and per-scope levels); the sequence is bumped last."""
        if len(scopes) > SCOPES_SIZE:
            raise ValueError(f"at most {SCOPES_SIZE} scopes")
        self._mem[SCOPES_OFFSET:SCOPES_OFFSET + SCOPES_SIZE] = scopes.ljust(SCOPES_SIZE, b"\0")
        _, seq = CONTROL.unpack_from(self._mem, CONTROL_OFFSET)
        CONTROL.pack_into(self._mem, CONTROL_OFFSET, level, (seq + 1) & 0xFFFFFFFF)

    # -- worker side -------------------------------------------------------

    def stamp(self, index: int, now: float) -> None:
        # Only the stamp: the pid half was written by the supervisor.
        struct.pack_into("<d", self._mem, HEADER + index * SLOT.size, now)

    def log_control(self) -> tuple[int, int]:
        """(level, sequence); sequence 0 means never set."""
        return CONTROL.unpack_from(self._mem, CONTROL_OFFSET)

    def log_scopes(self) -> bytes:
        """The per-scope level bytes written with the last level."""
        return bytes(self._mem[SCOPES_OFFSET:SCOPES_OFFSET + SCOPES_SIZE])

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        try:
            self._mem.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        self.close()
        if self._owner:
            try:
                posix_ipc.unlink_shared_memory(self.name)
            except posix_ipc.ExistentialError:
                pass


def cleanup_stale() -> list[str]:
    """Unlink tables whose supervisor died without cleaning up (kill -9)."""
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for entry in names:
        if not entry.startswith(PREFIX[1:]):
            continue
        pid = entry[len(PREFIX) - 1:].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                posix_ipc.unlink_shared_memory("/" + entry)
                removed.append(entry)
            except posix_ipc.ExistentialError:
                pass
    return removed
