"""The client side of the waypoint: who the client is, and the seams between
the protocol adapters (server.py for HTTP/1.1, h2server.py for HTTP/2) and
the per-request pipeline (proxy.py).

An adapter turns each request into a `Proxy.handle(down, request, body,
sink)` call: `body` is a `BodySource`, `sink` a `ResponseSink`. Both are
Protocols, so the pipeline never knows which protocol the client spoke.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.core.hbone.errors import HboneError
from shoal.core.pipe import READ_SIZE, Endpoint
from shoal.core.records import Workload
from shoal.waypoint.destination import Target
from shoal.waypoint.message import Headers

# After a local reply (403, redirect...) the rest of the request body is read
# and dropped to keep the connection usable, up to this much; a bigger body
# closes the connection instead (Envoy behaves the same way).
MAX_DISCARD_BODY = 1024 * 1024
# After our last bytes and END_STREAM, how long the client may take to end
# its side before the stream is reset (Envoy's delayed_close_timeout, 1 s).
LINGER_S = 1.0
# A client that sends nothing for this long between requests is closed
# (Envoy's HTTP idle_timeout default is 1 h; a waypoint holds many client
# connections, so we use a shorter value, like nginx's keepalive_timeout 75 s).
IDLE_TIMEOUT = 75.0

# What a failed client read raises: idle timeout, reset, or the tunnel died.
READ_ERRORS = (TimeoutError, ConnectionError, OSError, HboneError)


@dataclass(frozen=True, slots=True, kw_only=True)
class Downstream:
    """The client connection, fixed for its lifetime."""
    source_principal: str | None = None
    source_ip: str = ""
    source_workload: Workload | None = None
    target: Target | None = None     # None: plaintext mode, resolved per request by Host
    protocol: str = "http"           # Istio's request_protocol: "http" | "http2"


class DownstreamClosed(ConnectionError):
    """The client went away or broke the protocol in the middle of a request."""


class BodySource(Protocol):
    """One request's body as the client sends it."""

    # Request trailers (HTTP/2 clients: gRPC), known once read() returned b"".
    trailers: Headers | None

    async def read(self) -> bytes:
        """The next body bytes; b"" at the end of the body.

        Raises:
            DownstreamClosed (or ConnectionError): the client went away mid-body.
        """
        ...


class ResponseSink(Protocol):
    """Where one response goes, framed for the client's protocol."""

    async def informational(self, status: int, headers: Headers) -> None:
        """A 1xx answer before the final one (HTTP/1.1 `100 Continue`)."""
        ...

    async def start(self, status: int, headers: Headers, *, content_length: int | None,
                    reason: str = "", no_body: bool = False) -> None:
        """The response head; `content_length` None: the length is unknown."""
        ...

    async def send(self, data: bytes) -> None:
        """Body bytes. Raises ConnectionError when the client went away."""
        ...

    async def trailers(self, headers: Headers) -> None:
        """Response trailers, ending the response (dropped where the framing has no room)."""
        ...

    async def finish(self) -> None:
        """The response is complete."""
        ...

    async def local(self, status: int, body: bytes, extra: Headers) -> bool:
        """A whole response made by the waypoint (403, 503, redirect...).
        Returns False when the client connection must close."""
        ...

    def abort(self) -> None:
        """Cut the response off (the head is out, the body cannot complete)."""
        ...

    async def tunnel(self, upstream: Endpoint, first: bytes) -> tuple[int, int]:
        """After a 101: relay bytes both ways. Returns (to client, from client)."""
        ...


async def close_stream(stream: Any) -> None:
    """End a client stream we are done with, as Envoy closes a connection
    (FIN, then `delayed_close_timeout`): our END_STREAM first, so what we
    wrote last (a response, a 400, a GOAWAY) is delivered, then whatever the
    client still sends is read and dropped until it ends its side or
    LINGER_S passes. A reset right after the last bytes would let the
    ztunnel reset the client's TCP connection before they reach it."""
    try:
        stream.write_eof()
        async with asyncio.timeout(LINGER_S):
            dropped = 0
            while dropped <= MAX_DISCARD_BODY:
                data = await stream.read(READ_SIZE)
                if not data:
                    break
                dropped += len(data)
    except Exception:           # TimeoutError included: the linger is over
        pass
    finally:
        try:
            stream.close()
        except Exception:
            pass
