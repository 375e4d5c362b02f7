"""The upstream seam: one request/response exchange, whatever the protocol.

    resp = await upstream.exchange(endpoint, request, informational)
    while (data := await resp.read()): ...
    resp.trailers; await resp.finish()      # or resp.abort()

`Upstream` has two implementations, symmetric as mitmproxy's client layers
are: `h1exchange.H1Upstream` (HTTP/1.1 over a keep-alive pool) and
`h2exchange.H2Upstream` (HTTP/2 streams multiplexed per endpoint). Load
balancing, deadlines, retries and mirrors are written once above them
(forward.py, mirror.py).

Failures are `upstream.UpstreamError`s: before the response head they may be
retried (`retriable`); after it, `read()` raises one and the caller cuts the
client off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from shoal.core.pipe import Endpoint
from shoal.waypoint.destination import Endpoint as UpstreamEndpoint
from shoal.waypoint.downstream import BodySource
from shoal.waypoint.message import Headers, RequestHead

# Forwards a 1xx (other than 101) to the client before the final response.
Informational = Callable[[int, Headers], Awaitable[None]]


class RequestBody:
    """A request body on its way up: either whole (`buffered`, so a retry or
    a mirror can send it again) or streamed once from the client (`source`).

    `framing` is how an HTTP/1.1 upstream gets it: "length", "chunked" or
    "none" (no body). `sent` counts the bytes taken from the client so far.
    """

    __slots__ = ("buffered", "source", "framing", "sent")

    def __init__(self, *, buffered: bytes | None = None, source: BodySource | None = None,
                 framing: str = "none") -> None:
        self.buffered = buffered
        self.source = source
        self.framing = framing
        self.sent = len(buffered) if buffered is not None else 0

    @property
    def replayable(self) -> bool:
        return self.buffered is not None

    @property
    def empty(self) -> bool:
        return self.buffered == b"" or self.framing == "none"

    @property
    def trailers(self) -> Headers | None:
        return getattr(self.source, "trailers", None)

    async def read(self) -> bytes:
        """The next streamed chunk, b"" at the end (a buffered body is
        `buffered`, never read)."""
        if self.source is None or self.buffered is not None:
            return b""
        data = await self.source.read()
        self.sent += len(data)
        return data


@dataclass(slots=True, kw_only=True)
class UpstreamRequest:
    """What goes upstream: the (filtered) head, its headers ready to send
    (hop-by-hop stripped, Host, trace and request id set), and the body."""
    head: RequestHead
    headers: Headers
    body: RequestBody
    upgrade: bool = False            # HTTP/1.1 Upgrade (WebSocket): 101 then a tunnel
    source_ip: str = ""              # the original client (HBONE `forwarded`)
    host: str = ""                   # the destination's hostname (HBONE)


class UpstreamResponse(Protocol):
    """The final response of one exchange; its body is read as it arrives."""

    status: int
    reason: str
    headers: Headers                 # connection-specific headers already removed
    content_length: int | None       # None: unknown (streamed)
    trailers: Headers | None         # known once read() returned b""

    async def read(self) -> bytes:
        """Body bytes; b"" at the end. Raises UpstreamError (reset, protocol)."""
        ...

    async def finish(self) -> None:
        """The body was read to its end: give the connection back."""
        ...

    def abort(self) -> None:
        """Give up on this exchange (its connection is not reused)."""
        ...

    def upgraded(self) -> tuple[Endpoint, bytes]:
        """After a 101: the raw upstream stream and the bytes already read."""
        ...


class Upstream(Protocol):
    """One protocol's way to exchange a request with an endpoint."""

    async def exchange(self, ep: UpstreamEndpoint, req: UpstreamRequest,
                       informational: Informational) -> UpstreamResponse:
        """Send `req` to `ep` and return once the final response head is in.

        Raises:
            UpstreamError: no response head (connect failure, reset, protocol error).
        """
        ...

    def close(self) -> None:
        """Close every pooled connection."""
        ...
