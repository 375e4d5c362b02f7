"""One request forwarded from event-loop callbacks (no task, no coroutine).

Shared by the two callback fast paths: HTTP/1.1 clients (fastpath.py) and
HTTP/2 clients (h2fastpath.py). The exchange does the upstream half: the
endpoint choice (the same load-balancer calls as forward.py), one write of
the serialized head on a pooled `PlainUpstream`, the response parsed as it
arrives and handed to the client's framer. What the client side must offer
is `ClientSide`; what it means to frame a response for that client is the
framer's business (h1framing.ResponseFramer, or h2fastpath's).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol, cast

from shoal.core import log as core_log
from shoal.waypoint import filters
from shoal.waypoint.h1native import native
from shoal.waypoint.http1 import (BodyReceived, H1ResponseParser, MessageEnded, RequestReceived,
                                  ResponseReceived, strip_hop_by_hop)
from shoal.waypoint.request import RequestState
from shoal.waypoint.upstream import (PlainUpstream, UpstreamConn, UpstreamError,
                                     UpstreamProtocolError, UpstreamReset)

LOG = core_log.get("waypoint")

# Environment switch: "0" serves every request on the coroutine path (both
# fast paths off; the test suites run both ways).
FAST_ENV = "SHOAL_WAYPOINT_FAST"


# Response.feed's codes (bits), read once.
_FALLBACK, _HEAD, _DONE, _CUT = (native.FALLBACK, native.HEAD, native.DONE, native.CUT) \
    if native is not None else (0, 0, 0, 0)


def take_clean(pool, ep) -> UpstreamConn | None:
    """An idle pooled connection to `ep` that callbacks can drive (a
    `PlainUpstream` on which nothing arrived while idle), or None."""
    conn = pool.take_idle(ep)
    while conn is not None and not (isinstance(conn.stream, PlainUpstream)
                                    and conn.stream.idle_clean):
        pool.discard(conn)
        conn = pool.take_idle(ep)
    return conn


def enabled() -> bool:
    return os.environ.get(FAST_ENV, "1") != "0"


class ClientSide(Protocol):
    """What an `Exchange` needs of the client it answers."""

    proxy: Any                  # proxy.Proxy (which imports the coroutine path)
    native_h1: bool             # an HTTP/1.x client whose responses C may frame (h1native.py)

    def write_blocked(self) -> bool:
        """The client's transport is above its high-water mark."""

    def framer(self, req: RequestReceived):
        """A new framer for the response to `req` (h1framing.ResponseFramer's methods)."""

    def client_write(self, data: bytes) -> None:
        """Framed response bytes (may be empty)."""

    def write_eof(self) -> None:
        """The framer asked to close after this response."""

    def free(self) -> None:
        """The exchange is over as far as the upstream goes."""

    def done(self, st: RequestState, keep: bool) -> None:
        """The response went out (or was given up): record `st`."""

    def answer_failed(self, st: RequestState, req: RequestReceived, err: UpstreamError) -> None:
        """No response head came: answer with `err`'s local reply and record `st`."""

    def abort(self) -> None:
        """The head is out and the body cannot complete: cut the client's response."""


class Exchange:
    """One request forwarded from callbacks: endpoint choice, the upstream
    write, the response parsed and written back as it arrives."""

    __slots__ = ("fs", "st", "req", "eps", "response_mod", "head_bytes", "lb", "keys", "key",
                 "conn", "parser", "native", "framer", "resp", "no_body", "skip_end",
                 "fresh_tried", "ended", "held")

    def __init__(self, fs: ClientSide, st: RequestState, req: RequestReceived, eps: list,
                 response_mod, head_bytes: bytes, picked: tuple | None = None) -> None:
        """`picked`: (balancer, keys, key -> Endpoint, key, idle connection
        or None) when the caller chose the endpoint (FastSession._planned)."""
        self.fs, self.st, self.req = fs, st, req
        self.eps, self.response_mod, self.head_bytes = eps, response_mod, head_bytes
        # Set as the exchange goes (None until then): typed Any, read on
        # every callback without a None check where the order guarantees them.
        self.conn: Any = None              # UpstreamConn once connected
        self.parser: Any = None            # H1ResponseParser once the head is written
        self.native: Any = None            # or _h1.Response (h1native.py) instead
        self.framer: Any = None            # the client's framer, made with the head
        self.resp: Any = None              # ResponseReceived once the head came
        self.no_body = False
        self.skip_end = False
        self.fresh_tried = False
        self.ended = False
        self.held = False
        if picked is not None:
            self.lb, self.keys, by_key, self.key, conn = picked
            ep = by_key[self.key]
        else:
            fwd = fs.proxy.forwarder
            self.lb, self.keys, by_key = fwd.balancer(st, eps)
            self.key = fwd.pick(st, self.lb, self.keys, by_key, set())
            ep = by_key[self.key]
            conn = take_clean(fs.proxy.pool, ep)
        if conn is not None:
            self._send(conn)
        else:
            self._connect(ep)

    @classmethod
    def adopt(cls, fs: ClientSide, st: RequestState, req: RequestReceived, eps: list,
              head_bytes: bytes, lb, keys: tuple, key: str, conn: UpstreamConn, nat,
              head: bool, held: bool) -> Exchange:
        """The exchange a CExchange (native/cexchange.c) started, from where
        it is: the head written on `conn`, the response fed to `nat` so far
        (its head handled when `head`), reading upstream paused when `held`."""
        self = cls.__new__(cls)
        self.fs, self.st, self.req = fs, st, req
        self.eps, self.response_mod, self.head_bytes = eps, None, head_bytes
        self.lb, self.keys, self.key, self.conn = lb, keys, key, conn
        self.parser, self.native, self.framer = None, nat, None
        self.resp = nat if head else None
        self.no_body = self.skip_end = self.fresh_tried = self.ended = False
        self.held = held
        cast(PlainUpstream, conn.stream).receiver = self
        return self

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
        req = self.req
        if native is not None and self.fs.native_h1 and self.response_mod is None \
                and req.head.method != "HEAD":
            # Parsed and framed in C; it hands anything unusual back before
            # writing a byte (_native_data).
            self.native = native.Response(req.http_version == "1.1", req.keep_alive)
            self.parser = None
        else:
            self.native = None
            self.parser = H1ResponseParser(req.head.method)
        stream = cast(PlainUpstream, conn.stream)
        stream.receiver = self
        cast(asyncio.Transport, stream.transport).write(self.head_bytes)
        if self.fs.write_blocked():         # the client is still behind on the last one
            self.hold_upstream(True)

    def upstream_data(self, data: bytes) -> None:
        """Response bytes from upstream (b"": it closed its side)."""
        try:
            if self.native is not None:
                self._native_data(data)
            else:
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
                    self.fs.client_write(b"".join(out))
                    out = []
                self._finish()
                return
        if out:
            self.fs.client_write(b"".join(out))

    def _native_data(self, data: bytes) -> None:
        """`upstream_data` while C parses and frames (the same outcomes as
        `_parse` + `_head` + `_finish`, proved in tests/unit/waypoint/test_h1native.py)."""
        out, code = self.native.feed(data, self.fs.proxy.draining)
        self._native_result(data, out, code)

    def _native_result(self, data: bytes, out: bytes, code: int) -> None:
        """What `native.feed(data)` returned, acted on."""
        nat = self.native
        if code & _FALLBACK:
            # Nothing went to the client: the Python parser takes every
            # byte so far (and the EOF, if that is what this was).
            self.native = None
            self.parser = H1ResponseParser(self.req.head.method)
            raw = nat.raw
            if raw:
                self._parse(raw)
            if not data and not self.ended:
                self._parse(b"")
            return
        st = self.st
        if code & _HEAD:
            status = st.status = nat.status
            self.resp = nat
            self.lb.finished(self.key, status < 500, self.keys)
        st.response_bytes = nat.body_bytes
        if out:
            self.fs.client_write(out)
        if code & _CUT:
            self._failed(UpstreamProtocolError("malformed or truncated upstream response"))
        elif code & _DONE:
            self._release(nat.reusable)
            fs = self.fs
            if nat.close_after:
                fs.write_eof()
            self.ended = True
            fs.done(st, self.req.keep_alive and not nat.close_after)

    def framer_for(self):
        if self.framer is None:
            self.framer = self.fs.framer(self.req)
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
            fs.client_write(tail)
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
            self.native = None
            self.framer = None
            self._connect(conn.endpoint)
            return
        self.lb.finished(self.key, False, self.keys)
        self.ended = True
        self.st.response_bytes = 0
        self.fs.answer_failed(self.st, self.req, err)

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
        self.fs.proxy.record(self.st)    # the client is gone: nothing to answer

    def hold_upstream(self, hold: bool) -> None:
        """Client backpressure: stop reading upstream while its buffer is full."""
        conn = self.conn
        if conn is None or hold == self.held or conn.stream.transport is None:
            return
        self.held = hold
        transport = conn.stream.transport
        if hold:
            transport.pause_reading()
        else:
            transport.resume_reading()

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
