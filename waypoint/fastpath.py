"""HTTP/1.1 served from event-loop callbacks: the plaintext listener's fast path.

    ctx.serve(host, port, lambda: FastSession(proxy, tasks))

The coroutine path (server.py -> proxy.py -> forward.py -> h1exchange.py)
costs about ten awaits, three futures and a dozen objects per request; on a
keep-alive request with a 1 KiB answer that is most of the waypoint's CPU
(profile in docs/bench/waypoint.md). This path serves the common request
from callbacks instead:

    client bytes -> H1Server events -> Proxy.decide -> Forwarder.fast_headers
    -> a pooled PlainUpstream (one write) -> H1ResponseParser -> ResponseFramer
    -> one write to the client per upstream read

It is taken when all of these hold; otherwise that one request goes down the
coroutine path (`H1Session.handle_event`, with the decision already made)
and the connection comes back here after it:
- no request body, no Upgrade/CONNECT, no `Expect` (Forwarder.fast_headers);
- the backend port speaks HTTP/1.1 and its endpoints are plain TCP;
- the route has no mirror, no timeout and no retry.
An HTTP/2 client (prior knowledge) or a malformed request hands the whole
connection to the coroutine path.

Nothing observable differs from the coroutine path: the same decision, the
same upstream headers, the same load-balancer and keep-alive pool calls
(a reused connection that fails before any response byte is replaced once
by a fresh one), the same framing and one telemetry record per request.
`SHOAL_WAYPOINT_FAST=0` turns the fast path off (every request then takes
the coroutine path; the test suites run both ways).
"""

from __future__ import annotations

import asyncio
import os

from shoal.core import log as core_log
from shoal.core.pipe import TcpEnd
from shoal.waypoint import filters
from shoal.waypoint.downstream import IDLE_TIMEOUT, Downstream, close_stream
from shoal.waypoint.frontdoor import h2_prefix, serve_stream
from shoal.waypoint.h1framing import ResponseFramer
from shoal.waypoint.http1 import (BodyReceived, H1ResponseParser, MessageEnded, ProtocolFailed,
                                  RequestReceived, ResponseReceived, serialize_request_head,
                                  strip_hop_by_hop)
from shoal.waypoint.proxy import LocalAnswer, Proxy
from shoal.waypoint.request import RequestState
from shoal.waypoint.server import H1Session
from shoal.waypoint.upstream import (PlainUpstream, UpstreamConn, UpstreamError,
                                     UpstreamProtocolError, UpstreamReset)

LOG = core_log.get("waypoint")

# Environment switch: "0" serves every request on the coroutine path.
FAST_ENV = "SHOAL_WAYPOINT_FAST"

_FAST, _SLOW, _CLOSING = 0, 1, 2


def enabled() -> bool:
    return os.environ.get(FAST_ENV, "1") != "0"


class FastSession(TcpEnd):
    """One plaintext client connection (see the module docstring).

    It is a `TcpEnd` too: while a request (or the whole connection) is on
    the coroutine path, bytes queue as for any endpoint and the
    `H1Session` reads them; both share one parser and one event queue.
    """

    def __init__(self, proxy: Proxy, tasks: set) -> None:
        super().__init__()
        self.proxy = proxy
        self.tasks = tasks                    # the app's: drain waits for them
        self.mode = _FAST
        self.sniffed = False                  # first bytes seen (HTTP/2 or not)
        self.session: H1Session | None = None
        self.exchange: _Exchange | None = None
        self.last_active = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._held = False                    # reading paused behind a queued request
        self.served_fast = 0                  # requests answered here (tests, admin)

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.session = H1Session(self, Downstream(source_ip=peer[0]), self.proxy)
        self.proxy.sessions.add(self.session)
        self._track(self.closed)
        self.last_active = self.loop.time()
        self._timer = self.loop.call_later(IDLE_TIMEOUT, self._idle_check)

    def data_received(self, data: bytes) -> None:
        if self.mode != _FAST:
            TcpEnd.data_received(self, data)
            return
        self.last_active = self.loop.time()
        if not self.sniffed:
            self.sniffed = True
            if h2_prefix(data):       # maybe an HTTP/2 preface: frontdoor tells
                self.mode = _SLOW
                # serve_stream makes its own session; ours serves nothing.
                self.proxy.sessions.discard(self.session)
                TcpEnd.data_received(self, data)
                self._track(asyncio.ensure_future(
                    serve_stream(self, self.session.down, self.proxy)))
                return
        s = self.session
        s.events.extend(s.parser.receive_data(data))
        if self.exchange is None:
            self._pump()
        elif s.events and not self._held:
            # A pipelined request waits: read no more until it is served.
            self._held = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.mode != _FAST:
            return TcpEnd.eof_received(self)
        self._eof = True
        s = self.session
        if not s.eof:
            s.eof = True
            s.events.extend(s.parser.receive_data(b""))
        if self.exchange is None:
            self._pump()
        return True

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
        ex = self.exchange
        if ex is not None:
            ex.client_lost()
        self.proxy.sessions.discard(self.session)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.exchange is not None:
            self.exchange.hold_upstream(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.exchange is not None:
            self.exchange.hold_upstream(False)

    # -- serving ---------------------------------------------------------------------
    def _pump(self) -> None:
        """Serve queued events until one needs to wait (or the path changes)."""
        s = self.session
        while self.mode == _FAST and self.exchange is None:
            if not s.events:
                if s.eof:
                    self._end()
                elif self._held:
                    self._held = False
                    self.transport.resume_reading()
                return
            ev = s.events.popleft()
            if type(ev) is RequestReceived:
                self._request(ev)
            elif type(ev) is ProtocolFailed:
                self._slow(ev, None)
            # Anything else (the MessageEnded after a body-less request) is
            # the end of a request already served.

    def _request(self, req: RequestReceived) -> None:
        if req.upgrade or req.chunked or req.content_length:
            self._slow(req, None)      # a body or a tunnel: the coroutine path reads it
            return
        proxy = self.proxy
        proxy.lookups.refresh()
        st = proxy.begin(self.session.down, req.head)
        try:
            d = proxy.decide(st, req)
            if type(d) is LocalAnswer:
                self._local(st, req, d.status, d.body, d.flags, d.extra)
                return
            headers = proxy.forwarder.fast_headers(st, req, d.out, d.eps, d.rule, d.mirrors)
        except Exception:
            # As Proxy.handle: a bug costs one request (500), never the worker.
            LOG.exception("request failed inside the waypoint", extra={"fields": {
                "method": req.head.method, "path": req.head.target}})
            self._local(st, req, 500, b"internal error", "-", ())
            return
        if headers is None:
            self._slow(req, (st, d))
            return
        self.session.busy = True
        self.exchange = _Exchange(self, st, req, d.eps, d.response_mod,
                                  serialize_request_head(d.out, headers))

    def _local(self, st: RequestState, req: RequestReceived, status: int, body: bytes,
               flags: str, extra) -> None:
        """The waypoint's own answer (request.local_reply's bookkeeping)."""
        st.status, st.flags, st.response_bytes = status, flags, len(body)
        data, keep = ResponseFramer(req, self.proxy.draining).local(status, body, list(extra))
        self.transport.write(data)
        self.served_fast += 1
        self.proxy.record(st)
        if not keep:
            self._end()

    def free(self) -> None:
        """No exchange in progress: the next request may start."""
        self.exchange = None
        self.session.busy = False

    def resume(self) -> None:
        """Serve what queued behind the exchange that just ended."""
        self.last_active = self.loop.time()
        self._pump()

    def done(self, st: RequestState, keep: bool) -> None:
        """A fast exchange ended (its response written or given up)."""
        self.free()
        self.served_fast += 1
        self.proxy.record(st)
        if not keep:
            self._end()
            return
        self.resume()

    def _slow(self, ev, decided: tuple | None) -> None:
        """Serve `ev` on the coroutine path, then come back (if the
        connection lives on)."""
        self.mode = _SLOW
        if self._held:              # the coroutine reads the socket itself
            self._held = False
            self.transport.resume_reading()
        self._track(asyncio.ensure_future(self._serve_slow(ev, decided)))

    async def _serve_slow(self, ev, decided: tuple | None) -> None:
        s = self.session
        try:
            keep = await s.handle_event(ev, decided)
        except Exception:
            keep = False
        if not keep or self.transport is None or self.transport.is_closing():
            self.mode = _CLOSING
            await close_stream(self)
            return
        # Back to callbacks: what the coroutine left unread goes to the parser.
        self.mode = _FAST
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._queued = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        if data:
            s.events.extend(s.parser.receive_data(data))
        if self._eof and not s.eof:
            s.eof = True
            s.events.extend(s.parser.receive_data(b""))
        self.resume()

    def _end(self) -> None:
        """Close as the coroutine path does (close_stream: FIN, linger, close)."""
        if self.mode == _CLOSING:
            return
        self.mode = _CLOSING
        if self._held:
            self._held = False
            self.transport.resume_reading()
        self._track(asyncio.ensure_future(close_stream(self)))

    def _idle_check(self) -> None:
        """A client silent between requests for IDLE_TIMEOUT is closed."""
        idle = self.loop.time() - self.last_active
        if self.mode == _FAST and self.exchange is None and idle >= IDLE_TIMEOUT:
            self._timer = None
            self._end()
            return
        wait = IDLE_TIMEOUT - idle if self.mode == _FAST and self.exchange is None \
            else IDLE_TIMEOUT
        self._timer = self.loop.call_later(max(wait, 0.0), self._idle_check)

    def _track(self, fut: asyncio.Future) -> None:
        self.tasks.add(fut)
        fut.add_done_callback(self.tasks.discard)


class _Exchange:
    """One request forwarded from callbacks: endpoint choice, the upstream
    write, the response parsed and written back as it arrives."""

    __slots__ = ("fs", "st", "req", "eps", "response_mod", "head_bytes", "lb", "keys", "key",
                 "conn", "parser", "framer", "resp", "no_body", "skip_end", "fresh_tried",
                 "ended", "held")

    def __init__(self, fs: FastSession, st: RequestState, req: RequestReceived, eps: list,
                 response_mod, head_bytes: bytes) -> None:
        self.fs, self.st, self.req = fs, st, req
        self.eps, self.response_mod, self.head_bytes = eps, response_mod, head_bytes
        self.conn: UpstreamConn | None = None
        self.parser: H1ResponseParser | None = None
        self.framer: ResponseFramer | None = None
        self.resp: ResponseReceived | None = None
        self.no_body = False
        self.skip_end = False
        self.fresh_tried = False
        self.ended = False
        self.held = False
        fwd = fs.proxy.forwarder
        self.lb, self.keys = fwd.balancer(st, eps)
        by_key = {e.key: e for e in eps}
        self.key = fwd.pick(st, self.lb, self.keys, by_key, set())
        ep = by_key[self.key]
        pool = fs.proxy.pool
        conn = pool.take_idle(ep)
        while conn is not None and not (isinstance(conn.stream, PlainUpstream)
                                        and conn.stream.idle_clean):
            pool.discard(conn)
            conn = pool.take_idle(ep)
        if conn is not None:
            self._send(conn)
        else:
            self._connect(ep)

    # -- upstream --------------------------------------------------------------------
    def _connect(self, ep) -> None:
        fs = self.fs
        task = asyncio.ensure_future(fs.proxy.pool.acquire(
            ep, source_ip=self.st.down.source_ip, host=self.st.target.name, fresh=True))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        if task.cancelled():
            self._failed(UpstreamReset("connect cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            self._failed(exc if isinstance(exc, UpstreamError) else UpstreamReset(str(exc)))
            return
        conn = task.result()
        if self.ended:                       # the client left while we connected
            self.fs.proxy.pool.release(conn, True)
            return
        self._send(conn)

    def _send(self, conn: UpstreamConn) -> None:
        self.conn = conn
        self.parser = H1ResponseParser(self.req.head.method)
        stream = conn.stream
        stream.receiver = self
        stream.transport.write(self.head_bytes)
        if not self.fs._can_write:          # the client is still behind on the last one
            self.hold_upstream(True)

    def upstream_data(self, data: bytes) -> None:
        """Response bytes from upstream (b"": it closed its side)."""
        try:
            self._parse(data)
        except Exception:
            LOG.exception("response handling failed inside the waypoint")
            self._cut("UR")

    def _parse(self, data: bytes) -> None:
        try:
            events = self.parser.receive_data(data)
        except ValueError as e:
            self._failed(UpstreamReset(str(e)) if not data else UpstreamProtocolError(str(e)))
            return
        out = []
        for ev in events:
            if self.ended:
                return
            t = type(ev)
            if t is BodyReceived:
                self.st.response_bytes += len(ev.data)
                if not self.no_body:
                    out.append(self.framer.body(ev.data))
            elif t is ResponseReceived:
                s = ev.head.status
                if 100 <= s < 200 and s != 101:
                    out.append(self.framer_for().informational(s))
                    self.skip_end = True       # its MessageEnded follows
                elif s == 101:                 # never asked for: a confused upstream
                    self._failed(UpstreamProtocolError("101 to a request without Upgrade"))
                    return
                else:
                    self._head(ev)
            elif t is MessageEnded:
                if self.skip_end:
                    self.skip_end = False
                    continue
                if out:
                    self.fs.transport.write(b"".join(out))
                    out = []
                self._finish()
                return
        if out:
            self.fs.transport.write(b"".join(out))

    def framer_for(self) -> ResponseFramer:
        if self.framer is None:
            self.framer = ResponseFramer(self.req, self.fs.proxy.draining)
        return self.framer

    def _head(self, resp: ResponseReceived) -> None:
        """Forwarder._respond's head handling."""
        st, status = self.st, resp.head.status
        self.resp = resp
        st.status = status
        self.lb.finished(self.key, status < 500, self.keys)
        headers = strip_hop_by_hop(resp.head.headers)
        if self.response_mod is not None:
            headers = filters.modify_headers(headers, self.response_mod)
        self.no_body = self.req.head.method == "HEAD" or status in (204, 304)
        framer = self.framer_for()
        framer.draining = self.fs.proxy.draining
        framer.start(status, headers, content_length=resp.content_length,
                     reason=resp.head.reason, no_body=self.no_body)

    def _finish(self) -> None:
        """The response was read to its end: pool the connection (as
        H1Response.finish decides), end the client's response."""
        resp, parser, framer = self.resp, self.parser, self.framer
        reusable = resp.keep_alive and parser.clean and \
            not (resp.head.status == 204 and resp.content_length)
        self._release(reusable)
        fs = self.fs
        tail = framer.end()
        if tail:
            fs.transport.write(tail)
        if framer.close_after:
            fs.write_eof()
        self.ended = True
        fs.done(self.st, self.req.keep_alive and not framer.close_after)

    def upstream_lost(self, exc) -> None:
        if not self.ended:
            self._failed(UpstreamReset(str(exc) if exc else "upstream closed"))

    def _failed(self, err: UpstreamError) -> None:
        """The upstream failed. Before the response head: a stale pooled
        connection is replaced once, else the client gets Envoy's answer;
        after it, the client is cut off (UR)."""
        if self.ended:
            return
        conn = self.conn
        if conn is not None:
            self._release(None)
        if self.resp is not None:
            self._cut("UR")
            return
        if conn is not None and conn.reused and not self.fresh_tried:
            self.fresh_tried = True
            self.parser = None
            self.framer = None
            self._connect(conn.endpoint)
            return
        self.lb.finished(self.key, False, self.keys)
        self.ended = True
        fs = self.fs
        fs.free()
        self.st.response_bytes = 0
        fs._local(self.st, self.req, err.status, err.body.encode(), err.flags, ())
        if fs.mode == _FAST:           # _local closes the connection when not kept
            fs.resume()

    def _cut(self, flags: str) -> None:
        """The head is out and the body cannot complete: reset both sides."""
        if self.conn is not None:
            self._release(None)
        self.st.flags = flags
        self.ended = True
        self.fs.abort()
        self.fs.done(self.st, False)

    def client_lost(self) -> None:
        """The client went away mid-exchange (Envoy flag DC)."""
        if self.ended:
            return
        self.ended = True
        if self.resp is None:
            self.lb.abandoned(self.key)
        if self.conn is not None:
            self._release(None)
        self.st.flags = "DC"
        self.fs.free()
        self.fs.proxy.record(self.st)

    def hold_upstream(self, hold: bool) -> None:
        """Client backpressure: stop reading upstream while its buffer is full."""
        conn = self.conn
        if conn is None or hold == self.held or conn.stream.transport is None:
            return
        self.held = hold
        if hold:
            conn.stream.transport.pause_reading()
        else:
            conn.stream.transport.resume_reading()

    def _release(self, reusable: bool | None) -> None:
        """Give the connection back (None: it is broken, reset it)."""
        conn, self.conn = self.conn, None
        stream = conn.stream
        stream.receiver = None
        if self.held:
            self.held = False
            if stream.transport is not None:
                stream.transport.resume_reading()
        pool = self.fs.proxy.pool
        if reusable is None:
            pool.discard(conn)
        else:
            pool.release(conn, reusable)
