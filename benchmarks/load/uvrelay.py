"""The smallest TCP relay on uvloop: one hop of relay_dispatch's "uvloop x2".

    python -m shoal.benchmarks.load.uvrelay LISTEN_PORT TARGET_HOST TARGET_PORT

Listens on 127.0.0.1:LISTEN_PORT and pipes each connection to the target,
each read written on at once (asyncio.Protocol, no buffering, TCP_NODELAY:
asyncio's default). It is the event loop's per-event cost with nothing of
shoal's around it, for comparison with haproxy's C loop on the same path.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Half(asyncio.Protocol):
    """One side of a relayed connection; `other` is the side it writes to."""

    def __init__(self, other: "_Half | None" = None) -> None:
        self.other = other
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.other is not None and self.other.transport is not None
        self.other.transport.write(data)

    def connection_lost(self, exc) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


class _Accepted(_Half):
    """The client's side: reading waits until the target is connected."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            _, self.other = await asyncio.get_running_loop().create_connection(
                lambda: _Half(self), *self.target)
        except OSError:
            self.transport.close()
            return
        self.transport.resume_reading()


async def serve(port: int, target: tuple[str, int]) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: _Accepted(target), "127.0.0.1", port, reuse_address=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), (sys.argv[2], int(sys.argv[3]))))
