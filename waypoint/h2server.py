"""HTTP/2 (prior knowledge) server side, on `h2`.

Each HTTP/2 stream becomes one `Proxy.handle` call, running concurrently
(a task per stream), except body-less requests the callback fast path
(h2fastpath.py) forwards without a task;
upstream requests are HTTP/1.1, or HTTP/2 for HTTP/2 ports (h2exchange.py;
trailers pass through both ways, see docs/waypoint.md). Flow control bounds
memory: request DATA is acknowledged only when the proxy reads it, and
response DATA waits for the client's window.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from shoal.core import overload
from shoal.core.hbone.h2limits import FloodError, GuardedH2Connection
from shoal.core.pipe import READ_SIZE
from shoal.waypoint import fastexchange
from shoal.waypoint.downstream import close_stream
from shoal.waypoint.h2conn import DownstreamH2Connection
from shoal.waypoint.h2fastpath import H2Fast, header_block
from shoal.waypoint.h2inbox import H2Inbox
from shoal.waypoint.http1 import RequestReceived
from shoal.waypoint.message import RequestHead

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Per-stream receive window: Envoy's default initial_stream_window_size is
# 256 KiB (Istio keeps it); enough for typical request bodies in one RTT.
STREAM_WINDOW = 256 * 1024
# Connection window: Envoy's default initial_connection_window_size (1 MiB).
CONNECTION_WINDOW = 1024 * 1024
# Concurrent streams per client connection (Envoy's default is 2^31-1; we
# bound it since every stream is a task with buffers).
MAX_CONCURRENT_STREAMS = 128


class _Conn:
    def __init__(self, stream) -> None:
        self.stream = stream
        # Inbound headers are validated (they come from the client); ours are
        # built from already-parsed upstream headers, lower-cased here, so
        # h2's outbound validation and normalisation would only cost time.
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                        validate_inbound_headers=True,
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        # The same abuse limits as HBONE (rapid reset, floods, header block
        # bytes, REFUSED_STREAM above MAX_CONCURRENT_STREAMS): core.hbone.h2limits;
        # with the fast paths on, plus h2conn.py's HEADERS shortcuts.
        cls = DownstreamH2Connection if fastexchange.enabled() else GuardedH2Connection
        self.h2 = cls(cfg)
        self.windows: dict[int, asyncio.Event] = {}
        self.bodies: dict[int, "_Body"] = {}
        self.tasks: dict[int, asyncio.Task] = {}
        self.dead = False
        self.fast: H2Fast | None = None     # body-less requests served from callbacks

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.dead:
            try:
                await self.stream.write(data)
            except Exception:
                self.dead = True
                return
        self.h2.output_drained()        # the write returned: the peer is reading


class _Body(H2Inbox):
    def __init__(self, conn: _Conn, sid: int) -> None:
        self.conn, self.sid = conn, sid
        self._init_inbox()
        self.trailers: list | None = None     # request trailers, set before the end
        self.complete = False                 # the client ended the request


class _Sink:
    def __init__(self, conn: _Conn, sid: int) -> None:
        self.conn, self.sid = conn, sid
        self.started = False
        self.ended = False
        self.remaining: int | None = None   # body bytes still to send, when sized

    async def informational(self, status: int, headers) -> None:
        return None

    async def start(self, status: int, headers, *, content_length, reason="", no_body=False):
        self.started = True
        hdrs = [(b":status", str(status).encode())] + header_block(headers)
        self.conn.h2.send_headers(self.sid, hdrs, end_stream=no_body)
        self.ended = no_body
        self.remaining = None if no_body else content_length
        if no_body or content_length is None:
            await self.conn.flush()
        # else: a sized body follows at once: HEADERS go out with the first
        # DATA (one write, not two); streamed bodies get their HEADERS now.

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        c = self.conn
        while view:
            if c.dead:
                raise ConnectionResetError("client connection closed")
            try:
                window = min(c.h2.local_flow_control_window(self.sid),
                             c.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                raise ConnectionResetError("client reset the stream") from None
            if window <= 0:
                ev = c.windows.setdefault(self.sid, asyncio.Event())
                ev.clear()
                await ev.wait()
                continue
            chunk = view[:window].tobytes()
            view = view[window:]
            last = False
            if self.remaining is not None:
                self.remaining -= len(chunk)
                # The last byte of a sized body carries END_STREAM: one
                # write per response instead of a separate empty DATA frame.
                last = self.remaining <= 0 and not view
            c.h2.send_data(self.sid, chunk, end_stream=last)
            self.ended = self.ended or last
            await c.flush()

    async def trailers(self, headers) -> None:
        """End the response with a trailer block (gRPC's status lives there)."""
        if self.ended:
            return
        self.ended = True
        block = header_block(headers)
        try:
            self.conn.h2.send_headers(self.sid, block, end_stream=True)
        except h2.exceptions.StreamClosedError:
            return
        await self.conn.flush()

    async def finish(self) -> None:
        if not self.ended:
            self.ended = True
            try:
                self.conn.h2.end_stream(self.sid)
            except h2.exceptions.StreamClosedError:
                pass        # reset: by the client, or by abort() (its RST_STREAM is queued)
            await self.conn.flush()

    async def local(self, status: int, body: bytes, extra) -> bool:
        if self.started:
            self.abort()
            return False
        headers = [("content-length", str(len(body)))] + list(extra)
        if body:
            headers.insert(0, ("content-type", "text/plain"))
        await self.start(status, headers, content_length=len(body), no_body=not body)
        if body:
            await self.send(body)
            await self.finish()
        return True

    def abort(self) -> None:
        try:
            self.conn.h2.reset_stream(self.sid, ErrorCodes.INTERNAL_ERROR)
        except h2.exceptions.StreamClosedError:
            pass

    async def tunnel(self, upstream, first):
        raise ConnectionResetError("protocol upgrade is not supported over HTTP/2")


def _request(ev: h2.events.RequestReceived) -> RequestReceived:
    pseudo: dict[bytes, bytes] = {}
    headers = []
    clen = None
    for k, v in ev.headers:
        if k.startswith(b":"):
            pseudo[k] = v
            continue
        name, value = k.decode("latin-1"), v.decode("latin-1")
        if name == "content-length" and value.isdigit():
            clen = int(value)
        headers.append((name, value))
    authority = pseudo.get(b":authority", b"").decode("latin-1")
    if authority and not any(k == "host" for k, _ in headers):
        headers.insert(0, ("host", authority))
    head = RequestHead(method=pseudo.get(b":method", b"GET").decode("latin-1"),
                       target=pseudo.get(b":path", b"/").decode("latin-1"), headers=headers,
                       scheme=pseudo.get(b":scheme", b"http").decode("latin-1"),
                       authority=authority)
    ended = ev.stream_ended is not None
    return RequestReceived(head=head, http_version="2", keep_alive=True, upgrade=False,
                           chunked=not ended and clen is None,
                           content_length=0 if ended else clen)


async def serve(stream, first: bytes, down, proxy) -> None:
    """Serve one HTTP/2 prior-knowledge connection whose first bytes are `first`."""
    c = _Conn(stream)
    c.h2.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
    c.h2.initiate_connection()
    c.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    c.fast = H2Fast.attach(c, stream, proxy)
    data = first
    try:
        while data:
            try:
                events = c.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                if isinstance(e, FloodError):     # GOAWAY(ENHANCE_YOUR_CALM) is queued
                    overload.count_h2_limit(e.limit)
                await c.flush()
                break
            for ev in events:
                _dispatch(c, ev, down, proxy)
            await c.flush()
            try:
                data = await stream.read(READ_SIZE)
            except Exception:
                data = b""
    finally:
        c.dead = True
        if c.fast is not None:
            c.fast.closed()
        for t in c.tasks.values():
            t.cancel()
        for b in c.bodies.values():
            b.chunks.put_nowait(ConnectionResetError("client connection closed"))
        await close_stream(stream)


def _dispatch(c: _Conn, ev, down, proxy) -> None:
    body: _Body | None
    task: asyncio.Task | None
    if isinstance(ev, h2.events.RequestReceived):
        sid = ev.stream_id
        req = _request(ev)
        decided = None
        if c.fast is not None and ev.stream_ended is not None:
            decided = c.fast.request(sid, down, req, ev.headers)
            if decided is None:
                return                  # served from callbacks (h2fastpath.py)
        body = c.bodies[sid] = _Body(c, sid)
        task = asyncio.ensure_future(_run(c, sid, down, proxy, req, body, decided))
        c.tasks[sid] = task
    elif isinstance(ev, h2.events.DataReceived):
        body = c.bodies.get(ev.stream_id)
        if body is not None:
            body.chunks.put_nowait((ev.data, ev.flow_controlled_length))
        else:
            c.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
    elif isinstance(ev, h2.events.TrailersReceived):
        body = c.bodies.get(ev.stream_id)
        if body is not None:
            body.trailers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers]
    elif isinstance(ev, h2.events.StreamEnded):
        body = c.bodies.get(ev.stream_id)
        if body is not None:
            body.complete = True
            body.chunks.put_nowait(None)
    elif isinstance(ev, h2.events.StreamReset):
        if c.fast is not None and c.fast.reset(ev.stream_id):
            return
        task = c.tasks.pop(ev.stream_id, None)
        if task is not None:
            task.cancel()
    elif isinstance(ev, h2.events.WindowUpdated):
        if c.fast is not None:
            c.fast.window_opened(ev.stream_id)
        if ev.stream_id == 0:
            for e in c.windows.values():
                e.set()
        elif ev.stream_id in c.windows:
            c.windows[ev.stream_id].set()
    elif isinstance(ev, h2.events.RemoteSettingsChanged):
        if c.fast is not None:
            c.fast.window_opened(0)
        for e in c.windows.values():
            e.set()
    elif isinstance(ev, h2.events.ConnectionTerminated):
        c.dead = True


async def _run(c: _Conn, sid: int, down, proxy, req: RequestReceived, body: _Body,
               decided: tuple | None = None) -> None:
    sink = _Sink(c, sid)
    try:
        await proxy.handle(down, req, body, sink, decided)
        await sink.finish()
    except asyncio.CancelledError:
        pass
    except Exception:
        sink.abort()
        await c.flush()
    finally:
        c.tasks.pop(sid, None)
        c.windows.pop(sid, None)
        if c.bodies.pop(sid, None) is not None and not body.complete and not c.dead:
            # Answered before the request body ended: ask the client to stop
            # sending (RFC 9113 8.1, RST_STREAM NO_ERROR, as Envoy does) and
            # give back the window of what was queued and never read.
            _reset_unfinished(c, sid, body)
            await c.flush()


def _reset_unfinished(c: _Conn, sid: int, body: _Body) -> None:
    flow = 0
    while not body.chunks.empty():
        item = body.chunks.get_nowait()
        if isinstance(item, tuple):
            flow += item[1]
    try:
        if flow:
            c.h2.acknowledge_received_data(flow, sid)
        c.h2.reset_stream(sid, ErrorCodes.NO_ERROR)
    except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
        pass
