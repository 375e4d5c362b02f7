"""The waypoint's per-request pipeline, independent of the client's protocol.

    keep = await proxy.handle(downstream, request_event, body, sink)

Order (Istio's waypoint filter chain): L7 AuthorizationPolicy (403
`RBAC: access denied`), HTTPRoute selection and filters (redirect answers
directly), backend choice (weighted backendRefs, else the original service),
endpoint choice (load balancer with outlier ejection), then the upstream
exchange with timeouts and retries (forward.py, the same for HTTP/1.1 and
HTTP/2 upstreams), streaming the response back. Every request ends in
exactly one telemetry record.

The client's side (frontdoor.py, then server.py for HTTP/1.1 or h2server.py
for HTTP/2) gives a `downstream.BodySource` and a `downstream.ResponseSink`.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
import weakref
from typing import Any, Callable, NamedTuple

from shoal.core import authz
from shoal.core import log as core_log
from shoal.waypoint import filters, message
from shoal.waypoint.destination import Endpoint, workload_endpoint
from shoal.waypoint.downstream import BodySource, Downstream, ResponseSink
from shoal.waypoint.forward import Forwarder
from shoal.waypoint.grpcstats import MessageCounter, grpc_status, is_grpc
from shoal.waypoint.h1exchange import H1Upstream
from shoal.waypoint.h2exchange import H2Upstream
from shoal.waypoint.h2upstream import H2Pool
from shoal.waypoint.http1 import RequestReceived
from shoal.waypoint.lb import ROUND_ROBIN
from shoal.waypoint.lookups import Lookups, principal_namespace
from shoal.waypoint.message import RequestHead
from shoal.waypoint.planpath import PlanCache, plans_enabled
from shoal.waypoint.request import (NO_HEALTHY_UPSTREAM, NO_ROUTE, RBAC_DENIED, RequestState,
                                    local_reply)
from shoal.waypoint.routes import NoBackend, RouteInput, pick_backend
from shoal.waypoint.telemetry import (DEFAULT_TRACE_SAMPLING_PERCENT, RequestRecord, Telemetry,
                                      trace_context)
from shoal.waypoint.upstream import H1Pool

LOG = core_log.get("waypoint")

# On drain, an idle HTTP/1.1 keep-alive client gets this long to send its
# next request, answered with `connection: close`, so a client sending
# steadily moves to another replica without a request meeting a closed
# connection. Clients idle longer are closed (Envoy keeps idle connections
# for its whole drain time; short here so a scaled-down replica goes quickly).
DRAIN_IDLE_GRACE_S = 2.0

__all__ = ["Downstream", "LocalAnswer", "Plan", "Proxy"]


class LocalAnswer(NamedTuple):
    """`Proxy.decide`: the waypoint answers itself (Envoy's local reply)."""
    status: int
    body: bytes
    flags: str
    extra: tuple = ()


class Plan(NamedTuple):
    """`Proxy.decide`: forward `out` to one of `eps`."""
    out: RequestHead
    eps: list[Endpoint]
    rule: Any
    response_mod: Any
    mirrors: tuple


class Proxy:
    """Shared by every connection of one worker."""

    def __init__(self, *, view: Any, waypoint: Any = None, pool: H1Pool,
                 telemetry: Telemetry | None = None, lb_mode: str = ROUND_ROBIN,
                 rng: _random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 namespace: str = "default",
                 trace_sampling: float = DEFAULT_TRACE_SAMPLING_PERCENT) -> None:
        self.view = view
        self.rng = rng or _random.Random()
        self.clock = clock
        self.lookups = Lookups(view, waypoint=waypoint, namespace=namespace, lb_mode=lb_mode,
                               rng=self.rng, clock=clock)
        self.pool = pool
        self.h2pool = H2Pool(pool.connector)     # HTTP/2 ports
        self.forwarder = Forwarder(self.lookups, h1=H1Upstream(pool),
                                   h2=H2Upstream(self.h2pool), rng=self.rng, clock=clock,
                                   trace_sampling=trace_sampling)
        self.telemetry = telemetry or Telemetry()
        self.draining = False
        # Decisions reused by the HTTP/1.1 fast path (planpath.py), or None.
        self.plans: PlanCache | None = PlanCache(self) if plans_enabled() else None
        self.sessions: weakref.WeakSet = weakref.WeakSet()   # HTTP/1.1 client connections

    # -- the pipeline -----------------------------------------------------------
    async def handle(self, down: Downstream, req: RequestReceived, body: BodySource,
                     sink: ResponseSink, decided: tuple | None = None) -> bool:
        """Serve one request. Returns False when the connection must close.

        `decided`: (RequestState, decision) when `decide` already ran (the
        fast path hands over a request it cannot finish itself)."""
        if decided is None:
            self.lookups.refresh()
            st = self.begin(down, req.head)
            d = None
        else:
            st, d = decided
        try:
            return await self._handle(st, req, body, sink, d)
        except (asyncio.CancelledError, ConnectionError):
            st.flags = "DC"       # downstream went away
            raise
        except Exception:
            # A bug must cost one request, never the worker: answer 500 as
            # Envoy does for internal errors, and log it with its traceback.
            LOG.exception("request failed inside the waypoint", extra={"fields": {
                "method": req.head.method, "path": req.head.target}})
            try:
                return await local_reply(st, sink, 500, b"internal error", "-")
            except Exception:
                return False
        finally:
            self.record(st)

    def begin(self, down: Downstream, head: Any) -> RequestState:
        """A new request's state (both paths): gRPC counters for a gRPC
        request, and the trace context decided now, as Envoy's span starts
        with the request: a request the waypoint answers itself (403, 404,
        503) is traced too."""
        st = RequestState(down=down, head=head, t0=self.clock())
        if is_grpc(message.get(head.headers, "content-type")):
            st.grpc_in, st.grpc_out = MessageCounter(), MessageCounter()
        st.traceparent, st.parent_span = trace_context(
            message.get(head.headers, "traceparent"), self.rng, self.forwarder.trace_sampling)
        return st

    async def _handle(self, st: RequestState, req: RequestReceived, body: BodySource,
                      sink: ResponseSink, d: LocalAnswer | Plan | None) -> bool:
        if d is None:
            d = self.decide(st, req)
        if isinstance(d, LocalAnswer):
            return await local_reply(st, sink, d.status, d.body, d.flags, list(d.extra))
        return await self.forwarder.forward(st, req, body, sink, d.out, d.eps, d.rule,
                                            d.response_mod, d.mirrors)

    def decide(self, st: RequestState, req: RequestReceived) -> LocalAnswer | Plan:
        """Everything before the upstream exchange, without I/O: policy,
        route, filters, backend and endpoints (fills `st` as it goes)."""
        head = req.head
        authority = head.authority or message.get(head.headers, "host") or ""
        st.authority = authority
        target = st.down.target or self.lookups.target_from_host(authority)
        if target is None:
            return LocalAnswer(404, NO_ROUTE, "NR")
        st.target = target
        hdict = None
        pols = self.lookups.policies(target)
        if pols:
            hdict = message.as_dict(head.headers)
            decision = authz.evaluate(pols, authz.Request(
                source_principal=st.down.source_principal, source_ip=st.down.source_ip,
                destination_ip=target.address, destination_port=target.port,
                method=head.method, host=authority, path=head.target, headers=hdict), authz.L7)
            st.policy = decision.policy_key
            if not decision.allowed:
                return LocalAnswer(403, RBAC_DENIED, "RBAC")
        rule = match = route_ns = None
        table = self.lookups.route_table(target, principal_namespace(st.down.source_principal))
        if table:
            if hdict is None:
                hdict = message.as_dict(head.headers)
            sel = table.select(RouteInput(method=head.method, path=head.path, query=head.query,
                                          host=authority, headers=hdict))
            if sel is None:
                return LocalAnswer(404, NO_ROUTE, "NR")
            rule, match, route_ns = sel.rule, sel.match, sel.route.namespace
            st.route = sel.route.key
        out = head
        response_mod = None
        mirrors: tuple = ()
        backend, port = target.service, target.port
        if rule is not None:
            plan = filters.plan(head, rule, match, target.port, self.rng)
            if plan.redirect is not None:
                return LocalAnswer(plan.redirect.status, b"", "-",
                                   (("location", plan.redirect.location),))
            out, response_mod, mirrors = plan.request, plan.response_headers, plan.mirrors
            if rule.backend_refs:
                try:
                    ref = pick_backend(rule.backend_refs, self.rng)
                except NoBackend:
                    return LocalAnswer(500, b"", "NR")
                backend = self.view.service_by_host(ref.namespace or route_ns, ref.name)
                port = ref.port or target.port
                if backend is None:
                    return LocalAnswer(500, b"", "NR")
                if ref.filters:
                    plan = filters.plan_backend(plan, ref, match, target.port, self.rng)
                    out, response_mod, mirrors = plan.request, plan.response_headers, plan.mirrors
        st.backend, st.backend_port = backend, port
        if backend is not None:
            eps = self.lookups.endpoints(backend, port)
        else:       # a workload addressed directly (resolve gives one of the two)
            eps = workload_endpoint(target.workload, port) if target.workload else []
        if not eps:
            return LocalAnswer(503, NO_HEALTHY_UPSTREAM, "UH")
        return Plan(out, eps, rule, response_mod, mirrors)

    # -- drain ----------------------------------------------------------------------
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
        self.forwarder.close()
        self.telemetry.flush()

    # -- telemetry ----------------------------------------------------------------
    def record(self, st: RequestState) -> None:
        """The request's one telemetry record (metrics, access log)."""
        self.telemetry.record(self.record_of(st))

    def record_of(self, st: RequestState) -> RequestRecord:
        h = st.head
        grpc = st.grpc_in is not None and st.grpc_out is not None
        took = self.clock() - st.t0
        return RequestRecord(
            source_principal=st.down.source_principal, source_ip=st.down.source_ip,
            source_workload=st.down.source_workload,
            destination=st.backend or (st.target.service if st.target else None),
            destination_workload=st.upstream_workload, upstream=st.upstream, method=h.method,
            path=h.target,
            authority=st.authority, protocol=st.down.protocol, status=st.status or 0,
            flags=st.flags, duration_ms=took * 1000.0,
            request_bytes=st.request_bytes, response_bytes=st.response_bytes,
            request_id=st.request_id, traceparent=st.traceparent, route=st.route,
            policy=st.policy, start_time=time.time() - took,
            user_agent=message.get(h.headers, "user-agent") or "",
            x_forwarded_for=message.get(h.headers, "x-forwarded-for") or "",
            local_address=st.target.local_address if st.target else "",
            parent_span_id=st.parent_span,
            grpc_status=(st.grpc_status or grpc_status(None, None, st.status or 0)) if grpc else "",
            request_messages=st.grpc_in.count if st.grpc_in is not None else 0,
            response_messages=st.grpc_out.count if st.grpc_out is not None else 0)
