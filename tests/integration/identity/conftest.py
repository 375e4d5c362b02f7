"""A mutual-TLS echo server on loopback that applies the HBONE peer checks."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import pytest

from shoal.core.identity import spiffe
from shoal.core.identity.certs import serial_hex


@dataclass
class EchoServer:
    """Echoes lines; records each client's identity or the reason it was refused."""
    trust_domain: str = "cluster.local"
    accepted: list = field(default_factory=list)
    refused: list = field(default_factory=list)
    server: asyncio.base_events.Server | None = None
    port: int = 0
    once: bool = False          # close after echoing one line (for s_client -ign_eof)

    async def start(self, ctx: ssl.SSLContext) -> "EchoServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        obj = writer.get_extra_info("ssl_object")
        try:
            ident = spiffe.verify_client_trust_domain(obj, self.trust_domain)
        except spiffe.PeerVerificationError as e:
            self.refused.append(e.code)
            writer.close()
            return
        self.accepted.append(ident)
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
                if self.once:
                    break
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def close(self):
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def echo_server():
    servers = []

    async def make(ctx, trust_domain="cluster.local", once=False):
        s = await EchoServer(trust_domain=trust_domain, once=once).start(ctx)
        servers.append(s)
        return s

    yield make
    for s in servers:
        await s.close()


async def connect(port: int, ctx: ssl.SSLContext):
    """Open a TLS connection without SNI; returns (reader, writer, server serial)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=None), 10)
    obj = writer.get_extra_info("ssl_object")
    return reader, writer, serial_hex(spiffe.peer_certificate(obj))


async def roundtrip(reader, writer, data: bytes = b"ping\n") -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), 10)
