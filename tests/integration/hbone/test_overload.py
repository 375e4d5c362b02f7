"""Per-worker overload limits (core.overload, core.hbone.tlsio) against one
real server process: connections that never finish a TLS handshake cost a
few KiB each, the oldest is evicted at the pending-handshake limit (so an
honest client still gets in), and at max_connections new connections are
closed while established ones keep working."""

import asyncio
import socket

import pytest

from tests.helpers import h2attack as atk
from tests.helpers.hbone_net import CLIENT_ID, SERVER_ID
from tests.helpers.hbone_procs import start_shoal_tool, stop
from tests.helpers.pki import TestPKI, write_pem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# The issue's bound for a connection before its handshake: 16 KiB (it was
# ~315 KiB: a 256 KiB read buffer per connection).
PENDING_CONN_KIB = 16


@pytest.fixture
def start(tmp_path):
    pki = TestPKI()
    server, client = pki.issue(SERVER_ID), pki.issue(CLIENT_ID)
    sfiles = write_pem(server, tmp_path, "server")
    echo = atk.CountingEcho()
    procs = []

    def run(*extra):
        proc, port = start_shoal_tool(["exit", "--listen", "127.0.0.1:0", "--cert",
                                       str(sfiles.cert), "--key", str(sfiles.key),
                                       "--ca", str(sfiles.ca), *extra], tmp_path / "exit.log")
        procs.append(proc)
        honest = atk.HonestClient(port=port, client_cert=client, server_id=SERVER_ID,
                                  authority=f"127.0.0.1:{echo.port}")
        return proc, port, honest
    yield run
    for p in procs:
        stop(p)
    echo.close()


def _closed_by_server(s: socket.socket) -> bool:
    """Read (e.g. the server's TLS flight) until EOF/RST, or False after 5 s."""
    s.settimeout(5)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("first", [b"", b"\x16\x03\x01"], ids=["silent", "partial-hello"])
def test_connections_before_the_handshake_cost_under_16_kib(start, first):
    proc, port, honest = start("--max-pending-handshakes", "4000")
    before = atk.usage(proc.pid)
    n = 2000
    socks = atk.silent_connections(port, n, first)
    try:
        after = atk.wait_usage(proc.pid, lambda u: u.fds >= before.fds + n)
        assert after.fds >= before.fds + n
        assert (after.rss_kib - before.rss_kib) / n < PENDING_CONN_KIB, (before, after)
    finally:
        for s in socks:
            s.close()


def test_oldest_pending_handshake_evicted_honest_client_gets_in(start):
    # Each arrival at the limit evicts the oldest pending handshake, so a
    # handshake is only at risk while connections keep arriving behind it.
    # The honest handshakes start between the floods, after them in the
    # server's accept order (one FIFO queue): the test is about the policy,
    # not about whether an honest handshake outruns 100 arrivals on a
    # loaded machine (it need not: a flood that fast evicts anyone).
    proc, port, honest = start("--max-pending-handshakes", "100")
    stalled = atk.silent_connections(port, 300, atk.client_hello())
    more: list[socket.socket] = []
    try:
        asyncio.run(honest.once())                    # after 300 stalled ones
        more = atk.silent_connections(port, 300)      # keeps the limit under pressure
        asyncio.run(honest.once())                    # and after 300 silent ones
        assert not honest.failed and honest.ok == 2, honest.failed
        # The first stalled handshakes were evicted (closed by the server,
        # well before their 10 s handshake timeout).
        assert _closed_by_server(stalled[0])
        assert atk.usage(proc.pid).fds < 100 + 30
    finally:
        for s in stalled + more:
            s.close()


def test_max_connections_refuses_new_keeps_established(start):
    from shoal.core.hbone.pool import HbonePool
    from shoal.core.identity.tls import client_context

    proc, port, honest = start("--max-connections", "20")

    async def scenario():
        ctx = client_context(honest.client_cert)
        pool = HbonePool(lambda _src: ctx)
        try:
            stream = await pool.open(src=honest.client_cert.identity, dst_identities=(SERVER_ID,),
                                     address=("127.0.0.1", port), authority=honest.authority)
            fillers = await asyncio.to_thread(atk.silent_connections, port, 19)
            extra = await asyncio.to_thread(atk.silent_connections, port, 5)
            refused = [await asyncio.to_thread(_closed_by_server, s) for s in extra]
            # The established tunnel still works at the limit.
            await stream.write(b"still here")
            got = await asyncio.wait_for(stream.read(), 10)
            for s in fillers + extra:
                s.close()
            return refused, got
        finally:
            await pool.close()

    refused, got = asyncio.run(scenario())
    assert refused == [True] * 5
    assert got == b"still here"
