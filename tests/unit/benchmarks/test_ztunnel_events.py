"""ztunnel_events' cut of a worker's trace into the loop's and our segments."""

import pytest

from shoal.benchmarks.load.ztunnel_events import Span, busy_spans, segments, span_summary


def trace(tid, *steps):
    """A thread's events; a step is (time, event) or a list of them (call())."""
    flat = [e for step in steps for e in (step if isinstance(step, list) else [step])]
    return [(tid, t, name) for t, name in flat]


def call(name, enter, leave):
    """A system call's two tracepoints."""
    return [(enter, f"sys_enter_{name}"), (leave, f"sys_exit_{name}")]


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
    assert s["first D plain: work before the write"] == [6.0]
    assert s["next D tls: work before the write"] == [9.0]  # to the first of its writes
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


def test_a_stunnel_thread_span_counts_its_quick_poll_as_a_system_call():
    # poll blocks, then a TLS record's header and body, a poll for POLLOUT
    # that returns at once, the write, and the next blocking poll.
    events = trace(3,
                   call("poll", 0.0, 100.0),
                   call("read", 102.0, 103.0),
                   call("read", 104.0, 106.0),
                   call("poll", 110.0, 111.0),
                   call("write", 112.0, 120.0),
                   call("poll", 122.0, 500.0))
    [span] = busy_spans(events)
    assert span.syscalls == pytest.approx(1.0 + 2.0 + 1.0 + 8.0)
    assert span.user == pytest.approx(22.0 - 12.0)
    assert (span.off, span.writes) == (0.0, 1)


def test_a_worker_wakeup_with_two_events_is_one_span_of_two_writes():
    events = trace(9,
                   call("epoll_pwait", 0.0, 50.0),
                   call("read", 53.0, 55.0),
                   call("write", 60.0, 69.0),
                   call("read", 72.0, 73.0),
                   call("write", 80.0, 88.0),
                   call("epoll_pwait", 90.0, 300.0),
                   # a wakeup that writes nothing (a timer) is no span
                   call("epoll_pwait", 301.0, 900.0))
    spans = busy_spans(events)
    assert spans == [Span(pytest.approx(40.0 - 20.0), pytest.approx(20.0), 0.0, 2)]
    s = span_summary(spans + [Span(10.0, 12.0, 0.0, 1)])
    assert s["writes"] == 3 and s["spans"] == 2
    assert s["user_us_per_write"] == pytest.approx(30.0 / 3)
    assert s["syscall_us_per_write"] == pytest.approx(32.0 / 3)
    assert s["one_write_spans"] == 1 and s["one_write_user_p50_us"] == 10.0


def test_spans_begin_only_after_a_blocking_wait():
    # The trace starts inside a span: its start is unknown, so no span.
    events = trace(4,
                   call("write", 0.0, 8.0),
                   call("epoll_pwait", 10.0, 40.0),
                   call("epoll_pwait", 41.0, 43.0),
                   call("write", 45.0, 50.0),
                   call("epoll_pwait", 52.0, 99.0))
    [span] = busy_spans(events)
    assert (span.syscalls, span.writes) == (pytest.approx(2.0 + 5.0), 1)
    assert span.user == pytest.approx(12.0 - 7.0)


def test_time_off_the_cpu_is_taken_out_of_what_it_fell_in_but_not_out_of_a_blocking_wait():
    events = trace(5,
                   (0.0, "sys_enter_epoll_pwait"), (1.0, "switch_out"),
                   (60.0, "switch_in"), (62.0, "sys_exit_epoll_pwait"),
                   call("read", 64.0, 66.0),
                   # preempted in user code: 30 µs off the CPU
                   (70.0, "switch_out"), (100.0, "switch_in"),
                   # and inside the write: 20 of its 28 µs
                   (105.0, "sys_enter_write"), (106.0, "switch_out"),
                   (126.0, "switch_in"), (133.0, "sys_exit_write"),
                   (135.0, "sys_enter_epoll_pwait"), (136.0, "switch_out"),
                   (400.0, "switch_in"), (401.0, "sys_exit_epoll_pwait"),
                   call("write", 402.0, 403.0),
                   call("epoll_pwait", 404.0, 500.0))
    first, second = busy_spans(events)
    assert first == Span(user=pytest.approx(73.0 - 30.0 - 30.0), syscalls=pytest.approx(30.0 - 20.0),
                         off=pytest.approx(50.0), writes=1)
    assert second == Span(user=pytest.approx(2.0), syscalls=pytest.approx(1.0), off=0.0, writes=1)


def test_a_trace_without_a_write_is_an_error_not_a_division_by_zero():
    with pytest.raises(ValueError, match="no busy span wrote"):
        span_summary([])
