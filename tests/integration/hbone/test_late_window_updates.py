"""A tunnel never stalls on a peer that sends WINDOW_UPDATE late.

RFC 9113 §6.9 leaves the timing of WINDOW_UPDATE to the receiver: nghttp2
and h2 update once half a window is consumed, Netty and Jetty at a
configurable ratio (e.g. 75%), and a receiver may wait until the window is
exhausted. A TcpEnd piped into a tunnel (as ztunnel pipes) used to be held
(stop reading) with send window left, waiting for an update such a peer
never sends: every byte it had was consumed, and it waited for more.

Here the peer is the h2 library with updates under our control: it updates
a window (its stream's and its connection's, both WINDOW bytes) only once
the given share of it is consumed. Both paths size each read to the window
and hold the TcpEnd only when none is left: on uvloop the C TcpPump and
Sender (send.c, plain.c), under SHOAL_NATIVE=0 core.pipe's SizedReads and
HboneStream.write_held.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded
from h2.settings import SettingCodes, Settings

from shoal.core.hbone import fastpath
from shoal.core.hbone.pool import HbonePool
from shoal.core.hbone.settings import KIB, MIB, HboneSettings
from shoal.core.identity.tls import client_context, server_context
from shoal.core.pipe import SizedReads, pipe
from tests.helpers.hbone_net import CLIENT_ID, SERVER_ID, plain_end
from tests.helpers.pki import TestPKI
from tests.helpers.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PAYLOAD = 4 * MIB
# Time for 4 MiB through loopback TLS on a busy 2-core machine, many times
# over; a stalled tunnel never gets there.
DEADLINE = 20.0
# HTTP/2's default SETTINGS_MAX_FRAME_SIZE (Netty's, nghttp2's), and one
# that takes a whole read (the C Sender sends a read as one DATA frame, up to
# SEND_FRAME_SIZE, 256 KiB).
DEFAULT_FRAME, LARGE_FRAME = 16 * KIB, 1 * MIB


class LateUpdatePeer(asyncio.Protocol):
    """An HBONE server on h2 that answers CONNECT 200 and keeps what comes,
    and sends a WINDOW_UPDATE for a window (stream or connection, `window`
    bytes each) only once `update_at` bytes of it are consumed."""

    def __init__(self, window: int, update_at: int, max_frame: int) -> None:
        self.window, self.update_at, self.max_frame = window, update_at, max_frame
        self.got = bytearray()
        self.ended = asyncio.get_running_loop().create_future()
        self._owed = {0: 0}                    # consumed, not yet given back, per window

    def connection_made(self, transport) -> None:
        self.transport = transport
        h2 = self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.INITIAL_WINDOW_SIZE: self.window,
            SettingCodes.MAX_FRAME_SIZE: self.max_frame})
        h2.max_inbound_frame_size = self.max_frame
        h2.initiate_connection()
        # The connection window starts at 65,535 whatever SETTINGS say.
        h2.increment_flow_control_window(self.window - h2.inbound_flow_control_window)
        transport.write(h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for e in self.h2.receive_data(data):
            if isinstance(e, RequestReceived):
                self._owed[e.stream_id] = 0
                self.h2.send_headers(e.stream_id, [(b":status", b"200")])
            elif isinstance(e, DataReceived):
                self.got += e.data
                for key in (0, e.stream_id):
                    self._owed[key] += e.flow_controlled_length
                    if self._owed[key] >= self.update_at:
                        self.h2.increment_flow_control_window(
                            self._owed[key], stream_id=key or None)
                        self._owed[key] = 0
            elif isinstance(e, StreamEnded):
                self.h2.end_stream(e.stream_id)
                if not self.ended.done():
                    self.ended.set_result(None)
        self.transport.write(self.h2.data_to_send())


# (window, share consumed before an update, max frame, the source's writes:
# None for one bulk write, else chunks each sent once the last arrived). The
# old rule (hold with < HOLD_SEND_WINDOW left once at most half a window is
# left) held the TcpEnd with window left that the peer waited to see used:
#   exhausted, 600 KiB, 256 KiB reads: 256 + 256 KiB sent, 88 KiB left:
#       held; the peer has 512 of 600 KiB and waits for the rest;
#   75%, 384 KiB, 256 KiB reads: 256 KiB sent, 128 KiB left: held; the peer
#       updates at 288;
#   Netty's defaults (64 KiB, 16 KiB frames; 75%), 20 KiB requests: 40 KiB
#       sent, 24 KiB left: held; the peer updates at 48. (A read over 16 KiB
#       went the bytes way, which keeps that rule: reads are sized to one
#       frame too.)
PEERS = {"exhausted": (600 * KIB, 1.0, LARGE_FRAME, None),
         "75%": (384 * KIB, 0.75, LARGE_FRAME, None),
         "netty": (64 * KIB, 0.75, DEFAULT_FRAME, 20 * KIB)}


@pytest.mark.parametrize("peer", PEERS)
async def test_a_piped_tunnel_to_a_late_updating_peer_delivers_every_byte(peer):
    window, share, max_frame, chunk = PEERS[peer]
    pki = TestPKI()
    loop = asyncio.get_running_loop()
    peers: list[LateUpdatePeer] = []

    def make() -> LateUpdatePeer:
        peers.append(LateUpdatePeer(window, int(window * share), max_frame))
        return peers[-1]
    server = await loop.create_server(make, "127.0.0.1", 0,
                                      ssl=server_context(pki.issue(SERVER_ID)))
    client_ctx = client_context(pki.issue(CLIENT_ID))
    pool = HbonePool(lambda src: client_ctx, settings=HboneSettings())
    mine, end = await plain_end()
    try:
        stream = await pool.open(src=CLIENT_ID, dst_identities=(SERVER_ID,),
                                 address=server.sockets[0].getsockname()[:2],
                                 authority="127.0.0.1:9")
        piped = asyncio.ensure_future(pipe(end, stream))
        sender = await until(lambda: end._sink, DEADLINE, "the pipe's sink")
        # The reads are sized to the window: the C TcpPump's, or SizedReads'.
        reader = end.transport.get_protocol()
        if fastpath.native is not None:
            assert type(reader).__name__ == "TcpPump"
        else:
            assert isinstance(reader, SizedReads) and end.sized_reads
        payload = os.urandom(PAYLOAD)
        (h2peer,) = peers

        def arrived(n: int):
            return until(lambda: len(h2peer.got) >= n, DEADLINE,
                         lambda: f"{n} bytes at the peer: {len(h2peer.got)} came, the TcpEnd "
                                 f"{'held' if end._held else 'reading'}, send window "
                                 f"{stream._core.send_window(stream.stream_id)}")

        async def send() -> None:
            step = chunk or PAYLOAD
            for i in range(0, PAYLOAD, step):
                await loop.sock_sendall(mine, payload[i:i + step])
                if chunk:                  # a request: the next once this one arrived
                    await arrived(min(i + step, PAYLOAD))
            mine.shutdown(socket.SHUT_WR)
        sending = asyncio.ensure_future(send())
        await arrived(PAYLOAD)
        assert bytes(h2peer.got) == payload
        if fastpath.native is not None:
            # The reads went the C way, framed where they were read.
            assert type(sender).__name__ == "Sender" and sender.in_place > 0
        await asyncio.wait_for(h2peer.ended, DEADLINE)
        await asyncio.wait_for(sending, DEADLINE)
        assert await asyncio.wait_for(piped, DEADLINE) == (PAYLOAD, 0)
    finally:
        mine.close()
        await pool.close()
        server.close()
