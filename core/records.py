"""Compiled routing records: what the routing table stores and shards read.

These are the contract between the config compiler (routing/), the
data-plane apps (ztunnel/, waypoint/) and the control plane (core/ca).
They mirror Istio's Workload API (workload.proto, authorization.proto)
where it applies, and Gateway API's HTTPRoute for L7 routes.

Rules for this module:
- Records are frozen, slotted, kw_only dataclasses of plain values
  (str, int, float, bool, tuple, dict of str) so orjson encodes them
  directly and the codec decodes them with `from_dict`.
- Records hold validated data only: the compiler (routing/compile) is the one
  place that turns Kubernetes YAML into records and it raises on bad input.
- No I/O, no process state.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from shoal.core.constants import DEFAULT_TRUST_DOMAIN

_REC = dict(frozen=True, slots=True, kw_only=True)


# --------------------------------------------------------------------------
# Workloads and services (Istio Workload API)

@dataclass(**_REC)
class WaypointRef:
    """Which waypoint (a Gateway of class istio-waypoint) serves a target."""
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(**_REC)
class Workload:
    """One pod (or Deployment replica). Istio's `Workload`."""
    uid: str                       # "<cluster>//Pod/<namespace>/<name>"
    name: str
    namespace: str
    ips: tuple[str, ...]
    network: str = ""
    node: str = ""
    service_account: str = "default"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    labels: dict[str, str] = field(default_factory=dict)
    # "HBONE" when captured by ambient (namespace or pod label), else "TCP".
    protocol: str = "TCP"
    waypoint: WaypointRef | None = None
    canonical_name: str = ""       # app / app.kubernetes.io/name label, else workload_name
    canonical_revision: str = "latest"  # version label
    workload_name: str = ""        # owning Deployment, else the pod name
    workload_type: str = "pod"     # "deployment" | "pod"
    status: str = "HEALTHY"        # "HEALTHY" | "UNHEALTHY"
    capacity: int = 1
    # "<ns>/<hostname>" -> {service port: target port} for the services this
    # workload backs, named targetPorts already resolved against its containers.
    services: dict[str, dict[int, int]] = field(default_factory=dict)
    # "<ns>/<name>" of selector-scoped AuthorizationPolicies that select it.
    authorization_policies: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        return spiffe_id(self.trust_domain, self.namespace, self.service_account)


@dataclass(**_REC)
class ServicePort:
    port: int
    target_port: int = 0           # 0: named target port, resolved per endpoint
    target_port_name: str = ""
    name: str = ""
    app_protocol: str = ""         # "http", "http2", "tcp", ... (from appProtocol or port name)


@dataclass(**_REC)
class LoadBalancing:
    mode: str = "STANDARD"         # STANDARD | STRICT | FAILOVER | PASSTHROUGH
    health_policy: str = "ONLY_HEALTHY"  # ONLY_HEALTHY | ALLOW_ALL
    routing_preference: tuple[str, ...] = ()


@dataclass(**_REC)
class Service:
    """A Kubernetes Service. Istio's `Service` plus its endpoints."""
    name: str
    namespace: str
    hostname: str                  # "<name>.<ns>.svc.cluster.local"
    vips: tuple[str, ...]          # clusterIPs; empty = headless
    network: str = ""
    ports: tuple[ServicePort, ...] = ()
    endpoints: tuple[str, ...] = ()  # workload uids, sorted
    waypoint: WaypointRef | None = None
    load_balancing: LoadBalancing = field(default_factory=LoadBalancing)
    subject_alt_names: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"


# --------------------------------------------------------------------------
# Authorization (security.istio.io/v1 AuthorizationPolicy, kept in Istio's
# from/to/when shape; ztunnel evaluates the L4 subset, waypoints all of it).

@dataclass(**_REC)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()


@dataclass(**_REC)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(**_REC)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(**_REC)
class Rule:
    # Istio: entries of from_ are OR-ed, of to are OR-ed, of when are AND-ed;
    # the three groups are AND-ed. An empty group matches everything.
    from_: tuple[Source, ...] = ()
    to: tuple[Operation, ...] = ()
    when: tuple[Condition, ...] = ()


@dataclass(**_REC)
class TargetRef:
    kind: str                      # "Gateway" | "GatewayClass" | "Service" | "ServiceEntry"
    name: str
    group: str = ""
    namespace: str = ""


@dataclass(**_REC)
class Authorization:
    """One AuthorizationPolicy."""
    name: str
    namespace: str
    # GLOBAL (root namespace, no selector), NAMESPACE (no selector),
    # WORKLOAD_SELECTOR (selector), TARGET_REF (targetRefs: waypoints only).
    scope: str
    action: str                    # ALLOW | DENY | AUDIT | CUSTOM
    selector: dict[str, str] = field(default_factory=dict)
    target_refs: tuple[TargetRef, ...] = ()
    # Istio: a policy with no rules matches nothing (so an ALLOW with none
    # denies everything it applies to); `rules: [{}]` is one Rule() and
    # matches every request.
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --------------------------------------------------------------------------
# Waypoints (Gateway, class istio-waypoint) and HTTPRoutes

@dataclass(**_REC)
class Waypoint:
    name: str
    namespace: str
    waypoint_for: str = "service"  # service | workload | all | none
    # The waypoint's own Service (synthesized like istiod does): "<ns>/<hostname>",
    # whose endpoints are the waypoint replicas; they listen for HBONE on 15008.
    service: str = ""
    service_account: str = ""      # identity of the replicas; defaults to the Gateway name
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> str:
        return spiffe_id(self.trust_domain, self.namespace, self.service_account or self.name)


@dataclass(**_REC)
class ParentRef:
    kind: str = "Service"          # Service (mesh/waypoint) | Gateway
    name: str = ""
    namespace: str = ""
    group: str = ""
    port: int = 0                  # 0: all ports
    section_name: str = ""


@dataclass(**_REC)
class PathMatch:
    type: str = "PathPrefix"       # Exact | PathPrefix | RegularExpression
    value: str = "/"


@dataclass(**_REC)
class HeaderMatch:
    name: str
    value: str
    type: str = "Exact"            # Exact | RegularExpression


@dataclass(**_REC)
class QueryParamMatch:
    name: str
    value: str
    type: str = "Exact"


@dataclass(**_REC)
class RouteMatch:
    path: PathMatch = field(default_factory=PathMatch)
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()
    method: str = ""               # "" = any


@dataclass(**_REC)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(**_REC)
class PathModifier:
    type: str                      # ReplaceFullPath | ReplacePrefixMatch
    value: str


@dataclass(**_REC)
class RequestRedirect:
    scheme: str = ""
    hostname: str = ""
    path: PathModifier | None = None
    port: int = 0
    status_code: int = 302


@dataclass(**_REC)
class URLRewrite:
    hostname: str = ""
    path: PathModifier | None = None


@dataclass(**_REC)
class BackendRef:
    name: str
    namespace: str
    port: int = 0
    weight: int = 1
    kind: str = "Service"
    # Applied only when this backend is chosen, after the rule's own filters
    # (Gateway API HTTPBackendRef.filters / GRPCBackendRef.filters).
    filters: tuple[HTTPFilter, ...] = ()


@dataclass(**_REC)
class RequestMirror:
    backend: BackendRef
    percent: float = 100.0


@dataclass(**_REC)
class HTTPFilter:
    type: str                      # RequestHeaderModifier | ResponseHeaderModifier |
                                   # RequestRedirect | URLRewrite | RequestMirror
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    request_mirror: RequestMirror | None = None


@dataclass(**_REC)
class Timeouts:
    request: float | None = None          # seconds; None = no timeout
    backend_request: float | None = None


@dataclass(**_REC)
class Retry:
    attempts: int = 2                      # Istio's default when retry is set
    codes: tuple[int, ...] = (503,)
    backoff: float = 0.025                 # seconds between attempts


@dataclass(**_REC)
class RouteRule:
    name: str = ""
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    filters: tuple[HTTPFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: Retry | None = None


@dataclass(**_REC)
class HTTPRoute:
    name: str
    namespace: str
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[RouteRule, ...] = ()
    creation_index: int = 0        # tie-break for Gateway API precedence (older first)
    # "HTTPRoute" | "GRPCRoute": a GRPCRoute is compiled to the same rules
    # (its method matches become path matches on "/<service>/<method>").
    kind: str = "HTTPRoute"

    @property
    def key(self) -> str:
        # Kubernetes names never contain ":", so a GRPCRoute and an HTTPRoute
        # of the same name stay apart.
        if self.kind == "HTTPRoute":
            return f"{self.namespace}/{self.name}"
        return f"{self.namespace}/{self.kind}:{self.name}"


@dataclass(**_REC)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------
# helpers

def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def to_dict(record: Any) -> dict[str, Any]:
    """A record as plain data (what orjson would produce, without bytes)."""
    return dataclasses.asdict(record)


_HINTS: dict[type, dict[str, Any]] = {}


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a record of type `cls` from `to_dict`/orjson output.

    Lists become tuples, nested records are rebuilt, and dict keys that were
    ints (orjson writes them as strings) are turned back into ints.
    """
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return cls(**{k: _convert(hints[k], v) for k, v in data.items() if k in hints})


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        return {_convert(kt, k): _convert(vt, v) for k, v in value.items()}
    if tp is int:
        return int(value)
    if tp is float:
        return float(value)
    return value


RECORD_TYPES: dict[str, type] = {
    "workload": Workload,
    "service": Service,
    "authorization": Authorization,
    "waypoint": Waypoint,
    "httproute": HTTPRoute,
    "namespace": Namespace,
}
