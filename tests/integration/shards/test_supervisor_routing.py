"""The supervisor with the real routing table and config watcher (--config)."""

from __future__ import annotations

import glob
import json
import os
import signal

import pytest

from shoal.shards import exitcodes
from tests.helpers.shards_proc import Shards, http
from tests.helpers.wait import wait_for

pytest.importorskip("shoal.routing.runtime")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NAMESPACE = """apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels:
    istio.io/dataplane-mode: ambient
"""


def dump(s: Shards) -> dict:
    status, body = http(s.admin, "/config_dump")
    assert status == 200, body
    return json.loads(body)


def ready_status(s: Shards) -> dict | None:
    """The routing dump once the watcher's status names it, else None."""
    routing = dump(s)["routing"]
    return routing if routing["status"].get("writer_pid") else None


def test_watcher_restart_and_config_reaches_every_worker(tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "ns.yaml").write_text(NAMESPACE.format(name="alpha"))
    s = Shards(workers=2, extra=["--config", str(cfg)], tmp=str(tmp_path))
    try:
        s.start()
        # start() waits for the workers only: the watcher publishes the first
        # table on its own clock (behind a loaded core, after the workers).
        wait_for(lambda: http(s.readiness, "/healthz/ready") == (200, b"ready\n"), 10,
                 "readiness (the watcher's first table)")
        # The watcher writes its status (with its pid) just after publishing
        # the table it describes: a dump in between shows generation 1 without it.
        first = wait_for(lambda: ready_status(s), 10, "the watcher's status after its first table")
        assert first["generation"] >= 1
        watcher = first["status"]["writer_pid"]
        assert watcher in s.worker_pids()   # a child of the supervisor

        # The watcher dies: workers keep routing, the supervisor restarts it.
        os.kill(watcher, signal.SIGKILL)
        assert dump(s)["routing"]["generation"] >= 1
        wait_for(lambda: len(s.worker_pids() - {watcher}) == 3, 5, "a new watcher")

        # A change in the directory reaches every worker.
        (cfg / "ns2.yaml").write_text(NAMESPACE.format(name="beta"))

        def everyone_sees_beta():
            seen = {}
            for _ in range(20):
                d = dump(s)
                names = {n.get("name") for n in d["routing"]["namespaces"]}
                seen[d["worker"]["pid"]] = "beta" in names
            return len(seen) == 2 and all(seen.values())
        wait_for(everyone_sees_beta, 10, "both workers to see namespace beta")
        assert s.stop() == exitcodes.OK
        assert glob.glob(f"/dev/shm/shoal-*-{s.pid}-*") == []
    finally:
        s.kill_all()


def test_not_ready_until_a_good_config_then_ready(tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "bad.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: [not, a, map]\n")
    s = Shards(workers=1, extra=["--config", str(cfg)], tmp=str(tmp_path))
    try:
        s.start()
        status, body = http(s.readiness, "/healthz/ready")
        assert status == 503 and b"generation 0" in body
        (cfg / "bad.yaml").write_text(NAMESPACE.format(name="alpha"))
        wait_for(lambda: http(s.readiness, "/healthz/ready")[0] == 200, 10, "readiness")
        assert s.stop() == exitcodes.OK
    finally:
        s.kill_all()
