"""native/cend.c: a CExchange ends the common plan-served request itself,
on the Balancer's, H1Pool's and session's own state, exactly as
Balancer.finished, H1Pool.release and FastSession._c_done would; anything
else goes to those Python calls with nothing changed first. State by state,
with the real Balancer, H1Pool, Response and Tally and recording stand-ins
for the transports and the session (whose Python half fastpath tests)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from shoal.core.metrics import DURATION_BUCKETS_MS, SIZE_BUCKETS_BYTES
from shoal.waypoint import fastpath
from shoal.waypoint.h1native import native
from shoal.waypoint.lb import CONSECUTIVE_FAILURES, Balancer
from shoal.waypoint.upstream import MAX_IDLE_PER_ENDPOINT, H1Pool, UpstreamConn

pytestmark = pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")

KEY = "10.0.0.1:8080"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Session:
    """What cend.c and CExchange read and write of a FastSession."""

    def __init__(self) -> None:
        self.mode = 0
        self._held = False
        self.exchange = None
        self.served_fast = 3
        self.last_active = 0.0
        self.loop = SimpleNamespace(time=lambda: 7.5)
        self.session = SimpleNamespace(events=deque(), eof=False, busy=True)
        self.calls: list = []

    def _c_done(self, cex) -> None:
        self.calls.append("_c_done")

    def _c_slot(self, cex) -> int:
        return 0

    def _c_adopt(self, cex, what, *args) -> None:
        self.calls.append(what)


@pytest.fixture(autouse=True)
def stand_in_session():
    """cend.c ends only for the registered session type (FastSession in
    the waypoint): here the stand-in, put back after."""
    native.configure_end(Balancer, H1Pool, Session, MAX_IDLE_PER_ENDPOINT)
    yield
    native.configure_end(Balancer, H1Pool, fastpath.FastSession, MAX_IDLE_PER_ENDPOINT)


class Rig:
    def __init__(self, counted: bool = True, keep_alive: bool = True, lb=None) -> None:
        self.lb = lb or Balancer()
        self.lb.started(KEY)
        self.pool = H1Pool(connector=None, clock=lambda: 42.0)   # type: ignore[arg-type]
        self.pool._idle[KEY] = deque()
        self.up, self.client = Transport(), Transport()
        self.conn = UpstreamConn(stream=SimpleNamespace(receiver="cex", transport=self.up),
                                 endpoint=SimpleNamespace(key=KEY), reused=True)
        self.session = Session()
        self.proxy = SimpleNamespace(pool=self.pool, draining=False)
        self.nat = native.Response(True, keep_alive)
        parsed = ("GET", "/", [], "echo", "1.1", keep_alive, None)
        state = (None, parsed, b"", "", "", "", 0.0, KEY, self.conn, self.nat)
        tally = native.Tally([*DURATION_BUCKETS_MS, math.inf], [*SIZE_BUCKETS_BYTES, math.inf])
        self.cex = native.CExchange(self.session, self.up, self.client, self.nat, self.proxy,
                                    self.lb, KEY, (KEY,), state, tally if counted else None,
                                    {} if counted else None, 0.0)
        self.session.exchange = self.cex

    def host(self):
        return self.lb._hosts[KEY]


def ended_in_c(r: Rig) -> None:
    assert r.cex.ended_in_c and r.session.calls == []
    assert r.conn.stream.receiver is None
    assert list(r.pool._idle[KEY]) == [r.conn]
    assert (r.conn.requests, r.conn.idle_since) == (1, 42.0)
    assert r.session.exchange is None and r.session.session.busy is False
    assert (r.session.served_fast, r.session.last_active) == (4, 7.5)


def left_to_python(r: Rig) -> None:
    """_c_done was called and nothing it does was done before."""
    assert not r.cex.ended_in_c and r.session.calls == ["_c_done"]
    assert r.conn.stream.receiver == "cex" and list(r.pool._idle[KEY]) == []
    assert (r.conn.requests, r.conn.idle_since) == (0, 0.0)
    assert r.session.exchange is r.cex and r.session.session.busy is True
    assert (r.session.served_fast, r.session.last_active) == (3, 0.0)


def test_the_common_end_is_done_in_c_byte_by_byte():
    r = Rig()
    for i in range(len(OK)):
        r.cex.upstream_data(OK[i:i + 1])
        if i < len(OK) - 1:
            assert r.session.exchange is r.cex and not r.cex.ended_in_c
    assert b"".join(r.client.written).startswith(b"HTTP/1.1 200 OK\r\n")
    assert (r.host().active, r.host().failures) == (0, 0)
    assert r.cex.counted
    ended_in_c(r)


def test_a_success_resets_the_failure_count_and_active_never_goes_below_zero():
    r = Rig()
    r.host().failures, r.host().active = 3, 0
    r.cex.upstream_data(OK)
    assert (r.host().active, r.host().failures) == (0, 0)
    ended_in_c(r)


@pytest.mark.parametrize("case", ["not counted", "close", "held", "pool full", "no deque",
                                  "queued event", "client eof", "reading held", "slow mode",
                                  "not kept alive", "pool subclass"])
def test_anything_else_goes_to_c_done_untouched(case):
    r = Rig(counted=case != "not counted", keep_alive=case != "not kept alive")
    data = OK
    if case == "close":
        data = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    elif case == "held":
        r.cex.hold_upstream(True)
    elif case == "pool full":
        r.pool._idle[KEY].extend(object() for _ in range(MAX_IDLE_PER_ENDPOINT))
    elif case == "no deque":
        del r.pool._idle[KEY]
    elif case == "queued event":
        r.session.session.events.append("next request")
    elif case == "client eof":
        r.session.session.eof = True
    elif case == "reading held":
        r.session._held = True
    elif case == "slow mode":
        r.session.mode = 1
    elif case == "pool subclass":
        r.proxy.pool = r.pool = type("Pool", (H1Pool,), {})(connector=None, clock=lambda: 42.0)
        r.pool._idle[KEY] = deque()
    if case == "pool full":
        before = list(r.pool._idle[KEY])
        r.cex.upstream_data(data)
        assert list(r.pool._idle[KEY]) == before and r.session.calls == ["_c_done"]
        assert r.conn.stream.receiver == "cex" and not r.cex.ended_in_c
        return
    if case == "no deque":
        r.cex.upstream_data(data)
        assert KEY not in r.pool._idle and r.session.calls == ["_c_done"]
        assert r.conn.stream.receiver == "cex" and r.session.served_fast == 3
        return
    r.cex.upstream_data(data)
    left_to_python(r)


def test_failures_go_to_balancer_finished_and_eject_after_the_fifth():
    lb = Balancer(clock=lambda: 100.0)
    for n in range(1, CONSECUTIVE_FAILURES + 1):
        r = Rig(lb=lb)
        r.cex.upstream_data(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        assert r.host().active == 0
        if n < CONSECUTIVE_FAILURES:
            assert r.host().failures == n and not lb.ejected(KEY)
    assert lb.ejected(KEY) and r.host().failures == 0 and r.host().ejections == 1


def test_a_balancer_subclass_or_an_unknown_endpoint_is_left_to_python():
    seen = []

    class Spy(Balancer):
        def finished(self, key, ok, all_keys=()):
            seen.append((key, ok, all_keys))
            super().finished(key, ok, all_keys)
    r = Rig(lb=Spy())
    r.cex.upstream_data(OK)
    assert seen == [(KEY, True, (KEY,))]
    r = Rig()
    del r.lb._hosts[KEY]
    r.cex.upstream_data(OK)
    assert r.host().active == 0 and r.host().failures == 0   # Balancer._host made it


def test_a_method_replaced_on_its_class_is_called_not_bypassed(monkeypatch):
    seen = []
    real_finished, real_release = Balancer.finished, H1Pool.release
    monkeypatch.setattr(Balancer, "finished",
                        lambda self, *a: (seen.append("finished"), real_finished(self, *a)))
    r = Rig()
    r.cex.upstream_data(OK)
    assert seen == ["finished"] and r.cex.ended_in_c
    monkeypatch.setattr(H1Pool, "release",
                        lambda self, *a: (seen.append("release"), real_release(self, *a)))
    r = Rig()
    r.cex.upstream_data(OK)
    left_to_python(r)
    monkeypatch.setattr(Session, "_c_done", lambda self, cex: self.calls.append("spy"))
    r = Rig()
    r.cex.upstream_data(OK)
    assert r.session.calls == ["spy"] and not r.cex.ended_in_c


def test_configure_end_checks_its_arguments():
    with pytest.raises(TypeError):
        native.configure_end(object(), H1Pool, Session, 1)
    with pytest.raises(ValueError):
        native.configure_end(Balancer, H1Pool, Session, -1)


@pytest.mark.parametrize("active,failures,ejections", [(1, 0, 0), (2, 3, 0), (0, 4, 1), (1, 1, 2)])
def test_the_c_end_leaves_what_balancer_finished_and_pool_release_leave(active, failures,
                                                                        ejections):
    """Differential: cend.c restates Balancer.finished's and H1Pool.release's
    success path; a change to either in Python must show here, not drift."""
    c_side, py_side = Rig(), Rig()
    for r in (c_side, py_side):
        h = r.host()
        h.active, h.failures, h.ejections, h.ejected_until = active, failures, ejections, 5.0
    c_side.cex.upstream_data(OK)
    ended_in_c(c_side)
    py_side.lb.finished(KEY, True, (KEY,))
    py_side.pool.release(py_side.conn, True)
    assert asdict(c_side.host()) == asdict(py_side.host())
    assert (c_side.conn.requests, c_side.conn.idle_since) == \
        (py_side.conn.requests, py_side.conn.idle_since)
    assert [c is c_side.conn for c in c_side.pool._idle[KEY]] == \
        [c is py_side.conn for c in py_side.pool._idle[KEY]]


@pytest.mark.parametrize("attr, value", [("requests", 2**63 - 1), ("requests", 2**63),
                                         ("served_fast", 2**63 - 1), ("served_fast", 2**64)])
def test_a_counter_c_cannot_add_one_to_goes_to_c_done_untouched(attr, value):
    """Python's ints do not wrap: a count at or past C's long (2**63 - 1)
    is Python's to add one to, with nothing done first (before: the long
    wrapped to -2**63, or OverflowError left the connection pooled and the
    session adopted for an error)."""
    r = Rig()
    owner = r.conn if attr == "requests" else r.session
    setattr(owner, attr, value)
    r.cex.upstream_data(OK)
    assert getattr(owner, attr) == value
    setattr(owner, attr, 0 if attr == "requests" else 3)
    left_to_python(r)
