"""HBONE client pool <-> HBONE server on loopback: real sockets, real mutual TLS 1.3."""

import asyncio
import hashlib
import os
import socket
import struct

import pytest

from shoal.core.hbone.errors import HboneError, PeerIdentityError, StreamResetError
from shoal.core.hbone.protocol import _Stream
from shoal.core.hbone.server import Accept, Reject
from shoal.core.hbone.settings import MIB, STREAM_WINDOW, HboneSettings
from shoal.core.pipe import connect_tcp
from tests.helpers.hbone_net import CLIENT_ID, HbonePair, digest, roundtrip
from tests.helpers.wait import log_line

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_echo_is_byte_exact_both_ways():
    async with HbonePair() as rig:
        stream = await rig.open()
        payload = os.urandom(6 * MIB + 123)
        got = await roundtrip(stream, payload)
        assert digest(got) == digest(payload)
        assert stream.bytes_sent == len(payload) and stream.bytes_received == len(payload)


async def test_half_close_reaches_upstream_and_reply_still_flows():
    """The target reads to EOF (our FIN), then answers: the reverse direction
    must stay open after the client half-closed."""
    reply = os.urandom(3 * MIB)

    async def hasher(reader, writer):
        h = hashlib.sha256()
        while data := await reader.read(65536):
            h.update(data)
        writer.write(h.digest() + reply)
        await writer.drain()
        writer.close()
    target = await asyncio.start_server(hasher, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    async with HbonePair() as rig:
        stream = await rig.open(f"127.0.0.1:{port}")
        payload = os.urandom(5 * MIB)
        got = await roundtrip(stream, payload)
        assert got[:32] == hashlib.sha256(payload).digest()
        assert got[32:] == reply
    target.close()


async def test_request_headers_reach_the_handler():
    async with HbonePair() as rig:
        a = await rig.open(forwarded_for=("10.1.2.3", 41000),
                           host="echo.server.svc.cluster.local",
                           baggage="k8s.namespace.name=client,service.name=sleep")
        b = await rig.open()
        r1, r2 = rig.requests
        assert r1.forwarded == 'for="10.1.2.3:41000";host=echo.server.svc.cluster.local'
        assert r1.forwarded_for == ("10.1.2.3", 41000)
        assert r1.baggage == "k8s.namespace.name=client,service.name=sleep"
        assert str(r1.peer_identity) == CLIENT_ID
        for r in (r1, r2):
            version, trace, span, flags = r.traceparent.split("-")
            assert (version, flags, len(trace), len(span)) == ("00", "01", 32, 16)
        assert r1.traceparent != r2.traceparent          # random per tunnel
        assert r1.host == "127.0.0.1" and r1.port == rig.echo_port
        a.close()
        b.close()


# ztunnel's rule alone: spreading (its own tests below) off.
NO_SPREAD = HboneSettings(pool_spread_connections=1)


async def test_101_streams_open_a_second_pooled_connection():
    async with HbonePair(settings=NO_SPREAD) as rig:
        streams = await asyncio.gather(*(rig.open() for _ in range(101)))
        assert rig.pool.connections_opened == 2
        assert sorted(len(c) for c in rig.pool.stats().values()) == [2]
        assert sorted(n for v in rig.pool.stats().values() for n in v) == [1, 100]
        assert len(rig.server.connections) == 2
        # every stream works
        outs = await asyncio.gather(*(roundtrip(s, b"x%d" % i) for i, s in enumerate(streams)))
        assert outs == [b"x%d" % i for i in range(101)]


async def test_pool_reuses_connection_and_keys_by_identity():
    async with HbonePair() as rig:
        s1 = await rig.open()
        await roundtrip(s1, b"a")
        s2 = await rig.open()
        assert rig.pool.connections_opened == 1
        other_src = "spiffe://cluster.local/ns/client/sa/other"
        s3 = await rig.open(src=other_src)
        assert rig.pool.connections_opened == 2            # another key
        for s in (s2, s3):
            s.close()


async def test_idle_connection_released():
    async with HbonePair(settings=HboneSettings(pool_idle_timeout=0.2)) as rig:
        s = await rig.open()
        await roundtrip(s, b"bye")
        conn = next(iter(rig.server.connections))
        await asyncio.wait_for(conn.closed, 5)
        assert rig.pool.stats() == {}


@pytest.mark.parametrize("case,status", [("deny", 401), ("closed_port", 503), ("unknown", 503),
                                         ("crash", 503)])
async def test_refusals_carry_status_and_spare_other_streams(case, status, hbone_logs):
    async def handler(req):
        if req.headers.get("x-case") == "deny":
            return Reject(status=401, reason="denied by policy")
        if req.headers.get("x-case") == "crash":
            raise RuntimeError("boom")
        from tests.helpers.hbone_net import default_handler
        return await default_handler(req)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    async with HbonePair(handler=handler) as rig:
        good = await rig.open()
        authority = {"closed_port": f"127.0.0.1:{closed_port}", "unknown": "10.9.9.9:1"
                     }.get(case, rig.target_authority)
        with pytest.raises(HboneError) as info:
            await rig.open(authority, headers=[("x-case", case)])
        assert info.value.status == status
        assert await roundtrip(good, b"still fine") == b"still fine"
        assert rig.pool.connections_opened == 1
    assert any("refused with %d" % status in r.getMessage() for r in hbone_logs.records)


async def _raw_request(rig, block):
    """Send a hand-made request on the pooled connection; returns the status."""
    conn = await rig.pool._connection(
        (CLIENT_ID, frozenset(rig.expected), ("127.0.0.1", rig.port)), CLIENT_ID)
    h2c = conn.core._h2
    h2c.config.validate_outbound_headers = False
    sid = h2c.get_next_available_stream_id()
    h2c.send_headers(sid, [(k.encode(), v.encode()) for k, v in block])
    conn.core._streams[sid] = _Stream()
    from shoal.core.hbone.stream import HboneStream
    stream = conn.streams[sid] = HboneStream(conn, sid, "raw")
    conn.flush()
    with pytest.raises(HboneError) as info:
        await asyncio.wait_for(stream.wait_open(), 5)
    return info.value.status


@pytest.mark.parametrize("block,status", [
    ([(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "a:80")], 400),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1")], 400),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1:0")], 400),
    ([(":method", "CONNECT")], 400),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("x-big", "y" * 70_000)], 431),
])
async def test_malformed_requests_refused_on_their_stream_only(block, status, hbone_logs):
    async with HbonePair() as rig:
        good = await rig.open()
        assert await _raw_request(rig, block) == status
        assert await roundtrip(good, b"unharmed") == b"unharmed"
        assert not rig.requests[1:]                    # the handler never saw it
    assert any(f"refused with {status}" in r.getMessage() for r in hbone_logs.records)


async def test_reset_from_client_reaches_upstream_as_rst():
    seen = asyncio.get_running_loop().create_future()

    async def target(reader, writer):
        try:
            while await reader.read(65536):
                pass
            seen.set_result("eof")
        except ConnectionResetError:
            seen.set_result("rst")
    srv = await asyncio.start_server(target, "127.0.0.1", 0)
    async with HbonePair() as rig:
        s = await rig.open(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        await s.write(b"hello")
        s.abort()
        assert await asyncio.wait_for(seen, 5) == "rst"
    srv.close()


async def test_rst_from_upstream_resets_the_stream():
    async def target(reader, writer):
        await reader.read(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    srv = await asyncio.start_server(target, "127.0.0.1", 0)
    async with HbonePair() as rig:
        s = await rig.open(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        await s.write(b"hello")
        with pytest.raises(StreamResetError):
            while await asyncio.wait_for(s.read(), 5):
                pass
        other = await rig.open()
        assert await roundtrip(other, b"ok") == b"ok"       # connection unharmed
    srv.close()


async def test_peer_that_stops_reading_bounds_memory():
    """The target never reads: our writes must block after roughly one stream
    window plus socket buffers, and the server holds at most one window."""
    stop = asyncio.Event()

    async def sink(reader, writer):
        await stop.wait()
        writer.close()
    srv = await asyncio.start_server(sink, "127.0.0.1", 0)
    async with HbonePair() as rig:
        s = await rig.open(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        chunk = b"m" * 65536
        sent = 0
        with pytest.raises(asyncio.TimeoutError):
            while True:
                await asyncio.wait_for(s.write(chunk), 1.0)
                sent += len(chunk)
                assert sent < 64 * MIB, "writes never blocked: unbounded buffering"
        buffered = sum(len(d) for st in (st for c in rig.server.connections
                                         for st in c.streams.values())
                       for d, _ in st._chunks)
        assert buffered <= STREAM_WINDOW
        stop.set()
    srv.close()


async def test_client_without_certificate_is_refused(hbone_logs):
    import ssl
    async with HbonePair() as rig:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=rig.server_cert.roots_pem())
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.port, ssl=ctx,
                                                       server_hostname="")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            data = await asyncio.wait_for(reader.read(100), 5)
            assert data == b""                   # closed without serving
            raise ConnectionError("closed")
        writer.close()
        await log_line(hbone_logs, "TLS handshake from")
    assert any("certificate" in r.getMessage().lower() for r in hbone_logs.records)


async def test_client_cert_from_other_ca_is_refused(hbone_logs):
    from tests.helpers.pki import TestPKI
    other = TestPKI(trust_domain="other.td")
    async with HbonePair() as rig:
        rig.pool.context_for = lambda src: __import__(
            "shoal.core.identity.tls", fromlist=["x"]).client_context(
                other.issue("spiffe://other.td/ns/a/sa/b").with_roots(rig.pki.roots))
        with pytest.raises(HboneError) as info:
            await rig.open(src="spiffe://other.td/ns/a/sa/b")
        assert info.value.status == 0
        await log_line(hbone_logs, "TLS handshake from")


async def test_client_cert_from_other_trust_domain_same_ca_is_refused(hbone_logs):
    from shoal.core.identity.tls import client_context
    async with HbonePair() as rig:
        foreign = rig.pki.issue("spiffe://evil.td/ns/a/sa/b")
        rig.pool.context_for = lambda src: client_context(foreign)
        with pytest.raises(HboneError):
            await rig.open(src="spiffe://evil.td/ns/a/sa/b")
        await log_line(hbone_logs, "trust domain")
        assert not rig.requests


async def test_expired_client_cert_is_refused(hbone_logs):
    from shoal.core.identity.tls import client_context
    async with HbonePair() as rig:
        expired = rig.pki.issue(CLIENT_ID, expired=True)
        rig.pool.context_for = lambda src: client_context(expired)
        with pytest.raises(HboneError):
            await rig.open()
        await log_line(hbone_logs, "TLS handshake from")
    assert any("expired" in r.getMessage() for r in hbone_logs.records)


async def test_server_with_unexpected_identity_is_refused_by_client(hbone_logs):
    async with HbonePair(expected=("spiffe://cluster.local/ns/server/sa/other",)) as rig:
        with pytest.raises(PeerIdentityError) as info:
            await rig.open()
        assert "not one of the expected" in info.value.reason
        assert not rig.requests
    assert any("HBONE peer refused" in r.getMessage() for r in hbone_logs.records)


async def test_garbage_instead_of_http2_gets_goaway(hbone_logs):
    import ssl
    from shoal.core.identity.tls import client_context
    async with HbonePair() as rig:
        ctx = client_context(rig.client_cert)
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.port, ssl=ctx,
                                                       server_hostname="")
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                data += chunk
        except (ConnectionError, ssl.SSLError):
            pass
        # server SETTINGS, then a GOAWAY frame (type 7), then close
        frames, off = [], 0
        while off + 9 <= len(data):
            length = int.from_bytes(data[off:off + 3], "big")
            frames.append(data[off + 3])
            off += 9 + length
        assert 0x07 in frames
        writer.close()
    assert any("invalid HTTP/2" in r.getMessage() for r in hbone_logs.records)


TLS_ALERT = 21      # TLS record content type "alert" (RFC 8446 §5.1)


async def test_garbage_instead_of_tls_is_logged(hbone_logs):
    async with HbonePair() as rig:
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # The server closes the connection: at most a TLS alert record
        # (content type 21), never an HTTP answer.
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer == b"" or answer[0] == TLS_ALERT, f"not a close or an alert: {answer[:32]!r}"
        assert reader.at_eof()
        writer.close()
        await log_line(hbone_logs, "TLS handshake from")


async def test_accept_serve_hands_the_stream_to_the_handler():
    """The waypoint path: the handler gets the HboneStream itself after the 200."""
    async def serve(stream):
        data = b""
        while not data.endswith(b"\n"):
            data += await stream.read()
        await stream.write(b"served:" + data)
        stream.write_eof()

    async def handler(req):
        return Accept(serve=serve)
    async with HbonePair(handler=handler) as rig:
        s = await rig.open("10.0.0.9:80")
        assert await roundtrip(s, b"GET /\n") == b"served:GET /\n"


async def test_on_done_reports_byte_counts():
    done = asyncio.get_running_loop().create_future()

    async def handler(req):
        up = await connect_tcp(req.host, req.port)
        return Accept(upstream=up, on_done=lambda *report: done.set_result(report))
    async with HbonePair(handler=handler) as rig:
        s = await rig.open()
        assert await roundtrip(s, b"12345") == b"12345"
        assert await asyncio.wait_for(done, 5) == (5, 5, "")


async def test_pool_respects_peer_max_concurrent_streams():
    settings = HboneSettings(server_max_concurrent_streams=3, pool_spread_connections=1)
    async with HbonePair(settings=settings) as rig:
        first = await rig.open()
        await first.write(b"settle")
        assert await first.read() == b"settle"   # the server's SETTINGS have arrived
        streams = [first] + [await rig.open() for _ in range(3)]
        assert rig.pool.connections_opened == 2   # 3 per connection, not 100
        assert sorted(n for v in rig.pool.stats().values() for n in v) == [1, 3]
        for s in streams:
            s.close()


async def test_upstream_half_close_first_client_keeps_sending():
    """END_STREAM from the server side (upstream FIN) must not stop the client->upstream way."""
    got = asyncio.get_running_loop().create_future()

    async def target(reader, writer):
        writer.write(b"banner")
        writer.write_eof()                      # upstream half-closes first
        data = b""
        while chunk := await reader.read(65536):
            data += chunk
        got.set_result(data)
        writer.close()
    srv = await asyncio.start_server(target, "127.0.0.1", 0)
    async with HbonePair() as rig:
        s = await rig.open(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        assert await s.read() == b"banner"
        assert await s.read() == b""            # FIN arrived as END_STREAM
        payload = os.urandom(2 * MIB)
        await s.write(payload)
        s.write_eof()
        assert digest(await asyncio.wait_for(got, 10)) == digest(payload)
    srv.close()
