"""The C receive relay (core/hbone/native/relay.c) on real sockets: HBONE
client pool → HBONE server over loopback TLS 1.3, the server's tunnels piped
to real TCP targets, one of which dies (RST) while the relay writes to it.
The tunnels beside it on the same HBONE connection must lose nothing."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from shoal.core.hbone import fastpath
from shoal.core.hbone.errors import StreamResetError
from shoal.core.hbone.settings import MIB, HboneSettings
from tests.helpers.hbone_net import HbonePair, digest, roundtrip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60),
              pytest.mark.skipif(fastpath.native is None, reason="native path off (SHOAL_NATIVE=0)")]

KILL_AFTER = 256 * 1024       # the dying target reads this much, then resets


def relayed(rig) -> int:
    """DATA frames the server's C relays took, over all its connections."""
    return sum(c.transport._p._relay.frames for c in rig.server.connections
               if c.transport is not None and c.transport._p._relay is not None)


async def test_target_reset_mid_relay_spares_the_other_tunnels():
    async def dying(reader, writer):
        got = 0
        while got < KILL_AFTER:
            data = await reader.read(65536)
            if not data:
                break
            got += len(data)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    srv = await asyncio.start_server(dying, "127.0.0.1", 0)
    # pool spreading off: the point is tunnels beside the dying one on one connection
    async with HbonePair(settings=HboneSettings(pool_spread_connections=1)) as rig:
        doomed = await rig.open(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        others = [await rig.open() for _ in range(3)]
        assert len({s._conn for s in [doomed, *others]}) == 1      # one HBONE connection

        async def flood():
            chunk = os.urandom(16 * 1024)
            try:
                for _ in range(1024):                # 16 MiB, far past the target's death
                    await doomed.write(chunk)
                while await doomed.read():
                    pass
            except StreamResetError:
                return "reset"
            return "ended"
        payloads = [os.urandom(MIB + i) for i in range(len(others))]
        results = await asyncio.wait_for(asyncio.gather(
            flood(), *(roundtrip(s, p) for s, p in zip(others, payloads))), 30)
        assert results[0] == "reset"
        assert [digest(r) for r in results[1:]] == [digest(p) for p in payloads]
        assert relayed(rig) > 0
        # The connection is still good for a new tunnel.
        assert await roundtrip(await rig.open(), b"after") == b"after"
    srv.close()
