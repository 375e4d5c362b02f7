"""The waypoint's per-request pipeline, independent of the client's protocol.

    keep = await proxy.handle(downstream, request_event, body, sink)

Order (Istio's waypoint filter chain): L7 AuthorizationPolicy (403
`RBAC: access denied`), HTTPRoute selection and filters (redirect answers
directly), backend choice (weighted backendRefs, else the original service),
endpoint choice (load balancer with outlier ejection), then the upstream
exchange with timeouts and retries, streaming the response back. Every
request ends in exactly one telemetry record.

The protocol adapters (server.py for HTTP/1.1, h2server.py for HTTP/2) give
a `BodySource` (`async read() -> bytes`, b"" at the end of the body) and a
`ResponseSink` (`start`, `send`, `finish`, `local`, `abort`, `tunnel`).
"""

from __future__ import annotations

import asyncio
import random as _random
import time
import weakref
from dataclasses import dataclass

from shoal.core import authz
from shoal.core import log as core_log
from shoal.core.constants import WAYPOINT_GATEWAY_CLASS
from shoal.core.records import Timeouts
from shoal.waypoint import filters, h2forward, message
from shoal.waypoint.destination import Endpoint, NotForUs, Target, endpoints, resolve_host, \
    service_port, workload_endpoint
from shoal.waypoint.h2upstream import H2Pool, speaks_h2
from shoal.waypoint.http1 import (LAST_CHUNK, BodyReceived, H1ResponseParser, MessageEnded,
                            ResponseReceived, encode_chunk, serialize_request_head,
                            strip_hop_by_hop)
from shoal.waypoint.lb import ROUND_ROBIN, Balancer
from shoal.waypoint.message import RequestHead
from shoal.waypoint.mirror import send_mirror
from shoal.waypoint.routes import NoBackend, RouteInput, RouteTable, pick_backend
from shoal.waypoint.telemetry import RequestRecord, Telemetry, traceparent, valid_traceparent
from shoal.waypoint.upstream import (H1Pool, UpstreamConn, UpstreamError, UpstreamProtocolError,
                               UpstreamReset, UpstreamTimeout)

# Bodies declared up to this size are read before going upstream so that a
# retry or a mirror can resend them; larger or chunked bodies stream and are
# not retried (Envoy likewise stops retrying once its retry buffer overflows).
RETRY_BUFFER_LIMIT = 64 * 1024
# Mirrors in flight per worker; beyond this a mirror is skipped: a slow
# mirror backend must never slow or grow the primary path.
MAX_INFLIGHT_MIRRORS = 64
# One upstream read; large enough to amortise per-call costs.
UPSTREAM_READ = 256 * 1024
# Caches keyed by routing generation: more than this many entries means
# churn; start over rather than grow.
MAX_CACHE_ENTRIES = 4096

LOG = core_log.get("waypoint")
# Istio's root namespace: policies there targeting the GatewayClass apply to
# every waypoint of that class.
ROOT_NAMESPACE = "istio-system"

# On drain, an idle HTTP/1.1 keep-alive client gets this long to send its
# next request, answered with `connection: close`, so a client sending
# steadily moves to another replica without a request meeting a closed
# connection. Clients idle longer are closed (Envoy keeps idle connections
# for its whole drain time; short here so a scaled-down replica goes quickly).
DRAIN_IDLE_GRACE_S = 2.0
RBAC_DENIED = b"RBAC: access denied"
NO_HEALTHY_UPSTREAM = b"no healthy upstream"
NO_ROUTE = b"no route"
_RESET_ERRORS = (ConnectionError, OSError, asyncio.IncompleteReadError)


@dataclass(frozen=True, slots=True, kw_only=True)
class Downstream:
    """The client connection, fixed for its lifetime."""
    source_principal: str | None = None
    source_ip: str = ""
    source_workload: object = None
    target: Target | None = None     # None: plaintext mode, resolved per request by Host
    protocol: str = "http"           # Istio's request_protocol: "http" | "http2"


def _hbone_reset_errors() -> tuple:
    try:
        from shoal.core.hbone import HboneError
        return _RESET_ERRORS + (HboneError,)
    except ImportError:
        return _RESET_ERRORS


class Proxy:
    """Shared by every connection of one worker."""

    def __init__(self, *, view, waypoint=None, pool: H1Pool, telemetry: Telemetry | None = None,
                 lb_mode: str = ROUND_ROBIN, rng: _random.Random | None = None,
                 clock=time.monotonic, namespace: str = "default") -> None:
        self.view = view
        self.waypoint = waypoint
        self.pool = pool
        self.h2pool = H2Pool(getattr(pool, "connector", None))     # HTTP/2 ports (h2forward.py)
        self.telemetry = telemetry or Telemetry()
        self.lb_mode = lb_mode
        self.rng = rng or _random.Random()
        self.clock = clock
        self.namespace = namespace
        self._balancers: dict[str, Balancer] = {}
        self._cache_gen = -1
        self._routes: dict = {}
        self._policies: dict = {}
        self._hosts: dict = {}       # plaintext mode: Host -> Target
        self._endpoints: dict = {}   # (service key, port) -> [Endpoint]
        self._mirrors: set[asyncio.Task] = set()
        self.draining = False
        self.sessions: weakref.WeakSet = weakref.WeakSet()   # HTTP/1.1 client connections
        self._reset_errors = _hbone_reset_errors()

    # -- caches per routing generation ----------------------------------------
    def _check_generation(self) -> None:
        gen = self.view.generation
        if gen != self._cache_gen or \
                len(self._routes) + len(self._policies) + len(self._hosts) + \
                len(self._endpoints) > MAX_CACHE_ENTRIES:
            self._cache_gen = gen
            self._routes.clear()
            self._policies.clear()
            self._hosts.clear()
            self._endpoints.clear()

    def route_table(self, target: Target) -> RouteTable | None:
        svc = target.service
        if svc is None:
            return None
        key = (svc.key, target.port)
        table = self._routes.get(key)
        if table is None:
            routes = [r for r in self.view.routes_for_service(svc.namespace, svc.name)
                      if _attached(r, svc, target.port)]
            table = self._routes[key] = RouteTable(routes)
        return table

    def policies(self, target: Target) -> list:
        key = (target.service.key if target.service else target.address)
        pols = self._policies.get(key)
        if pols is None:
            # Istio: targetRefs to the GatewayClass (root namespace), to this
            # waypoint's Gateway, or to the destination Service.
            pols = list(self.view.policies_for_target("GatewayClass", ROOT_NAMESPACE,
                                                      WAYPOINT_GATEWAY_CLASS))
            wp = self.waypoint
            if wp is not None:
                pols += self.view.policies_for_target("Gateway", wp.namespace, wp.name)
            if target.service is not None:
                pols += self.view.policies_for_target("Service", target.service.namespace,
                                                      target.service.name)
            self._policies[key] = pols
        return pols

    def endpoints(self, svc, port: int) -> list[Endpoint]:
        key = (svc.key, port)
        eps = self._endpoints.get(key)
        if eps is None:
            eps = self._endpoints[key] = endpoints(self.view, svc, port)
            b = self._balancers.get(svc.key)
            if b is not None:     # endpoints changed: drop state of departed pods
                b.forget([e.key for e in eps])
        return eps

    def balancer(self, key: str) -> Balancer:
        b = self._balancers.get(key)
        if b is None:
            b = self._balancers[key] = Balancer(mode=self.lb_mode, rng=self.rng, clock=self.clock)
        return b

    # -- the pipeline -----------------------------------------------------------
    async def handle(self, down: Downstream, req, body, sink) -> bool:
        """Serve one request. Returns False when the connection must close."""
        self._check_generation()
        st = _Req(down=down, head=req.head, t0=self.clock())
        try:
            return await self._handle(st, req, body, sink)
        except (asyncio.CancelledError, ConnectionError):
            st.flags = "DC"       # downstream went away
            raise
        except Exception:
            # A bug must cost one request, never the worker: answer 500 as
            # Envoy does for internal errors, and log it with its traceback.
            LOG.exception("request failed inside the waypoint", extra={"fields": {
                "method": req.head.method, "path": req.head.target}})
            try:
                return await self._local(st, sink, 500, b"internal error", "-")
            except Exception:
                return False
        finally:
            self._record(st)

    async def _handle(self, st: "_Req", req, body, sink) -> bool:
        head = st.head
        authority = head.authority or message.get(head.headers, "host") or ""
        st.authority = authority
        target = st.down.target or self._target_from_host(authority)
        if target is None:
            return await self._local(st, sink, 404, NO_ROUTE, "NR")
        st.target = target
        hdict = message.as_dict(head.headers)
        pols = self.policies(target)
        if pols:
            decision = authz.evaluate(pols, authz.Request(
                source_principal=st.down.source_principal, source_ip=st.down.source_ip,
                destination_ip=target.address, destination_port=target.port,
                method=head.method, host=authority, path=head.target, headers=hdict), authz.L7)
            st.policy = decision.policy_key
            if not decision.allowed:
                return await self._local(st, sink, 403, RBAC_DENIED, "RBAC")
        rule = match = route_ns = None
        table = self.route_table(target)
        if table:
            sel = table.select(RouteInput(method=head.method, path=head.path, query=head.query,
                                          host=authority, headers=hdict))
            if sel is None:
                return await self._local(st, sink, 404, NO_ROUTE, "NR")
            rule, match, route_ns = sel.rule, sel.match, sel.route.namespace
            st.route = sel.route.key
        out = head
        response_mod = None
        mirrors = ()
        backend, port = target.service, target.port
        if rule is not None:
            plan = filters.plan(head, rule, match, target.port, self.rng)
            if plan.redirect is not None:
                return await self._local(st, sink, plan.redirect.status, b"", "-",
                                         extra=[("location", plan.redirect.location)])
            out, response_mod, mirrors = plan.request, plan.response_headers, plan.mirrors
            if rule.backend_refs:
                try:
                    ref = pick_backend(rule.backend_refs, self.rng)
                except NoBackend:
                    return await self._local(st, sink, 500, b"", "NR")
                backend = self.view.service_by_host(ref.namespace or route_ns, ref.name)
                port = ref.port or target.port
                if backend is None:
                    return await self._local(st, sink, 500, b"", "NR")
        st.backend, st.backend_port = backend, port
        eps = self.endpoints(backend, port) if backend is not None else \
            workload_endpoint(target.workload, port)
        if not eps:
            return await self._local(st, sink, 503, NO_HEALTHY_UPSTREAM, "UH")
        return await self._forward(st, req, body, sink, out, eps, rule, response_mod, mirrors)

    def _target_from_host(self, authority: str) -> Target | None:
        target = self._hosts.get(authority, False)
        if target is False:
            host, port = message.split_host_port(authority, 0)
            try:
                target = resolve_host(self.view, self.namespace, host, port)
            except NotForUs:
                target = None
            self._hosts[authority] = target
        return target

    async def _forward(self, st, req, body, sink, out: RequestHead, eps: list[Endpoint],
                       rule, response_mod, mirrors) -> bool:
        if st.backend is not None and not req.upgrade and \
                speaks_h2(service_port(st.backend, st.backend_port)):
            return await h2forward.forward(self, st, req, body, sink, out, eps, rule,
                                           response_mod)
        headers = self._upstream_headers(st, req, out)
        headers, buffered, framing = await self._prepare_body(st, req, body, sink, headers)
        head_bytes = serialize_request_head(out, headers)
        if mirrors and buffered is not None:
            self._start_mirrors(st, mirrors, out, headers, buffered)
        timeouts = rule.timeouts if rule is not None else Timeouts()
        retry = rule.retry if (rule is not None and buffered is not None) else None
        deadline = st.t0 + timeouts.request if timeouts.request else None
        try:
            conn, parser, resp, pending = await self._exchange(
                st, req, body, sink, out.method, head_bytes, buffered, framing, eps,
                timeouts, retry, deadline)
        except UpstreamError as e:
            return await self._local(st, sink, e.status, e.body.encode(), e.flags)
        return await self._respond(st, req, sink, conn, parser, resp, pending, response_mod,
                                   deadline, out.method)

    async def _prepare_body(self, st, req, body, sink, headers):
        """Decide how the request body goes upstream: read whole (small,
        sized: retries and mirrors can resend it) or streamed."""
        if (message.get(headers, "expect") or "").lower() == "100-continue":
            # Envoy's default (proxy_100_continue off): answer 100 ourselves
            # and do not pass Expect on, so the body can be read right away.
            headers = message.remove(headers, "expect")
            await sink.informational(100, [])
        declared = req.content_length or 0
        buffered: bytes | None = None
        if not req.upgrade and not req.chunked and declared <= RETRY_BUFFER_LIMIT:
            buffered = await _read_all(body) if declared else b""
            st.request_bytes = len(buffered)
        framing = "chunked" if req.chunked else ("length" if declared else "none")
        if buffered is not None:
            headers = message.set_(headers, "content-length", str(len(buffered))) \
                if buffered or declared else message.remove(headers, "content-length")
        elif req.chunked:
            headers = message.set_(headers, "transfer-encoding", "chunked")
        return headers, buffered, framing

    async def _exchange(self, st, req, body, sink, method, head_bytes, buffered, framing,
                        eps, timeouts, retry, deadline):
        """Tries (first + retries) until a response head worth returning.

        Raises:
            UpstreamError: the last try failed and no retry is left.
        """
        lb = self.balancer(st.backend.key if st.backend is not None else st.target.address)
        keys = [e.key for e in eps]
        by_key = {e.key: e for e in eps}
        tried: set[str] = set()
        tries = 0
        while True:
            tries += 1
            key = lb.pick(keys, exclude=frozenset(tried))
            tried.add(key)
            st.upstream = key
            st.upstream_workload = by_key[key].workload
            lb.started(key)
            try:
                budget = _budget(timeouts.backend_request, deadline, self.clock())
                conn, parser, resp, pending = await _with_timeout(
                    self._attempt(st, by_key[key], method, head_bytes, buffered, body, framing,
                                  sink, req.upgrade), budget)
            except UpstreamError as e:
                lb.finished(key, False, keys)
                if retry is not None and e.retriable and \
                        filters.retry_allowed(retry, tries, None) and \
                        await self._backoff(retry, tries, deadline):
                    continue
                raise
            status = resp.head.status
            lb.finished(key, status < 500, keys)
            if retry is not None and status in retry.codes and \
                    filters.retry_allowed(retry, tries, status) and \
                    await self._backoff(retry, tries, deadline, conn=conn):
                continue
            return conn, parser, resp, pending

    async def _backoff(self, retry, tries: int, deadline, conn: UpstreamConn | None = None) -> bool:
        if conn is not None:
            self.pool.discard(conn)
        delay = filters.retry_backoff(retry, tries)
        if deadline is not None and self.clock() + delay >= deadline:
            return False
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    def _upstream_headers(self, st, req, out: RequestHead) -> list:
        headers = strip_hop_by_hop(out.headers, keep_upgrade=req.upgrade)
        if message.get(headers, "host") is None:
            headers.insert(0, ("host", out.authority or st.authority))
        tp = message.get(headers, "traceparent")
        if not valid_traceparent(tp):
            tp = traceparent(self.rng)
            headers = message.set_(headers, "traceparent", tp)
        st.traceparent = tp
        rid = message.get(headers, "x-request-id")
        if not rid:
            rid = f"{self.rng.getrandbits(128):032x}"
            headers.append(("x-request-id", rid))
        st.request_id = rid
        return message.set_(headers, "x-forwarded-proto", out.scheme)

    async def _attempt(self, st, ep: Endpoint, method: str, head_bytes: bytes,
                       buffered: bytes | None, body, framing: str, sink, upgrade: bool):
        """One try: send the request, read up to the final response head."""
        fresh = upgrade
        for _ in range(2):   # a stale pooled connection is replaced once
            conn = await self.pool.acquire(ep, source_ip=st.down.source_ip,
                                           host=st.target.name, fresh=fresh)
            try:
                if buffered is not None:
                    await conn.stream.write(head_bytes + buffered if buffered else head_bytes)
                elif not upgrade:
                    await conn.stream.write(head_bytes)
                    st.request_bytes = await _pump_body(body, conn.stream, framing)
                else:
                    await conn.stream.write(head_bytes)
                parser = H1ResponseParser(method)
                resp, pending = await self._read_head(conn, parser, sink)
                return conn, parser, resp, pending
            except (UpstreamReset, UpstreamProtocolError):
                # On a reused connection this is usually a stale or
                # desynchronised keep-alive: try once on a new connection.
                self.pool.discard(conn)
                if conn.reused and buffered is not None:
                    fresh = True
                    continue
                raise
            except self._reset_errors as e:
                self.pool.discard(conn)
                if conn.reused and buffered is not None:
                    fresh = True
                    continue
                raise UpstreamReset(str(e)) from None
            except BaseException:
                self.pool.discard(conn)
                raise
        raise UpstreamReset("connection reset twice")

    async def _read_head(self, conn: UpstreamConn, parser: H1ResponseParser, sink):
        while True:
            data = await conn.stream.read(UPSTREAM_READ)
            try:
                events = parser.receive_data(data)
            except ValueError as e:
                if not data:
                    raise UpstreamReset(str(e)) from None
                raise UpstreamProtocolError(str(e)) from None
            i = 0
            while i < len(events):
                e = events[i]
                if isinstance(e, ResponseReceived):
                    s = e.head.status
                    if 100 <= s < 200 and s != 101:
                        await sink.informational(s, e.head.headers)
                        i += 2          # its MessageEnded follows
                        continue
                    return e, events[i + 1:]
                i += 1

    async def _respond(self, st, req, sink, conn: UpstreamConn, parser, resp, pending,
                       response_mod, deadline, method) -> bool:
        status = resp.head.status
        st.status = status
        headers = strip_hop_by_hop(resp.head.headers, keep_upgrade=status == 101)
        if response_mod is not None:
            headers = filters.modify_headers(headers, response_mod)
        if status == 101 and req.upgrade:
            await sink.start(101, headers, content_length=None, reason=resp.head.reason,
                             no_body=True)
            st.response_bytes, st.request_bytes = await sink.tunnel(conn.stream, parser.upgraded)
            self.pool.release(conn, False)
            return False
        no_body = method == "HEAD" or status in (204, 304)
        await sink.start(status, headers, content_length=resp.content_length,
                         reason=resp.head.reason, no_body=no_body)
        done = False
        try:
            for e in pending:
                done = await self._relay(st, sink, e) or done
            while not done:
                data = await _with_deadline(conn.stream.read(UPSTREAM_READ), deadline, self.clock)
                try:
                    events = parser.receive_data(data)
                except ValueError:
                    raise UpstreamReset("upstream closed mid-body") from None
                for e in events:
                    done = await self._relay(st, sink, e) or done
        except (UpstreamError, *self._reset_errors) as e:
            # The head is out: all we can do is cut the client off (Envoy: UR/UT).
            st.flags = "UT" if isinstance(e, UpstreamTimeout) else "UR"
            self.pool.discard(conn)
            sink.abort()
            return False
        await sink.finish()
        # A 204 announcing a body, or bytes after the end, mean the server
        # and we disagree on framing: never reuse that connection.
        reusable = resp.keep_alive and parser.clean and not req.upgrade and \
            not (status == 204 and resp.content_length)
        self.pool.release(conn, reusable)
        return not req.upgrade

    async def _relay(self, st, sink, e) -> bool:
        if isinstance(e, BodyReceived):
            st.response_bytes += len(e.data)
            await sink.send(e.data)
            return False
        return isinstance(e, MessageEnded)

    async def _local(self, st, sink, status: int, body: bytes, flags: str, extra=()) -> bool:
        st.status, st.flags = status, flags
        st.response_bytes = len(body)
        return await sink.local(status, body, list(extra))

    # -- mirrors ------------------------------------------------------------------
    def _start_mirrors(self, st, mirrors, out: RequestHead, headers, body: bytes) -> None:
        for m in mirrors:
            if len(self._mirrors) >= MAX_INFLIGHT_MIRRORS:
                return
            task = asyncio.ensure_future(send_mirror(self, st, m, out, headers, body))
            self._mirrors.add(task)
            task.add_done_callback(self._mirrors.discard)

    def start_drain(self) -> None:
        """Stop keeping clients: every response from now on says
        `connection: close` (the client reconnects, to another replica);
        connections still idle after DRAIN_IDLE_GRACE_S are closed."""
        self.draining = True
        try:
            asyncio.get_running_loop().call_later(DRAIN_IDLE_GRACE_S, self.close_idle)
        except RuntimeError:        # no loop (a synchronous caller): close now
            self.close_idle()

    def close_idle(self) -> None:
        for s in list(self.sessions):
            if not s.busy:
                try:
                    s.stream.close()
                except Exception:
                    pass

    async def close(self) -> None:
        for t in list(self._mirrors):
            t.cancel()
        self.pool.close()
        self.h2pool.close()
        self.telemetry.flush()

    # -- telemetry ----------------------------------------------------------------
    def _record(self, st: "_Req") -> None:
        h = st.head
        self.telemetry.record(RequestRecord(
            source_principal=st.down.source_principal, source_ip=st.down.source_ip,
            source_workload=st.down.source_workload,
            destination=st.backend or (st.target.service if st.target else None),
            destination_workload=st.upstream_workload, upstream=st.upstream, method=h.method,
            path=h.target,
            authority=st.authority, protocol=st.down.protocol, status=st.status or 0,
            flags=st.flags, duration_ms=(self.clock() - st.t0) * 1000.0,
            request_bytes=st.request_bytes, response_bytes=st.response_bytes,
            request_id=st.request_id, traceparent=st.traceparent, route=st.route,
            policy=st.policy))


class _Req:
    """Per-request state for telemetry (plain slots: written as we go)."""
    __slots__ = ("down", "head", "t0", "authority", "target", "backend", "upstream", "status",
                 "flags", "request_bytes", "response_bytes", "request_id", "traceparent",
                 "route", "policy", "upstream_workload", "backend_port")

    def __init__(self, *, down, head, t0):
        self.down, self.head, self.t0 = down, head, t0
        self.authority = ""
        self.target = self.backend = None
        self.backend_port = 0
        self.upstream = ""
        self.upstream_workload = None     # the chosen endpoint's pod: destination_* labels
        self.status = 0
        self.flags = "-"
        self.request_bytes = self.response_bytes = 0
        self.request_id = self.traceparent = self.route = self.policy = ""


def _attached(route, svc, port: int) -> bool:
    for p in route.parent_refs or ():
        if p.kind == "Service" and p.name == svc.name and (p.port == 0 or p.port == port):
            return True
    return not route.parent_refs


def _budget(per_try: float | None, deadline: float | None, now: float) -> float | None:
    budgets = [b for b in (per_try, (deadline - now) if deadline is not None else None)
               if b is not None]
    return min(budgets) if budgets else None


async def _with_timeout(coro, budget: float | None):
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


async def _with_deadline(coro, deadline: float | None, clock):
    if deadline is None:
        return await coro
    return await _with_timeout(coro, deadline - clock())


async def _read_all(body) -> bytes:
    parts = []
    while True:
        data = await body.read()
        if not data:
            return b"".join(parts)
        parts.append(data)


async def _pump_body(body, stream, framing: str) -> int:
    total = 0
    while True:
        data = await body.read()
        if not data:
            break
        total += len(data)
        await stream.write(encode_chunk(data) if framing == "chunked" else data)
    if framing == "chunked":
        await stream.write(LAST_CHUNK)
    return total
