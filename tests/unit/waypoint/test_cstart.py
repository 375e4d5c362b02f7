"""native/cstart.c: a plan-served request's common start (Balancer.pick,
Balancer.started, fastexchange.take_clean) on the Python objects' own
state. Differential: twins of a Balancer and an H1Pool, one driven by the
Python calls, the other by start_planned; where C takes the request both
end in the same state with the same answer, and where it does not it
changes nothing (the caller then makes the Python calls)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import asdict
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.pipe import TcpEnd
from shoal.waypoint import fastpath  # noqa: F401  (registers the types: configure_start)
from shoal.waypoint.fastexchange import take_clean
from shoal.waypoint.h1native import native
from shoal.waypoint.lb import LEAST_REQUEST, ROUND_ROBIN, Balancer
from shoal.waypoint.upstream import IDLE_TIMEOUT, H1Pool, PlainUpstream, UpstreamConn

pytestmark = pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")

NOW = 1000.0


class Transport:
    def __init__(self, closing: bool = False) -> None:
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name, default=None):
        return default


def stream(chunks=(), eof=False, transport="open") -> PlainUpstream:
    """A PlainUpstream's idle state without a loop (its __init__ needs one)."""
    s = PlainUpstream.__new__(PlainUpstream)
    s._chunks, s._eof = deque(chunks), eof
    s.transport = Transport(transport == "closing") if transport else None
    return s


def key(i: int) -> str:
    return f"10.0.0.{i}:8080"


class Twin:
    """A balancer and pool for `n` endpoints, `idle` connections each."""

    def __init__(self, n: int, idle: int = 2, mode: str = ROUND_ROBIN, warm: bool = True,
                 **conn_state) -> None:
        self.keys = tuple(key(i) for i in range(n))
        self.by_key = {k: SimpleNamespace(key=k) for k in self.keys}
        self.lb = Balancer(mode=mode, rng=random.Random(7), clock=lambda: NOW)
        if warm:
            self.lb.available(self.keys)        # as the first request does
        self.pool = H1Pool(connector=None, clock=lambda: NOW)  # type: ignore[arg-type]
        for k in self.keys:
            self.pool._idle[k] = deque(
                UpstreamConn(stream=stream(**conn_state), endpoint=self.by_key[k],
                             idle_since=NOW - 1.0) for _ in range(idle))
        self.conns = [c for q in self.pool._idle.values() for c in q]

    def python(self):
        k = self.lb.pick(self.keys)
        self.lb.started(k)
        return k, take_clean(self.pool, self.by_key[k])

    def c(self):
        return native.start_planned(self.lb, self.keys, self.by_key, self.pool)

    def release(self, conn) -> None:
        """Back on its deque, as H1Pool.release (without the clock)."""
        self.pool._idle[conn.endpoint.key].append(conn)

    def state(self):
        """Everything either path may change, with connections by index."""
        idx = {id(c): i for i, c in enumerate(self.conns)}
        return (self.lb._rr, {k: asdict(h) for k, h in self.lb._hosts.items()},
                {k: [idx[id(c)] for c in q] for k, q in self.pool._idle.items()},
                [(c.reused, c.stream.transport is None or c.stream.transport.closing)
                 for c in self.conns])

    def answer(self, got):
        k, conn = got
        return k, None if conn is None else self.conns.index(conn)


def same_start(n: int, rounds: int, **kw) -> None:
    py, c = Twin(n, **kw), Twin(n, **kw)
    for _ in range(rounds):
        want = py.python()
        got = c.c()
        assert got is not None
        assert c.answer(got) == py.answer(want)
        assert c.state() == py.state()
        py.release(want[1])
        c.release(got[1])


def test_one_endpoint_is_started_in_c_as_in_python():
    same_start(1, 5)


def test_round_robin_over_three_endpoints_walks_as_in_python():
    same_start(3, 10)


def test_ejected_endpoints_are_skipped_and_all_ejected_is_panic_mode():
    for ejected in ({1}, {0, 2}, {0, 1, 2}):
        py, c = Twin(3), Twin(3)
        for t in (py, c):
            for i in ejected:
                t.lb._hosts[key(i)].ejected_until = NOW + 5.0
        for _ in range(6):
            want, got = py.python(), c.c()
            assert got is not None and c.answer(got) == py.answer(want)
            assert c.state() == py.state()
            py.release(want[1])
            c.release(got[1])


def unchanged(t: Twin) -> None:
    before = t.state()
    assert t.c() is None
    assert t.state() == before


@pytest.mark.parametrize("case", [
    dict(n=2, mode=LEAST_REQUEST),              # the rng's draw: Python's
    dict(n=2, warm=False),                      # the first request makes the _Hosts
    dict(n=1, idle=0),                          # no idle connection: connect (Python)
    dict(n=1, chunks=[b"x"]),                   # bytes arrived while idle
    dict(n=1, eof=True),                        # the backend closed it while idle
    dict(n=1, transport=None),                  # lost
    dict(n=1, transport="closing"),
])
def test_anything_else_is_left_to_python_untouched(case):
    unchanged(Twin(**case))


def test_a_stale_idle_connection_is_left_to_python():
    t = Twin(1)
    t.pool._idle[key(0)][-1].idle_since = NOW - IDLE_TIMEOUT
    unchanged(t)


def test_a_stream_of_another_type_is_left_to_python():
    t = Twin(1)
    t.pool._idle[key(0)][-1].stream = SimpleNamespace(_chunks=deque(), _eof=False,
                                                      transport=Transport())
    unchanged(t)


def test_a_subclass_or_a_replaced_method_is_called_not_bypassed(monkeypatch):
    class Mine(Balancer):
        pass

    t = Twin(1)
    t.lb = Mine(clock=lambda: NOW)
    t.lb.available(t.keys)
    unchanged(t)
    for cls, name in ((Balancer, "pick"), (Balancer, "started"), (H1Pool, "take_idle")):
        with monkeypatch.context() as m:
            orig = getattr(cls, name)
            # The same behaviour, another function: a spy, say.
            m.setattr(cls, name, lambda self, *a, _orig=orig: _orig(self, *a))
            unchanged(Twin(1))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 4), ejected=st.lists(st.booleans(), min_size=4, max_size=4),
       rr=st.integers(0, 7), idle=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       stale=st.booleans(), rounds=st.integers(1, 6))
def test_differential_random_states(n, ejected, rr, idle, stale, rounds):
    """Whatever C takes ends as Python's calls end; what it leaves is untouched."""
    py, c = Twin(n, idle=0), Twin(n, idle=0)
    for t in (py, c):
        t.lb._rr = rr
        for i in range(n):
            if ejected[i]:
                t.lb._hosts[key(i)].ejected_until = NOW + 1.0
            q = t.pool._idle[key(i)]
            for j in range(idle[i]):
                q.append(UpstreamConn(stream=stream(), endpoint=t.by_key[key(i)],
                                      idle_since=NOW - (IDLE_TIMEOUT if stale and j else 1.0)))
        t.conns = [conn for q in t.pool._idle.values() for conn in q]
    for _ in range(rounds):
        before = c.state()
        got = c.c()
        want = py.python()
        if got is None:
            assert c.state() == before
            got = c.python()
        assert c.answer(got) == py.answer(want)
        assert c.state() == py.state()
        for t, conn in ((py, want[1]), (c, got[1])):
            if conn is not None:
                t.release(conn)


@pytest.mark.parametrize("n, rr, active", [
    (3, 2**63 - 1, 0),          # _rr + 1 would wrap C's long (a negative index)
    (3, 2**63, 0),              # past C's long
    (3, 2**70, 0),
    (1, 0, 2**63 - 1),          # active + 1 would wrap
    (1, 0, 2**64),
])
def test_counts_past_a_c_long_are_left_to_python_untouched(n, rr, active):
    """Python's ints do not wrap: such a _rr or active is Python's, and its
    calls then give what they give (before: OverflowError, or a wrapped
    long read as an index before the candidates' array)."""
    py, c = Twin(n), Twin(n)
    for t in (py, c):
        t.lb._rr = rr
        for h in t.lb._hosts.values():
            h.active = active
    unchanged(c)
    want, got = py.python(), c.python()
    assert c.answer(got) == py.answer(want) and c.state() == py.state()


def test_a_deque_changed_by_python_it_runs_is_left_to_python_untouched():
    """The pool's clock (and a transport's is_closing) may run Python that
    takes the connection C chose: C then changes nothing and the Python
    calls give their answer (before: RuntimeError with _rr and active
    already moved)."""
    def popping_clock(t: Twin):
        q = t.pool._idle[key(1)]

        def clock():
            if len(q) == 2:
                q.pop()
            return NOW
        return clock

    py, c = Twin(3), Twin(3)
    for t in (py, c):
        t.pool.clock = popping_clock(t)
    before = c.lb._rr, {k: asdict(h) for k, h in c.lb._hosts.items()}
    assert c.c() is None
    assert (c.lb._rr, {k: asdict(h) for k, h in c.lb._hosts.items()}) == before
    want, got = py.python(), c.python()
    assert c.answer(got) == py.answer(want) and c.state() == py.state()


@pytest.mark.parametrize("cls, name", [(PlainUpstream, "idle_clean"), (TcpEnd, "at_eof")])
def test_a_replaced_property_take_clean_reads_is_read_not_bypassed(monkeypatch, cls, name):
    """take_idle reads stream.at_eof and take_clean stream.idle_clean: with
    either replaced (here by one that says the connection is not usable),
    C leaves the start to the Python calls, which read it (before: C took
    the connection on its own restatement)."""
    monkeypatch.setattr(cls, name, property(lambda self: name == "at_eof"))
    py, c = Twin(1), Twin(1)
    unchanged(c)
    want, got = py.python(), c.python()
    assert got[1] is None and c.answer(got) == py.answer(want) and c.state() == py.state()
