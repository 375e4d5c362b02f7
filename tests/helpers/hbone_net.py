"""HBONE test rig on loopback: PKI, a target server, an HBONE server and a pool.

    async with HbonePair() as rig:
        stream = await rig.open()            # CONNECT to rig.target_authority
        ...

Every port is ephemeral; nothing is written outside the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket

from shoal.core.hbone.pool import HbonePool
from shoal.core.hbone.server import Accept, HboneServer, Reject
from shoal.core.hbone.settings import HboneSettings
from shoal.core.identity.tls import client_context, server_context
from shoal.core.pipe import TcpEnd, connect_tcp
from tests.helpers.pki import TestPKI

CLIENT_ID = "spiffe://cluster.local/ns/client/sa/sleep"
SERVER_ID = "spiffe://cluster.local/ns/server/sa/echo"


async def start_echo() -> tuple[asyncio.AbstractServer, int]:
    """A plain TCP echo server that half-closes after the client does."""
    async def echo(reader, writer):
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def default_handler(req):
    if req.port == 1:
        return Reject(status=503, reason="unknown upstream")
    try:
        upstream = await connect_tcp(req.host, req.port, timeout=2)
    except OSError as e:
        return Reject(status=503, reason=f"upstream {req.authority} unreachable: {e}")
    return Accept(upstream=upstream)


class HbonePair:
    """A running HBONE server (+ echo target) and a client pool."""

    def __init__(self, *, handler=None, settings: HboneSettings | None = None,
                 server_cert=None, client_cert=None, pki: TestPKI | None = None,
                 expected=(SERVER_ID,)) -> None:
        self.pki = pki or TestPKI()
        self.settings = settings or HboneSettings()
        self.server_cert = server_cert or self.pki.issue(SERVER_ID)
        self.client_cert = client_cert or self.pki.issue(CLIENT_ID)
        self.handler = handler or default_handler
        self.expected = tuple(expected)
        self.requests = []

    async def __aenter__(self) -> "HbonePair":
        self.echo, self.echo_port = await start_echo()
        self.target_authority = f"127.0.0.1:{self.echo_port}"

        async def handler(req):
            self.requests.append(req)
            return await self.handler(req)
        self.server = HboneServer(handler, settings=self.settings)
        self.server_ctx = server_context(self.server_cert)
        listener = await self.server.listen("127.0.0.1", 0, self.server_ctx,
                                            trust_domain=self.server_cert.trust_domain)
        self.port = listener.sockets[0].getsockname()[1]
        self.client_ctx = client_context(self.client_cert)
        self.pool = HbonePool(lambda src: self.client_ctx, settings=self.settings)
        return self

    async def open(self, authority: str | None = None, **kw):
        kw.setdefault("src", CLIENT_ID)
        kw.setdefault("dst_identities", self.expected)
        return await self.pool.open(address=("127.0.0.1", self.port),
                                    authority=authority or self.target_authority, **kw)

    async def __aexit__(self, *exc) -> None:
        await self.pool.close()
        await self.server.close(grace=0.5)
        self.echo.close()


async def roundtrip(stream, payload: bytes, chunk: int = 64 * 1024) -> bytes:
    """Write `payload` (then FIN) while reading the echo; returns what came back."""
    async def send():
        for i in range(0, len(payload), chunk):
            await stream.write(payload[i:i + chunk])
        stream.write_eof()
    sender = asyncio.ensure_future(send())
    got = bytearray()
    while data := await stream.read():
        got += data
    await sender
    return bytes(got)


async def plain_end() -> tuple[socket.socket, TcpEnd]:
    """A TcpEnd on a loopback TCP connection, and that connection's other
    socket (non-blocking, for loop.sock_* calls): the plain side of an entry."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        mine = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    mine.setblocking(False)
    _, end = await asyncio.get_running_loop().create_connection(TcpEnd, sock=theirs)
    return mine, end


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
