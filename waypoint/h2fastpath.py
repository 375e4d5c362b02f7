"""HTTP/2 client requests served from event-loop callbacks: no task per stream.

    fast = H2Fast.attach(conn, stream)     # None: this connection cannot
    fast.request(sid, down, req)           # False: take the task per stream

h2server.py reads the client connection and feeds `h2`, which stays the
owner of the connection (HPACK, SETTINGS, flow control, errors). A request
that arrives whole (HEADERS with END_STREAM, no body) and that
`Forwarder.fast_headers` accepts (an HTTP/1.1 port over plain TCP, no
mirror, timeout or retry; gRPC is never body-less) is forwarded by a
`fastexchange.Exchange`, as for an HTTP/1.1 client; its response goes back
through `h2` with the frames h2server's `_Sink` would send:
- HEADERS at once, END_STREAM on them when there is no body;
- DATA no larger than the stream and connection windows and the client's
  max frame size, the last DATA of a sized body carrying END_STREAM (else
  an empty DATA with END_STREAM at the end); a shut window parks the rest
  until the client's WINDOW_UPDATE (or SETTINGS) and holds the upstream
  read meanwhile, so memory stays bounded by one upstream read;
- the waypoint's own answers (404, 403, 503...) as `_Sink.local`.
A request whose (method, :path, :authority) has a plan (planpath.py) for
a plaintext client skips Proxy.begin, Proxy.decide and fast_headers: its
upstream head comes from `_h1.plan_h2` (plan.c, the HTTP/1.1 plan path's
head builder on h2's fields) and, with the C tally on, it is counted there
(`_Stream.done`); a request decided in Python here may leave a plan, as on
the HTTP/1.1 path.
Every other request of the connection takes h2server's task per stream,
with the decision already made. Writes are batched: the responses completed
in one pass of the event loop leave in one write (h2 still serialises
them, in its order).

Only a client connection whose endpoint reports its transport's write
pressure (`watch_writing`, fastpath.FastSession) is served here;
`SHOAL_WAYPOINT_FAST=0` turns this path off with the HTTP/1.1 one.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any

import h2.exceptions
from h2.errors import ErrorCodes

from shoal.waypoint import fastexchange
from shoal.waypoint.fastexchange import LOG, Exchange, take_clean
from shoal.waypoint.http1 import RequestReceived, serialize_request_head
from shoal.waypoint.message import Headers
from shoal.waypoint.planpath import Plan
from shoal.waypoint.proxy import LocalAnswer, Proxy
from shoal.waypoint.request import RequestState
from shoal.waypoint.upstream import UpstreamError

# Connection-specific headers forbidden in HTTP/2 (RFC 9113 8.2.2).
FORBIDDEN = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                       "upgrade"})


# The worker's HTTP/2 client connections on this path (tests, debugging).
LIVE: "weakref.WeakSet[H2Fast]" = weakref.WeakSet()


def header_block(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Response (or trailer) fields as h2 sends them: lower-case, no
    connection-specific fields. Shared with h2server's `_Sink`."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers
            if k.lower() not in FORBIDDEN]


class H2Fast:
    """The callback-served streams of one client connection."""

    __slots__ = ("conn", "stream", "proxy", "streams", "parked", "heads", "_scheduled",
                 "served_fast", "__weakref__")

    def __init__(self, conn: Any, stream: Any, proxy: Proxy) -> None:
        self.conn = conn                    # h2server._Conn: .h2, .dead
        self.stream = stream                # the client endpoint (a FastSession)
        self.proxy = proxy
        self.streams: dict[int, _Stream] = {}     # stream id -> its exchange in progress
        self.parked: dict[int, H2Framer] = {}     # responses waiting for window
        self.heads: list[H2Framer] = []           # HEADERS held for their first DATA
        self._scheduled = False
        self.served_fast = 0                # requests answered here (tests)

    @classmethod
    def attach(cls, conn: Any, stream: Any, proxy: Proxy) -> "H2Fast | None":
        """A fast path for `conn`, if enabled and `stream` can report write pressure."""
        watch = getattr(stream, "watch_writing", None)
        if watch is None or not fastexchange.enabled():
            return None
        fast = cls(conn, stream, proxy)
        watch(fast.writing_changed)
        LIVE.add(fast)
        return fast

    # -- requests ----------------------------------------------------------------
    def request(self, sid: int, down: Any, req: RequestReceived,
                fields: list | None = None) -> tuple | None:
        """Serve a body-less request from callbacks if it qualifies.
        `fields`: h2's for it (pseudo-headers first), for the plan lookup.

        Returns None when it is served (or answered) here, else the
        (RequestState, decision) to hand to the task per stream."""
        proxy = self.proxy
        plans = proxy.plans
        if plans is not None and down.target is None and down.source_principal is None:
            t = plans.request_h2(fields) if fields is not None else None
            if t is not None:
                self._planned(sid, down, req, *t)
                return None
        else:
            plans = None
        proxy.lookups.refresh()
        st = proxy.begin(down, req.head)
        s = _Stream(self, sid)
        try:
            d = proxy.decide(st, req)
            if isinstance(d, LocalAnswer):
                s.local(st, d.status, d.body, d.flags, d.extra)
                return None
            headers = None
            if st.grpc_in is None:          # gRPC trailers-only answers: the task's rules
                headers = proxy.forwarder.fast_headers(st, req, d.out, d.eps, d.rule,
                                                       d.mirrors)
        except Exception:
            LOG.exception("request failed inside the waypoint", extra={"fields": {
                "method": req.head.method, "path": req.head.target}})
            s.local(st, 500, b"internal error", "-", ())
            return None
        if headers is None:
            return (st, d)
        if plans is not None:
            plans.install(st, req, d)
        self.streams[sid] = s
        s.exchange = Exchange(s, st, req, d.eps, d.response_mod,
                              serialize_request_head(d.out, headers))
        return None

    def _planned(self, sid: int, down: Any, req: RequestReceived, plan: Plan,
                 head_bytes: bytes, request_id: str, traceparent: str,
                 parent_span: str) -> None:
        """Forward a request served from `plan`: the RequestState the
        Python path would have made, the endpoint picked as
        FastSession._planned picks it, the head plan.c built."""
        proxy = self.proxy
        st = RequestState(down=down, head=req.head, t0=proxy.clock())
        lb = proxy.lookups.balancer(plan.lb_key)
        keys = plan.keys
        key = lb.pick(keys)
        lb.started(key)
        conn = take_clean(proxy.pool, plan.by_key[key])
        st.authority, st.target, st.route = req.head.authority, plan.target, plan.route
        st.backend, st.backend_port = plan.backend, plan.port
        st.traceparent, st.parent_span, st.request_id = traceparent, parent_span, request_id
        st.upstream, st.upstream_workload = key, plan.by_key[key].workload
        s = _Stream(self, sid)
        s.plan = plan
        self.streams[sid] = s
        s.exchange = Exchange(s, st, req, plan.eps, None, head_bytes,
                              picked=(lb, keys, plan.by_key, key, conn))

    # -- h2 events for fast streams -------------------------------------------------
    def reset(self, sid: int) -> bool:
        """The client reset `sid` (RST_STREAM). True if it was ours."""
        self.parked.pop(sid, None)
        s = self.streams.get(sid)
        if s is None:
            return False
        s.client_lost()
        return True

    def window_opened(self, sid: int) -> None:
        """WINDOW_UPDATE (0: the connection's) or new SETTINGS (-1): send
        what waits for window."""
        if not self.parked:
            return
        if sid > 0:
            f = self.parked.get(sid)
            if f is not None:
                f.push()
        else:
            for f in list(self.parked.values()):
                f.push()
        self.flush_soon()

    def closed(self) -> None:
        """The client connection is gone: every exchange in progress is a DC."""
        self.parked.clear()
        self.heads.clear()
        for s in list(self.streams.values()):
            s.client_lost()

    # -- output ----------------------------------------------------------------------
    def writing_changed(self) -> None:
        for s in list(self.streams.values()):
            s.update_hold()

    def write_blocked(self) -> bool:
        return not self.stream._can_write

    def flush_soon(self) -> None:
        """Write h2's output once this pass of the event loop is over:
        responses finishing in the same pass share one write."""
        if not self._scheduled:
            self._scheduled = True
            self.stream.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        conn = self.conn
        if self.heads:
            heads, self.heads = self.heads, []
            for f in heads:
                f.send_head()
        data = conn.h2.data_to_send()
        if not data or conn.dead:
            return
        t = self.stream.transport
        if t is None or t.is_closing():
            conn.dead = True
            return
        t.write(data)
        if self.stream._can_write:
            conn.h2.output_drained()      # written through: the client is reading


class _Stream:
    """One callback-served stream: `fastexchange.ClientSide` for its exchange."""

    __slots__ = ("fast", "sid", "proxy", "exchange", "out", "plan")
    native_h1 = False           # its responses are framed as HTTP/2 (H2Framer), not in C

    def __init__(self, fast: H2Fast, sid: int) -> None:
        self.fast, self.sid = fast, sid
        self.proxy = fast.proxy
        self.exchange: Exchange | None = None
        self.out: H2Framer | None = None
        self.plan: Plan | None = None       # served from this plan (planpath.py)

    def write_blocked(self) -> bool:
        return self.fast.write_blocked()

    def framer(self, req: RequestReceived) -> "H2Framer":
        self.out = H2Framer(self)
        return self.out

    def client_write(self, data: bytes) -> None:
        self.fast.flush_soon()            # the framer queued the frames in h2

    def write_eof(self) -> None:
        """Never asked: an HTTP/2 framer does not close the connection."""

    def free(self) -> None:
        self.exchange = None
        self.fast.streams.pop(self.sid, None)

    def done(self, st: RequestState, keep: bool) -> None:
        self.free()
        self.fast.served_fast += 1
        plan = self.plan
        if plan is None or plan.slots is None or not self._tally(st, plan.slots):
            self.proxy.record(st)
        self.fast.flush_soon()

    def _tally(self, st: RequestState, slots: dict) -> bool:
        """Count `st` in the telemetry tally (native/tally.c) as the record
        would count it; False when its label set has no slot (record it).
        `slots` is the plan's; HTTP/1.1's CExchange keys it (endpoint,
        status), these keys also hold what tells an HTTP/2 record's label
        set from those: the protocol and the flags."""
        proxy = self.proxy
        k = (st.upstream, st.status, st.flags, st.down.protocol)
        slot = slots.get(k)
        if slot is None:
            slot = slots[k] = proxy.telemetry.slot(proxy.record_of(st))
        if slot < 0:
            return False
        proxy.telemetry.tally.add(slot, (proxy.clock() - st.t0) * 1000.0,
                                  float(st.request_bytes), float(st.response_bytes))
        return True

    def answer_failed(self, st: RequestState, req: RequestReceived, err: UpstreamError) -> None:
        self.free()
        self.local(st, err.status, err.body.encode(), err.flags, ())

    def abort(self) -> None:
        """As `_Sink.abort`: RST_STREAM(INTERNAL_ERROR)."""
        self.fast.parked.pop(self.sid, None)
        try:
            self.fast.conn.h2.reset_stream(self.sid, ErrorCodes.INTERNAL_ERROR)
        except h2.exceptions.StreamClosedError:
            pass
        self.fast.flush_soon()

    def client_lost(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client_lost()              # records the DC, frees us
        else:
            self.free()

    def update_hold(self) -> None:
        """Hold the upstream read while the client cannot take more."""
        ex = self.exchange
        if ex is not None:
            out = self.out
            ex.hold_upstream(self.fast.write_blocked() or (out is not None and bool(out.pending)))

    def local(self, st: RequestState, status: int, body: bytes, flags: str, extra) -> None:
        """The waypoint's own answer, framed as `_Sink.local` (request.local_reply's
        bookkeeping), and its record."""
        st.status, st.flags, st.response_bytes = status, flags, len(body)
        headers = [("content-length", str(len(body)))] + list(extra)
        if body:
            headers.insert(0, ("content-type", "text/plain"))
        f = self.out = H2Framer(self)
        f.start(status, headers, content_length=len(body), no_body=not body)
        if body:
            f.body(body)
        f.end()
        self.fast.served_fast += 1
        self.proxy.record(st)
        self.fast.flush_soon()


class H2Framer:
    """One response as HTTP/2 frames, queued in h2 (h1framing.ResponseFramer's
    methods; each returns b"": the bytes leave with h2's output).

    The HEADERS of a response with a body wait for its first DATA (one
    `send_response` call queues both), or for the end of this pass of the
    event loop (a head whose body is slow to come is not held back)."""

    __slots__ = ("s", "draining", "close_after", "ended", "remaining", "pending", "end_pending",
                 "head")

    def __init__(self, s: _Stream) -> None:
        self.s = s
        self.draining = False
        self.close_after = False          # HTTP/2 ends streams, not the connection
        self.ended = False                # END_STREAM queued (or the stream is gone)
        self.remaining: int | None = None   # body bytes still to send, when sized
        self.pending: deque = deque()       # body bytes waiting for window
        self.end_pending = False            # end() came while bytes were waiting
        self.head: list | None = None       # the HEADERS block not queued yet

    def informational(self, status: int) -> bytes:
        return b""                        # dropped, as _Sink.informational does

    def start(self, status: int, headers: Headers, *, content_length: int | None,
              reason: str = "", no_body: bool = False) -> None:
        block = [(b":status", str(status).encode())] + header_block(headers)
        self.remaining = None if no_body else content_length
        if no_body:
            self._queue(block, None, True)
            return
        self.head = block
        fast = self.s.fast
        fast.heads.append(self)
        fast.flush_soon()

    def send_head(self) -> None:
        """Queue the held HEADERS now (a body is coming, not yet here)."""
        block, self.head = self.head, None
        if block is not None and not self.ended:
            self._queue(block, None, False)

    def body(self, data: bytes) -> bytes:
        if not self.ended:
            self.pending.append(data)
            self.push()
        return b""

    def end(self) -> bytes:
        if self.ended:
            return b""
        if self.pending:
            self.end_pending = True
        else:
            # _Sink's finish: an empty DATA with END_STREAM (after the head).
            block, self.head = self.head, None
            self._queue(block, b"", True)
        return b""

    def _queue(self, block: list | None, data: bytes | None, end_stream: bool) -> None:
        """HEADERS `block` (if any), then DATA `data` (if not None), into
        h2: through DownstreamH2Connection's fast methods when they apply,
        else h2's own."""
        h2c, sid = self.s.fast.conn.h2, self.s.sid
        if end_stream:
            self.ended = True
        try:
            if block is not None:
                if h2c.send_response(sid, block, data, end_stream):
                    return
                h2c.send_headers(sid, block, end_stream=end_stream and data is None)
            if data is not None and not h2c.send_body(sid, data, end_stream):
                h2c.send_data(sid, data, end_stream=end_stream)
        except h2.exceptions.StreamClosedError:
            self.ended = True             # the client reset it: nothing more to send
            self.pending.clear()

    def push(self) -> None:
        """Send what the windows allow (as `_Sink.send`); park the rest."""
        s, pending = self.s, self.pending
        fast = s.fast
        h2c = fast.conn.h2
        while pending and not self.ended:
            try:
                window = min(h2c.local_flow_control_window(s.sid), h2c.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                pending.clear()           # the client reset the stream
                self.ended = True
                break
            if window <= 0:
                self.send_head()          # HEADERS are not flow-controlled
                if s.sid not in fast.parked:
                    fast.parked[s.sid] = self
                    s.update_hold()
                return
            data = pending.popleft()
            if len(data) > window:
                pending.appendleft(memoryview(data)[window:])
                data = memoryview(data)[:window]
            chunk = bytes(data)
            last = False
            if self.remaining is not None:
                self.remaining -= len(chunk)
                # The last byte of a sized body carries END_STREAM.
                last = self.remaining <= 0 and not pending
            block, self.head = self.head, None
            self._queue(block, chunk, last)
        if fast.parked.pop(s.sid, None) is not None:
            s.update_hold()
        if self.end_pending and not self.ended and not pending:
            self.end_pending = False
            self.end()
