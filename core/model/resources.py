"""Typed, validated Kubernetes resources (what the parsers produce).

Only the fields shoal uses are kept. Nested Istio / Gateway API structures
reuse the compiled record types of core/records.py (Rule, RouteRule, ...),
which are already plain validated values, so the compiler copies them as
they are. Everything here is frozen: the loader is the only constructor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.core.records import ParentRef, Rule, RouteRule, TargetRef

_RES = dict(frozen=True, slots=True, kw_only=True)


@dataclass(**_RES)
class Meta:
    kind: str
    name: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    file: str = ""
    index: int = 0          # order of appearance across the whole config (creation order)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"


@dataclass(**_RES)
class Namespace:
    meta: Meta


@dataclass(**_RES)
class Pod:
    meta: Meta
    node: str = ""
    service_account: str = "default"
    ips: tuple[str, ...] = ()
    # container port name -> number, for Services with a named targetPort
    container_ports: dict[str, int] = field(default_factory=dict)
    owner_deployment: str = ""   # set for Deployment replicas
    ready: bool = True


@dataclass(**_RES)
class Deployment:
    meta: Meta
    replicas: int = 1
    selector: dict[str, str] = field(default_factory=dict)
    template_labels: dict[str, str] = field(default_factory=dict)
    template_annotations: dict[str, str] = field(default_factory=dict)
    node: str = ""
    service_account: str = "default"
    container_ports: dict[str, int] = field(default_factory=dict)
    pod_ips: tuple[tuple[str, ...], ...] = ()   # per replica, from shoal.io/pod-ips


@dataclass(**_RES)
class ServicePortSpec:
    port: int
    name: str = ""
    protocol: str = "TCP"
    target_port: int = 0           # 0 with target_port_name set: a named port
    target_port_name: str = ""
    app_protocol: str = ""


@dataclass(**_RES)
class Service:
    meta: Meta
    selector: dict[str, str] | None = None    # None: no selector (endpoints managed elsewhere)
    ports: tuple[ServicePortSpec, ...] = ()
    cluster_ips: tuple[str, ...] = ()          # () or ("None",) -> headless
    type: str = "ClusterIP"


@dataclass(**_RES)
class AuthorizationPolicy:
    meta: Meta
    action: str = "ALLOW"
    selector: dict[str, str] | None = None
    target_refs: tuple[TargetRef, ...] = ()
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False


@dataclass(**_RES)
class Gateway:
    """A Gateway of class istio-waypoint (other classes are skipped)."""
    meta: Meta
    class_name: str
    waypoint_for: str = "service"
    addresses: tuple[str, ...] = ()


@dataclass(**_RES)
class HTTPRoute:
    """An HTTPRoute, or a GRPCRoute (`meta.kind`) already in HTTPRoute form."""
    meta: Meta
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[RouteRule, ...] = ()


@dataclass(**_RES)
class EndpointSlice:
    """The endpoints of a Service without a selector (`kubernetes.io/service-name`).
    Only ready endpoints that name a Pod (`targetRef`) are kept: shoal's
    endpoints are workloads."""
    meta: Meta
    service_name: str = ""
    pods: tuple[str, ...] = ()


Resource = (Namespace | Pod | Deployment | Service | AuthorizationPolicy | Gateway | HTTPRoute
            | EndpointSlice)


@dataclass(**_RES)
class Note:
    """Something skipped on purpose (unknown kind, non-waypoint Gateway class)."""
    file: str
    resource: str
    message: str

    def __str__(self) -> str:
        return f"{self.file or '<input>'}: {self.resource}: {self.message}"


@dataclass(**_RES)
class ConfigSet:
    """Every resource of one config, validated, in file order."""
    resources: tuple[Resource, ...] = ()
    notes: tuple[Note, ...] = ()

    def of(self, cls: type) -> list:
        return [r for r in self.resources if isinstance(r, cls)]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.resources:
            out[r.meta.kind] = out.get(r.meta.kind, 0) + 1
        return dict(sorted(out.items()))
