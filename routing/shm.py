"""The routing table in POSIX shared memory: one writer, lock-free readers.

Design: an RCU-published persistent radix tree with QSBR reclamation
(reference/waypoint-cni-peers.md D.1), in ONE fixed-size segment.

Layout (native byte order; x86-64 little-endian):

    0      header: magic, layout, size, ROOT word, bump, writer pid
    4096   reader slots: MAX_READERS x (owner u64, generation u64); owner =
           pid | start-time tag << 32 (routing/liveness.py)
    8192   status area: seqlock u64, length u64, JSON (last refused change, ...)
    16384  arena: blocks = [8-byte header: size class u32, BLOCK_MAGIC u32][payload]

The key space (routing/index.py) lives in a radix tree of fixed depth over
crc32(key): DEPTH interior nodes of FANOUT child offsets, then a leaf bucket
(count, entries of (crc32, record offset)), then the record
(klen u32, vlen u32, key, value).

Invariants (the argument for correctness; keep them when changing code):
1. Blocks reachable from a published root are never modified. The writer
   copies every node it changes (path copying) into fresh blocks, so an
   update costs O(changed keys x DEPTH), never O(table).
2. Publishing is ONE aligned 8-byte store of the ROOT word
   (generation << 32 | root offset >> 3) with native `struct` (a single
   memcpy -> one mov). Readers load ROOT once per public call and walk only
   from it, so a call sees exactly one whole generation: never torn, never
   mixed. x86-64 (TSO) keeps the writer's block stores ordered before the
   ROOT store and the readers' loads in order; arm64 would need barriers.
3. Readers never wait and never write the table: they only announce, in
   their own slot, the oldest generation they may still be using (QSBR).
   A slot is claimed under flock(2) with generation 0 before its pid is set
   (flock is a full barrier), so the writer never overlooks a new reader.
4. A block replaced while building generation G is "retired at G" and is
   reused only when every live reader slot shows a generation >= G: nobody
   can still hold a root that reaches it. Slots of dead readers (a killed
   worker, even once its pid is reused) are ignored and released by the
   writer under a non-blocking flock, so they never pin a generation.
   Blocks allocated and replaced inside one batch are freed at once (never
   published).
5. Memory is bounded by the segment size (fixed at create; no growth, no
   shrink: ftruncate under a reader would SIGBUS it). An update that does not
   fit is rolled back entirely (nothing was published) and reported.
6. The segment is unlinked only by its owner (TableHandle.unlink) on a clean
   stop; a mapping stays valid after unlink, so no reader is ever cut off.
   Names carry the creator pid (`/shoal-rt-<pid>-<rand>`) so a crashed
   owner's segments are found by prefix (`cleanup_stale`).
7. A restarted writer recovers by walking the arena: blocks unreachable from
   the current root are retired at the current generation (conservative).
   A writer killed inside `set_status` leaves the status seqlock odd; the new
   writer empties the status and makes the sequence even again, else readers
   would see "busy" forever and every later write would flip the parity.

Readers never retry and never block: unlike a seqlock (copy, re-check,
bounded retry), an RCU reader's snapshot cannot change under it. Only the
small status area is seqlocked (bounded retries, STATUS_RETRIES).

A reader idle for long keeps its slot at an old generation and so delays
reclamation; workers call `RoutingView.quiesce()` from their heartbeat tick.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import struct
import time
import zlib
from collections import deque
from typing import Iterator

import orjson
import posix_ipc

from shoal.routing import liveness
from shoal.routing.liveness import PID_MASK, owner_alive, owner_word

NAME_PREFIX = "/shoal-rt-"
MAGIC = 0x31545248414F4853          # "SHOAHRT1"
LAYOUT = 2                          # 2: reader slot owners carry a start-time tag
DEFAULT_SIZE = 256 * 1024 * 1024    # the budget for 100k workloads + 10k services
MIN_SIZE = 1024 * 1024
PAGE = 4096
OFF_ROOT, OFF_BUMP, OFF_WRITER = 24, 32, 40
SLOTS_OFF, SLOT_SIZE = 4096, 16
MAX_READERS = PAGE // SLOT_SIZE     # one page of slots: 256 worker processes per table
STATUS_OFF = 8192
STATUS_MAX = 8192 - 16              # a refused-change report; longer ones are truncated
ARENA_OFF = 16384
BLOCK_MAGIC = 0xB10C
FANOUT_BITS = 5
FANOUT = 1 << FANOUT_BITS           # 32 children: 256-byte nodes, 3 levels = 32768 leaves
DEPTH = 3
NODE_BYTES = FANOUT * 8
LIVENESS_TTL = 1.0                  # seconds between liveness checks of one reader pid
STATUS_RETRIES = 1000               # bounded: a hot writer cannot starve a status reader

_Q = struct.Struct("Q")             # native: one 8-byte memcpy, i.e. an atomic aligned store
_QQ = struct.Struct("QQ")
_II = struct.Struct("II")
_HDR = struct.Struct("II")          # block header: size class, magic
_ENTRY = struct.Struct("IIQ")       # leaf entry: crc32, pad, record offset
_NODE = struct.Struct(f"{FANOUT}Q")
_SLOTS = struct.Struct(f"{2 * MAX_READERS}Q")
_PATH_MASK = (1 << (FANOUT_BITS * DEPTH)) - 1  # the hash bits that pick a leaf


def _size_classes() -> list[int]:
    sizes = [16, 24, 32, 40, 48, 56, 64]
    p = 64
    while p < (1 << 28):            # 256 MiB: no single value is larger than the segment
        sizes += [p + p // 4, p + p // 2, p + 3 * p // 4, 2 * p]
        p *= 2
    return sizes


SIZE_CLASSES = _size_classes()


def _class_for(total: int) -> int:
    lo, hi = 0, len(SIZE_CLASSES) - 1
    if total > SIZE_CLASSES[hi]:
        raise TableFullError(f"a value of {total} bytes is larger than any block")
    while lo < hi:
        mid = (lo + hi) // 2
        if SIZE_CLASSES[mid] >= total:
            hi = mid
        else:
            lo = mid + 1
    return lo


class TableError(Exception):
    code = "TABLE_ERROR"


class TableFullError(TableError):
    code = "TABLE_FULL"


class ReaderSlotsExhausted(TableError):
    code = "TABLE_READERS_EXHAUSTED"


def new_name() -> str:
    return f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def cleanup_stale(prefix: str = NAME_PREFIX) -> list[str]:
    """Unlink segments of this prefix whose creator pid is dead; returns their names."""
    return liveness.cleanup_stale(prefix)


def _open(name: str, create: bool, size: int) -> tuple[mmap.mmap, int]:
    flags = posix_ipc.O_CREX if create else 0
    shm = posix_ipc.SharedMemory(name, flags, mode=0o600, size=size if create else 0)
    try:
        mm = mmap.mmap(shm.fd, shm.size)
        fd = os.dup(shm.fd)
    finally:
        shm.close_fd()
    return mm, fd


def root_word(gen: int, root: int) -> int:
    return (gen << 32) | (root >> 3)


def split_root(word: int) -> tuple[int, int]:
    return word >> 32, (word & 0xFFFFFFFF) << 3


def _hash(key: bytes) -> int:
    return zlib.crc32(key)


# ---------------------------------------------------------------------------
# reading (shared by readers and the writer)

def lookup(mm, root: int, key: bytes) -> bytes | None:
    """The value of `key` in the tree at `root`, or None."""
    h = _hash(key)
    node = root
    unpack = _Q.unpack_from
    for level in range(DEPTH):
        node = unpack(mm, node + ((h >> (level * FANOUT_BITS)) & (FANOUT - 1)) * 8)[0]
        if not node:
            return None
    count = _II.unpack_from(mm, node)[0]
    pos = node + 8
    for _ in range(count):
        eh, _pad, roff = _ENTRY.unpack_from(mm, pos)
        if eh == h:
            klen, vlen = _II.unpack_from(mm, roff)
            start = roff + 8
            if mm[start:start + klen] == key:
                return mm[start + klen:start + klen + vlen]
        pos += 16
    return None


def walk(mm, root: int) -> Iterator[tuple[int, int, int]]:
    """Every (record offset, leaf offset, depth-path) reachable from root (for scans/recovery)."""
    stack = [(root, 0)]
    while stack:
        node, level = stack.pop()
        if level < DEPTH:
            for child in _NODE.unpack_from(mm, node):
                if child:
                    stack.append((child, level + 1))
            continue
        count = _II.unpack_from(mm, node)[0]
        for i in range(count):
            yield _ENTRY.unpack_from(mm, node + 8 + 16 * i)[2], node, 0


def scan(mm, root: int, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
    for roff, _leaf, _ in walk(mm, root):
        klen, vlen = _II.unpack_from(mm, roff)
        key = mm[roff + 8:roff + 8 + klen]
        if key.startswith(prefix):
            yield key, mm[roff + 8 + klen:roff + 8 + klen + vlen]


def read_status(mm) -> dict:
    for _ in range(STATUS_RETRIES):
        seq1, length = _QQ.unpack_from(mm, STATUS_OFF)
        if seq1 & 1:
            continue
        data = mm[STATUS_OFF + 16:STATUS_OFF + 16 + min(length, STATUS_MAX)]
        if _Q.unpack_from(mm, STATUS_OFF)[0] == seq1:
            try:
                return orjson.loads(data) if data else {}
            except orjson.JSONDecodeError:
                return {"error": {"message": "status area unreadable"}}
    return {"error": {"message": "status busy (writer updating)"}}


def _check_header(mm, name: str) -> None:
    magic, layout = _QQ.unpack_from(mm, 0)
    if magic != MAGIC or layout != LAYOUT:
        raise TableError(f"shared memory {name!r} is not a shoal routing table (layout {LAYOUT})")


# ---------------------------------------------------------------------------
# readers

class TableReader:
    """A lock-free reader: `pin()` once per call, then `get`/`scan` on that root."""

    def __init__(self, name: str) -> None:
        self.name = name
        shm = posix_ipc.SharedMemory(name)
        try:
            self._mm = mmap.mmap(shm.fd, shm.size, prot=mmap.PROT_READ)
            # Only our slot page is writable: readers cannot corrupt the table.
            self._slots = mmap.mmap(shm.fd, PAGE, offset=SLOTS_OFF)
            _check_header(self._mm, name)
            self._slot = self._claim(shm.fd)
        finally:
            shm.close_fd()
        self.announced = 0

    def _claim(self, fd: int) -> int:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            me = owner_word(os.getpid())
            for i in range(MAX_READERS):
                owner = _Q.unpack_from(self._slots, i * SLOT_SIZE)[0]
                if owner == 0 or not owner_alive(owner):
                    _Q.pack_into(self._slots, i * SLOT_SIZE + 8, 0)   # conservative first
                    _Q.pack_into(self._slots, i * SLOT_SIZE, me)
                    return i * SLOT_SIZE
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)     # a syscall: a full barrier
        raise ReaderSlotsExhausted(f"all {MAX_READERS} reader slots of {self.name} are in use")

    @property
    def mm(self):
        return self._mm

    def root_word(self) -> int:
        return _Q.unpack_from(self._mm, OFF_ROOT)[0]

    def announce(self, gen: int) -> None:
        """Declare that roots older than `gen` are no longer used (QSBR)."""
        if gen > self.announced:
            _Q.pack_into(self._slots, self._slot + 8, gen)
            self.announced = gen

    def get(self, root: int, key: bytes) -> bytes | None:
        return lookup(self._mm, root, key)

    def status(self) -> dict:
        return read_status(self._mm)

    def close(self) -> None:
        if self._slots.closed:
            return
        _Q.pack_into(self._slots, self._slot, 0)
        self._slots.close()
        self._mm.close()


# ---------------------------------------------------------------------------
# the writer

class TableWriter:
    """The single writer. `apply(changes)` publishes one new generation."""

    def __init__(self, name: str, mm: mmap.mmap, fd: int, *, fresh: bool) -> None:
        self.name, self._mm, self._fd = name, mm, fd
        self.size = len(mm)
        self._free: list[list[int]] = [[] for _ in SIZE_CLASSES]
        self._pending: deque[tuple[int, list[int]]] = deque()
        self._fresh: set[int] = set()
        self._retired: list[int] = []
        self._liveness: dict[int, float] = {}     # pid -> when last seen alive
        if fresh:
            self._init_header()
        else:
            _check_header(mm, name)
            self._recover()
            self._repair_status()
        _Q.pack_into(mm, OFF_WRITER, os.getpid())

    @classmethod
    def create(cls, name: str | None = None, size: int = DEFAULT_SIZE) -> "TableWriter":
        if size < MIN_SIZE:
            raise ValueError(f"table size must be at least {MIN_SIZE} bytes")
        name = name or new_name()
        mm, fd = _open(name, True, size)
        return cls(name, mm, fd, fresh=True)

    @classmethod
    def attach(cls, name: str) -> "TableWriter":
        """Take over an existing table (a restarted watcher)."""
        mm, fd = _open(name, False, 0)
        return cls(name, mm, fd, fresh=False)

    # -- state ---------------------------------------------------------------
    def _init_header(self) -> None:
        mm = self._mm
        _QQ.pack_into(mm, 0, MAGIC, LAYOUT)
        _Q.pack_into(mm, 16, self.size)
        self._bump = ARENA_OFF
        root = self._alloc(NODE_BYTES)
        mm[root:root + NODE_BYTES] = bytes(NODE_BYTES)
        self._fresh.clear()
        _Q.pack_into(mm, OFF_ROOT, root_word(0, root))
        _Q.pack_into(mm, OFF_BUMP, self._bump)

    @property
    def generation(self) -> int:
        return split_root(_Q.unpack_from(self._mm, OFF_ROOT)[0])[0]

    @property
    def root(self) -> int:
        return split_root(_Q.unpack_from(self._mm, OFF_ROOT)[0])[1]

    def _recover(self) -> None:
        self._bump = _Q.unpack_from(self._mm, OFF_BUMP)[0]
        root = self.root
        live = {root}
        stack = [(root, 0)]
        while stack:
            node, level = stack.pop()
            if level < DEPTH:
                for child in _NODE.unpack_from(self._mm, node):
                    if child:
                        live.add(child)
                        stack.append((child, level + 1))
            else:
                count = _II.unpack_from(self._mm, node)[0]
                for i in range(count):
                    live.add(_ENTRY.unpack_from(self._mm, node + 8 + 16 * i)[2])
        dead = [off for off in self._blocks() if off not in live]
        if dead:
            self._pending.append((self.generation, dead))

    def _repair_status(self) -> None:
        """Close a status write the previous writer died inside (invariant 7).
        Its half-written JSON is dropped: the new writer's first reload
        writes a whole status."""
        seq = _Q.unpack_from(self._mm, STATUS_OFF)[0]
        if seq & 1:
            _Q.pack_into(self._mm, STATUS_OFF + 8, 0)
            _Q.pack_into(self._mm, STATUS_OFF, seq + 1)

    def _blocks(self) -> Iterator[int]:
        pos = ARENA_OFF
        while pos < self._bump:
            cls, magic = _HDR.unpack_from(self._mm, pos)
            if magic != BLOCK_MAGIC:
                raise TableError(f"corrupt arena at offset {pos} of {self.name}")
            yield pos + 8
            pos += SIZE_CLASSES[cls]

    # -- allocation ----------------------------------------------------------
    def _alloc(self, nbytes: int) -> int:
        cls = _class_for(nbytes + 8)
        free = self._free[cls]
        if free:
            off = free.pop()
        else:
            start = self._bump
            end = start + SIZE_CLASSES[cls]
            if end > self.size:
                raise TableFullError(f"routing table {self.name} is full ({self.size} bytes); "
                                     "start with a larger --table-size")
            self._bump = end
            _HDR.pack_into(self._mm, start, cls, BLOCK_MAGIC)
            off = start + 8
        self._fresh.add(off)
        return off

    def _release(self, off: int) -> None:
        """A block is no longer reachable from the root being built."""
        if off in self._fresh:
            self._fresh.discard(off)
            self._free[_HDR.unpack_from(self._mm, off - 8)[0]].append(off)
        else:
            self._retired.append(off)

    def _cow(self, off: int, nbytes: int) -> int:
        if off in self._fresh:
            return off
        new = self._alloc(nbytes)
        self._mm[new:new + nbytes] = self._mm[off:off + nbytes]
        self._release(off)
        return new

    # -- updates -------------------------------------------------------------
    def apply(self, changes: dict[str, bytes | None]) -> int:
        """Publish `changes` (value None = delete) as one new generation.

        Cost is O(len(changes)). On TableFullError nothing is published.

        Returns:
            the new generation number.
        """
        gen = self.generation + 1
        bump = self._bump
        self._fresh.clear()
        self._retired = []
        try:
            root = self._cow(self.root, NODE_BYTES)
            self._set_many(root, changes)
        except BaseException:
            self._rollback(bump)
            raise
        _Q.pack_into(self._mm, OFF_BUMP, self._bump)
        _Q.pack_into(self._mm, OFF_ROOT, root_word(gen, root))     # the publish
        if self._retired:
            self._pending.append((gen, self._retired))
        self._fresh.clear()
        self._retired = []
        self.reclaim()
        return gen

    def _rollback(self, bump: int) -> None:
        for off in self._fresh:
            if off < bump:
                self._free[_HDR.unpack_from(self._mm, off - 8)[0]].append(off)
        self._bump = bump
        self._fresh.clear()
        self._retired = []
        for lst in self._free:          # blocks past the old bump no longer exist
            lst[:] = [o for o in lst if o < bump]

    def _set_many(self, root: int, changes: dict[str, bytes | None]) -> None:
        """Apply changes grouped by leaf: each touched leaf is rewritten once."""
        by_leaf: dict[int, dict[bytes, tuple[int, bytes | None]]] = {}
        for key, value in changes.items():
            kb = key.encode()
            h = _hash(kb)
            by_leaf.setdefault(h & _PATH_MASK, {})[kb] = (h, value)
        for path, items in by_leaf.items():
            create = any(v is not None for _, v in items.values())
            slot = self._leaf_slot(root, path, create)
            if slot:
                self._rewrite_leaf(slot, items)

    def _leaf_slot(self, root: int, path: int, create: bool) -> int:
        """Address of the leaf pointer for `path`, copying interior nodes on the way
        (0 when the path does not exist and `create` is False)."""
        mm = self._mm
        parent = root
        for level in range(DEPTH - 1):
            slot = parent + ((path >> (level * FANOUT_BITS)) & (FANOUT - 1)) * 8
            child = _Q.unpack_from(mm, slot)[0]
            if not child:
                if not create:
                    return 0
                child = self._alloc(NODE_BYTES)
                mm[child:child + NODE_BYTES] = bytes(NODE_BYTES)
            else:
                child = self._cow(child, NODE_BYTES)
            _Q.pack_into(mm, slot, child)
            parent = child
        return parent + ((path >> ((DEPTH - 1) * FANOUT_BITS)) & (FANOUT - 1)) * 8

    def _rewrite_leaf(self, slot: int, items: dict[bytes, tuple[int, bytes | None]]) -> None:
        mm = self._mm
        leaf = _Q.unpack_from(mm, slot)[0]
        entries = []
        if leaf:
            for i in range(_II.unpack_from(mm, leaf)[0]):
                eh, _pad, roff = _ENTRY.unpack_from(mm, leaf + 8 + 16 * i)
                klen = _II.unpack_from(mm, roff)[0]
                if mm[roff + 8:roff + 8 + klen] in items:
                    self._release(roff)         # replaced or deleted
                else:
                    entries.append((eh, roff))
            self._release(leaf)
        for kb, (h, value) in items.items():
            if value is not None:
                entries.append((h, self._write_record(kb, value)))
        _Q.pack_into(mm, slot, self._write_leaf(entries) if entries else 0)

    def _write_leaf(self, entries: list[tuple[int, int]]) -> int:
        n = 8 + 16 * len(entries)
        off = self._alloc(n)
        buf = bytearray(n)
        _II.pack_into(buf, 0, len(entries), 0)
        for i, (h, roff) in enumerate(entries):
            _ENTRY.pack_into(buf, 8 + 16 * i, h, 0, roff)
        self._mm[off:off + n] = buf
        return off

    def _write_record(self, key: bytes, value: bytes) -> int:
        n = 8 + len(key) + len(value)
        off = self._alloc(n)
        self._mm[off:off + n] = _II.pack(len(key), len(value)) + key + value
        return off

    # -- reclamation (QSBR) --------------------------------------------------
    def min_reader_generation(self) -> int | None:
        """The oldest generation a live reader may use; None without readers."""
        slots = _SLOTS.unpack_from(self._mm, SLOTS_OFF)
        now = time.monotonic()
        low = None
        dead = []
        for i in range(0, 2 * MAX_READERS, 2):
            owner = slots[i]
            if not owner:
                continue
            if self._alive_cached(owner, now):
                gen = slots[i + 1]
                low = gen if low is None or gen < low else low
            else:
                dead.append((i // 2 * SLOT_SIZE, owner))
        if dead:
            self._release_slots(dead)
        return low

    def _release_slots(self, dead: list[tuple[int, int]]) -> None:  # (slot offset, owner)
        """Free the slots of dead readers (saves a /proc read per update each).
        Under the claim lock, so a reader claiming the slot meanwhile is never
        erased; skipped (retried next update) when a reader holds the lock."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        try:
            for off, owner in dead:
                if _Q.unpack_from(self._mm, SLOTS_OFF + off)[0] == owner:
                    _Q.pack_into(self._mm, SLOTS_OFF + off, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reader_slots(self) -> list[tuple[int, int]]:
        """(pid, announced generation) of every claimed reader slot."""
        slots = _SLOTS.unpack_from(self._mm, SLOTS_OFF)
        return [(slots[i] & PID_MASK, slots[i + 1])
                for i in range(0, 2 * MAX_READERS, 2) if slots[i]]

    def _alive_cached(self, owner: int, now: float) -> bool:
        # A reader seen alive is trusted for LIVENESS_TTL (a dead one only delays
        # reclamation), which keeps /proc reads off the per-update path. "Dead" is
        # never cached: the slot is released instead.
        seen = self._liveness.get(owner)
        if seen is not None and now - seen < LIVENESS_TTL:
            return True
        if not owner_alive(owner):
            self._liveness.pop(owner, None)
            return False
        if len(self._liveness) > 4 * MAX_READERS:
            self._liveness.clear()
        self._liveness[owner] = now
        return True

    def reclaim(self) -> int:
        """Free retired blocks no reader can reach; returns how many."""
        if not self._pending:
            return 0
        low = self.min_reader_generation()
        freed = 0
        while self._pending and (low is None or self._pending[0][0] <= low):
            _, offs = self._pending.popleft()
            for off in offs:
                self._free[_HDR.unpack_from(self._mm, off - 8)[0]].append(off)
            freed += len(offs)
        return freed

    # -- status and introspection --------------------------------------------
    def set_status(self, status: dict) -> None:
        data = orjson.dumps(status, default=str)
        if len(data) > STATUS_MAX:      # never store truncated (invalid) JSON
            data = orjson.dumps({"generation": status.get("generation"),
                                 "error": {"message": "status too large to store; see the "
                                           "watcher log", "errors": []}})
        seq = _Q.unpack_from(self._mm, STATUS_OFF)[0]
        _Q.pack_into(self._mm, STATUS_OFF, seq + 1)            # odd: writing
        _Q.pack_into(self._mm, STATUS_OFF + 8, len(data))
        self._mm[STATUS_OFF + 16:STATUS_OFF + 16 + len(data)] = data
        _Q.pack_into(self._mm, STATUS_OFF, seq + 2)            # even: stable

    def status(self) -> dict:
        return read_status(self._mm)

    def read_all(self) -> dict[str, bytes]:
        """The whole current key space (a restarted writer's previous state)."""
        return {k.decode(): v for k, v in scan(self._mm, self.root)}

    def get(self, key: str) -> bytes | None:
        return lookup(self._mm, self.root, key.encode())

    def stats(self) -> dict[str, int]:
        free_bytes = sum(len(lst) * SIZE_CLASSES[c] for c, lst in enumerate(self._free))
        pending = sum(len(offs) for _, offs in self._pending)
        return {"size": self.size, "used": self._bump - ARENA_OFF - free_bytes,
                "arena_high_water": self._bump - ARENA_OFF, "free_bytes": free_bytes,
                "pending_blocks": pending, "generation": self.generation}

    def close(self) -> None:
        if not self._mm.closed:
            self._mm.close()
            os.close(self._fd)


def unlink(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass
