"""A real h2c (HTTP/2 prior knowledge) backend for waypoint tests: asyncio +
h2, in its own thread and event loop.

    b = H2Backend(host="127.23.0.1").start()      # port chosen by the kernel
    b.port, b.seen[-1] -> Seen(protocol, method, path, headers, body, trailers)
    b.stop()

Paths (any method), every response ending with trailers `grpc-status: 0`,
`grpc-message: ok`:
- `/echo...`: the request body is the response body (streamed back as it arrives);
- `/bytes/<n>`: <n> bytes of `pattern(n)`;
- `/early`: body `early` and trailers at once, the request body is dropped;
- `/reset`: RST_STREAM before any response;
- anything else: a JSON body {protocol, method, path, headers, body_len}.
A connection not starting with the HTTP/2 preface is read as HTTP/1.1,
recorded with protocol "HTTP/1.1" and answered 200 with the same JSON (so a
test can assert which protocol reached the backend).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TRAILERS = [("grpc-status", "0"), ("grpc-message", "ok")]


def pattern(n: int) -> bytes:
    """Deterministic, non-repeating-looking bytes for byte-exact checks."""
    block = bytes((i * 7 + i // 251) & 0xFF for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


@dataclass
class Seen:
    protocol: str
    method: str
    path: str
    headers: dict
    body: bytes = b""
    trailers: dict = field(default_factory=dict)


class _Stream:
    def __init__(self, method, path, headers) -> None:
        self.method, self.path, self.headers = method, path, headers
        self.body = bytearray()
        self.trailers: dict = {}
        self.out: asyncio.Queue = asyncio.Queue()    # response body chunks; None = end
        self.window = asyncio.Event()
        self.started = False


class H2Backend:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.seen: list[Seen] = []
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None

    def start(self) -> "H2Backend":
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, self.host, 0), self._loop)
        self._server = fut.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if not self._loop.is_running():
            return

        async def _stop():
            self._server.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()
        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- connections ----------------------------------------------------------
    async def _client(self, reader, writer) -> None:
        self.connections += 1
        try:
            first = await reader.readexactly(24)
        except asyncio.IncompleteReadError:
            writer.close()
            return
        try:
            if first == PREFACE:
                await self._h2(first, reader, writer)
            else:
                await self._h1(first, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _h1(self, first, reader, writer) -> None:
        data = first + await reader.readuntil(b"\r\n\r\n") if b"\r\n\r\n" not in first else first
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        body = rest + (await reader.readexactly(n - len(rest)) if n > len(rest) else b"")
        self.seen.append(Seen("HTTP/1.1", method, path, headers, body))
        out = json.dumps({"protocol": "HTTP/1.1", "method": method, "path": path,
                          "headers": headers, "body_len": len(body)}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(out) + out)
        await writer.drain()

    async def _h2(self, first, reader, writer) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="latin-1"))
        conn.initiate_connection()
        streams: dict[int, _Stream] = {}
        tasks = set()

        async def flush():
            data = conn.data_to_send()
            if data:
                writer.write(data)
                await writer.drain()

        async def respond(sid: int, s: _Stream) -> None:
            try:
                conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                        ("x-backend-protocol", "HTTP/2")])
                await flush()
                while True:
                    chunk = await s.out.get()
                    if chunk is None:
                        break
                    view = memoryview(chunk)
                    while view:
                        window = min(conn.local_flow_control_window(sid),
                                     conn.max_outbound_frame_size)
                        if window <= 0:
                            s.window.clear()
                            await s.window.wait()
                            continue
                        conn.send_data(sid, view[:window].tobytes())
                        view = view[window:]
                        await flush()
                conn.send_headers(sid, TRAILERS, end_stream=True)
                await flush()
            except (h2.exceptions.StreamClosedError, ConnectionError):
                pass

        def start(sid: int, s: _Stream) -> None:
            s.started = True
            t = asyncio.ensure_future(respond(sid, s))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        data = first
        while data:
            for ev in conn.receive_data(data):
                sid = getattr(ev, "stream_id", 0)
                if isinstance(ev, h2.events.RequestReceived):
                    h = dict(ev.headers)
                    s = streams[sid] = _Stream(h.get(":method"), h.get(":path"), h)
                    if s.path.startswith("/echo"):
                        start(sid, s)        # echo streams back while the body arrives
                    elif s.path.startswith("/early"):
                        s.out.put_nowait(b"early")    # answer without reading the body
                        s.out.put_nowait(None)
                        start(sid, s)
                    elif s.path.startswith("/reset"):
                        conn.reset_stream(sid)
                elif isinstance(ev, h2.events.DataReceived):
                    s = streams[sid]
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    if s.path.startswith(("/early", "/reset")):
                        continue
                    if s.path.startswith("/echo"):
                        s.out.put_nowait(ev.data)
                    else:
                        s.body += ev.data
                elif isinstance(ev, h2.events.TrailersReceived):
                    streams[sid].trailers = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded):
                    s = streams[sid]
                    if s.path.startswith(("/early", "/reset")):
                        continue
                    self.seen.append(Seen("HTTP/2", s.method, s.path, s.headers,
                                          bytes(s.body), s.trailers))
                    if s.path.startswith("/bytes/"):
                        n = int(s.path.split("/")[2])
                        body = pattern(n)
                        for i in range(0, n, 65536):
                            s.out.put_nowait(body[i:i + 65536])
                    elif not s.path.startswith("/echo"):
                        s.out.put_nowait(json.dumps({
                            "protocol": "HTTP/2", "method": s.method, "path": s.path,
                            "headers": s.headers, "body_len": len(s.body),
                            "trailers": s.trailers}).encode())
                    s.out.put_nowait(None)
                    if not s.started:
                        start(sid, s)
                elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    for st in streams.values():
                        st.window.set()
            await flush()
            data = await reader.read(65536)
        for t in tasks:
            t.cancel()
