"""HTTP/1.1 server side: one client byte stream -> Proxy.handle per request.

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
from collections import deque

from shoal.core.pipe import READ_SIZE, Endpoint
from shoal.waypoint.downstream import (IDLE_TIMEOUT, MAX_DISCARD_BODY, READ_ERRORS, Downstream,
                                       DownstreamClosed, close_stream)
from shoal.waypoint.h1framing import ResponseFramer
from shoal.waypoint.http1 import (BodyReceived, H1Server, MessageEnded, ProtocolFailed,
                                  RequestReceived, TunnelData, simple_response)
from shoal.waypoint.message import Headers
from shoal.waypoint.proxy import Proxy


class H1Session:
    """Serves one client connection."""

    __slots__ = ("stream", "down", "proxy", "parser", "events", "eof", "closed", "busy",
                 "__weakref__")

    def __init__(self, stream: Endpoint, down: Downstream, proxy: Proxy) -> None:
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
            except READ_ERRORS:            # idle timeout, reset, or the tunnel died
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
                if ev is None or not await self.handle_event(ev):
                    break
        finally:
            self.proxy.sessions.discard(self)
            self.closed = True
            await close_stream(self.stream)

    async def handle_event(self, ev, decided: tuple | None = None) -> bool:
        """Act on one parsed event; False when the connection must end.
        (`decided`: see Proxy.handle.)"""
        if isinstance(ev, ProtocolFailed):
            await self._write(simple_response(ev.status, ev.reason.encode(), close=True))
            return False
        if not isinstance(ev, RequestReceived):
            return True
        self.busy = True
        try:
            return await self._serve(ev, decided)
        finally:
            self.busy = False

    async def _serve(self, ev: RequestReceived, decided: tuple | None = None) -> bool:
        body = _Body(self)
        sink = _Sink(self, ev)
        try:
            keep = await self.proxy.handle(self.down, ev, body, sink, decided)
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

    __slots__ = ("session", "ended", "trailers")

    def __init__(self, session: H1Session) -> None:
        self.session = session
        self.ended = False
        self.trailers: Headers | None = None     # HTTP/1.1 request trailers are dropped

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
    """Writes one response to an HTTP/1.x client, framed by `ResponseFramer`."""

    __slots__ = ("session", "req", "started", "aborted", "framer")

    def __init__(self, session: H1Session, req: RequestReceived) -> None:
        self.session = session
        self.req = req
        self.started = False
        self.aborted = False
        self.framer = ResponseFramer(req, session.proxy.draining)

    @property
    def close_after(self) -> bool:
        return self.framer.close_after

    async def informational(self, status: int, headers) -> None:
        data = self.framer.informational(status)
        if data:
            await self.session._write(data)

    async def start(self, status: int, headers, *, content_length: int | None,
                    reason: str = "", no_body: bool = False) -> None:
        self.started = True
        # Drain state is read when the head is built, as Envoy decides it.
        self.framer.draining = self.session.proxy.draining
        self.framer.start(status, headers, content_length=content_length, reason=reason,
                          no_body=no_body)

    async def send(self, data: bytes) -> None:
        if not await self.session._write(self.framer.body(data)):
            raise DownstreamClosed("client went away while receiving the response")

    async def trailers(self, headers) -> None:
        self.framer.trailers(headers)

    async def finish(self) -> None:
        data = self.framer.end()
        if data:
            await self.session._write(data)
        if self.framer.close_after:
            try:
                self.session.stream.write_eof()
            except Exception:
                pass

    async def local(self, status: int, body: bytes, extra) -> bool:
        if self.started:
            self.abort()
            return False
        self.started = True
        self.framer.draining = self.session.proxy.draining
        data, keep = self.framer.local(status, body, extra)
        if not await self.session._write(data):
            return False
        return keep

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
        await s._write(self.framer.take_head() + first)
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
