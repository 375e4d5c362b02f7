"""Graceful HBONE drain over real sockets and mutual TLS: GOAWAY(NO_ERROR)
lets running tunnels finish; new tunnels go to a new connection."""

import asyncio
import os
import socket
import time

import pytest

from shoal.core.hbone import tlsio
from shoal.core.hbone.connection import HboneConnection
from shoal.core.hbone.server import HboneServer
from shoal.core.hbone.settings import MIB
from tests.helpers.hbone_net import SERVER_ID, HbonePair, digest, roundtrip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Generous: the drains below must end long before it (asserted), it only
# bounds a broken build.
GRACE = 20.0


async def _transfer_while(stream, payload: bytes, when_received: int, action):
    """Echo `payload` through `stream`; once `when_received` bytes came back,
    start `action()` (a coroutine function). Returns (echoed bytes, action task)."""
    async def send():
        for i in range(0, len(payload), 64 * 1024):
            await stream.write(payload[i:i + 64 * 1024])
        stream.write_eof()
    sender = asyncio.ensure_future(send())
    got = bytearray()
    task = None
    while data := await stream.read():
        got += data
        if task is None and len(got) >= when_received:
            task = asyncio.ensure_future(action())
    await sender
    return bytes(got), task


async def test_tunnel_in_flight_completes_byte_exact_while_server_drains(hbone_logs):
    async with HbonePair() as rig:
        stream = await rig.open()
        (conn,) = rig.server.connections
        payload = os.urandom(16 * MIB + 7)
        started = time.monotonic()
        got, drain = await _transfer_while(stream, payload, MIB,
                                           lambda: rig.server.close(GRACE))
        assert digest(got) == digest(payload)
        assert drain is not None
        await asyncio.wait_for(drain, GRACE)
        # The connection closed itself after its last tunnel, not at the deadline.
        assert time.monotonic() - started < GRACE / 2
        assert conn.closed.done() and not rig.server.connections
        assert stream._error is None
        assert "lost" not in hbone_logs.text and "resetting" not in hbone_logs.text


async def test_pending_request_during_drain_is_still_served():
    """A CONNECT the server received before its GOAWAY is answered normally."""
    gate = asyncio.Event()

    async def slow(req):
        from tests.helpers.hbone_net import default_handler
        await gate.wait()
        return await default_handler(req)
    async with HbonePair(handler=slow) as rig:
        opening = asyncio.ensure_future(rig.open())
        while not rig.requests:
            await asyncio.sleep(0.01)
        drain = asyncio.ensure_future(rig.server.close(GRACE))
        conn = next(c for v in rig.pool._conns.values() for c in v)
        while not conn.core.goaway_received:
            await asyncio.sleep(0.01)
        gate.set()
        stream = await opening
        await stream.write(b"hello")
        stream.write_eof()
        got = b""
        while data := await stream.read():
            got += data
        assert got == b"hello"
        await asyncio.wait_for(drain, GRACE)


async def test_drain_waits_for_a_handshake_under_way_and_serves_its_connect():
    """A connection accepted before the drain whose TLS handshake finishes
    after it: close() returns only once its tunnel is done (the worker exits
    after close(), under any tunnel still open), and that CONNECT is served."""
    async with HbonePair() as rig:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", rig.port))
        while not rig.server.handshaking:        # accepted; no ClientHello yet
            await asyncio.sleep(0.01)
        drain = asyncio.ensure_future(rig.server.close(GRACE))
        for _ in range(5):                        # let the drain run to its wait
            await asyncio.sleep(0)
        assert not drain.done(), "the drain ended with a handshake under way"
        conn = HboneConnection(client=True, settings=rig.settings, expected_identities=(SERVER_ID,))
        await tlsio.connect(loop, conn, rig.client_ctx, sock=sock, timeout=GRACE)
        await conn.ready
        stream = conn.open_stream(rig.target_authority, [])
        await stream.wait_open()
        assert await roundtrip(stream, b"late but whole") == b"late but whole"
        assert not drain.done()                   # the tunnel ran under a live drain
        stream.close()
        await asyncio.wait_for(drain, GRACE)
        assert not rig.server.handshaking and not rig.server.connections
        conn.close()


def _reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def test_new_tunnel_during_drain_goes_to_a_new_connection():
    """Like a worker restart: the old server drains, a new one shares the
    port (SO_REUSEPORT); a tunnel opened meanwhile must not fail."""
    async with HbonePair() as rig:
        first = HboneServer(rig.server.handler, settings=rig.settings)
        successor = HboneServer(rig.server.handler, settings=rig.settings)
        sock = _reuseport_socket(0)
        rig.port = sock.getsockname()[1]           # the pool now dials `first`
        await first.listen(None, 0, rig.server_ctx, sock=sock,
                           trust_domain=rig.server_cert.trust_domain)
        old = await rig.open()
        (old_conn,) = first.connections
        await successor.listen(None, 0, rig.server_ctx, sock=_reuseport_socket(rig.port),
                               trust_domain=rig.server_cert.trust_domain)
        drain = asyncio.ensure_future(first.close(GRACE))
        client_conn = next(c for v in rig.pool._conns.values() for c in v)
        while not client_conn.core.goaway_received:
            await asyncio.sleep(0.01)
        new = await rig.open()
        assert rig.pool.connections_opened == 2
        assert len(successor.connections) == 1 and first.connections == {old_conn}
        for stream, size in ((old, 3 * MIB), (new, 2 * MIB)):
            payload = os.urandom(size)

            async def send(s=stream, p=payload):
                await s.write(p)
                s.write_eof()
            sender = asyncio.ensure_future(send())
            got = bytearray()
            while data := await stream.read():
                got += data
            await sender
            assert digest(got) == digest(payload)
        await asyncio.wait_for(drain, GRACE)
        assert old_conn.closed.done()
        # The client closed its GOAWAYed connection once its last tunnel ended.
        await asyncio.wait_for(client_conn.closed, 5)
        await successor.close(0.5)


async def test_grace_over_resets_what_is_left(hbone_logs):
    async with HbonePair() as rig:
        stream = await rig.open()
        (conn,) = rig.server.connections
        started = time.monotonic()
        await rig.server.close(0.3)              # the tunnel never ends by itself
        assert 0.3 <= time.monotonic() - started < 5
        with pytest.raises(ConnectionError):
            while await stream.read():
                pass
        await asyncio.wait_for(conn.closed, 5)
        assert "resetting 1 tunnels" in hbone_logs.text


async def _echo(stream, payload: bytes = b"ping") -> bytes:
    await stream.write(payload)
    stream.write_eof()
    got = b""
    while data := await stream.read():
        got += data
    return got


async def test_connect_crossing_the_goaway_is_served_on_its_connection(hbone_logs):
    """The client sends a CONNECT before it read the server's GOAWAY: the
    drain announces itself first (GOAWAY 2^31-1 and a PING) and names the
    last stream only at the PING's ACK, so that CONNECT is served where it
    went. A single GOAWAY naming the last stream at once would refuse it,
    and a client refused twice in a row (two draining workers during an
    upgrade) resets its caller."""
    async with HbonePair() as rig:
        old = await rig.open()
        (server_conn,) = rig.server.connections
        server_conn.start_drain()          # GOAWAY written; the client has not read it
        new = await rig.open()             # no await before its HEADERS go out
        assert rig.pool.connections_opened == 1
        assert len(rig.requests) == 2
        assert "REFUSED_STREAM" not in hbone_logs.text
        for stream in (old, new):
            assert await _echo(stream) == b"ping"
        await asyncio.wait_for(server_conn.closed, 5)


async def test_connect_crossing_the_final_goaway_is_retried_on_a_new_connection(hbone_logs):
    """A server that stopped waiting for the announcement's ACK refuses what
    comes after its final GOAWAY (REFUSED_STREAM, unprocessed): the pool
    sends it again on a new connection; the caller never sees the refusal."""
    async with HbonePair() as rig:
        old = await rig.open()
        (server_conn,) = rig.server.connections
        server_conn.start_drain()
        server_conn._finish_drain()        # what its timer does when no ACK comes
        new = await rig.open()
        assert rig.pool.connections_opened == 2
        assert len(rig.requests) == 2      # the refused CONNECT never reached the handler
        assert "REFUSED_STREAM" in hbone_logs.text
        for stream in (old, new):
            assert await _echo(stream) == b"ping"
        await asyncio.wait_for(server_conn.closed, 5)


async def test_connection_accepted_by_a_draining_server_serves_its_first_connect(hbone_logs):
    """A worker that is told to drain may already have accepted a connection
    still in its TLS handshake (an upgrade: old and new workers share the
    listening socket). Its first CONNECT follows the handshake at once; it
    must be served, not refused."""
    async with HbonePair() as rig:
        rig.server.draining = True         # as HboneServer.close() sets it, listener kept
        stream = await rig.open()
        (server_conn,) = rig.server.connections
        assert server_conn.core.draining
        assert await _echo(stream) == b"ping"
        assert rig.pool.connections_opened == 1 and len(rig.requests) == 1
        await asyncio.wait_for(server_conn.closed, 5)
