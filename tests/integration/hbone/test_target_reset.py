"""A reset on either plain side of an HBONE tunnel reaches the other plain
side as a reset, never as a clean end (as ztunnel: the exit turns a target's
RST into RST_STREAM, the entry turns RST_STREAM into a client RST with
SO_LINGER 0). Bytes written but not delivered must never look delivered.
Real sockets through a loopback TLS 1.3 tunnel; both data paths (the C
module and, under SHOAL_NATIVE=0, the Python one: see conftest)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from shoal.core.hbone.settings import MIB
from shoal.core.pipe import PipeReset, pipe
from tests.helpers.hbone_net import HbonePair, plain_end
from tests.helpers.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Past the 4 MiB stream window and every socket buffer on the way: the
# target's reset comes while most of it is still to be sent.
PAYLOAD = 24 * MIB
DEADLINE = 30.0
_LINGER_RST = struct.pack("ii", 1, 0)


class ResettingTarget:
    """A TCP target that resets (SO_LINGER 0, close) each connection without
    reading anything, once `reset` is set."""

    async def start(self) -> int:
        self.reset = asyncio.Event()
        self.accepted = asyncio.Event()
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        self.accepted.set()
        await self.reset.wait()
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   _LINGER_RST)
        writer.transport.abort()

    def close(self) -> None:
        self.server.close()


class PeerTarget:
    """A TCP target that records how its connection ended: b"" for a FIN,
    the ConnectionResetError for a reset."""

    async def start(self) -> int:
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        try:
            while await reader.read(1 << 20):
                pass
            self.ended.set_result("eof")
        except ConnectionResetError as e:
            self.ended.set_result(e)
        writer.close()

    def close(self) -> None:
        self.server.close()


async def _client_tunnel(rig: HbonePair, port: int):
    """A TcpEnd on a loopback TCP connection (`mine` is its client socket)
    piped into a tunnel to 127.0.0.1:`port`; returns (mine, end, pipe task)."""
    stream = await rig.open(f"127.0.0.1:{port}")
    mine, end = await plain_end()
    return mine, end, asyncio.ensure_future(pipe(end, stream))


async def _send_all(sock: socket.socket, payload: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, payload)
    sock.shutdown(socket.SHUT_WR)


async def _read_to_end(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while data := await loop.sock_recv(sock, 1 << 20):
        got += data
    return bytes(got)


async def _expect_reset(piped: asyncio.Future, sending: asyncio.Future,
                        mine: socket.socket) -> None:
    """The entry's pipe failed, and the client learns it: its send or its
    read fails with a reset (never a clean end)."""
    with pytest.raises(PipeReset):
        await asyncio.wait_for(piped, DEADLINE)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        await asyncio.wait_for(sending, DEADLINE)
        await asyncio.wait_for(_read_to_end(mine), DEADLINE)
    mine.close()


@pytest.mark.parametrize("when", ["accepted", "entry_held"])
async def test_target_reset_mid_send_resets_the_client(when):
    """The target resets without reading while the client sends 24 MiB: as
    soon as it accepted, or once the entry's plain end is held (backpressure,
    no copy task). No byte may be reported delivered; the client gets a reset."""
    target = ResettingTarget()
    port = await target.start()
    try:
        async with HbonePair() as rig:
            mine, end, piped = await _client_tunnel(rig, port)
            sending = asyncio.ensure_future(_send_all(mine, os.urandom(PAYLOAD)))
            if when == "accepted":
                await asyncio.wait_for(target.accepted.wait(), DEADLINE)
            else:
                await until(lambda: end._held, DEADLINE, "the entry's plain end held")
            target.reset.set()
            await _expect_reset(piped, sending, mine)
    finally:
        target.close()


async def test_target_reset_after_fin_resets_the_client():
    """The client sent everything and half-closed; the target resets without
    reading: the client's read gets the reset, not an EOF."""
    target = ResettingTarget()
    port = await target.start()
    try:
        async with HbonePair() as rig:
            mine, end, piped = await _client_tunnel(rig, port)
            await _send_all(mine, b"x" * 1000)
            target.reset.set()
            with pytest.raises(PipeReset):
                await asyncio.wait_for(piped, DEADLINE)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(_read_to_end(mine), DEADLINE)
            mine.close()
    finally:
        target.close()


async def test_client_reset_resets_the_target():
    target = PeerTarget()
    port = await target.start()
    try:
        async with HbonePair() as rig:
            mine, end, piped = await _client_tunnel(rig, port)
            await asyncio.get_running_loop().sock_sendall(mine, b"x" * 100_000)
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            mine.close()
            with pytest.raises(PipeReset):
                await asyncio.wait_for(piped, DEADLINE)
            ended = await asyncio.wait_for(target.ended, DEADLINE)
            assert isinstance(ended, ConnectionResetError), ended
    finally:
        target.close()
