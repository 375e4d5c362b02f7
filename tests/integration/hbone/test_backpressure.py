"""Backpressure on real sockets without the pipe's copy task: a plain TCP
end piped into an HBONE tunnel (loopback TLS 1.3) whose target stops
reading. Once the tunnel's send window runs short the pushing TcpEnd is
held (its transport stops reading, nothing queues for the copy task) and
the bytes wait in the kernel; an EOF and a reset that arrive meanwhile are
carried through. Both data paths: the C Sender (send.c) and, under
SHOAL_NATIVE=0, HboneStream.write_held."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from shoal.core.hbone import fastpath
from shoal.core.hbone.settings import MIB
from shoal.core.pipe import PipeReset, pipe
from tests.helpers.hbone_net import HbonePair, plain_end
from tests.helpers.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Past the 4 MiB stream window and every socket buffer on the way: the
# entry must hold its plain end before the sender is done.
PAYLOAD = 24 * MIB
DEADLINE = 30.0


class GatedTarget:
    """A TCP target that reads nothing until `open()`, then everything."""

    async def start(self) -> int:
        self.gate = asyncio.Event()
        self.got = hashlib.sha256()
        self.size = 0
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        await self.gate.wait()
        while data := await reader.read(1 << 20):
            self.got.update(data)
            self.size += len(data)
        self.ended.set_result(None)
        writer.close()

    def close(self) -> None:
        self.server.close()


async def _held_tunnel(rig: HbonePair, target: GatedTarget, port: int):
    """A TcpEnd on a loopback TCP connection piped into a tunnel to the
    target; the payload (then FIN) sent into it until the end is held."""
    stream = await rig.open(f"127.0.0.1:{port}")
    mine, end = await plain_end()
    loop = asyncio.get_running_loop()
    piped = asyncio.ensure_future(pipe(end, stream))
    payload = os.urandom(PAYLOAD)

    async def send() -> None:
        await loop.sock_sendall(mine, payload)
        mine.shutdown(socket.SHUT_WR)
    sending = asyncio.ensure_future(send())
    await until(lambda: end._held, DEADLINE, "the plain end held")
    # Held before anything had to queue: no copy task is sending.
    assert end._queued == 0 and not stream._writing
    assert (type(end._sink).__name__ == "Sender") == (fastpath.native is not None)
    assert not end.transport.is_reading()
    return mine, end, stream, piped, sending, payload


async def test_eof_while_held_arrives_after_every_byte():
    target = GatedTarget()
    port = await target.start()
    try:
        async with HbonePair() as rig:
            mine, end, stream, piped, sending, payload = await _held_tunnel(rig, target, port)
            target.gate.set()
            await asyncio.wait_for(target.ended, DEADLINE)
            await asyncio.wait_for(sending, DEADLINE)
            assert target.size == len(payload)
            assert target.got.digest() == hashlib.sha256(payload).digest()
            sent, received = await asyncio.wait_for(piped, DEADLINE)
            assert (sent, received) == (len(payload), 0)
            assert not end._held and stream._held is None
            mine.close()
    finally:
        target.close()


async def test_reset_while_held_resets_the_plain_side():
    """The exit resets the tunnel (RST_STREAM) while the entry's plain end
    is held: it is released, the pipe fails and the plain peer gets a RST."""
    target = GatedTarget()
    port = await target.start()
    try:
        async with HbonePair() as rig:
            mine, end, stream, piped, sending, _ = await _held_tunnel(rig, target, port)
            (exit_stream,) = [s for c in rig.server.connections for s in c.streams.values()]
            exit_stream.abort()
            with pytest.raises(PipeReset):
                await asyncio.wait_for(piped, DEADLINE)
            assert stream._held is None
            # The end's RST stops the sender (EPIPE once the RST was reported).
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await asyncio.wait_for(sending, DEADLINE)
            mine.close()
    finally:
        target.gate.set()
        target.close()
