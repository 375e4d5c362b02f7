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
