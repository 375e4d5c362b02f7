"""What the waypoint looks up per request, cached per routing generation.

Route tables, the policies that apply to a destination, endpoints and the
plaintext-mode Host -> destination map are decoded from the routing view
once per generation; the load balancers (with their outlier-ejection state)
live across generations and only forget the endpoints that left.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

from shoal.core.addr import split_host_port
from shoal.core.constants import WAYPOINT_GATEWAY_CLASS
from shoal.waypoint.destination import (Endpoint, NotForUs, Target, endpoints, resolve_host,
                                        service_port)
from shoal.waypoint.h2upstream import speaks_h2
from shoal.waypoint.lb import ROUND_ROBIN, Balancer
from shoal.waypoint.routes import RouteTable, routes_for_client

# Caches keyed by routing generation: more than this many entries means
# churn; start over rather than grow.
MAX_CACHE_ENTRIES = 4096
# Istio's root namespace: policies there targeting the GatewayClass apply to
# every waypoint of that class.
ROOT_NAMESPACE = "istio-system"


class Lookups:
    """The routing view's answers for one worker, cached (see module docstring)."""

    def __init__(self, view: Any, *, waypoint: Any = None, namespace: str = "default",
                 lb_mode: str = ROUND_ROBIN, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.waypoint = waypoint
        self.namespace = namespace
        self.lb_mode = lb_mode
        self.rng = rng or random.Random()
        self.clock = clock
        self._balancers: dict[str, Balancer] = {}
        self._cache_gen = -1
        self._routes: dict = {}
        self._policies: dict = {}
        self._hosts: dict = {}       # plaintext mode: Host -> Target
        self._endpoints: dict = {}   # (service key, port) -> [Endpoint]
        self._h2: dict = {}          # (service key, port) -> speaks HTTP/2 upstream
        # id(endpoint list) -> (that list, its keys, key -> Endpoint), for the
        # lists `endpoints` returned this generation; the entry holds the list
        # so its id cannot be reused while the entry lives.
        self._ep_index: dict = {}

    def refresh(self) -> None:
        """Drop the caches when the routing generation moved (or they grew too big)."""
        gen = self.view.generation
        if gen != self._cache_gen or \
                len(self._routes) + len(self._policies) + len(self._hosts) + \
                len(self._endpoints) + len(self._h2) > MAX_CACHE_ENTRIES:
            self._cache_gen = gen
            self._routes.clear()
            self._policies.clear()
            self._hosts.clear()
            self._endpoints.clear()
            self._h2.clear()
            self._ep_index.clear()

    def route_table(self, target: Target, client_namespace: str | None = None) -> RouteTable | None:
        """The routes for a client of `client_namespace` (consumer routes
        of that namespace, else the Service's producer routes)."""
        svc = target.service
        if svc is None:
            return None
        key = (svc.key, target.port, client_namespace)
        table = self._routes.get(key)
        if table is None:
            routes = [r for r in self.view.routes_for_service(svc.namespace, svc.name)
                      if _attached(r, svc, target.port)]
            table = self._routes[key] = RouteTable(
                routes_for_client(routes, svc.namespace, client_namespace))
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

    def endpoints(self, svc: Any, port: int) -> list[Endpoint]:
        key = (svc.key, port)
        eps = self._endpoints.get(key)
        if eps is None:
            eps = self._endpoints[key] = endpoints(self.view, svc, port)
            self._ep_index[id(eps)] = (eps, *_index(eps))
            b = self._balancers.get(svc.key)
            if b is not None:     # endpoints changed: drop state of departed pods
                b.forget([e.key for e in eps])
        return eps

    def endpoint_index(self, eps: list[Endpoint]) -> tuple[tuple[str, ...], dict[str, Endpoint]]:
        """`eps`' keys and key -> Endpoint: made once per generation for the
        lists `endpoints` returned, else (a workload addressed directly) now.
        Callers must not change what they get."""
        entry = self._ep_index.get(id(eps))
        if entry is not None and entry[0] is eps:
            return entry[1], entry[2]
        return _index(eps)

    def speaks_h2(self, svc: Any, port: int) -> bool:
        """Does `svc`'s `port` take HTTP/2 upstream (h2upstream.speaks_h2)?"""
        key = (svc.key, port)
        h2 = self._h2.get(key)
        if h2 is None:
            h2 = self._h2[key] = speaks_h2(service_port(svc, port))
        return h2

    def balancer(self, key: str) -> Balancer:
        b = self._balancers.get(key)
        if b is None:
            b = self._balancers[key] = Balancer(mode=self.lb_mode, rng=self.rng, clock=self.clock)
        return b

    def target_from_host(self, authority: str) -> Target | None:
        """Plaintext mode: the destination a Host header names (None: not ours)."""
        target = self._hosts.get(authority, False)
        if target is False:
            host, port = split_host_port(authority, 0)
            try:
                target = resolve_host(self.view, self.namespace, host, port)
            except NotForUs:
                target = None
            self._hosts[authority] = target
        return target


def _index(eps: list[Endpoint]) -> tuple[tuple[str, ...], dict[str, Endpoint]]:
    return tuple(e.key for e in eps), {e.key: e for e in eps}


def principal_namespace(principal: str | None) -> str | None:
    """The namespace of a SPIFFE ID `spiffe://<td>/ns/<ns>/sa/<sa>`, else None."""
    if not principal:
        return None
    parts = principal.split("/")
    return parts[4] if len(parts) == 7 and parts[3] == "ns" else None


def _attached(route: Any, svc: Any, port: int) -> bool:
    for p in route.parent_refs or ():
        if p.kind == "Service" and p.name == svc.name and (p.port == 0 or p.port == port):
            return True
    return not route.parent_refs
