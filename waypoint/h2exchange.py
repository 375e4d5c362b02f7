"""`Upstream` over HTTP/2 (h2c) for ports whose protocol is HTTP/2.

The request body streams up while the response streams down (gRPC
bidirectional streams need both at once): a pump task sends the body (and
the request trailers) while `exchange` waits for the response head; a body
that fails first fails the exchange. Response trailers are kept for the
client (gRPC's status lives there). Works for HTTP/2 and HTTP/1.1 clients.
"""

from __future__ import annotations

import asyncio

from shoal.core.pipe import Endpoint
from shoal.waypoint import message
from shoal.waypoint.destination import Endpoint as UpstreamEndpoint
from shoal.waypoint.exchange import Informational, RequestBody, UpstreamRequest
from shoal.waypoint.h2upstream import H2Pool, H2Stream, request_headers
from shoal.waypoint.message import Headers
from shoal.waypoint.upstream import UpstreamProtocolError

# Response headers that describe HTTP/1.1 framing, meaningless from HTTP/2.
_DROP_RESPONSE = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade"})


class H2Upstream:
    """HTTP/2 exchanges over `pool` (an `h2upstream.H2Pool`)."""

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool

    async def exchange(self, ep: UpstreamEndpoint, req: UpstreamRequest,
                       informational: Informational) -> H2Response:
        # 1xx answers stay here: h2 reports them apart and the client's
        # `100 Continue`, if any, was sent by the pipeline itself.
        has_body = not req.body.empty
        stream = pump = None
        try:
            stream = await self.pool.open_stream(
                ep, request_headers(req.head, req.headers), end_stream=not has_body,
                source_ip=req.source_ip, host=req.host)
            if has_body:
                pump = asyncio.ensure_future(_pump(req.body, stream))
            status, headers = await _head(stream, pump)
        except BaseException:
            _cancel(stream, pump)
            raise
        return H2Response(stream, pump, status, headers)

    def close(self) -> None:
        self.pool.close()


class H2Response:
    """The response of one HTTP/2 exchange (see exchange.UpstreamResponse)."""

    def __init__(self, stream: H2Stream, pump: asyncio.Future | None, status: int,
                 headers: Headers) -> None:
        self.stream, self.pump = stream, pump
        self.status = status
        self.reason = ""
        self.headers = [(k, v) for k, v in headers if k.lower() not in _DROP_RESPONSE]
        clen = message.get(self.headers, "content-length")
        self.content_length = int(clen) if clen and clen.isdigit() else None
        self.trailers: Headers | None = None

    async def read(self) -> bytes:
        data = await self.stream.read()
        if not data:
            self.trailers = self.stream.trailers
        return data

    async def finish(self) -> None:
        pump = self.pump
        if pump is not None and not pump.done():
            if self.stream.ended:
                await pump    # only its last flush is left
            else:
                # The server answered in full before the request body ended
                # (an early error, say): stop sending it, keep the answer.
                pump.cancel()
                self.stream.reset()
        self.stream.release()

    def abort(self) -> None:
        _cancel(self.stream, self.pump)

    def upgraded(self) -> tuple[Endpoint, bytes]:
        raise UpstreamProtocolError("HTTP/2 has no protocol upgrade")


async def _head(stream: H2Stream, pump: asyncio.Future | None) -> tuple[int, Headers]:
    """The response head; a request body that fails first fails the request."""
    if pump is None:
        return await stream.response()
    head = asyncio.ensure_future(stream.response())
    try:
        done, _ = await asyncio.wait({head, pump}, return_when=asyncio.FIRST_COMPLETED)
        failed = pump.exception() if head not in done else None
        if failed is not None:
            raise failed
        return await head
    finally:
        if not head.done():
            head.cancel()


async def _pump(body: RequestBody, stream: H2Stream) -> None:
    if body.buffered is not None:
        await stream.send(body.buffered)
    else:
        while data := await body.read():
            await stream.send(data)
    await stream.end(body.trailers)


def _cancel(stream: H2Stream | None, pump: asyncio.Future | None) -> None:
    if pump is not None and not pump.done():
        pump.cancel()
    if stream is not None:
        stream.reset()
