"""Inbound decisions (15008 HBONE, 15006 plaintext): accept, and where to.

Pure logic, no I/O. It follows Istio ztunnel's `proxy/inbound.rs` and
`inbound_passthrough.rs` (reference sections 2-4):

- HBONE: the CONNECT `:authority` must be an `ip:port` whose IP is the
  connection's destination IP (this workload), unless the local pod is the
  waypoint of the target. The source identity (from the client
  certificate) is authorized against the destination's L4 policies.
  There is no separate "only from its waypoint" check, as in ztunnel:
  whether clients may bypass a workload's waypoint is up to its policies
  (e.g. an ALLOW naming the waypoint, or istiod's synthetic
  allow-from-waypoint policy, PILOT_AUTO_ALLOW_WAYPOINT_POLICY, see
  routing/compile).
  Malformed: 400; denied: 401; unknown workload: 503 (the adapter answers
  503 too when the app is unreachable).
- Plaintext (15006): authorized with no source identity.

Authorization itself is `core.authz.evaluate(policies, request, layer="L4")`
with Istio's order; this module builds its inputs (`ConnInfo`) and keeps
them so the connection manager can re-check live connections when
policies change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from shoal.core import authz
from shoal.core.addr import hostport, parse_ip_port
from shoal.core.constants import PROXY_PORTS
from shoal.core.records import Service, Workload
from shoal.routing.view import View
from shoal.ztunnel.outbound import waypoint_replicas

# HTTP statuses of the CONNECT response (Istio's).
OK = 200
BAD_REQUEST = 400
UNAUTHORIZED = 401
SERVICE_UNAVAILABLE = 503


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnInfo:
    """The authorization inputs of one inbound connection (kept while it lives).

    Attributes:
        src_identity: the client's SPIFFE id; "" for plaintext.
        src_ip, src_port: the client's address as seen by this proxy.
        dst_ip, dst_port: the destination workload IP and target port.
    """
    src_identity: str
    src_ip: str
    src_port: int = 0
    dst_ip: str
    dst_port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """Connect to `upstream` and answer 200 once connected."""
    upstream: tuple[str, int]
    workload: Workload
    conn: ConnInfo
    via_waypoint_exception: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """Answer `status` (HBONE) or reset (plaintext), and log `reason`."""
    status: int
    reason: str
    response_flag: str = "CONNECT"
    policy: str = ""
    workload: Workload | None = None


Authorizer = Callable[[View, Workload, ConnInfo], tuple[bool, str, str]]


def authorize_l4(view: View, workload: Workload, conn: ConnInfo) -> tuple[bool, str, str]:
    """Authorize `conn` against the destination's L4 policies, Istio's L4 semantics.

    Plaintext connections (15006) have no identity: `source_principal=None`,
    so principals/namespaces never match them (Istio's `src_identity=None`).

    Returns:
        (allowed, reason, policy key or "").
    """
    request = authz.Request(source_principal=conn.src_identity or None, source_ip=conn.src_ip,
                            destination_ip=conn.dst_ip, destination_port=conn.dst_port)
    decision = authz.evaluate(view.policies_for_workload(workload), request, layer=authz.L4)
    reason = decision.reason
    if decision.policy_key:
        reason = f"{reason} {decision.policy_key}"
    return decision.allowed, reason, decision.policy_key


def decide_hbone(view: View, *, authority: str, local_ip: str, src_identity: str,
                 src_addr: tuple[str, int], authorize: Authorizer = authorize_l4,
                 proxy_ports: frozenset[int] = PROXY_PORTS,
                 local: Workload | None = None) -> Accepted | Rejected:
    """Decide one HBONE CONNECT arriving on 15008.

    Args:
        view: the routing view.
        authority: the CONNECT `:authority`.
        local_ip: the destination IP of the TLS connection (which workload's
            15008 it reached).
        src_identity: SPIFFE id of the verified client certificate.
        src_addr: the peer address of the TLS connection.
        authorize: the L4 authorizer (injected for tests).
        local: the workload this proxy serves, when it is known without a
            lookup (in-pod mode: the pod whose netns accepted the connection).
    """
    try:
        ip, port = parse_ip_port(authority)
    except ValueError as e:
        return Rejected(status=BAD_REQUEST, reason=f"malformed :authority {authority!r}: {e}")
    if port in proxy_ports:
        return Rejected(status=BAD_REQUEST, reason=f"refusing {hostport(ip, port)}: "
                        "a port reserved for the proxy (self call)")
    if local is None:
        local = view.workload_by_ip(local_ip)
    waypoint_case = ip != local_ip
    if waypoint_case and (local is None or not _local_is_waypoint_of(view, local, ip)):
        return Rejected(status=BAD_REQUEST, reason=f":authority {authority} does not name "
                        f"this workload ({local_ip})")
    workload = local
    if workload is None:
        return Rejected(status=SERVICE_UNAVAILABLE, reason=f"unknown workload {local_ip}: "
                        "not in the routing table (yet)")
    conn = ConnInfo(src_identity=src_identity, src_ip=src_addr[0], src_port=src_addr[1],
                    dst_ip=ip, dst_port=port)
    allowed, reason, policy = authorize(view, workload, conn)
    if not allowed:
        return Rejected(status=UNAUTHORIZED, reason=reason, response_flag="DENY",
                        policy=policy, workload=workload)
    return Accepted(upstream=(ip, port), workload=workload, conn=conn,
                    via_waypoint_exception=waypoint_case)


def decide_plaintext(view: View, *, dst: tuple[str, int], src_addr: tuple[str, int],
                     authorize: Authorizer = authorize_l4,
                     proxy_ports: frozenset[int] = PROXY_PORTS) -> Accepted | Rejected:
    """Decide one plaintext inbound connection (15006), with no identity."""
    ip, port = dst
    if port in proxy_ports:
        return Rejected(status=BAD_REQUEST, reason=f"refusing {hostport(ip, port)}: "
                        "a port reserved for the proxy (self call)")
    workload = view.workload_by_ip(ip)
    if workload is None:
        return Rejected(status=SERVICE_UNAVAILABLE, reason=f"unknown workload {ip}")
    conn = ConnInfo(src_identity="", src_ip=src_addr[0], src_port=src_addr[1],
                    dst_ip=ip, dst_port=port)
    allowed, reason, policy = authorize(view, workload, conn)
    if not allowed:
        return Rejected(status=UNAUTHORIZED, reason=reason, response_flag="DENY",
                        policy=policy, workload=workload)
    return Accepted(upstream=dst, workload=workload, conn=conn)


def recheck(view: View, workload_ip: str, conn: ConnInfo,
            authorize: Authorizer = authorize_l4) -> Rejected | None:
    """Re-authorize a live connection after a policy change (None: still allowed)."""
    workload = view.workload_by_ip(workload_ip)
    if workload is None:
        return Rejected(status=SERVICE_UNAVAILABLE, reason=f"workload {workload_ip} "
                        "left the routing table")
    allowed, reason, policy = authorize(view, workload, conn)
    if allowed:
        return None
    return Rejected(status=UNAUTHORIZED, reason=reason, response_flag="DENY", policy=policy,
                    workload=workload)


def _local_is_waypoint_of(view: View, local: Workload, target_ip: str) -> bool:
    """Is the local pod a replica of the waypoint serving `target_ip`?"""
    svc = view.service_by_vip(target_ip)
    if svc is not None:
        waypoint = view.waypoint_for_service(svc)
    else:
        target = view.workload_by_ip(target_ip)
        waypoint = view.waypoint_for_workload(target) if target is not None else None
    if waypoint is None:
        return False
    replicas = waypoint_replicas(view, waypoint) or []
    return any(r.uid == local.uid for r in replicas)


def guess_service(view: View, workload: Workload | None, port: int) -> Service | None:
    """The service an inbound connection to `workload`:`port` was for, for
    telemetry (ztunnel's `guess_inbound_service`): the first service of the
    workload with that target port. The connection carries the pod's
    address, not the VIP the client dialled, so this is a guess when two
    services share a target port (ztunnel takes the first one too)."""
    if workload is None:
        return None
    for key, ports in sorted(workload.services.items()):
        if port in ports.values():
            namespace, _, hostname = key.partition("/")
            svc = view.service_by_host(namespace, hostname)
            if svc is not None:
                return svc
    return None
