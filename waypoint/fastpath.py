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
from types import ModuleType
from typing import Any, cast

from shoal.core.pipe import TcpEnd
from shoal.waypoint.downstream import IDLE_TIMEOUT, Downstream, close_stream
from shoal.waypoint.fastexchange import FAST_ENV, LOG, Exchange, enabled, take_clean
from shoal.waypoint.frontdoor import h2_prefix, serve_stream
from shoal.waypoint.h1framing import ResponseFramer
from shoal.waypoint.h1native import native
from shoal.waypoint.lb import Balancer
from shoal.waypoint.http1 import (MESSAGE_ENDED, ProtocolFailed, RequestReceived,
                                  serialize_request_head)
from shoal.waypoint.message import RequestHead
from shoal.waypoint.planpath import Plan
from shoal.waypoint.proxy import LocalAnswer, Proxy
from shoal.waypoint.request import RequestState
from shoal.waypoint.server import H1Session
from shoal.waypoint.upstream import IDLE_TIMEOUT as UPSTREAM_IDLE_TIMEOUT
from shoal.waypoint.upstream import MAX_IDLE_PER_ENDPOINT, H1Pool, PlainUpstream, UpstreamError

__all__ = ["FAST_ENV", "FastSession", "enabled"]

_FAST, _SLOW, _CLOSING = 0, 1, 2   # cend.c reads `mode`: _FAST must stay 0



class FastSession(TcpEnd):
    """One plaintext client connection (see the module docstring).

    It is a `TcpEnd` too: while a request (or the whole connection) is on
    the coroutine path, bytes queue as for any endpoint and the
    `H1Session` reads them; both share one parser and one event queue.
    """

    # Both are made in connection_made, which asyncio calls before any other
    # callback of the protocol: every method below runs with them set.
    transport: asyncio.Transport
    session: H1Session
    # fastexchange.Exchange may parse and frame the response in C (h1native.py).
    native_h1 = native is not None

    def __init__(self, proxy: Proxy, tasks: set) -> None:
        super().__init__()
        self.proxy = proxy
        self.tasks = tasks                    # the app's: drain waits for them
        self.mode = _FAST
        self.sniffed = False                  # first bytes seen (HTTP/2 or not)
        self.session = None                   # type: ignore[assignment]  # see above
        self.exchange: Any = None            # an Exchange, or a CExchange (_planned)
        self.last_active = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._held = False                    # reading paused behind a queued request
        self.served_fast = 0                  # requests answered here (tests, admin)
        self._on_writing = None               # h2fastpath: told of pause/resume_writing

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
        if native is not None and self.exchange is None and not s.events and s.parser.idle:
            # One whole body-less request head in this read (the common
            # keep-alive case): parsed in C. Anything else: None, and the
            # same bytes go to the Python parser below.
            plans = self.proxy.plans
            if plans is None:
                t = native.parse_request(data)
                if t is not None:
                    self._native_request(*t)
                    return
            else:
                t = plans.request(data)
                if t is not None:
                    if t[0] is None:
                        self._native_request(*t[1])
                    else:
                        self._planned(*t)
                    return
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
        if self._on_writing is not None:
            self._on_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.exchange is not None:
            self.exchange.hold_upstream(False)
        if self._on_writing is not None:
            self._on_writing()

    def watch_writing(self, callback) -> None:
        """HTTP/2 on this connection (h2fastpath.py): `callback()` whenever
        the transport pauses or resumes writing."""
        self._on_writing = callback

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

    def _native_request(self, method: str, target: str, headers: list, host: str,
                        version: str, keep_alive: bool, content_length: int | None) -> None:
        """A request parse_request took: the event H1Server would have made."""
        self._request(RequestReceived(
            head=RequestHead(method, target, headers, "http", host),
            http_version=version, keep_alive=keep_alive, upgrade=False, chunked=False,
            content_length=content_length), plannable=True)
        if self.mode == _SLOW:
            # The coroutine path reads the request's end from the queue, as
            # after H1Server's RequestReceived.
            self.session.events.append(MESSAGE_ENDED)
        elif self.exchange is None:
            self._pump()

    def _planned(self, plan: Plan, parsed: tuple, head_bytes: bytes, request_id: str,
                 traceparent: str, parent_span: str) -> None:
        """A request served from a plan (planpath.py): Proxy.begin,
        Proxy.decide and Forwarder.fast_headers were plan.c's (the upstream
        head and its ids). With an idle upstream connection, the response is
        handled by a CExchange (native/cexchange.c) until it ends
        (`_c_done`) or needs Python (`_c_adopt`); else by an Exchange."""
        proxy = self.proxy
        t0 = proxy.clock()
        lb = proxy.lookups.balancer(plan.lb_key)
        keys = plan.keys
        h1 = cast(ModuleType, native)           # plans exist only with it (planpath.py)
        # The common case of the calls below, in C on the same state
        # (native/cstart.c); None: nothing done, make them.
        started = h1.start_planned(lb, keys, plan.by_key, proxy.pool)
        if started is None:
            key = lb.pick(keys)
            lb.started(key)
            conn = take_clean(proxy.pool, plan.by_key[key])
        else:
            key, conn = started
        self.session.busy = True
        if conn is None or parsed[0] == "HEAD" or not self.native_h1:
            st, req = self._plan_state(plan, parsed, request_id, traceparent, parent_span, t0,
                                       key)
            self.exchange = Exchange(self, st, req, plan.eps, None, head_bytes,
                                     picked=(lb, keys, plan.by_key, key, conn))
            return
        nat = h1.Response(parsed[4] == "1.1", parsed[5])
        stream = cast(PlainUpstream, conn.stream)
        transport = cast(asyncio.Transport, stream.transport)
        cex = h1.CExchange(self, transport, self.transport, nat, proxy, lb, key, keys,
                           (plan, parsed, head_bytes, request_id, traceparent, parent_span,
                            t0, key, conn, nat), proxy.telemetry.tally, plan.slots, t0)
        stream.receiver = cex
        self.exchange = cex
        transport.write(head_bytes)
        if not self._can_write:         # the client is still behind on the last one
            cex.hold_upstream(True)

    def _plan_state(self, plan: Plan, parsed: tuple, request_id: str, traceparent: str,
                    parent_span: str, t0: float, key: str) -> tuple[RequestState,
                                                                    RequestReceived]:
        """The RequestState and RequestReceived the Python path would have
        made for a request served from `plan`, sent to endpoint `key`."""
        method, target, headers, host, version, keep_alive, content_length = parsed
        head = RequestHead(method, target, headers, "http", host)
        req = RequestReceived(head=head, http_version=version, keep_alive=keep_alive,
                              upgrade=False, chunked=False, content_length=content_length)
        st = RequestState(down=self.session.down, head=head, t0=t0)
        st.authority, st.target, st.route = host, plan.target, plan.route
        st.backend, st.backend_port = plan.backend, plan.port
        st.traceparent, st.parent_span, st.request_id = traceparent, parent_span, request_id
        st.upstream, st.upstream_workload = key, plan.by_key[key].workload
        return st, req

    def _c_done(self, cex) -> None:
        """A CExchange's response ended (Exchange._native_result's DONE)."""
        plan, parsed, _, rid, tp, parent, t0, key, conn, nat = cex.state
        stream = conn.stream
        stream.receiver = None
        if cex.held and stream.transport is not None:
            stream.transport.resume_reading()
        self.proxy.pool.release(conn, nat.reusable)
        close_after = nat.close_after
        if close_after:
            self.write_eof()
        keep = parsed[5] and not close_after
        if cex.counted:         # in the telemetry tally already (cexchange.c)
            self.free()
            self.served_fast += 1
            if keep:
                self.resume()
            else:
                self._end()
            return
        st, _ = self._plan_state(plan, parsed, rid, tp, parent, t0, key)
        st.status, st.response_bytes = nat.status, nat.body_bytes
        self.done(st, keep)

    def _c_slot(self, cex) -> int:
        """The telemetry tally slot for a CExchange's response (its plan's
        slots remember it), -1 when there is none left."""
        plan, parsed, _, rid, tp, parent, t0, key, _, nat = cex.state
        st, _ = self._plan_state(plan, parsed, rid, tp, parent, t0, key)
        st.status, st.response_bytes = nat.status, nat.body_bytes
        slot = self.proxy.telemetry.slot(self.proxy.record_of(st))
        plan.slots[(key, nat.status)] = slot
        return slot

    def _c_adopt(self, cex, what: str, *args) -> None:
        """A CExchange met what Exchange handles in Python: an Exchange
        takes over (see cexchange.c) and handles `what`."""
        plan, parsed, head_bytes, rid, tp, parent, t0, key, conn, nat = cex.state
        st, req = self._plan_state(plan, parsed, rid, tp, parent, t0, key)
        if cex.head:
            st.status = nat.status
        st.response_bytes = nat.body_bytes
        ex = Exchange.adopt(self, st, req, plan.eps, head_bytes,
                            self.proxy.lookups.balancer(plan.lb_key), plan.keys, key, conn, nat,
                            cex.head, cex.held)
        self.exchange = ex
        if what == "result":
            try:
                ex._native_result(*args)
            except Exception:       # as Exchange.upstream_data around the same call
                LOG.exception("response handling failed inside the waypoint")
                ex._cut("UR")
        elif what == "lost":
            ex.upstream_lost(args[0])
        elif what == "error":       # a bug while handling a read: as Exchange.upstream_data
            LOG.error("response handling failed inside the waypoint", exc_info=args[0])
            ex._cut("UR")
        else:
            ex.client_lost()

    def _request(self, req: RequestReceived, plannable: bool = False) -> None:
        if req.upgrade or req.chunked or req.content_length:
            self._slow(req, None)      # a body or a tunnel: the coroutine path reads it
            return
        proxy = self.proxy
        proxy.lookups.refresh()
        st = proxy.begin(self.session.down, req.head)
        try:
            d = proxy.decide(st, req)
            if isinstance(d, LocalAnswer):
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
        if plannable and proxy.plans is not None:
            # Its Host is the one plan.c reads: the key the next such request finds.
            proxy.plans.install(st, req, d)
        self.session.busy = True
        self.exchange = Exchange(self, st, req, d.eps, d.response_mod,
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

    # -- fastexchange.ClientSide ---------------------------------------------------
    def write_blocked(self) -> bool:
        return not self._can_write

    def framer(self, req: RequestReceived) -> ResponseFramer:
        return ResponseFramer(req, self.proxy.draining)

    def client_write(self, data: bytes) -> None:
        self.transport.write(data)

    def answer_failed(self, st: RequestState, req: RequestReceived, err: UpstreamError) -> None:
        self.free()
        self._local(st, req, err.status, err.body.encode(), err.flags, ())
        if self.mode == _FAST:           # _local closes the connection when not kept
            self.resume()

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


if native is not None:
    # A CExchange ends the common plan-served request itself (native/cend.c),
    # on these types' state exactly as Balancer.finished, H1Pool.release and
    # FastSession._c_done do.
    native.configure_end(Balancer, H1Pool, FastSession, MAX_IDLE_PER_ENDPOINT)
    # ... and starts it (native/cstart.c) as Balancer.pick/started and
    # take_clean would, on these types.
    native.configure_start(Balancer, H1Pool, PlainUpstream, UPSTREAM_IDLE_TIMEOUT)
