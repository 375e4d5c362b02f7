"""Idle workers let the routing table reclaim memory (RoutingView.quiesce on the tick)."""

from __future__ import annotations

import glob
import mmap
import os

import posix_ipc
import pytest

from tests.helpers.shards_proc import Shards
from tests.helpers.wait import wait_for

pytest.importorskip("shoal.routing.runtime")
from shoal.routing.liveness import PID_MASK  # noqa: E402
from shoal.routing.shm import _SLOTS, MAX_READERS, OFF_ROOT, PAGE, SLOTS_OFF, _Q, split_root  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"


def table_state(shm_name: str) -> tuple[int, dict[int, int]]:
    """(generation, reader pid -> announced generation), read without claiming a slot."""
    shm = posix_ipc.SharedMemory(shm_name)
    try:
        mm = mmap.mmap(shm.fd, SLOTS_OFF + PAGE, prot=mmap.PROT_READ)
    finally:
        shm.close_fd()
    try:
        gen = split_root(_Q.unpack_from(mm, OFF_ROOT)[0])[0]
        slots = _SLOTS.unpack_from(mm, SLOTS_OFF)
        return gen, {slots[i] & PID_MASK: slots[i + 1]
                     for i in range(0, 2 * MAX_READERS, 2) if slots[i]}
    finally:
        mm.close()


def test_idle_workers_announce_the_current_generation(tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "ns.yaml").write_text(NAMESPACE.format(name="alpha"))
    s = Shards(workers=2, extra=["--config", str(cfg)], tmp=str(tmp_path))
    try:
        s.start()
        (segment,) = [p for p in glob.glob(f"/dev/shm/shoal-rt-{s.pid}-*")]
        name = "/" + os.path.basename(segment)
        start_gen, _ = table_state(name)
        for i in range(3):                       # new generations; nobody asks the workers
            (cfg / f"ns{i}.yaml").write_text(NAMESPACE.format(name=f"n{i}"))
            wait_for(lambda: table_state(name)[0] > start_gen + i, 10, f"generation {i}")

        def workers_caught_up() -> bool:
            gen, slots = table_state(name)
            workers = {pid: g for pid, g in slots.items() if pid in s.worker_pids()}
            return len(workers) == 2 and all(g == gen for g in workers.values())
        wait_for(workers_caught_up, 10, "idle workers to announce the current generation")
    finally:
        s.kill_all()
