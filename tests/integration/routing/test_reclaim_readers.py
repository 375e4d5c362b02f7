"""QSBR reclamation with idle and dead readers: churn never fills the table."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from shoal.routing.liveness import owner_word
from shoal.routing.runtime import attach_view
from shoal.routing.shm import SLOTS_OFF, TableWriter, _Q, unlink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[3]
TABLE_SIZE = 1 << 20            # the smallest table: fills after a few dozen updates without reuse
KEYS_PER_UPDATE, VALUE_BYTES = 10, 2000
UPDATES = 200                   # ~4 MB written: four arenas' worth
IDLE_TICK_S = 0.01              # the idle reader's quiesce period (a worker's tick)
CATCH_UP_S = 5.0


def spawn_reader(name: str, tick: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "tests.helpers.routing_procs", "idle-reader",
                          name, str(tick)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert orjson.loads(p.stdout.readline())["ready"]
    return p


def test_churn_keeps_reclaiming_with_idle_and_killed_readers():
    name = f"/shoal-rt-{os.getpid()}-reclaim{os.urandom(3).hex()}"
    w = TableWriter.create(name, TABLE_SIZE)
    procs = []
    try:
        w.apply({f"k/{i}": b"x" * VALUE_BYTES for i in range(KEYS_PER_UPDATE)})
        idle = spawn_reader(name, IDLE_TICK_S)
        killed = spawn_reader(name, 0)          # attached at an old generation, then killed
        procs += [idle, killed]
        killed.send_signal(signal.SIGKILL)      # not reaped yet: a zombie, as before waitpid
        for n in range(UPDATES):
            value = bytes([n % 256]) * VALUE_BYTES
            gen = w.apply({f"k/{i}": value for i in range(KEYS_PER_UPDATE)})
            deadline = time.monotonic() + CATCH_UP_S
            while (w.min_reader_generation() or 0) < gen:   # the idle reader announces gen
                assert time.monotonic() < deadline, f"slots pin the generation: {w.reader_slots()}"
                time.sleep(IDLE_TICK_S / 2)
        stats = w.stats()
        assert stats["generation"] == UPDATES + 1
        assert stats["arena_high_water"] < TABLE_SIZE // 2     # blocks were reused
        assert killed.pid not in {pid for pid, _ in w.reader_slots()}   # its slot was released
        assert idle.pid in {pid for pid, _ in w.reader_slots()}
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
                p.wait(5)
        w.close()
        unlink(name)


def test_slot_of_a_reused_pid_does_not_pin():
    """A killed reader's pid now belongs to another process: its start time differs."""
    name = f"/shoal-rt-{os.getpid()}-reuse{os.urandom(3).hex()}"
    w = TableWriter.create(name, TABLE_SIZE)
    view = attach_view(name)
    try:
        w.apply({"k": b"v"})
        view.quiesce()
        (slot,) = [i for i in range(0, 4096, 16) if _Q.unpack_from(w._mm, SLOTS_OFF + i)[0]]
        me = owner_word(os.getpid())
        assert me >> 32, "no start-time tag"
        assert w.min_reader_generation() == 1
        # What a dead reader with our (recycled) pid would have left: another start time.
        _Q.pack_into(w._mm, SLOTS_OFF + slot, me ^ (1 << 32))
        w.apply({"k": b"w"})
        assert w.min_reader_generation() is None          # ignored, and released
        assert _Q.unpack_from(w._mm, SLOTS_OFF + slot)[0] == 0
    finally:
        view.close()
        w.close()
        unlink(name)
