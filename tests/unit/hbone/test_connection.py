"""HboneConnection (the asyncio adapter) over a fake TLS transport: no sockets."""

import asyncio

import pytest
from cryptography.hazmat.primitives import serialization

from shoal.core.hbone import events as ev
from shoal.core.hbone.connection import HboneConnection
from shoal.core.hbone.errors import PeerIdentityError, StreamResetError
from shoal.core.hbone.protocol import HboneServerProtocol
from shoal.core.hbone.settings import HboneSettings
from tests.helpers.pki import TestPKI

SERVER_ID = "spiffe://cluster.local/ns/server/sa/echo"


class FakeSSL:
    def __init__(self, der: bytes, alpn: str | None = "h2") -> None:
        self.der, self.alpn = der, alpn

    def selected_alpn_protocol(self):
        return self.alpn

    def getpeercert(self, binary_form=False):
        return self.der


class FakeTransport:
    def __init__(self, ssl_object) -> None:
        self.ssl_object = ssl_object
        self.out = bytearray()
        self.closing = self.aborted = False

    def get_extra_info(self, name, default=None):
        return {"ssl_object": self.ssl_object, "peername": ("10.0.0.2", 15008),
                "sockname": ("10.0.0.1", 40000)}.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_size(self):
        return 0        # everything written goes to `out` at once

    def writelines(self, chunks):
        for c in chunks:
            self.out += c

    def write(self, data):
        self.out += data

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def abort(self):
        self.closing = self.aborted = True

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


@pytest.fixture(scope="module")
def server_der():
    cert = TestPKI().issue(SERVER_ID)
    return cert.leaf.public_bytes(serialization.Encoding.DER)


def _client(der, settings=None, expected=(SERVER_ID,), alpn="h2"):
    conn = HboneConnection(client=True, settings=settings or HboneSettings(),
                           expected_identities=expected)
    transport = FakeTransport(FakeSSL(der, alpn))
    conn.connection_made(transport)
    return conn, transport


def _serve(transport, conn, server):
    """Move bytes client -> server -> client once; returns server events."""
    events = server.receive_data(transport.take())
    conn.data_received(server.data_to_send())
    return events


async def test_identity_mismatch_refused_before_any_byte(server_der):
    conn, transport = _client(server_der, expected=("spiffe://cluster.local/ns/x/sa/y",))
    with pytest.raises(PeerIdentityError):
        await conn.ready
    assert transport.aborted and transport.out == b""        # no HTTP/2 preface sent


async def test_alpn_other_than_h2_refused(server_der):
    conn, transport = _client(server_der, alpn="http/1.1")
    with pytest.raises(PeerIdentityError, match="ALPN"):
        await conn.ready
    assert transport.out == b""


async def test_open_accept_data_and_stream_close(server_der):
    conn, transport = _client(server_der)
    await conn.ready
    server = HboneServerProtocol()
    server.initiate()
    _serve(transport, conn, server)
    stream = conn.open_stream("10.0.0.5:80", [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16
                                               + "-01")])
    req = [e for e in _serve(transport, conn, server) if isinstance(e, ev.TunnelRequested)][0]
    server.accept(req.stream_id)
    server.send_data(req.stream_id, b"hi", end_stream=True)
    conn.data_received(server.data_to_send())
    await stream.wait_open()
    assert await stream.read() == b"hi"
    assert await stream.read() == b""
    assert str(stream.peer_identity) == SERVER_ID


async def test_keepalive_kills_silent_peer(server_der):
    settings = HboneSettings(keepalive_interval=0.02, keepalive_timeout=0.06)
    conn, transport = _client(server_der, settings=settings)
    await conn.ready
    server = HboneServerProtocol()
    server.initiate()
    _serve(transport, conn, server)
    stream = conn.open_stream("10.0.0.5:80")
    _serve(transport, conn, server)           # the server goes silent from here
    with pytest.raises(StreamResetError, match="PING"):
        await asyncio.wait_for(stream.wait_open(), 2)
    assert transport.aborted


async def test_keepalive_answered_keeps_connection(server_der):
    settings = HboneSettings(keepalive_interval=0.02, keepalive_timeout=0.06)
    conn, transport = _client(server_der, settings=settings)
    await conn.ready
    server = HboneServerProtocol()
    server.initiate()
    for _ in range(15):                       # a live peer answers every PING
        _serve(transport, conn, server)
        await asyncio.sleep(0.01)
    assert not transport.aborted and conn.error is None


async def test_paused_transport_blocks_writers(server_der):
    conn, transport = _client(server_der)
    await conn.ready
    server = HboneServerProtocol()
    server.initiate()
    _serve(transport, conn, server)
    stream = conn.open_stream("10.0.0.5:80")
    sid = [e for e in _serve(transport, conn, server) if isinstance(e, ev.TunnelRequested)][0]
    server.accept(sid.stream_id)
    conn.data_received(server.data_to_send())
    await stream.wait_open()
    conn.pause_writing()
    writer = asyncio.ensure_future(stream.write(b"x" * 1000))
    await asyncio.sleep(0.02)
    assert not writer.done()                  # bytes queued, writer held
    conn.resume_writing()
    await asyncio.wait_for(writer, 1)
