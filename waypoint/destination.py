"""Which destination a tunnel is for, and where its requests may go (pure).

Istio's waypoint (pilot/pkg/networking/core/waypoint.go, `main_internal`)
accepts a CONNECT only when the `:authority` (the original VIP:port, or a
pod IP:port) names a service or workload that uses this waypoint; anything
else is refused. Endpoints are the service's workloads with the target port
resolved per workload (named targetPorts included, as the compiler stored
them in `Workload.services`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.core.addr import hostport
from shoal.core.records import Service, ServicePort, Waypoint, Workload
from shoal.routing.view import View


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The destination of a tunnel (or, in plaintext mode, of a request)."""
    address: str                   # the VIP or pod IP the client called
    port: int                      # the port the client called
    service: Service | None = None
    workload: Workload | None = None
    # "address:port" for the access log, made once: a Target lives for its
    # routing generation (lookups.py) or its tunnel, not for one request.
    local_address: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "local_address", hostport(self.address, self.port))

    @property
    def name(self) -> str:
        if self.service is not None:
            return self.service.hostname
        if self.workload is not None:
            return self.workload.name
        return self.address


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    ip: str
    port: int                      # target port on the pod
    workload: Workload | None = None
    # "ip:port", made once: the load balancer and the pools look it up
    # several times per request.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.ip}:{self.port}")

    @property
    def hbone(self) -> bool:
        """Mesh endpoints get HBONE to ip:15008; others plaintext."""
        return self.workload is not None and self.workload.protocol == "HBONE"


class NotForUs(Exception):
    """The authority is not a service/workload served by this waypoint."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def uses_waypoint(view: View, wp: Waypoint, *, service: Service | None = None,
                  workload: Workload | None = None) -> bool:
    if service is not None:
        got = view.waypoint_for_service(service)
    elif workload is not None:
        got = view.waypoint_for_workload(workload)
    else:
        return False
    return got is not None and got.key == wp.key


def resolve(view: View, wp: Waypoint | None, host: str, port: int) -> Target:
    """The Target for `host:port` (a VIP or a pod IP).

    With `wp` None (plaintext test mode without a waypoint) any known
    service or workload is accepted.

    Raises:
        NotForUs: unknown address, or its destination uses another waypoint.
    """
    svc = view.service_by_vip(host)
    if svc is not None:
        if wp is not None and not uses_waypoint(view, wp, service=svc):
            raise NotForUs(f"service {svc.namespace}/{svc.name} does not use waypoint {wp.key}")
        if service_port(svc, port) is None:
            raise NotForUs(f"service {svc.namespace}/{svc.name} has no port {port}")
        return Target(address=host, port=port, service=svc)
    w = view.workload_by_ip(host)
    if w is not None:
        if wp is not None and not uses_waypoint(view, wp, workload=w):
            raise NotForUs(f"workload {w.namespace}/{w.name} does not use waypoint {wp.key}")
        return Target(address=host, port=port, workload=w)
    raise NotForUs(f"{host}:{port} is neither a service VIP nor a workload known to the waypoint",
                   status=400)


def resolve_host(view: View, namespace: str, host: str, port: int) -> Target | None:
    """Plaintext mode: a Host header naming a service (short name, name.ns
    or FQDN, resolved from `namespace`) or a VIP."""
    svc = view.service_by_vip(host) or view.service_by_host(namespace, host)
    if svc is None:
        return None
    if port == 0 and svc.ports:
        port = svc.ports[0].port
    return Target(address=svc.vips[0] if svc.vips else host, port=port, service=svc)


def service_port(svc: Service, port: int) -> ServicePort | None:
    for p in svc.ports:
        if p.port == port:
            return p
    return None


def endpoints(view: View, svc: Service, port: int, *, only_healthy: bool = True) -> list[Endpoint]:
    """The service's endpoints for `port`, each with its target port
    (`View.endpoints_for_port`: a pod without a named targetPort is skipped)."""
    out: list[Endpoint] = []
    for w, tport in view.endpoints_for_port(svc, port):
        if only_healthy and w.status != "HEALTHY" and \
                svc.load_balancing.health_policy != "ALLOW_ALL":
            continue
        if w.ips:
            out.append(Endpoint(ip=w.ips[0], port=tport, workload=w))
    return out


def workload_endpoint(w: Workload, port: int) -> list[Endpoint]:
    return [Endpoint(ip=w.ips[0], port=port, workload=w)] if w.ips and w.status == "HEALTHY" else []
