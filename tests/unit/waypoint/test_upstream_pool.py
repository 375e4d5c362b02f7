"""waypoint.upstream.H1Pool: reuse, bounds, idle expiry (fake streams, fake clock)."""

from __future__ import annotations

import pytest

from shoal.waypoint.destination import Endpoint
from shoal.waypoint.upstream import IDLE_TIMEOUT, MAX_IDLE_PER_ENDPOINT, H1Pool


class FakeStream:
    def __init__(self):
        self.closed = False
        self.at_eof = False

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True


class FakeConnector:
    def __init__(self):
        self.opened = []

    async def open(self, ep, *, source_ip="", host=""):
        s = FakeStream()
        self.opened.append(s)
        return s


EP = Endpoint(ip="10.0.0.1", port=8080)


CLOCK = [0.0]


@pytest.fixture
def pool():
    CLOCK[0] = 0.0
    return H1Pool(FakeConnector(), clock=lambda: CLOCK[0])


async def test_reuse_after_release(pool):
    c1 = await pool.acquire(EP)
    pool.release(c1, True)
    c2 = await pool.acquire(EP)
    assert c2 is c1 and c2.reused and len(pool.connector.opened) == 1
    c3 = await pool.acquire(EP, fresh=True)
    assert c3 is not c1 and not c3.reused


async def test_not_reusable_or_eof_is_closed(pool):
    c1 = await pool.acquire(EP)
    pool.release(c1, False)
    assert c1.stream.closed and pool.idle_count() == 0
    c2 = await pool.acquire(EP)
    pool.release(c2, True)
    c2.stream.at_eof = True              # the server closed it while idle
    c3 = await pool.acquire(EP)
    assert c3 is not c2 and c2.stream.closed


async def test_idle_bound_and_sweep(pool):
    conns = [await pool.acquire(EP, fresh=True) for _ in range(MAX_IDLE_PER_ENDPOINT + 3)]
    for c in conns:
        pool.release(c, True)
    assert pool.idle_count() == MAX_IDLE_PER_ENDPOINT
    assert sum(c.stream.closed for c in conns) == 3
    CLOCK[0] = IDLE_TIMEOUT + 1
    assert pool.sweep() == MAX_IDLE_PER_ENDPOINT and pool.idle_count() == 0
