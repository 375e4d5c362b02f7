"""The supervisor with real processes: spread, restarts, hangs, signals, metrics.

Each test starts `python -m tests.helpers.shards_echo` (the echo app) on free ports and ends
the process tree it started by its group id.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest

from shoal.shards import exitcodes
from shoal.shards.supervisor import LOOP_TICK
from tests.helpers.shards_proc import (ClientLoop, alive, ask, http, metrics_dirs,
                                       shm_segments, worker_of)
from tests.helpers.wait import poll, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def assert_clean(pid: int) -> None:
    assert shm_segments(pid) == [], "heartbeat shared memory left in /dev/shm"
    assert metrics_dirs(pid) == [], "metrics dir left behind"


def test_connections_spread_over_all_workers(shards):
    s = shards(workers=2)
    pids = s.worker_pids()
    seen = {}
    for _ in range(60):
        pid, wid, _ = worker_of(s.echo)
        seen[pid] = wid
    assert set(seen) == pids
    assert sorted(seen.values()) == [0, 1]


def test_metrics_are_summed_over_workers(shards):
    s = shards(workers=2)

    def scrape() -> str:
        status, body = http(s.metrics, "/metrics")
        assert status == 200
        return body.decode()

    def total(name: str, text: str, **labels) -> float:
        out = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                out += float(line.rsplit(" ", 1)[1])
        return out
    # A worker records a connection's bytes when it sees the client's close:
    # the start-up probes (wait_workers) must all be recorded before the
    # baseline, and each of the 40 below before the final scrape.
    closed = lambda t: total("istio_tcp_connections_closed_total", t)  # noqa: E731
    opened_n = lambda t: total("istio_tcp_connections_opened_total", t)  # noqa: E731

    def settled():
        t = scrape()
        return t if closed(t) == opened_n(t) else None
    before = wait_for(settled, 10, "the start-up probes to be recorded")
    served = {worker_of(s.echo)[0] for _ in range(40)}
    assert len(served) == 2
    target = closed(before) + 40

    def all_closed():
        t = scrape()
        return t if closed(t) >= target else None
    text = wait_for(all_closed, 20, "the workers to record 40 closed connections")
    # One series per label set, summed over both workers' files.
    opened = [l for l in text.splitlines() if l.startswith("istio_tcp_connections_opened_total{")]
    assert len(opened) == 1 and 'reporter="destination"' in opened[0]
    assert 'source_workload="unknown"' in opened[0]
    delta = lambda name, **kw: total(name, text, **kw) - total(name, before, **kw)
    assert delta("istio_tcp_connections_opened_total") == 40
    assert delta("istio_tcp_received_bytes_total") == 40 * len(b"pid\n")
    per_worker = [delta("shoal_worker_connections_total", worker=w, listener="echo") for w in "01"]
    assert sum(per_worker) == 40 and all(n > 0 for n in per_worker)
    assert 'istio_build{component="shards-echo"' in text
    assert http(s.metrics, "/stats/prometheus")[0] == 200


def test_admin_logging_changes_every_worker(shards):
    s = shards(workers=2)
    status, _ = http(s.admin, "/logging?level=debug")
    assert status == 405   # changes need POST, as in Envoy/ztunnel
    status, body = http(s.admin, "/logging?level=debug", method="POST")
    assert status == 200 and b'"debug"' in body

    def all_debug():
        levels = {}
        for _ in range(30):
            b = http(s.admin, "/logging")[1].decode()
            pid = int(re.search(r'"pid": (\d+)', b).group(1))
            levels[pid] = '"debug"' in b
        return set(levels) == s.worker_pids() and all(levels.values())
    wait_for(all_debug, 5, "every worker at level debug")
    status, body = http(s.admin, "/config_dump")
    assert status == 200 and b'"routing"' in body and b'"echo"' in body
    assert http(s.readiness, "/healthz/ready") == (200, b"ready\n")
    status, body = http(s.admin, "/")
    assert b"/config_dump" in body and b"/quitquitquit" in body


def test_quitquitquit_stops_cleanly(shards):
    s = shards(workers=1)
    assert http(s.admin, "/quitquitquit", method="POST")[0] == 200
    assert s.proc.wait(15) == exitcodes.OK
    assert_clean(s.pid)


def test_kill9_worker_is_replaced_within_1s_and_others_unaffected(shards):
    s = shards(workers=2)
    # A long-lived connection on one worker, then kill the other one.
    keep = socket.create_connection(("127.0.0.1", s.echo), timeout=5)
    keep.sendall(b"pid\n")
    kept_pid = int(keep.recv(100).split()[0])
    victim = (s.worker_pids() - {kept_pid}).pop()
    with ClientLoop(s.echo) as loop:
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(s.worker_pids() - {kept_pid, victim}) == 1, 1.0,
                 "a replacement worker within 1 s")
        replaced_after = time.monotonic() - t0
        new = (s.worker_pids() - {kept_pid}).pop()
        wait_for(lambda: new in s.seen_pids(10), 5, "the replacement to serve")
        stats = loop.stop()
    assert replaced_after < 1.0
    # Its slot's listener stayed open in the supervisor: nothing refused.
    assert stats.refused == 0, stats
    keep.sendall(b"still-here\n")
    assert keep.makefile("rb").readline() == b"still-here\n"
    keep.close()
    assert alive(kept_pid)


def test_hung_worker_is_killed_by_heartbeat_and_replaced(shards):
    s = shards(workers=2, extra=["--worker-timeout", "1.5"])
    conn = socket.create_connection(("127.0.0.1", s.echo), timeout=5)
    conn.sendall(b"pid\n")
    hung = int(conn.recv(100).split()[0])
    conn.sendall(b"hang\n")
    t0 = time.monotonic()
    wait_for(lambda: not alive(hung), 8, "the hung worker to be killed")
    assert time.monotonic() - t0 < 1.5 + 0.2 + 1.0 + 2.0   # timeout + tick + ABRT grace + slack
    s.wait_workers(2)
    assert hung not in s.worker_pids()
    assert "worker hung" in s.log()
    conn.close()


def test_repeated_boot_failure_halts_with_boot_error(shards):
    s = shards(workers=2, extra=["--fail-boot"], wait_ready=False)
    code = s.proc.wait(20)
    assert code == exitcodes.BOOT_ERROR == 3
    log = s.log()
    assert "refusing to start" in log and "halting with exit code 3" in log
    assert_clean(s.pid)


def test_sighup_rolls_workers_without_refused_or_reset(shards):
    s = shards(workers=2)
    old = s.worker_pids()
    with ClientLoop(s.echo) as loop:
        s.signal(signal.SIGHUP)
        wait_for(lambda: not (s.worker_pids() & old) and len(s.worker_pids()) == 2, 15,
                 "the old workers to retire")
        ok_before = loop.stats.ok
        wait_for(lambda: loop.stats.ok > ok_before + 50, 10, "traffic after the roll")
        stats = loop.stop()
    assert stats.refused == 0 and stats.reset == 0 and stats.other == [], stats
    assert {worker_of(s.echo)[2] for _ in range(10)} == {2}


def test_sighup_keeps_old_workers_when_new_ones_cannot_boot(shards):
    s = shards(workers=2, extra=["--fail-boot-on-reload"])
    old = s.worker_pids()
    s.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in s.log(), 10, "the reload to be abandoned")
    assert s.proc.poll() is None
    wait_for(lambda: s.worker_pids() == old, 5, "only the old workers")
    assert {worker_of(s.echo)[2] for _ in range(10)} == {1}
    assert s.stop() == exitcodes.OK


def test_sigquit_stops_fast_closing_open_connections(shards):
    s = shards(workers=1, extra=["--drain-timeout", "30"])
    conn = socket.create_connection(("127.0.0.1", s.echo), timeout=10)
    conn.sendall(b"sleep 30\n")
    replies = conn.makefile("rb")
    assert replies.readline() == b"sleeping\n"      # the worker holds the request
    t0 = time.monotonic()
    s.signal(signal.SIGQUIT)
    assert s.proc.wait(10) == exitcodes.OK
    assert time.monotonic() - t0 < 3.0
    assert replies.read() == b""                    # closed, never answered
    conn.close()
    assert_clean(s.pid)


def test_sigterm_drains_open_connections_and_exits_0(shards):
    s = shards(workers=2, extra=["--drain-timeout", "5"])
    long = socket.create_connection(("127.0.0.1", s.echo), timeout=10)
    long.sendall(b"sleep 1.0\n")
    replies = long.makefile("rb")
    assert replies.readline() == b"sleeping\n"     # the worker holds the request
    loop = ClientLoop(s.echo, stop_on_refused=True).__enter__()
    s.signal(signal.SIGTERM)
    # The in-flight request finishes during the drain.
    assert replies.readline() == b"slept\n"
    long.close()
    assert s.proc.wait(15) == exitcodes.OK
    stats = loop.stop()
    # Refusals are the point of "stop accepting"; resets would be lost work.
    assert stats.reset == 0, stats
    assert_clean(s.pid)


def test_sigusr2_upgrade_without_refused_or_reset(shards):
    s = shards(workers=2)
    old_workers = s.worker_pids()
    with ClientLoop(s.echo) as loop:
        s.signal(signal.SIGUSR2)
        assert s.proc.wait(20) == exitcodes.OK   # the old supervisor drained and left
        new_pid = int(open(s.pidfile).read())
        assert new_pid != s.pid and alive(new_pid)
        ok_before = loop.stats.ok
        wait_for(lambda: loop.stats.ok > ok_before + 50, 10, "traffic after the upgrade")
        stats = loop.stop()
    assert stats.refused == 0 and stats.reset == 0 and stats.other == [], stats
    new_workers = s.wait_workers(2, supervisor=new_pid)
    assert not (new_workers & old_workers)
    status, body = http(s.admin, "/config_dump")
    assert f'"supervisor_pid": {new_pid}'.encode() in body
    # The metrics dir passed to the new supervisor (counters go on); the rest is gone.
    assert shm_segments(s.pid) == [] and len(metrics_dirs(s.pid)) == 1
    os.kill(new_pid, signal.SIGTERM)
    wait_for(lambda: not alive(new_pid), 15, "the new supervisor to stop")
    assert_clean(s.pid)
    assert_clean(new_pid)


def test_ttin_ttou_change_the_worker_count(shards):
    s = shards(workers=1)
    s.signal(signal.SIGTTIN)
    s.wait_workers(2)
    s.signal(signal.SIGTTOU)
    wait_for(lambda: len(s.worker_pids()) == 1, 10, "one worker after TTOU")
    s.signal(signal.SIGTTOU)   # never below one
    wait_for(lambda: s.log().count("scaling down") == 2, 10, "the second SIGTTOU handled")
    # A wrong scale-down would be logged in the same loop pass; a few passes
    # (LOOP_TICK each) bound how long the absence must last.
    assert not poll(lambda: s.log().count("retiring worker") > 1, 3 * LOOP_TICK), \
        "the second SIGTTOU retired the last worker"
    assert len(s.worker_pids()) == 1
    assert ask(s.echo, b"x") == b"x\n"
    assert s.stop() == exitcodes.OK
    assert_clean(s.pid)


def test_ttou_under_load_loses_no_queued_connection(shards):
    # The closing slot's listener refuses new handshakes first (clients retry
    # on a live one), its worker serves what is queued, and a handshake still
    # under way at the close moves to a live listener (net.ipv4.tcp_migrate_req,
    # set by the supervisor) instead of being reset (shards/closing.py).
    s = shards(workers=2)
    with ClientLoop(s.echo, concurrency=16) as loop:
        for _ in range(3):
            s.signal(signal.SIGTTOU)
            wait_for(lambda: len(s.worker_pids()) == 1, 10, "one worker after TTOU")
            loop.ok_since(50)
            s.signal(signal.SIGTTIN)
            s.wait_workers(2)
            loop.ok_since(50)
        stats = loop.stop()
    assert stats.refused == 0 and stats.reset == 0 and stats.other == [], stats
    with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
        assert f.read().strip() == "1"
