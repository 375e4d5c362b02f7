"""waypoint.h1exchange.H1Upstream over in-memory streams: what goes on the
wire, 1xx answers, the one replacement of a stale keep-alive connection, and
when a connection may go back to the pool."""

from __future__ import annotations

import pytest

from shoal.waypoint.destination import Endpoint
from shoal.waypoint.exchange import RequestBody, UpstreamRequest
from shoal.waypoint.h1exchange import H1Upstream
from shoal.waypoint.message import RequestHead
from shoal.waypoint.upstream import UpstreamConn, UpstreamProtocolError, UpstreamReset

EP = Endpoint(ip="10.0.1.1", port=8080)
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"


class Stream:
    """Answers with `replies` (one per read; an exception is raised)."""

    def __init__(self, *replies) -> None:
        self.replies = list(replies)
        self.written = b""
        self.at_eof = False

    async def read(self, n: int = 65536) -> bytes:
        r = self.replies.pop(0) if self.replies else b""
        if isinstance(r, Exception):
            raise r
        return r

    async def write(self, data) -> None:
        self.written += bytes(data)


class Pool:
    def __init__(self, *streams, reused_first: bool = False) -> None:
        self.streams = list(streams)
        self.reused_first = reused_first
        self.acquired: list[UpstreamConn] = []
        self.released: list[tuple[UpstreamConn, bool]] = []
        self.discarded: list[UpstreamConn] = []

    async def acquire(self, ep, *, source_ip="", host="", fresh=False):
        conn = UpstreamConn(stream=self.streams.pop(0), endpoint=ep,
                            reused=self.reused_first and not self.acquired and not fresh)
        self.acquired.append(conn)
        return conn

    def release(self, conn, reusable):
        self.released.append((conn, reusable))

    def discard(self, conn):
        self.discarded.append(conn)

    def close(self):
        pass


class Body:
    def __init__(self, *chunks):
        self.chunks, self.trailers = list(chunks), None

    async def read(self):
        return self.chunks.pop(0) if self.chunks else b""


def req(method="GET", body=None, headers=(("host", "echo"),)):
    return UpstreamRequest(head=RequestHead(method=method, target="/x"), headers=list(headers),
                           body=body or RequestBody(buffered=b""))


async def no_1xx(status, headers):
    raise AssertionError("no 1xx expected")


async def read_all(resp) -> bytes:
    out = b""
    while data := await resp.read():
        out += data
    return out


async def test_head_and_buffered_body_go_in_one_write_and_the_connection_is_reused():
    s = Stream(OK)
    pool = Pool(s)
    resp = await H1Upstream(pool).exchange(
        EP, req("POST", RequestBody(buffered=b"abc", framing="length"),
                headers=(("host", "echo"), ("content-length", "3"))), no_1xx)
    assert s.written == b"POST /x HTTP/1.1\r\nhost: echo\r\ncontent-length: 3\r\n\r\nabc"
    assert (resp.status, resp.content_length) == (200, 5)
    assert await read_all(resp) == b"hello"
    await resp.finish()
    assert pool.released == [(pool.acquired[0], True)]


async def test_a_streamed_body_of_unknown_length_goes_chunked():
    s = Stream(OK)
    body = RequestBody(source=Body(b"ab", b"c"), framing="chunked")
    await H1Upstream(Pool(s)).exchange(EP, req("POST", body), no_1xx)
    assert s.written.endswith(b"\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
    assert body.sent == 3


async def test_1xx_answers_are_passed_on_before_the_final_head():
    seen = []

    async def info(status, headers):
        seen.append(status)
    s = Stream(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK)
    resp = await H1Upstream(Pool(s)).exchange(EP, req(), info)
    assert seen == [103] and resp.status == 200


async def test_a_stale_reused_connection_is_replaced_once_when_the_body_can_be_resent():
    stale, fresh = Stream(ConnectionResetError("stale")), Stream(OK)
    pool = Pool(stale, fresh, reused_first=True)
    resp = await H1Upstream(pool).exchange(EP, req(), no_1xx)
    assert resp.status == 200 and pool.discarded == [pool.acquired[0]]
    assert fresh.written.startswith(b"GET /x")


async def test_a_fresh_connection_failing_is_an_upstream_reset():
    pool = Pool(Stream(ConnectionResetError("refused mid-way")))
    with pytest.raises(UpstreamReset):
        await H1Upstream(pool).exchange(EP, req(), no_1xx)
    assert pool.discarded == pool.acquired


async def test_a_streamed_body_is_never_resent_on_a_new_connection():
    pool = Pool(Stream(ConnectionResetError("stale")), Stream(OK), reused_first=True)
    body = RequestBody(source=Body(b"x"), framing="chunked")
    with pytest.raises(UpstreamReset):
        await H1Upstream(pool).exchange(EP, req("POST", body), no_1xx)
    assert len(pool.acquired) == 1


async def test_garbage_is_a_protocol_error():
    with pytest.raises(UpstreamProtocolError):
        await H1Upstream(Pool(Stream(b"SMTP ready\r\n\r\n"))).exchange(EP, req(), no_1xx)


async def test_a_body_cut_short_raises_reset_and_the_connection_is_not_reused():
    s = Stream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhel", b"")
    pool = Pool(s)
    resp = await H1Upstream(pool).exchange(EP, req(), no_1xx)
    assert await resp.read() == b"hel"
    with pytest.raises(UpstreamReset):
        await resp.read()
    resp.abort()
    assert pool.discarded == pool.acquired and not pool.released


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n",
])
async def test_connections_whose_framing_is_doubtful_are_not_reused(reply):
    pool = Pool(Stream(reply))
    resp = await H1Upstream(pool).exchange(EP, req(), no_1xx)
    await read_all(resp)
    await resp.finish()
    assert pool.released == [(pool.acquired[0], False)]


async def test_hop_by_hop_response_headers_are_removed():
    s = Stream(b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=5\r\nx-app: 1\r\n"
               b"content-length: 0\r\n\r\n")
    resp = await H1Upstream(Pool(s)).exchange(EP, req(), no_1xx)
    names = [k.lower() for k, _ in resp.headers]
    assert "keep-alive" not in names and "x-app" in names
