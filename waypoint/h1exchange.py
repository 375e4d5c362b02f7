"""`Upstream` over HTTP/1.1: one request at a time per pooled connection.

The request head and a buffered body go out in one write; a streamed body
follows the head (chunked when its length is unknown); the response head
is read before `exchange` returns, 1xx answers passed on as they come. A
reused keep-alive connection that fails before any response byte is
replaced once by a fresh one when the body can be sent again (the server
may have closed it while idle; every HTTP client does this). The
connection returns to the pool only after a response read to its end whose
framing both sides agreed on.
"""

from __future__ import annotations

import asyncio

from shoal.core.hbone.errors import HboneError
from shoal.core.pipe import Endpoint
from shoal.waypoint.destination import Endpoint as UpstreamEndpoint
from shoal.waypoint.exchange import Informational, UpstreamRequest
from shoal.waypoint.message import Headers
from shoal.waypoint.http1 import (LAST_CHUNK, BodyReceived, H1ResponseParser, MessageEnded,
                                  ResponseReceived, encode_chunk, serialize_request_head,
                                  strip_hop_by_hop)
from shoal.waypoint.upstream import (H1Pool, UpstreamConn, UpstreamError, UpstreamProtocolError,
                                     UpstreamReset)

# One upstream read; large enough to amortise per-call costs.
UPSTREAM_READ = 256 * 1024
# What a failed read or write on an upstream stream raises (TCP or HBONE).
STREAM_ERRORS = (ConnectionError, OSError, asyncio.IncompleteReadError, HboneError)


class H1Upstream:
    """HTTP/1.1 exchanges over `pool` (an `upstream.H1Pool`)."""

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool

    async def exchange(self, ep: UpstreamEndpoint, req: UpstreamRequest,
                       informational: Informational) -> H1Response:
        head_bytes = serialize_request_head(req.head, req.headers)
        fresh = req.upgrade
        for _ in range(2):   # a stale pooled connection is replaced once
            conn = await self.pool.acquire(ep, source_ip=req.source_ip, host=req.host,
                                           fresh=fresh)
            try:
                await _send(conn.stream, head_bytes, req)
                parser = H1ResponseParser(req.head.method)
                resp, pending = await _read_head(conn, parser, informational)
                return H1Response(self.pool, conn, parser, resp, pending, upgrade=req.upgrade)
            except (UpstreamReset, UpstreamProtocolError, *STREAM_ERRORS) as e:
                # On a reused connection this is usually a stale or
                # desynchronised keep-alive: try once on a new connection.
                self.pool.discard(conn)
                if conn.reused and req.body.replayable:
                    fresh = True
                    continue
                if isinstance(e, UpstreamError):
                    raise
                raise UpstreamReset(str(e)) from None
            except BaseException:
                self.pool.discard(conn)
                raise
        raise UpstreamReset("connection reset twice")

    def close(self) -> None:
        self.pool.close()


async def _send(stream: Endpoint, head: bytes, req: UpstreamRequest) -> None:
    body = req.body
    if body.buffered is not None:
        await stream.write(head + body.buffered if body.buffered else head)
        return
    await stream.write(head)
    if req.upgrade:        # after the 101 the tunnel carries the rest
        return
    chunked = body.framing == "chunked"
    while data := await body.read():
        await stream.write(encode_chunk(data) if chunked else data)
    if chunked:
        await stream.write(LAST_CHUNK)


async def _read_head(conn: UpstreamConn, parser: H1ResponseParser,
                     informational: Informational) -> tuple[ResponseReceived, list]:
    """The final response head and the events parsed after it."""
    while True:
        data = await conn.stream.read(UPSTREAM_READ)
        try:
            events = parser.receive_data(data)
        except ValueError as e:
            if not data:
                raise UpstreamReset(str(e)) from None
            raise UpstreamProtocolError(str(e)) from None
        i = 0
        while i < len(events):
            ev = events[i]
            if isinstance(ev, ResponseReceived):
                s = ev.head.status
                if 100 <= s < 200 and s != 101:
                    await informational(s, ev.head.headers)
                    i += 2          # its MessageEnded follows
                    continue
                return ev, events[i + 1:]
            i += 1


class H1Response:
    """The response of one HTTP/1.1 exchange (see exchange.UpstreamResponse)."""

    def __init__(self, pool: H1Pool, conn: UpstreamConn, parser: H1ResponseParser,
                 resp: ResponseReceived, pending: list, *, upgrade: bool) -> None:
        self.pool, self.conn, self.parser, self.resp = pool, conn, parser, resp
        self.status = resp.head.status
        self.reason = resp.head.reason
        self.headers = strip_hop_by_hop(resp.head.headers, keep_upgrade=self.status == 101)
        self.content_length = resp.content_length
        self.trailers: Headers | None = None     # HTTP/1.1 response trailers are dropped
        self._pending = list(pending)
        self._upgrade = upgrade
        self._ended = False

    async def read(self) -> bytes:
        while not self._ended:
            while self._pending:
                e = self._pending.pop(0)
                if isinstance(e, BodyReceived):
                    return e.data
                if isinstance(e, MessageEnded):
                    self._ended = True
                    return b""
            try:
                data = await self.conn.stream.read(UPSTREAM_READ)
            except STREAM_ERRORS as e:
                raise UpstreamReset(str(e)) from None
            try:
                self._pending = self.parser.receive_data(data)
            except ValueError:
                raise UpstreamReset("upstream closed mid-body") from None
        return b""

    async def finish(self) -> None:
        # A 204 announcing a body, or bytes after the end, mean the server
        # and we disagree on framing: never reuse that connection.
        reusable = self.resp.keep_alive and self.parser.clean and not self._upgrade and \
            not (self.status == 204 and self.content_length)
        self.pool.release(self.conn, reusable)

    def abort(self) -> None:
        self.pool.discard(self.conn)

    def upgraded(self) -> tuple[Endpoint, bytes]:
        return self.conn.stream, self.parser.upgraded
