"""Outbound destination lookup (15001): where a captured connection goes.

Pure decision logic, no I/O: given the routing view, the source workload and
the original destination (from SO_ORIGINAL_DST), return a `Route` saying how
to reach the upstream, or raise `OutboundError`. It follows Istio ztunnel's
`proxy/outbound.rs::build_request` (reference section 3, "Destination
lookup"):

1. Look the original destination IP up: workloads first, then service VIPs;
   when several services share a VIP, prefer the client's namespace.
2. A service with a waypoint: HBONE to a waypoint replica's 15008, keeping
   `:authority` = VIP:port and expecting the waypoint's identity.
3. Otherwise a service picks an endpoint by load balancing: missing and
   (under ONLY_HEALTHY) unhealthy endpoints and endpoints lacking the port
   are skipped; the target port comes from the endpoint's `services` map,
   then from the Service port; locality preference ranks; weighted random
   by `capacity`. PASSTHROUGH goes to the original destination. No endpoint
   left: `NO_HEALTHY_UPSTREAM`.
4. A workload-addressed destination with a waypoint goes to the waypoint,
   unless the source is that waypoint.
5. HBONE workloads: `pod_ip:15008` with `:authority` = pod_ip:target_port;
   TCP (non-mesh) workloads and unknown IPs: plaintext passthrough.

Connections to the proxy's own capture ports are refused (`SELF_CALL`), as
they would loop through the proxy forever.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Protocol, Sequence

from shoal.core.addr import hostport
from shoal.core.constants import HBONE_PORT, PROXY_PORTS
from shoal.core.records import Service, Waypoint, Workload
from shoal.routing.view import View

# Route kinds.
HBONE = "HBONE"            # mTLS + HTTP/2 CONNECT to a peer proxy's 15008
PLAINTEXT = "PLAINTEXT"    # plain TCP to the upstream (outside the mesh)

# OutboundError codes (operators grep for these in the access log).
NO_HEALTHY_UPSTREAM = "NO_HEALTHY_UPSTREAM"
SELF_CALL = "SELF_CALL"
NO_WAYPOINT_ENDPOINT = "NO_WAYPOINT_ENDPOINT"
UNKNOWN_WAYPOINT = "UNKNOWN_WAYPOINT"


class Random(Protocol):
    def random(self) -> float: ...


class OutboundError(Exception):
    """The connection cannot be routed; the adapter resets it and logs why.

    Attributes:
        code: one of the module's code constants.
        response_flag: Istio's `response_flags` value for the metrics.
    """

    def __init__(self, code: str, message: str, *, response_flag: str = "CONNECT") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.response_flag = response_flag


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """How to reach the upstream of one outbound connection.

    Attributes:
        kind: HBONE or PLAINTEXT.
        address: next hop (ip, port): a peer's 15008 for HBONE.
        authority: HBONE `:authority` (the target ip:port); "" for plaintext.
        expected_identities: SPIFFE ids the peer certificate may carry.
        original: the original destination (ip, port).
        service: the Service the destination was addressed through, if any.
        workload: the chosen destination workload (None: unknown / waypoint).
        waypoint: the waypoint the connection is sent through, if any.
        target_port: the port the application listens on.
    """
    kind: str
    address: tuple[str, int]
    authority: str = ""
    expected_identities: tuple[str, ...] = ()
    original: tuple[str, int]
    service: Service | None = None
    workload: Workload | None = None
    waypoint: Waypoint | None = None
    target_port: int = 0

    @property
    def hbone_addr(self) -> str:
        return self.authority


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def resolve(view: View, *, source: Workload | None, dst: tuple[str, int], rng: Random,
            local_ips: frozenset[str] = frozenset(),
            proxy_ports: frozenset[int] = PROXY_PORTS, network: str = "",
            hbone_port: int = HBONE_PORT) -> Route:
    """Decide where the outbound connection to `dst` goes.

    Args:
        view: a RoutingView (or StaticView).
        source: the local workload that opened the connection (None if unknown).
        dst: original destination (ip, port).
        rng: random source for load balancing (injected for tests).
        local_ips: the proxy's own addresses (loop protection).
        proxy_ports: ports of the proxy's own listeners (loop protection).
        network: the source's network.
        hbone_port: the peers' HBONE port (15008; tests move it).
    Returns:
        the Route.
    Raises:
        OutboundError: self call, no healthy upstream, waypoint unavailable.
    """
    ip, port = dst
    if port in proxy_ports and (_is_loopback(ip) or ip in local_ips):
        raise OutboundError(SELF_CALL, f"refusing connection to {hostport(ip, port)}: it is "
                            "one of the proxy's own ports and would loop", response_flag="CONNECT")
    workload = view.workload_by_ip(ip, network)
    if workload is not None:
        route = _to_workload(view, source, workload, dst, port, service=None, rng=rng)
    else:
        service = _service_by_vip(view, ip, network, source)
        if service is None:
            return Route(kind=PLAINTEXT, address=dst, original=dst, target_port=port)
        route = _to_service(view, source, service, dst, rng)
    if route.kind == HBONE and hbone_port != HBONE_PORT:
        route = dataclasses.replace(route, address=(route.address[0], hbone_port))
    return route


def _service_by_vip(view: View, ip: str, network: str, source: Workload | None) -> Service | None:
    # Istio lets VIPs collide; then the client's namespace wins.
    candidates = view.services_by_vip(ip, network)
    if not candidates:
        return None
    if source is not None:
        for svc in candidates:
            if svc.namespace == source.namespace:
                return svc
    return candidates[0]


def _to_service(view: View, source: Workload | None, service: Service,
                dst: tuple[str, int], rng: Random) -> Route:
    waypoint = view.waypoint_for_service(service)
    if waypoint is not None and not is_from_waypoint(view, source, waypoint):
        return _via_waypoint(view, waypoint, dst, rng, service=service, workload=None)
    if service.load_balancing.mode == "PASSTHROUGH":
        return Route(kind=PLAINTEXT, address=dst, original=dst, service=service,
                     target_port=dst[1])
    picked = pick_endpoint(view, service, dst[1], source, rng)
    if picked is None:
        raise OutboundError(NO_HEALTHY_UPSTREAM,
                            f"no healthy upstream for service {service.hostname} port {dst[1]} "
                            f"({_endpoint_summary(view, service, dst[1])}): check that its pods "
                            "are running, ready and expose that port",
                            response_flag="NO_HEALTHY_UPSTREAM")
    endpoint, target_port = picked
    return _to_workload(view, source, endpoint, dst, target_port, service=service, rng=rng)


def _to_workload(view: View, source: Workload | None, workload: Workload,
                 dst: tuple[str, int], target_port: int, *, service: Service | None,
                 rng: Random | None = None) -> Route:
    if service is None:
        waypoint = view.waypoint_for_workload(workload)
        if waypoint is not None and not is_from_waypoint(view, source, waypoint):
            ip = dst[0]
            return _via_waypoint(view, waypoint, (ip, target_port), rng,
                                 service=None, workload=workload)
    ip = dst[0] if service is None else workload.ips[0]
    sans = (workload.identity, *(service.subject_alt_names if service else ()))
    if workload.protocol == "HBONE":
        return Route(kind=HBONE, address=(ip, HBONE_PORT), authority=hostport(ip, target_port),
                     expected_identities=_unique(sans), original=dst, service=service,
                     workload=workload, target_port=target_port)
    return Route(kind=PLAINTEXT, address=(ip, target_port), original=dst, service=service,
                 workload=workload, target_port=target_port)


def _via_waypoint(view: View, waypoint: Waypoint, target: tuple[str, int], rng: Random | None,
                  *, service: Service | None, workload: Workload | None) -> Route:
    replicas = waypoint_replicas(view, waypoint)
    if replicas is None:
        raise OutboundError(UNKNOWN_WAYPOINT,
                            f"waypoint {waypoint.key} has no Service {waypoint.service!r}: "
                            "check the Gateway of class istio-waypoint", response_flag="CONNECT")
    replica = _weighted_pick(replicas, rng) if replicas else None
    if replica is None:
        raise OutboundError(NO_WAYPOINT_ENDPOINT,
                            f"waypoint {waypoint.key} has no healthy replica: check its pods",
                            response_flag="NO_HEALTHY_UPSTREAM")
    return Route(kind=HBONE, address=(replica.ips[0], HBONE_PORT),
                 authority=hostport(*target), expected_identities=(waypoint.identity,),
                 original=target, service=service,
                 workload=workload, waypoint=waypoint, target_port=target[1])


def waypoint_replicas(view: View, waypoint: Waypoint) -> list[Workload] | None:
    """Healthy replicas of a waypoint (None if its Service is unknown)."""
    if not waypoint.service:
        return None
    ns, _, host = waypoint.service.partition("/")
    svc = view.service_by_host(ns, host)
    if svc is None:
        return None
    return [w for w in view.endpoints(svc) if w is not None and w.ips and w.status == "HEALTHY"]


def is_from_waypoint(view: View, source: Workload | None, waypoint: Waypoint) -> bool:
    """Is the source one of this waypoint's replicas (identity and IP, as Istio)?"""
    if source is None or source.identity != waypoint.identity:
        return False
    replicas = waypoint_replicas(view, waypoint) or []
    ips = set(source.ips)
    return any(ips.intersection(r.ips) for r in replicas)


def pick_endpoint(view: View, service: Service, port: int, source: Workload | None,
                  rng: Random) -> tuple[Workload, int] | None:
    """Load balancing: (endpoint, target port) or None if none is eligible."""
    only_healthy = service.load_balancing.health_policy != "ALLOW_ALL"
    eligible: list[tuple[Workload, int]] = []
    for ep, tp in view.endpoints_for_port(service, port):
        if not ep.ips or (only_healthy and ep.status != "HEALTHY"):
            continue
        eligible.append((ep, tp))
    eligible = _by_locality(eligible, service, source)
    if not eligible:
        return None
    return _weighted_pick_pairs(eligible, rng)


def _endpoint_summary(view: View, service: Service, port: int) -> str:
    """Why no endpoint qualified, for the operator (counts per reason)."""
    eps = view.endpoints(service)
    no_ip = sum(1 for e in eps if not e.ips)
    sick = sum(1 for e in eps if e.ips and e.status != "HEALTHY")
    serving = {e.uid for e, _ in view.endpoints_for_port(service, port)}
    no_port = sum(1 for e in eps if e.ips and e.uid not in serving)
    return (f"{len(service.endpoints)} endpoints, {len(eps)} known, {no_ip} without IP, "
            f"{sick} unhealthy, {no_port} without port {port}")


def _locality_rank(ep: Workload, prefs: Sequence[str], source: Workload | None) -> int:
    """How many leading routing preferences the endpoint matches."""
    rank = 0
    for pref in prefs:
        if pref == "NODE":
            ok = source is not None and bool(source.node) and ep.node == source.node
        elif pref == "NETWORK":
            ok = source is not None and ep.network == source.network
        else:
            # REGION/ZONE/SUBZONE/CLUSTER: the records carry no locality, so
            # every endpoint is in the same (single) one.
            ok = True
        if not ok:
            break
        rank += 1
    return rank


def _by_locality(eligible: list[tuple[Workload, int]], service: Service,
                 source: Workload | None) -> list[tuple[Workload, int]]:
    prefs = service.load_balancing.routing_preference
    mode = service.load_balancing.mode
    if not prefs or not eligible:
        return eligible
    ranked = [(_locality_rank(ep, prefs, source), ep, tp) for ep, tp in eligible]
    if mode == "STRICT":
        return [(ep, tp) for r, ep, tp in ranked if r == len(prefs)]
    best = max(r for r, _, _ in ranked)
    # FAILOVER (and STANDARD with preferences): only the best-ranked endpoints.
    return [(ep, tp) for r, ep, tp in ranked if r == best]


def _weighted_pick(items: list[Workload], rng: Random | None) -> Workload | None:
    if not items:
        return None
    pair = _weighted_pick_pairs([(w, 0) for w in items], rng)
    return pair[0] if pair else None


def _weighted_pick_pairs(items: list[tuple[Workload, int]],
                         rng: Random | None) -> tuple[Workload, int] | None:
    if not items:
        return None
    if rng is None or len(items) == 1:
        return items[0]
    weights = [max(ep.capacity, 1) for ep, _ in items]
    x = rng.random() * sum(weights)
    for item, w in zip(items, weights):
        if x < w:
            return item
        x -= w
    return items[-1]


def _unique(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))
