"""ztunnel_events' cut of a worker's trace into the loop's and our segments."""

import pytest

from shoal.benchmarks.load.ztunnel_events import segments


def trace(tid, *steps):
    return [(tid, t, name) for t, name in steps]


def test_one_wakeup_with_two_reads_is_cut_into_every_segment():
    events = trace(7,
                   (0.0, "sys_exit_epoll_pwait"),
                   (3.0, "sys_enter_read"), (5.0, "sys_exit_read"),
                   (8.0, "plain"),
                   (14.0, "sys_enter_write"), (23.0, "sys_exit_write"),
                   (26.0, "plain__return"),
                   (28.0, "sys_enter_read"), (29.0, "sys_exit_read"),
                   (31.0, "tls"),
                   (40.0, "sys_enter_write"), (48.0, "sys_exit_write"),
                   (49.0, "sys_enter_write"), (55.0, "sys_exit_write"),
                   (57.0, "tls__return"),
                   (59.0, "sys_enter_epoll_pwait"))
    s = segments(events)
    assert s["first A loop in"] == [3.0] and s["next A loop in"] == [2.0]
    assert s["B read"] == [2.0, 1.0]
    assert s["first C loop on"] == [3.0] and s["next C loop on"] == [2.0]
    assert s["D plain: work before the write"] == [6.0]
    assert s["D tls: work before the write"] == [9.0]       # to the first of its writes
    assert s["E write"] == [9.0, 8.0, 6.0]
    assert s["F after the last write"] == [3.0, 2.0]
    assert s["G loop out"] == [2.0]
    assert s["plain: whole buffer_updated"] == [18.0] and s["tls: whole buffer_updated"] == [26.0]


def test_threads_are_cut_apart_and_a_wakeup_without_a_read_is_not_loop_out():
    events = (trace(1, (0.0, "sys_exit_epoll_pwait"), (1.0, "sys_enter_epoll_pwait"))
              + trace(2, (0.5, "sys_exit_epoll_pwait"), (2.5, "sys_enter_read")))
    s = segments(sorted(events, key=lambda e: e[1]))
    assert "G loop out" not in s
    assert s["first A loop in"] == pytest.approx([2.0])
