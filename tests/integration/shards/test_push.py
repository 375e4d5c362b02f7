"""Pushed, not polled: a published routing generation and a /logging change
reach every worker on its control socket, long before its safety tick.

The workers here run with a long --worker-timeout, so their tick (heartbeat
pace, the safety poll: worker_timeout / HEARTBEATS_PER_TIMEOUT) is a minute
away; each change must be seen within PUSH_BOUND. Without the push (the
watcher's pipe, the supervisor's words, the worker's reader) these fail.
"""

from __future__ import annotations

import glob
import os
import re

import pytest

from shoal.shards.worker import HEARTBEATS_PER_TIMEOUT
from tests.helpers.shards_proc import Shards, http
from tests.helpers.wait import wait_for
from tests.integration.shards.test_worker_quiesce import NAMESPACE, table_state

pytest.importorskip("shoal.routing.runtime")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WORKER_TIMEOUT = 120.0
SAFETY_TICK = WORKER_TIMEOUT / HEARTBEATS_PER_TIMEOUT
# A push takes a millisecond; this leaves room for a loaded CI machine and
# is still an order below the safety tick.
PUSH_BOUND = 5.0
assert PUSH_BOUND * 10 <= SAFETY_TICK


@pytest.fixture
def node(tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "ns.yaml").write_text(NAMESPACE.format(name="alpha"))
    s = Shards(workers=2, tmp=str(tmp_path),
               extra=["--config", str(cfg), "--worker-timeout", str(WORKER_TIMEOUT)])
    try:
        s.start()
        yield s, cfg
    finally:
        s.kill_all()


def test_each_published_generation_reaches_every_worker_before_its_tick(node):
    s, cfg = node
    (segment,) = glob.glob(f"/dev/shm/shoal-rt-{s.pid}-*")
    name = "/" + os.path.basename(segment)

    def workers_at(gen: int) -> bool:
        _, slots = table_state(name)
        workers = {pid: g for pid, g in slots.items() if pid in s.worker_pids()}
        return len(workers) == 2 and all(g >= gen for g in workers.values())

    wait_for(lambda: table_state(name)[0] >= 1, 10, "the watcher's first table")
    for i in range(3):
        gen = table_state(name)[0]
        (cfg / f"ns{i}.yaml").write_text(NAMESPACE.format(name=f"n{i}"))
        wait_for(lambda: table_state(name)[0] > gen, 10, f"generation after {gen}")
        new = table_state(name)[0]
        # A worker announces a generation when its routing hooks run
        # (RoutingView.quiesce): on the push, the tick being a minute away.
        wait_for(lambda: workers_at(new), PUSH_BOUND,
                 f"both workers at generation {new} within {PUSH_BOUND} s (tick: {SAFETY_TICK} s)")


def test_a_logging_change_reaches_the_other_workers_before_their_tick(node):
    s, _ = node
    status, _ = http(s.admin, "/logging?level=debug", method="POST")
    assert status == 200

    def all_debug() -> bool:
        levels = {}
        for _ in range(30):
            body = http(s.admin, "/logging")[1].decode()
            levels[int(re.search(r'"pid": (\d+)', body).group(1))] = '"debug"' in body
        # worker_pids() holds the config watcher too: it serves no /logging.
        return len(levels) == 2 and all(levels.values())
    wait_for(all_debug, PUSH_BOUND, f"every worker at debug within {PUSH_BOUND} s")
