"""A standby (shards/standby.py): a real supervisor process started with
SHOAL_STANDBY loads, reports itself ready (GO blocked, seen in /proc), opens
nothing and starts no worker until GO; on GO it serves as any supervisor."""

from __future__ import annotations

import os
import socket

from shoal.shards import standby
from tests.helpers.shards_proc import Shards, alive, ask
from tests.helpers.wait import wait_for


def test_standby_waits_for_go_then_serves(tmp_path, monkeypatch):
    monkeypatch.setenv(standby.ENV, "1")
    s = Shards(workers=2, tmp=str(tmp_path)).start(wait_ready=False)
    try:
        wait_for(lambda: standby.ready(s.pid), timeout=30, what=lambda: f"standby ready\n{s.log()}")
        # Loaded and waiting: no worker, no listener, no pidfile.
        assert not s.worker_pids() and not os.path.exists(s.pidfile)
        with socket.socket() as c:
            assert c.connect_ex(("127.0.0.1", s.echo)) != 0
        os.kill(s.pid, standby.GO)
        s.wait_workers(2)
        assert int(ask(s.echo).split()[0]) in s.worker_pids()
        assert "standby activated" in s.log() and alive(s.pid)
        # GO is unblocked again: the supervisor and its workers do not inherit it blocked.
        assert not standby.ready(s.pid)
        assert not any(standby.ready(w) for w in s.worker_pids())
    finally:
        s.kill_all()


def test_ready_is_false_for_a_process_that_does_not_wait():
    assert not standby.ready(os.getpid())
    assert not standby.ready(2 ** 22 + 7)   # no such process
