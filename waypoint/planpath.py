"""Plans: a request decision made once in Python, reused by C for the same
(method, target, Host) within one routing generation.

    plans = PlanCache(proxy)              # one per worker (Proxy makes it)
    t = plans.request(data)               # a client read on the fast path
    plans.install(st, req, decision)      # after Proxy.decide forwarded it

On the HTTP/1.1 fast path (fastpath.py) every request used to run
Proxy.begin, Proxy.decide, Forwarder.fast_headers and the head serializer:
about a dozen Python calls that give the same answer for every request to
one URL in one routing generation. When that answer cannot depend on
anything else, it is kept as a `Plan`, and the next request with the same
method, target and Host is served from it: `_h1.plan_request` (plan.c)
parses the read, finds the plan and builds the upstream head with the ids
Forwarder._upstream_headers would make (a new span, the request id), in
one call; Python then only starts the exchange (fastexchange.Exchange) and
records the request, as before.

A decision is kept only when it is a pure function of (generation, method,
target, Host) for a plaintext client (no peer identity, no target of its
own):
- no L7 AuthorizationPolicy applies to the destination (a policy may read
  the source address or any header);
- the HTTPRoutes of the destination match on nothing but host, method and
  path (no header or query match), and the chosen rule has no filter
  (header changes, redirects, rewrites, mirrors), no timeout, no retry and
  at most one backendRef, itself without filters;
- Forwarder.fast_headers took it (HTTP/1.1 backend over plain TCP...).
Everything else, and every head plan.c does not take (see there), goes
the way it went before.

HTTP/2 clients (h2fastpath.py) use the same plans: `request_h2` looks up
a body-less request's (method, :path, :authority) and plan.c builds the
same upstream head from h2's fields (h2 keeps the connection: HPACK,
streams, windows). A plan left by either protocol serves both: the
decision depends on neither. A new routing generation drops every plan before
the next request is looked up; `MAX_PLANS` bounds the table.
"""

from __future__ import annotations

import os
import time
from types import ModuleType
from typing import Any

from shoal.waypoint.h1native import native
from shoal.waypoint.lookups import principal_namespace

# Environment switch: "0" keeps no plans (every request decided in Python,
# as before; for A/B runs). SHOAL_NATIVE=0 turns them off too.
PLANS_ENV = "SHOAL_WAYPOINT_PLANS"
# Plans kept per worker. A plan is a few hundred bytes; a waypoint serving
# more distinct URLs than this per generation (query strings that change
# per request, say) starts the table over rather than grow it: those
# requests then cost what they cost without plans.
MAX_PLANS = 1024


def plans_enabled() -> bool:
    return native is not None and os.environ.get(PLANS_ENV, "1") != "0"


class Plan:
    """What a request served from a plan needs of the decision."""

    __slots__ = ("target", "backend", "port", "route", "eps", "lb_key", "keys", "by_key",
                 "slots")

    def __init__(self, target: Any, backend: Any, port: int, route: str, eps: list,
                 keys: tuple, by_key: dict, counted: bool) -> None:
        self.target, self.backend, self.port, self.route, self.eps = \
            target, backend, port, route, eps
        # Forwarder.balancer's: the balancer's key, the endpoint keys, key -> Endpoint.
        self.lb_key = backend.key if backend is not None else target.address
        self.keys, self.by_key = keys, by_key
        # (endpoint key, status) -> the telemetry tally's slot, when requests
        # served from this plan are counted in C (Telemetry.counts_in_c).
        self.slots: dict | None = {} if counted else None


class PlanCache:
    """The worker's plans, keyed "METHOD TARGET HOST" (plan.c's key)."""

    def __init__(self, proxy: Any) -> None:
        if native is None:
            raise RuntimeError("plans need the native HTTP/1.1 module (h1native.py)")
        self.native: ModuleType = native
        native.seed(os.urandom(32))     # in the worker: ids differ between workers
        self.proxy = proxy
        self.sampling = float(proxy.forwarder.trace_sampling)
        self.plans: dict[str, Plan] = {}
        self.generation = -1

    def request(self, data: bytes) -> tuple | None:
        """`_h1.plan_request` on this read, with the plans of the current
        generation (see plan.c for what it returns)."""
        return self.native.plan_request(data, self._current(), self.sampling)

    def request_h2(self, fields: list) -> tuple | None:
        """`_h1.plan_h2` on an HTTP/2 request's fields (h2's, pseudo-headers
        first): None, or (plan, upstream head, request id, traceparent,
        parent span) as plan_request gives them for HTTP/1.1 (see plan.c)."""
        return self.native.plan_h2(fields, self._current(), self.sampling)

    def _current(self) -> dict[str, Plan]:
        """The plans, dropped first if the routing generation moved on."""
        gen = self.proxy.view.generation
        if gen != self.generation:
            self.plans.clear()
            self.generation = gen
        return self.plans

    def install(self, st: Any, req: Any, d: Any) -> None:
        """Keep `d` (a proxy.Plan for `req`, decided with `st`) when nothing
        but (method, target, Host) decided it."""
        head = req.head
        if d.out is not head or d.response_mod is not None or d.mirrors or st.policy:
            return
        if not head.authority:
            return      # Host (or nothing) routed it: not the key's host
        down = st.down
        if down.target is not None or down.source_principal is not None:
            return
        target = st.target
        lookups = self.proxy.lookups
        if lookups.policies(target):
            return
        rule = d.rule
        if rule is not None:
            if rule.filters or rule.retry is not None or rule.timeouts.request \
                    or rule.timeouts.backend_request or len(rule.backend_refs) > 1 \
                    or any(ref.filters for ref in rule.backend_refs):
                return
        table = lookups.route_table(target, principal_namespace(down.source_principal))
        if table is not None and table.reads_headers:
            return
        if self.proxy.view.generation != self.generation:
            return                      # decided under another generation
        if len(self.plans) >= MAX_PLANS:
            self.plans.clear()
        keys, by_key = lookups.endpoint_index(d.eps)
        self.plans[f"{head.method} {head.target} {head.authority}"] = Plan(
            target, st.backend, st.backend_port, st.route, d.eps, keys, by_key,
            self.proxy.telemetry.counts_in_c and self.proxy.clock is time.monotonic)
