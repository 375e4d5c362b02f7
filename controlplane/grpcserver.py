"""gRPC for the CA: Istio's `IstioCertificateService/CreateCertificate` over HTTP/2.

The CA listener (controlplane/server.py) negotiates ALPN: `h2` connections
come here, `http/1.1` ones get shoal's JSON API. A unary gRPC call is one
HTTP/2 request (POST, `content-type: application/grpc`, one length-prefixed
message) answered with headers, one message and trailers carrying
`grpc-status` / `grpc-message`; the h2 library does the framing.

`GrpcConnection` is the adapter for one connection; what a call means is the
`handle(headers, message) -> (grpc status, message text, response bytes)`
callable it is given, so authentication and signing stay in CaServer.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, cast
from urllib.parse import quote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from shoal.core.identity import istioca

# A client that sends nothing for this long is dropped: ztunnel opens a
# channel per certificate burst, it does not need one kept forever.
IDLE_TIMEOUT = 60.0
READ_SIZE = 64 * 1024
# Streams in flight on one connection: certificate requests come a few at a
# time (one per pod on a node starting up).
MAX_CONCURRENT_STREAMS = 100

Handler = Callable[[dict[str, str], bytes], Awaitable[tuple[int, str, bytes]]]


class GrpcConnection:
    """Serve unary calls on one accepted, TLS-wrapped, ALPN-h2 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handle: Handler) -> None:
        self.reader, self.writer, self.handle = reader, writer, handle
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self._headers: dict[int, dict[str, str]] = {}
        self._bodies: dict[int, bytearray] = {}
        self._tasks: set[asyncio.Task] = set()

    async def serve(self) -> None:
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                                   MAX_CONCURRENT_STREAMS})
        await self._flush()
        try:
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await self._flush()
                    break
                if not self._dispatch(events):
                    break
                await self._flush()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            for t in self._tasks:
                t.cancel()

    def _dispatch(self, events) -> bool:
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                # header_encoding="utf-8" above: h2 hands out str pairs
                self._headers[ev.stream_id] = dict(cast("list[tuple[str, str]]", ev.headers))
                self._bodies[ev.stream_id] = bytearray()
            elif isinstance(ev, h2.events.DataReceived):
                body = self._bodies.get(ev.stream_id)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if body is None:
                    continue
                body += ev.data
                if len(body) > istioca.MAX_MESSAGE_BYTES + 5:
                    self._finish(ev.stream_id, istioca.RESOURCE_EXHAUSTED, "request too large")
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in self._headers:
                task = asyncio.ensure_future(self._call(ev.stream_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(ev, h2.events.StreamReset):
                self._headers.pop(ev.stream_id, None)
                self._bodies.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                return False
        return True

    async def _call(self, stream_id: int) -> None:
        headers = self._headers.get(stream_id, {})
        body = bytes(self._bodies.get(stream_id, b""))
        if headers.get(":path") != istioca.METHOD_PATH:
            status, msg, out = istioca.UNIMPLEMENTED, f"unknown method {headers.get(':path')}", b""
        elif not headers.get("content-type", "").startswith(istioca.GRPC_CONTENT_TYPE):
            status, msg, out = istioca.INVALID_ARGUMENT, "content-type must be application/grpc", b""
        else:
            try:
                status, msg, out = await self.handle(headers, istioca.unframe(body))
            except istioca.FramingError as e:
                status, msg, out = istioca.INVALID_ARGUMENT, str(e), b""
        self._finish(stream_id, status, msg, out)
        await self._flush()

    def _finish(self, stream_id: int, status: int, message: str, payload: bytes = b"") -> None:
        if self._headers.pop(stream_id, None) is None:
            return
        self._bodies.pop(stream_id, None)
        try:
            self.conn.send_headers(stream_id, [(":status", "200"),
                                               ("content-type", istioca.GRPC_CONTENT_TYPE)])
            if status == istioca.OK:
                framed = istioca.frame(payload)
                step = self.conn.max_outbound_frame_size
                for i in range(0, len(framed), step):
                    self.conn.send_data(stream_id, framed[i:i + step])
            trailers = [("grpc-status", str(status))]
            if message:
                trailers.append(("grpc-message", quote(message, safe=" :/,.'()-_")))
            self.conn.send_headers(stream_id, trailers, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass   # the client reset the stream meanwhile

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()
