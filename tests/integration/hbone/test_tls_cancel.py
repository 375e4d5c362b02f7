"""core.hbone.tlsio.connect cancelled by its caller: the TCP connection goes at once."""

import asyncio
import ssl

import pytest

from shoal.core.hbone import tlsio

# Far beyond the test's own wait: only the abandoned-handshake close can end
# the connection within the test.
HANDSHAKE_TIMEOUT = 60.0
EOF_WITHIN_S = 5.0


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def test_cancelled_connect_closes_the_connection_at_once():
    loop = asyncio.get_running_loop()
    hello: asyncio.Future = loop.create_future()
    eof: asyncio.Future = loop.create_future()

    async def silent_peer(reader, writer):
        # Takes the ClientHello and never answers: the handshake hangs.
        hello.set_result(await reader.read(1))
        await reader.read()                   # until the client's FIN/RST
        eof.set_result(None)
        writer.close()

    server = await asyncio.start_server(silent_peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        task = asyncio.ensure_future(tlsio.connect(
            loop, asyncio.Protocol(), _client_context(), host="127.0.0.1", port=port,
            timeout=HANDSHAKE_TIMEOUT))
        assert await hello == b"\x16"         # a TLS handshake record: connect() is waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(eof, EOF_WITHIN_S)
    finally:
        server.close()
        await server.wait_closed()
