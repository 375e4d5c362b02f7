"""The upstream half of the pipeline, written once for HTTP/1.1 and HTTP/2.

    keep = await forwarder.forward(st, req, body, sink, out, eps, rule,
                                   response_mod, mirrors)

Once the route, backend and endpoints are known (proxy.py): the upstream
headers (trace and request ids), the request body (read whole when small
and sized, so a retry or a mirror can send it again; else streamed), the
mirrors, then tries (endpoint choice by the load balancer, a per-try and
a whole-request deadline, HTTPRoute retries with backoff) through the
`Upstream` of the backend port's protocol, and the response streamed back.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable, Coroutine

from shoal.core.records import Timeouts
from shoal.waypoint import filters, message
from shoal.waypoint.destination import Endpoint
from shoal.waypoint.downstream import BodySource, ResponseSink
from shoal.waypoint.exchange import RequestBody, Upstream, UpstreamRequest, UpstreamResponse
from shoal.waypoint.grpcstats import MessageCounter, grpc_status
from shoal.waypoint.http1 import RequestReceived, hop_by_hop_names
from shoal.waypoint.lookups import Lookups
from shoal.waypoint.message import Headers, RequestHead
from shoal.waypoint.mirror import send_mirror
from shoal.waypoint.request import RequestState, local_reply
from shoal.waypoint.telemetry import DEFAULT_TRACE_SAMPLING_PERCENT, trace_context
from shoal.waypoint.upstream import UpstreamError, UpstreamTimeout

# Bodies declared up to this size are read before going upstream so that a
# retry or a mirror can resend them; larger or chunked bodies stream and are
# not retried (Envoy likewise stops retrying once its retry buffer overflows).
RETRY_BUFFER_LIMIT = 64 * 1024
# Mirrors in flight per worker; beyond this a mirror is skipped: a slow
# mirror backend must never slow or grow the primary path.
MAX_INFLIGHT_MIRRORS = 64


class Forwarder:
    """Sends requests to endpoints: `h1` for HTTP/1.1 ports, `h2` for HTTP/2 ones."""

    def __init__(self, lookups: Lookups, *, h1: Upstream, h2: Upstream,
                 rng: random.Random, clock: Callable[[], float],
                 trace_sampling: float = DEFAULT_TRACE_SAMPLING_PERCENT) -> None:
        self.lookups = lookups
        self.trace_sampling = trace_sampling
        self.h1, self.h2 = h1, h2
        self.rng = rng
        self.clock = clock
        self._mirrors: set[asyncio.Task] = set()

    def upstream_for(self, svc: Any, port: int) -> Upstream:
        """The Upstream for a Service port (Istio's protocol selection)."""
        return self.h2 if svc is not None and self.lookups.speaks_h2(svc, port) else self.h1

    async def forward(self, st: RequestState, req: RequestReceived, body: BodySource,
                      sink: ResponseSink, out: RequestHead, eps: list[Endpoint], rule: Any,
                      response_mod: Any, mirrors: tuple) -> bool:
        """Serve the request from one of `eps`. Returns False when the client
        connection must close."""
        upstream = self.h1 if req.upgrade else self.upstream_for(st.backend, st.backend_port)
        headers = self._upstream_headers(st, req, out)
        if st.grpc_in is not None:
            body = CountedBody(body, st.grpc_in)
        headers, rbody = await _prepare_body(st, req, body, sink, headers)
        ureq = UpstreamRequest(head=out, headers=headers, body=rbody, upgrade=req.upgrade,
                               source_ip=st.down.source_ip, host=st.target.name)
        if mirrors and rbody.replayable:
            self._start_mirrors(st, mirrors, ureq)
        timeouts = rule.timeouts if rule is not None else Timeouts()
        retry = rule.retry if (rule is not None and rbody.replayable) else None
        deadline = st.t0 + timeouts.request if timeouts.request else None
        try:
            try:
                resp = await self._exchange(st, upstream, ureq, eps, sink, timeouts, retry,
                                            deadline)
            except UpstreamError as e:
                return await local_reply(st, sink, e.status, e.body.encode(), e.flags)
            return await self._respond(st, req, sink, resp, response_mod, deadline, out.method)
        finally:
            st.request_bytes = max(st.request_bytes, rbody.sent)

    async def _exchange(self, st: RequestState, upstream: Upstream, ureq: UpstreamRequest,
                        eps: list[Endpoint], sink: ResponseSink, timeouts: Timeouts,
                        retry: Any, deadline: float | None) -> UpstreamResponse:
        """Tries (first + retries) until a response head worth returning.

        Raises:
            UpstreamError: the last try failed and no retry is left.
        """
        lb, keys, by_key = self.balancer(st, eps)
        tried: set[str] = set()
        tries = 0
        while True:
            tries += 1
            key = self.pick(st, lb, keys, by_key, tried)
            try:
                budget = _budget(timeouts.backend_request, deadline, self.clock())
                resp = await _with_timeout(
                    upstream.exchange(by_key[key], ureq, sink.informational), budget)
            except UpstreamError as e:
                lb.finished(key, False, keys)
                if retry is not None and e.retriable and \
                        filters.retry_allowed(retry, tries, None) and \
                        await self._backoff(retry, tries, deadline):
                    continue
                raise
            except BaseException:     # the client went away mid-request, say
                lb.abandoned(key)
                raise
            status = resp.status
            lb.finished(key, status < 500, keys)
            if retry is not None and status in retry.codes and \
                    filters.retry_allowed(retry, tries, status) and \
                    self._backoff_fits(retry, tries, deadline):
                resp.abort()
                await self._backoff(retry, tries, deadline)
                continue
            return resp

    def balancer(self, st: RequestState,
                 eps: list[Endpoint]) -> tuple[Any, tuple[str, ...], dict[str, Endpoint]]:
        """The load balancer of the request's backend, the endpoint keys and
        key -> Endpoint (shared per generation: read only)."""
        lb = self.lookups.balancer(st.backend.key if st.backend is not None
                                   else st.target.address)
        return (lb, *self.lookups.endpoint_index(eps))

    @staticmethod
    def pick(st: RequestState, lb: Any, keys: tuple[str, ...], by_key: dict,
             tried: set) -> str:
        """Choose the endpoint of the next try (one not tried yet when
        another is available) and count it active."""
        key = lb.pick(keys, exclude=frozenset(tried))
        tried.add(key)
        st.upstream, st.upstream_workload = key, by_key[key].workload
        lb.started(key)
        return key

    def fast_headers(self, st: RequestState, req: RequestReceived, out: RequestHead,
                     eps: list[Endpoint], rule: Any, mirrors: tuple) -> Headers | None:
        """The upstream headers when this request can be forwarded without a
        coroutine (fastpath.py): no body, no Expect, an HTTP/1.1 port over
        plain TCP, no mirror, timeout or retry. None: it cannot."""
        if req.upgrade or req.chunked or req.content_length or mirrors:
            return None
        if rule is not None and (rule.retry is not None or rule.timeouts.request
                                 or rule.timeouts.backend_request):
            return None
        if self.upstream_for(st.backend, st.backend_port) is not self.h1:
            return None
        pool = getattr(self.h1, "pool", None)
        if pool is None or not pool.connector.plain(eps):
            return None
        if message.get(out.headers, "expect") is not None:
            return None
        # Without Content-Length, as _prepare_body sends a request without a body.
        return self._upstream_headers(st, req, out, drop_length=True)

    def _backoff_fits(self, retry: Any, tries: int, deadline: float | None) -> bool:
        delay = filters.retry_backoff(retry, tries)
        return deadline is None or self.clock() + delay < deadline

    async def _backoff(self, retry: Any, tries: int, deadline: float | None) -> bool:
        """Wait before the next try; False when it would end past the deadline."""
        if not self._backoff_fits(retry, tries, deadline):
            return False
        delay = filters.retry_backoff(retry, tries)
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    async def _respond(self, st: RequestState, req: RequestReceived, sink: ResponseSink,
                       resp: UpstreamResponse, response_mod: Any, deadline: float | None,
                       method: str) -> bool:
        status = resp.status
        st.status = status
        headers = resp.headers
        if response_mod is not None:
            headers = filters.modify_headers(headers, response_mod)
        if status == 101 and req.upgrade:
            await sink.start(101, headers, content_length=None, reason=resp.reason,
                             no_body=True)
            st.response_bytes, st.request_bytes = await sink.tunnel(*resp.upgraded())
            await resp.finish()
            return False
        # A gRPC "trailers-only" answer (grpc-status in the head, an error
        # usually) must reach the client as one HEADERS frame ending the
        # stream: a status in an ordinary head is ignored by gRPC clients.
        no_body = method == "HEAD" or status in (204, 304) or (
            st.grpc_out is not None and message.get(headers, "grpc-status") is not None)
        try:
            await sink.start(status, headers, content_length=resp.content_length,
                             reason=resp.reason, no_body=no_body)
            counter = st.grpc_out
            while data := await _with_deadline(resp.read(), deadline, self.clock):
                st.response_bytes += len(data)
                if counter is not None:
                    counter.feed(data)
                if not no_body:
                    await sink.send(data)
            if counter is not None:
                st.grpc_status = grpc_status(resp.trailers, resp.headers, status)
            if resp.trailers:
                await sink.trailers(resp.trailers)
            await resp.finish()
        except UpstreamError as e:
            # The head is out: all we can do is cut the client off (Envoy: UR/UT).
            st.flags = "UT" if isinstance(e, UpstreamTimeout) else "UR"
            resp.abort()
            sink.abort()
            return False
        except BaseException:
            resp.abort()
            raise
        await sink.finish()
        return not req.upgrade

    def _upstream_headers(self, st: RequestState, req: RequestReceived, out: RequestHead,
                          drop_length: bool = False) -> Headers:
        """The headers sent upstream, in one pass over the client's: without
        hop-by-hop headers, Host added when absent, `traceparent` a child of
        the client's (or a new trace), `x-request-id` kept or made,
        `x-forwarded-proto` set; `drop_length` also drops Content-Length.
        Existing headers keep their place; new ones go at the end in that
        order (Host first)."""
        drop = hop_by_hop_names(out.headers, keep_upgrade=req.upgrade)
        headers: list = []
        has_host = False
        tps: list[str] = []
        rids: list[str] = []
        tp_at = xfp_at = -1
        for k, v in out.headers:
            lk = k.lower()
            if lk in drop:
                continue
            if lk == "host":
                has_host = True
            elif lk == "traceparent":
                tps.append(v)
                if tp_at < 0:
                    tp_at = len(headers)
                    headers.append(None)         # its place, filled below
                continue
            elif lk == "x-request-id":
                rids.append(v)
            elif lk == "x-forwarded-proto":
                if xfp_at < 0:
                    xfp_at = len(headers)
                    headers.append(None)
                continue
            elif drop_length and lk == "content-length":
                continue
            headers.append((k, v))
        if not has_host:
            headers.insert(0, ("host", out.authority or st.authority))
            tp_at += tp_at >= 0
            xfp_at += xfp_at >= 0
        if not st.traceparent:      # normally decided when the request arrived (proxy.py)
            st.traceparent, st.parent_span = trace_context(
                ",".join(tps) if tps else None, self.rng, self.trace_sampling)
        if tp_at >= 0:
            headers[tp_at] = ("traceparent", st.traceparent)
        else:
            headers.append(("traceparent", st.traceparent))
        rid = ",".join(rids)
        if not rid:
            rid = f"{self.rng.getrandbits(128):032x}"
            headers.append(("x-request-id", rid))
        st.request_id = rid
        if xfp_at >= 0:
            headers[xfp_at] = ("x-forwarded-proto", out.scheme)
        else:
            headers.append(("x-forwarded-proto", out.scheme))
        return headers

    # -- mirrors ------------------------------------------------------------------
    def _start_mirrors(self, st: RequestState, mirrors: tuple, ureq: UpstreamRequest) -> None:
        for m in mirrors:
            if len(self._mirrors) >= MAX_INFLIGHT_MIRRORS:
                return
            task = asyncio.ensure_future(send_mirror(self, st, m, ureq))
            self._mirrors.add(task)
            task.add_done_callback(self._mirrors.discard)

    def close(self) -> None:
        for t in list(self._mirrors):
            t.cancel()
        self.h1.close()
        self.h2.close()


class CountedBody:
    """A gRPC request's body, its messages counted as they pass (BodySource)."""

    __slots__ = ("source", "counter")

    def __init__(self, source: BodySource, counter: MessageCounter) -> None:
        self.source, self.counter = source, counter

    @property
    def trailers(self) -> Headers | None:
        return self.source.trailers

    @trailers.setter
    def trailers(self, value: Headers | None) -> None:
        self.source.trailers = value

    async def read(self) -> bytes:
        data = await self.source.read()
        self.counter.feed(data)
        return data


async def _prepare_body(st: RequestState, req: RequestReceived, body: BodySource,
                        sink: ResponseSink, headers: Headers) -> tuple[Headers, RequestBody]:
    """Decide how the request body goes upstream: read whole (small, sized:
    retries and mirrors can resend it) or streamed."""
    if (message.get(headers, "expect") or "").lower() == "100-continue":
        # Envoy's default (proxy_100_continue off): answer 100 ourselves
        # and do not pass Expect on, so the body can be read right away.
        headers = message.remove(headers, "expect")
        await sink.informational(100, [])
    declared = req.content_length or 0
    framing = "chunked" if req.chunked else ("length" if declared else "none")
    if not req.upgrade and not req.chunked and declared <= RETRY_BUFFER_LIMIT:
        buffered = await _read_all(body) if declared else b""
        st.request_bytes = len(buffered)
        headers = message.set_(headers, "content-length", str(len(buffered))) \
            if buffered or declared else message.remove(headers, "content-length")
        return headers, RequestBody(buffered=buffered, source=body, framing=framing)
    if req.chunked:
        headers = message.set_(headers, "transfer-encoding", "chunked")
    return headers, RequestBody(source=body, framing=framing)


def _budget(per_try: float | None, deadline: float | None, now: float) -> float | None:
    budgets = [b for b in (per_try, (deadline - now) if deadline is not None else None)
               if b is not None]
    return min(budgets) if budgets else None


async def _with_timeout(coro: Coroutine, budget: float | None) -> Any:
    if budget is None:
        return await coro
    if budget <= 0:
        coro.close()
        raise UpstreamTimeout("request timeout already spent")
    try:
        async with asyncio.timeout(budget):
            return await coro
    except TimeoutError:
        raise UpstreamTimeout(f"no response within {budget:.3f}s") from None


async def _with_deadline(coro: Coroutine, deadline: float | None,
                         clock: Callable[[], float]) -> Any:
    if deadline is None:
        return await coro
    return await _with_timeout(coro, deadline - clock())


async def _read_all(body: BodySource) -> bytes:
    parts = []
    while data := await body.read():
        parts.append(data)
    return b"".join(parts)
