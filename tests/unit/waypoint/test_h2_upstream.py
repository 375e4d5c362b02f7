"""HTTP/2 upstream: protocol selection, header mapping, and the h2 client
adapter driven by an in-memory h2 server (no sockets)."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import pytest

from shoal.core.records import ServicePort
from shoal.waypoint.h2upstream import (H2Connection, request_headers, response_headers, speaks_h2,
                                 trailer_block)
from shoal.waypoint.message import RequestHead
from shoal.waypoint.upstream import UpstreamReset


@pytest.mark.parametrize("name,app,want", [
    ("grpc", "", True), ("grpc-api", "", True), ("http2", "", True), ("http2-x", "", True),
    ("h2c", "", True), ("h2c-web", "", True), ("x", "grpc", True), ("x", "http2", True),
    ("x", "kubernetes.io/h2c", True), ("x", "GRPC", True), ("grpc-web", "", True),
    ("x", "grpc-web", True),
    ("http", "", False), ("http-grpc", "", False), ("grpcx", "", False), ("tcp", "http", False),
    ("", "", False), ("https", "", False)])
def test_protocol_selection(name, app, want):
    assert speaks_h2(ServicePort(port=80, name=name, app_protocol=app)) is want


def test_no_port_is_http1():
    assert speaks_h2(None) is False


def test_request_headers_pseudo_first_and_connection_headers_dropped():
    head = RequestHead(method="POST", target="/pkg.Svc/M?x=1", authority="echo:8080",
                       headers=[("Host", "echo:8080"), ("TE", "trailers")])
    out = request_headers(head, [("Host", "echo:8080"), ("Content-Type", "application/grpc"),
                                 ("Connection", "keep-alive"), ("Transfer-Encoding", "chunked"),
                                 ("Keep-Alive", "5"), ("Upgrade", "h2c"), ("X-A", "1")])
    assert out[:4] == [(b":method", b"POST"), (b":scheme", b"http"),
                       (b":authority", b"echo:8080"), (b":path", b"/pkg.Svc/M?x=1")]
    assert out[4:] == [(b"content-type", b"application/grpc"), (b"x-a", b"1"),
                       (b"te", b"trailers")]


def test_te_other_than_trailers_is_not_sent():
    head = RequestHead(method="GET", target="/", authority="a", headers=[("te", "gzip")])
    assert all(k != b"te" for k, _ in request_headers(head, [("te", "gzip")]))


def test_response_headers_split_status():
    assert response_headers([(b":status", b"404"), (b"x", b"\xff")]) == (404, [("x", "\xff")])
    assert response_headers([(b":status", b"bad")])[0] == 0


def test_trailer_block_lowercases_and_drops_forbidden():
    assert trailer_block([("Grpc-Status", "0"), ("Connection", "x")]) == [(b"grpc-status", b"0")]


class _Pipe:
    """An in-memory byte stream: our writes go to `sent`, reads from `inbox`."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent = bytearray()
        self.closed = False

    async def read(self, n):
        return await self.inbox.get()

    async def write(self, data):
        self.sent += data

    def close(self):
        self.closed = True


def _server():
    srv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                               header_encoding="latin-1"))
    srv.initiate_connection()
    return srv


async def test_client_gets_head_body_and_trailers():
    pipe = _Pipe()
    c = H2Connection(pipe, "10.0.0.1:80")
    c.start()
    await c.flush()
    head = RequestHead(method="GET", target="/x", authority="a")
    s = await c.open_stream(request_headers(head, []), end_stream=True)
    srv = _server()
    events = srv.receive_data(bytes(pipe.sent))
    req = [e for e in events if isinstance(e, h2.events.RequestReceived)][0]
    assert dict(req.headers)[":path"] == "/x"
    srv.send_headers(req.stream_id, [(":status", "200")])
    srv.send_data(req.stream_id, b"hello")
    srv.send_headers(req.stream_id, [("grpc-status", "0")], end_stream=True)
    pipe.inbox.put_nowait(srv.data_to_send())
    assert await asyncio.wait_for(s.response(), 5) == (200, [])
    assert await s.read() == b"hello"
    assert await s.read() == b""
    assert s.trailers == [("grpc-status", "0")]
    assert s.sid not in c.streams          # both sides ended: forgotten
    c.close()


async def test_reset_before_headers_fails_the_stream():
    pipe = _Pipe()
    c = H2Connection(pipe, "10.0.0.1:80")
    c.start()
    s = await c.open_stream(request_headers(RequestHead(method="GET", target="/"), []),
                            end_stream=True)
    srv = _server()
    srv.receive_data(bytes(pipe.sent))
    srv.reset_stream(s.sid)
    pipe.inbox.put_nowait(srv.data_to_send())
    with pytest.raises(UpstreamReset):
        await asyncio.wait_for(s.response(), 5)
    c.close()


async def test_connection_eof_fails_open_streams_and_marks_dead():
    pipe = _Pipe()
    c = H2Connection(pipe, "10.0.0.1:80")
    c.start()
    s = await c.open_stream(request_headers(RequestHead(method="GET", target="/"), []),
                            end_stream=True)
    pipe.inbox.put_nowait(b"")
    with pytest.raises(UpstreamReset):
        await asyncio.wait_for(s.response(), 5)
    assert c.dead and not c.has_capacity and pipe.closed


async def test_pool_sweep_closes_idle_connections_only():
    from shoal.waypoint.h2upstream import H2Pool
    from shoal.waypoint.upstream import IDLE_TIMEOUT
    busy, idle = H2Connection(_Pipe(), "a"), H2Connection(_Pipe(), "b")
    busy.streams[1] = object()
    pool = H2Pool(connector=None)
    pool._conns = {"a": [busy], "b": [idle]}
    # A millisecond past the timeout: (t + T) - t can round below T in floats.
    now = max(busy.last_used, idle.last_used) + IDLE_TIMEOUT + 1e-3
    assert pool.sweep(now) == 1
    assert idle.dead and idle.stream.closed and not busy.dead
    assert pool.count() == 1
