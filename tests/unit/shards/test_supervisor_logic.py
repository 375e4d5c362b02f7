"""Supervisor decisions that need no fork: signals, scaling bounds, statuses."""

import os
import signal

from shoal.core.drain import DrainMode
from shoal.shards import exitcodes
from shoal.shards.app import App
from shoal.shards.options import SupervisorOptions
from shoal.shards.signals import HANDLED, SignalQueue
from shoal.shards.supervisor import Supervisor, describe_status


def supervisor(workers=1):
    return Supervisor(App(), SupervisorOptions(workers=workers))


def test_signal_queue_keeps_order_and_wakes_the_fd():
    q = SignalQueue()
    q.put(signal.SIGHUP)
    q.put(signal.SIGTTIN)
    assert os.read(q.rfd, 10)   # something to wake select()
    assert q.drain() == [signal.SIGHUP, signal.SIGTTIN]
    assert q.drain() == []
    q.close()


def test_every_handled_signal_has_a_handler():
    s = supervisor()
    for name in HANDLED.values():
        assert callable(getattr(s, f"handle_{name}"))
    s.signals.close()


def test_ttin_ttou_bounds():
    s = supervisor(workers=1)
    s.handle_ttou()
    assert s.num_workers == 1          # never below one
    s.handle_ttin()
    s.handle_ttin()
    assert s.num_workers == 3
    s.handle_ttou()
    assert s.num_workers == 2
    s.signals.close()


def test_hup_bumps_generation_unless_stopping():
    s = supervisor()
    s.handle_hup()
    assert s.generation == 2
    s.begin_stop(DrainMode.GRACEFUL, "test")
    s.handle_hup()
    assert s.generation == 2
    s.signals.close()


def test_stop_escalates_and_keeps_the_first_exit_code():
    s = supervisor()
    s.begin_stop(DrainMode.GRACEFUL, "boot", exitcodes.BOOT_ERROR)
    s.begin_stop(DrainMode.GRACEFUL, "again")
    assert s.stopping is DrainMode.GRACEFUL
    s.begin_stop(DrainMode.IMMEDIATE, "quit")
    assert s.stopping is DrainMode.IMMEDIATE and s.exit_code == exitcodes.BOOT_ERROR
    s.signals.close()


def test_describe_status():
    assert describe_status(3 << 8) == "exit code 3"
    assert describe_status(signal.SIGKILL) == "killed by SIGKILL"


def _with_worker(s, *, stamped_at):
    """A supervisor with one (pretend) worker whose heartbeat is `stamped_at`."""
    import socket
    from shoal.shards.heartbeat import HeartbeatTable
    from shoal.shards.supervisor import WorkerProc
    s.heartbeats = HeartbeatTable.create(slots=4)
    hb = s.heartbeats.allocate()
    s.heartbeats.assign(hb, 4242, stamped_at)
    a, b = socket.socketpair()
    b.close()
    s.workers[4242] = WorkerProc(pid=4242, slot=0, generation=1, hb=hb, ctrl=a, started=stamped_at)
    return s.workers[4242]


def _cleanup(s):
    for w in s.workers.values():
        w.ctrl.close()
    s.heartbeats.unlink()
    s.signals.close()


def test_idle_supervisor_sleeps_until_a_heartbeat_could_go_stale():
    import time
    from shoal.shards.supervisor import LOOP_TICK
    s = supervisor()
    now = time.monotonic()
    _with_worker(s, stamped_at=now)
    # Nothing polled: the wait ends when the stamp could be worker_timeout old.
    timeout = s._timeout()
    assert LOOP_TICK < timeout <= s.options.worker_timeout
    assert timeout > s.options.worker_timeout - 1.0
    _cleanup(s)


def test_supervisor_wakes_for_each_pending_deadline():
    import time
    from shoal.shards.supervisor import ABORT_GRACE
    s = supervisor()
    now = time.monotonic()
    w = _with_worker(s, stamped_at=now)
    s.not_before[0] = now + 0.7                  # a backoff restart
    assert 0.6 < s._timeout() <= 0.7
    s.not_before[0] = now - 1.0                  # past: it ran on the pass that found it due
    w.abort_at = now - ABORT_GRACE + 0.3         # a hung worker's SIGKILL is due in 0.3 s
    assert 0.2 < s._timeout() <= 0.3
    w.abort_at = None
    s.stopping = DrainMode.GRACEFUL              # as begin_stop leaves it (no signal sent)
    s.stop_deadline = time.monotonic() + 0.4
    assert 0.3 < s._timeout() <= 0.4
    _cleanup(s)
