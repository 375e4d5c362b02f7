"""HTTP/1.1 server adapter: one client byte stream -> Proxy.handle per request.

Thin by design: bytes go into `http1.H1Server`, its events drive the
`Proxy`; the response sink frames bytes back. Works on any `core.pipe`
endpoint (`read`, async `write`, `write_eof`, `abort`, `close`): an
`HboneStream` from the :15008 server, or a `TcpEnd` in plaintext mode.

Per connection: requests are served one at a time in arrival order
(pipelining: later requests wait, parsed or still in the socket; we read only
when we need the next event, so memory stays bounded by one read).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque

from shoal.core.pipe import READ_SIZE
from shoal.waypoint.http1 import (LAST_CHUNK, BodyReceived, H1Server, MessageEnded, ProtocolFailed,
                            RequestReceived, TunnelData, encode_chunk, serialize_response_head,
                            simple_response)
from shoal.waypoint.proxy import Downstream, Proxy

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


def _read_errors() -> tuple:
    try:
        from shoal.core.hbone.errors import HboneError
        return (TimeoutError, ConnectionError, OSError, HboneError)
    except ImportError:
        return (TimeoutError, ConnectionError, OSError)


_READ_ERRORS = _read_errors()


class DownstreamClosed(ConnectionError):
    """The client went away or broke the protocol in the middle of a request."""


class H1Session:
    """Serves one client connection."""

    __slots__ = ("stream", "down", "proxy", "parser", "events", "eof", "closed", "busy",
                 "__weakref__")

    def __init__(self, stream, down: Downstream, proxy: Proxy) -> None:
        self.stream = stream
        self.down = down
        self.proxy = proxy
        self.parser = H1Server()
        self.events: deque = deque()
        self.eof = False
        self.closed = False
        self.busy = False          # serving a request (drain waits for it)

    async def _next(self, timeout: float | None = None):
        """The next event, None at EOF."""
        while not self.events:
            if self.eof:
                return None
            try:
                if timeout is not None:
                    # asyncio.timeout, not wait_for: no extra task per read.
                    async with asyncio.timeout(timeout):
                        data = await self.stream.read(READ_SIZE)
                else:
                    data = await self.stream.read(READ_SIZE)
            except _READ_ERRORS:            # idle timeout, reset, or the tunnel died
                data = b""
            if not data:
                self.eof = True
            self.events.extend(self.parser.receive_data(data))
        return self.events.popleft()

    async def run(self) -> None:
        self.proxy.sessions.add(self)
        try:
            # Not ended on drain here: the next response says `connection:
            # close`, and Proxy.start_drain closes connections left idle.
            while True:
                ev = await self._next(IDLE_TIMEOUT)
                if ev is None:
                    break
                if isinstance(ev, ProtocolFailed):
                    await self._write(simple_response(ev.status, ev.reason.encode(), close=True))
                    break
                if not isinstance(ev, RequestReceived):
                    continue
                self.busy = True
                try:
                    if not await self._serve(ev):
                        break
                finally:
                    self.busy = False
        finally:
            self.proxy.sessions.discard(self)
            self.closed = True
            await close_stream(self.stream)

    async def _serve(self, ev: RequestReceived) -> bool:
        body = _Body(self)
        sink = _Sink(self, ev)
        try:
            keep = await self.proxy.handle(self.down, ev, body, sink)
        except DownstreamClosed:
            return False
        if sink.aborted or not keep or not ev.keep_alive or sink.close_after:
            return False
        return await body.discard_rest()

    async def _write(self, data: bytes) -> bool:
        try:
            await self.stream.write(data)
            return True
        except Exception:
            self.closed = True
            return False


class _Body:
    """The current request's body as `read() -> bytes` (b"" at its end)."""

    __slots__ = ("session", "ended")

    def __init__(self, session: H1Session) -> None:
        self.session = session
        self.ended = False

    async def read(self) -> bytes:
        if self.ended:
            return b""
        ev = await self.session._next()
        if isinstance(ev, BodyReceived):
            return ev.data
        if isinstance(ev, MessageEnded):
            self.ended = True
            return b""
        if isinstance(ev, TunnelData):
            self.session.events.appendleft(ev)
            self.ended = True
            return b""
        raise DownstreamClosed("client closed or sent a malformed body mid-request")

    async def discard_rest(self) -> bool:
        dropped = 0
        while not self.ended:
            try:
                data = await self.read()
            except DownstreamClosed:
                return False
            dropped += len(data)
            if dropped > MAX_DISCARD_BODY:
                return False
        return True


class _Sink:
    """Frames one response for an HTTP/1.x client."""

    __slots__ = ("session", "req", "started", "chunked", "close_after", "aborted", "_head",
                 "_trailers")

    def __init__(self, session: H1Session, req: RequestReceived) -> None:
        self.session = session
        self.req = req
        self.started = False
        self.chunked = False
        self.close_after = False
        self.aborted = False
        self._head = b""
        self._trailers = b""

    async def informational(self, status: int, headers) -> None:
        if status == 100 and self.req.http_version == "1.1":
            await self.session._write(serialize_response_head(100, []))

    async def start(self, status: int, headers, *, content_length: int | None,
                    reason: str = "", no_body: bool = False) -> None:
        self.started = True
        if status == 101:
            self._head = serialize_response_head(101, headers, reason)
            return
        if not no_body and content_length is None:
            if self.req.http_version == "1.1":
                headers = headers + [("transfer-encoding", "chunked")]
                self.chunked = True
            else:
                self.close_after = True
        if self.session.proxy.draining:
            self.close_after = True    # Envoy's drain: close after this response
        if not self.req.keep_alive or self.close_after:
            headers = headers + [("connection", "close")]
        elif self.req.http_version == "1.0":
            headers = headers + [("connection", "keep-alive")]
        self._head = serialize_response_head(status, headers, reason)

    async def send(self, data: bytes) -> None:
        if self.chunked:
            data = encode_chunk(data)
        if self._head:
            data, self._head = self._head + data, b""
        if not await self.session._write(data):
            raise DownstreamClosed("client went away while receiving the response")

    async def trailers(self, headers) -> None:
        """Trailers from an HTTP/2 upstream: sent as chunked trailers
        (RFC 9112 7.1.2); a sized or HTTP/1.0 response has no room for them."""
        if self.chunked:
            self._trailers = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")

    async def finish(self) -> None:
        tail = (b"0\r\n" + self._trailers + b"\r\n" if self._trailers else LAST_CHUNK) \
            if self.chunked else b""
        if self._head or tail:
            data, self._head = self._head + tail, b""
            await self.session._write(data)
        if self.close_after:
            try:
                self.session.stream.write_eof()
            except Exception:
                pass

    async def local(self, status: int, body: bytes, extra) -> bool:
        if self.started:
            self.abort()
            return False
        self.started = True
        close = not self.req.keep_alive or self.req.upgrade or self.session.proxy.draining
        if not await self.session._write(simple_response(status, body, close=close, extra=extra)):
            return False
        return not close

    def abort(self) -> None:
        self.aborted = True
        try:
            self.session.stream.abort()
        except Exception:
            pass

    async def tunnel(self, upstream, first: bytes) -> tuple[int, int]:
        """After a 101: copy bytes both ways until both sides end.

        Returns (bytes to the client, bytes from the client)."""
        s = self.session
        head, self._head = self._head, b""
        await s._write(head + first)
        counts = [len(first), 0]

        async def up_to_down():
            while True:
                data = await upstream.read(READ_SIZE)
                if not data:
                    s.stream.write_eof()
                    return
                counts[0] += len(data)
                if not await s._write(data):
                    return

        async def down_to_up():
            while True:
                ev = await s._next()
                if ev is None:
                    upstream.write_eof()
                    return
                if isinstance(ev, TunnelData) and ev.data:
                    counts[1] += len(ev.data)
                    await upstream.write(ev.data)

        tasks = [asyncio.ensure_future(up_to_down()), asyncio.ensure_future(down_to_up())]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    for p in pending:
                        p.cancel()
                    break
            else:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for t in tasks:
                t.cancel()
            try:
                upstream.close()
            except Exception:
                pass
        return counts[0], counts[1]


async def close_stream(stream) -> None:
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


async def serve_stream(stream, down: Downstream, proxy: Proxy) -> None:
    """Serve HTTP/1.1, or HTTP/2 with prior knowledge (told apart by the
    client's first bytes), on one client byte stream."""
    from shoal.waypoint import h2server
    first = await _peek(stream)
    if not first:
        await close_stream(stream)
        return
    if h2server.is_preface(first):
        await h2server.serve(stream, first, dataclasses.replace(down, protocol="http2"), proxy)
        return
    session = H1Session(stream, down, proxy)
    session.events.extend(session.parser.receive_data(first))
    await session.run()


async def _peek(stream) -> bytes:
    """The first bytes of a connection (b"" if it closed or stayed silent)."""
    try:
        async with asyncio.timeout(IDLE_TIMEOUT):
            data = await stream.read(READ_SIZE)
            # An HTTP/2 preface is 24 bytes: gather enough to tell.
            while data and len(data) < 24 and h2_prefix(data):
                more = await stream.read(READ_SIZE)
                if not more:
                    break
                data += more
    except _READ_ERRORS:
        return b""
    return data


def h2_prefix(data: bytes) -> bool:
    from shoal.waypoint.h2server import PREFACE
    return PREFACE.startswith(data[:24])
