"""The pool's spreading (core.hbone.pool, settings.POOL_SPREAD_*): tunnels of
one key over several HBONE connections, so that a peer running several
SO_REUSEPORT workers gets them on more than one worker. Real sockets, real
mutual TLS 1.3, a real multi-process exit (tests.helpers.hbone_tools)."""

import asyncio
import os

import pytest

from shoal.core.hbone.pool import HbonePool
from shoal.core.hbone.settings import (MIB, POOL_SPREAD_CONNECTIONS, POOL_SPREAD_STREAMS,
                                       HboneSettings)
from shoal.core.identity.tls import client_context
from tests.helpers import h2attack as atk
from tests.helpers.hbone_net import CLIENT_ID, SERVER_ID, HbonePair, digest, roundtrip
from tests.helpers.hbone_procs import socket_owner, start_shoal_tool, stop
from tests.helpers.pki import TestPKI, write_pem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BUSY = 8       # iperf3 -P 8, the load run's case


def per_connection(rig) -> list[int]:
    return sorted(n for v in rig.pool.stats().values() for n in v)


async def test_busy_streams_to_one_destination_open_several_connections():
    async with HbonePair() as rig:
        streams = await asyncio.gather(*(rig.open() for _ in range(BUSY)))
        assert rig.pool.connections_opened == POOL_SPREAD_CONNECTIONS
        assert per_connection(rig) == [BUSY // POOL_SPREAD_CONNECTIONS] * POOL_SPREAD_CONNECTIONS
        assert len(rig.server.connections) == POOL_SPREAD_CONNECTIONS
        payloads = [os.urandom(MIB + i) for i in range(BUSY)]
        got = await asyncio.gather(*(roundtrip(s, p) for s, p in zip(streams, payloads)))
        assert [digest(g) for g in got] == [digest(p) for p in payloads]


async def test_a_key_with_few_tunnels_keeps_one_connection():
    async with HbonePair() as rig:
        streams = [await rig.open() for _ in range(POOL_SPREAD_STREAMS)]
        assert rig.pool.connections_opened == 1
        for s in streams:
            s.close()                   # released at once (stream_done)
        # sequential reuse: each new tunnel finds the connection with room
        for _ in range(3):
            s = await rig.open()
            assert await roundtrip(s, b"again") == b"again"
            s.close()
        assert rig.pool.connections_opened == 1


# The tests that close tunnels at once and still mean long ones.
NO_SHORT = HboneSettings(pool_short_tunnel=0)


async def test_past_spreading_a_stream_goes_on_the_least_loaded_connection():
    async with HbonePair(settings=NO_SHORT) as rig:
        streams = [await rig.open() for _ in range(5 * POOL_SPREAD_CONNECTIONS)]
        assert rig.pool.connections_opened == POOL_SPREAD_CONNECTIONS
        assert per_connection(rig) == [5] * POOL_SPREAD_CONNECTIONS
        # free two slots on the newest connection: the next two tunnels go there
        conn = streams[-1]._conn
        mine = [s for s in streams if s._conn is conn][:2]
        for s in mine:
            s.close()                   # released at once (stream_done)
        assert per_connection(rig)[0] == 3
        more = [await rig.open() for _ in range(2)]
        assert {s._conn for s in more} == {conn}
        assert per_connection(rig) == [5] * POOL_SPREAD_CONNECTIONS
        assert rig.pool.connections_opened == POOL_SPREAD_CONNECTIONS


async def test_a_key_whose_tunnels_end_young_packs_on_the_oldest_connection():
    """Request traffic: tunnels that end within POOL_SHORT_TUNNEL share one
    connection's TLS records and reads, as ztunnel packs them."""
    async with HbonePair() as rig:
        burst = await asyncio.gather(*(rig.open() for _ in range(BUSY)))
        assert rig.pool.connections_opened == POOL_SPREAD_CONNECTIONS   # no history yet
        oldest = next(iter(rig.pool._conns.values()))[0]
        assert await roundtrip(burst[-1], b"short") == b"short"
        for s in burst:
            s.close()                   # young: the key is request traffic now
        again = [await rig.open() for _ in range(BUSY)]
        assert {s._conn for s in again} == {oldest}
        assert rig.pool.connections_opened == POOL_SPREAD_CONNECTIONS
        assert per_connection(rig) == [0] * (POOL_SPREAD_CONNECTIONS - 1) + [BUSY]


async def test_tunnels_that_lived_long_leave_spreading_on():
    """The control: the same closes, but no tunnel counts as short."""
    async with HbonePair(settings=NO_SHORT) as rig:
        burst = await asyncio.gather(*(rig.open() for _ in range(BUSY)))
        for s in burst:
            s.close()
        again = [await rig.open() for _ in range(BUSY)]
        assert len({s._conn for s in again}) == POOL_SPREAD_CONNECTIONS


@pytest.fixture
def exit_tool(tmp_path):
    """`hbone_tools exit` with extra args; yields (process, port, pids, client cert)."""
    pki = TestPKI()
    files = write_pem(pki.issue(SERVER_ID), tmp_path, "server")
    client = pki.issue(CLIENT_ID)
    echo = atk.CountingEcho()
    procs = []

    def run(*extra):
        proc, port = start_shoal_tool(
            ["exit", "--listen", "127.0.0.1:0", "--cert", str(files.cert), "--key",
             str(files.key), "--ca", str(files.ca), "--target", f"127.0.0.1:{echo.port}",
             *extra], tmp_path / f"exit-{len(procs)}.log")
        procs.append(proc)
        return proc, port, client
    yield run
    for p in procs:
        stop(p)
    echo.close()


async def _exit_workers_reached(port: int, pids: list[int], client, settings) -> set[int]:
    """One pool, BUSY tunnels to the exit: which exit worker processes serve them."""
    ctx = client_context(client)
    pool = HbonePool(lambda _src: ctx, settings=settings)
    try:
        streams = [await pool.open(src=client.identity, dst_identities=(SERVER_ID,),
                                   address=("127.0.0.1", port), authority="127.0.0.1:1")
                   for _ in range(BUSY)]
        assert await asyncio.gather(*(roundtrip(s, b"w%d" % i) for i, s in enumerate(streams))
                                    ) == [b"w%d" % i for i in range(BUSY)]
        conns = {s._conn for s in streams}
        owners = {socket_owner(pids, port, c.local_address[1]) for c in conns}
        assert None not in owners, "an HBONE connection held by no exit worker"
        for s in streams:
            s.close()
        return owners
    finally:
        await pool.close()


# With POOL_SPREAD_CONNECTIONS connections hashed by the kernel over 2
# workers, one pool misses a worker with probability 2 / 2**4 = 1/8; eight
# fresh pools all miss with probability 1/8**8 (6e-8). Without spreading a
# pool has one connection and never reaches both: the test fails every time.
FRESH_POOLS = 8


async def test_one_pools_tunnels_reach_both_exit_worker_processes(exit_tool):
    proc, port, client = exit_tool("--processes", "2")
    assert len(proc.pids) == 2
    seen = []
    for _ in range(FRESH_POOLS):
        owners = await _exit_workers_reached(port, proc.pids, client, HboneSettings())
        seen.append(len(owners))
        if owners == set(proc.pids):
            break
    assert seen[-1] == 2, f"exit workers reached per pool: {seen}"


async def test_without_spreading_one_pool_reaches_one_exit_worker(exit_tool):
    """The control: ztunnel's rule alone (one connection per 100 streams)."""
    proc, port, client = exit_tool("--processes", "2")
    owners = await _exit_workers_reached(port, proc.pids, client,
                                         HboneSettings(pool_spread_connections=1))
    assert len(owners) == 1


async def test_a_refused_spread_connection_falls_back_and_backs_off(exit_tool, hbone_logs):
    """The exit takes one connection (its max-connections limit): the pool's
    extra connection fails, the tunnel goes on the first one, and the pool
    does not try again for every later tunnel."""
    proc, port, client = exit_tool("--max-connections", "1")
    ctx = client_context(client)
    pool = HbonePool(lambda _src: ctx)
    try:
        streams = [await pool.open(src=client.identity, dst_identities=(SERVER_ID,),
                                   address=("127.0.0.1", port), authority="127.0.0.1:1")
                   for _ in range(BUSY)]
        assert pool.connections_opened == 1
        assert len({s._conn for s in streams}) == 1
        assert await asyncio.gather(*(roundtrip(s, b"f%d" % i) for i, s in enumerate(streams))
                                    ) == [b"f%d" % i for i in range(BUSY)]
        refused = {id(r) for r in hbone_logs.records if "no extra connection" in r.getMessage()}
        assert len(refused) == 1          # one attempt, then the backoff
    finally:
        await pool.close()
