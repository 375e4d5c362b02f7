"""HTTP/2 (h2c, prior knowledge) to upstream endpoints, for ports whose
protocol is HTTP/2 (Istio's protocol selection: appProtocol `http2`,
`grpc`, `kubernetes.io/h2c`, or a port named `http2-*`, `grpc-*`, `h2c-*`).

    pool = H2Pool(connector)
    s = await pool.open_stream(ep, h2_headers, end_stream=False)
    await s.send(data); await s.end(trailers)
    status, headers = await s.response()
    while (data := await s.read()): ...
    s.trailers        # after read() returned b"": response trailers or None

One connection per endpoint carries many streams (a new one only when the
server's MAX_CONCURRENT_STREAMS is reached or the connection died). Flow
control bounds memory: response DATA is acknowledged only when read, and
request DATA waits for the server's window. The pure parts (which ports,
header mapping) are functions; the rest is a thin adapter over `h2`.
"""

from __future__ import annotations

import asyncio
import time

import h2.config
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from shoal.core.hbone.h2fast import BoundedH2Connection
from shoal.core.pipe import READ_SIZE
from shoal.waypoint import message
from shoal.waypoint.h2inbox import H2Inbox
from shoal.waypoint.message import Headers, RequestHead
from shoal.waypoint.upstream import IDLE_TIMEOUT, UpstreamProtocolError, UpstreamReset

# Istio's protocol selection for HTTP/2: appProtocol values and port-name
# prefixes (`<proto>` or `<proto>-<suffix>`).
H2_APP_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c"})
H2_NAME_PREFIXES = ("http2", "grpc", "h2c")
# Per-stream receive window: Envoy's default initial_stream_window_size
# (256 KiB) bounds what one upstream stream can buffer in us.
STREAM_WINDOW = 256 * 1024
# Connection receive window: Envoy's default (1 MiB).
CONNECTION_WINDOW = 1024 * 1024
# Connections kept per endpoint: one multiplexes up to the server's
# MAX_CONCURRENT_STREAMS; more only when that is reached.
MAX_CONNS_PER_ENDPOINT = 8
# Connection-specific headers forbidden in HTTP/2 (RFC 9113 8.2.2); `host`
# becomes :authority.
_FORBIDDEN = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "upgrade", "host", "te", "http2-settings"})


def speaks_h2(port) -> bool:
    """Does this ServicePort (or None) take HTTP/2 upstream?"""
    if port is None:
        return False
    if (port.app_protocol or "").lower() in H2_APP_PROTOCOLS:
        return True
    name = (port.name or "").lower()
    return name in H2_NAME_PREFIXES or name.startswith(_H2_NAME_DASHED)


_H2_NAME_DASHED = tuple(p + "-" for p in H2_NAME_PREFIXES)


def request_headers(head: RequestHead, headers: Headers) -> list[tuple[bytes, bytes]]:
    """HTTP/1-style request headers -> an HTTP/2 header block (pseudo first)."""
    authority = message.get(headers, "host") or head.authority
    out = [(b":method", head.method.encode("latin-1")), (b":scheme", b"http"),
           (b":authority", authority.encode("latin-1")),
           (b":path", (head.target or "/").encode("latin-1"))]
    for k, v in headers:
        lk = k.lower()
        if lk not in _FORBIDDEN:
            out.append((lk.encode("latin-1"), v.encode("latin-1")))
    te = message.get(head.headers, "te") or ""
    if "trailers" in te.lower():      # gRPC servers require `te: trailers`
        out.append((b"te", b"trailers"))
    return out


def response_headers(raw) -> tuple[int, Headers]:
    """An HTTP/2 response header block -> (status, headers without pseudo)."""
    status = 0
    out: Headers = []
    for k, v in raw:
        k = k.decode("latin-1") if isinstance(k, bytes) else k
        v = v.decode("latin-1") if isinstance(v, bytes) else v
        if k == ":status":
            status = int(v) if v.isdigit() else 0
        elif not k.startswith(":"):
            out.append((k, v))
    return status, out


def trailer_block(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers
            if k.lower() not in _FORBIDDEN and not k.startswith(":")]


class H2Stream(H2Inbox):
    """One request/response exchange on an `H2Connection`; `read()` gives the
    response body (b"" at its end) and raises UpstreamReset."""

    conn: H2Connection

    def __init__(self, conn: "H2Connection", sid: int) -> None:
        self.conn, self.sid = conn, sid
        self.head: asyncio.Future = asyncio.get_running_loop().create_future()
        self._init_inbox()
        self.window = asyncio.Event()
        self.trailers: Headers | None = None
        self.error: Exception | None = None
        self.ended = False          # our side ended

    async def response(self) -> tuple[int, Headers]:
        return await self.head

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        c = self.conn
        while view:
            if self.error is not None:
                raise self.error
            try:
                window = min(c.h2.local_flow_control_window(self.sid), c.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                raise UpstreamReset("upstream closed the stream") from None
            if window <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            c.h2.send_data(self.sid, view[:window].tobytes())
            view = view[window:]
            await c.flush()

    async def end(self, trailers: Headers | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            if trailers:
                self.conn.h2.send_headers(self.sid, trailer_block(trailers), end_stream=True)
            else:
                self.conn.h2.end_stream(self.sid)
        except h2.exceptions.StreamClosedError:
            return
        await self.conn.flush()

    def release(self) -> None:
        """The exchange is over on both sides: forget the stream."""
        self.conn.streams.pop(self.sid, None)

    def reset(self) -> None:
        try:
            self.conn.h2.reset_stream(self.sid, ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.conn.streams.pop(self.sid, None)
        asyncio.ensure_future(self.conn.flush())

    def fail(self, err: Exception) -> None:
        self.error = err
        if not self.head.done():
            self.head.set_exception(err)
            self.head.exception()       # retrieved: no "never retrieved" warning
        self.chunks.put_nowait(err)
        self.window.set()


class H2Connection:
    """One HTTP/2 client connection over a byte stream (TCP or HBONE)."""

    def __init__(self, stream, key: str) -> None:
        self.stream, self.key = stream, key
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_inbound_headers=True,
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        self.h2 = BoundedH2Connection(cfg)   # bounded closed-stream history
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.streams: dict[int, H2Stream] = {}
        self.dead = False
        self.goaway = False
        self.last_used = time.monotonic()
        self.reader: asyncio.Task | None = None

    def start(self) -> None:
        self.reader = asyncio.ensure_future(self._read_loop())

    @property
    def has_capacity(self) -> bool:
        return not self.dead and not self.goaway and \
            self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.dead:
            try:
                await self.stream.write(data)
            except Exception as e:
                self._die(UpstreamReset(f"upstream connection {self.key} failed: {e}"))

    async def open_stream(self, headers, end_stream: bool) -> H2Stream:
        self.last_used = time.monotonic()
        sid = self.h2.get_next_available_stream_id()
        s = self.streams[sid] = H2Stream(self, sid)
        self.h2.send_headers(sid, headers, end_stream=end_stream)
        s.ended = end_stream
        await self.flush()
        if self.dead:
            raise UpstreamReset(f"upstream connection {self.key} closed")
        return s

    async def _read_loop(self) -> None:
        err: Exception = UpstreamReset(f"upstream {self.key} closed the connection")
        try:
            while not self.dead:
                data = await self.stream.read(READ_SIZE)
                if not data:
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    err = UpstreamProtocolError(f"HTTP/2 from {self.key}: {e}")
                    break
                for ev in events:
                    self._event(ev)
                await self.flush()
        except asyncio.CancelledError:
            raise
        except Exception as e:       # reset, HBONE failure: every stream fails
            err = UpstreamReset(f"upstream {self.key}: {e}")
        finally:
            self._die(err)

    def _event(self, ev) -> None:
        s = self.streams.get(getattr(ev, "stream_id", 0) or 0)
        if isinstance(ev, h2.events.ResponseReceived):
            if s is not None and not s.head.done():
                s.head.set_result(response_headers(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            if s is not None:
                s.chunks.put_nowait((ev.data, ev.flow_controlled_length))
            else:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            if s is not None:
                s.trailers = response_headers(ev.headers)[1]
        elif isinstance(ev, h2.events.StreamEnded):
            if s is not None:
                if not s.head.done():
                    s.fail(UpstreamProtocolError("upstream ended the stream without headers"))
                else:
                    s.chunks.put_nowait(None)
                if s.ended:
                    self.streams.pop(s.sid, None)
        elif isinstance(ev, h2.events.StreamReset):
            if s is not None:
                self.streams.pop(s.sid, None)
                s.fail(UpstreamReset(f"upstream reset the stream (error {ev.error_code})"))
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for st in self.streams.values():
                st.window.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            # GOAWAY: no new streams here; streams above last_stream_id were
            # never processed, the others finish (we keep reading until EOF).
            self.goaway = True
            last = ev.last_stream_id or 0
            for sid, st in list(self.streams.items()):
                if sid > last:
                    st.fail(UpstreamReset("upstream sent GOAWAY"))

    def _die(self, err: Exception) -> None:
        self.dead = True
        for s in list(self.streams.values()):
            if s.error is None:     # a body already ended reads its end first
                s.fail(err)
        self.streams.clear()
        try:
            self.stream.close()
        except Exception:
            pass

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        self._die(UpstreamReset("waypoint closed the upstream connection"))


class H2Pool:
    """Multiplexed HTTP/2 connections per endpoint."""

    def __init__(self, connector) -> None:
        self.connector = connector
        self._conns: dict[str, list[H2Connection]] = {}
        self._opening: dict[str, asyncio.Future] = {}

    async def _conn(self, ep, source_ip: str, host: str) -> H2Connection:
        conns = [c for c in self._conns.get(ep.key, ()) if not c.dead]
        self._conns[ep.key] = conns
        for c in conns:
            if c.has_capacity:
                return c
        pending = self._opening.get(ep.key)
        if pending is not None:      # another request is dialling: share it
            c = await asyncio.shield(pending)
            if c.has_capacity:
                return c
        fut = asyncio.get_running_loop().create_future()
        self._opening[ep.key] = fut
        try:
            stream = await self.connector.open(ep, source_ip=source_ip, host=host)
            c = H2Connection(stream, ep.key)
            c.start()
            await c.flush()
            if len(conns) < MAX_CONNS_PER_ENDPOINT:
                conns.append(c)
            fut.set_result(c)
            return c
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            self._opening.pop(ep.key, None)

    async def open_stream(self, ep, headers, *, end_stream: bool, source_ip: str = "",
                          host: str = "") -> H2Stream:
        c = await self._conn(ep, source_ip, host)
        return await c.open_stream(headers, end_stream)

    def sweep(self, now: float | None = None) -> int:
        """Close connections without streams, unused for IDLE_TIMEOUT (as
        the HTTP/1.1 pool does). Returns how many were closed."""
        now = time.monotonic() if now is None else now
        closed = 0
        for key in list(self._conns):
            keep = []
            for c in self._conns[key]:
                if c.dead or (not c.streams and now - c.last_used >= IDLE_TIMEOUT):
                    closed += not c.dead
                    c.close()
                else:
                    keep.append(c)
            if keep:
                self._conns[key] = keep
            else:
                del self._conns[key]
        return closed

    def close(self) -> None:
        for conns in self._conns.values():
            for c in conns:
                c.close()
        self._conns.clear()

    def count(self) -> int:
        return sum(1 for cs in self._conns.values() for c in cs if not c.dead)
