"""Compiler: validated resources (core.model) -> routing records (pure).

Istio semantics applied here (istiod's ambient index does the same):
- Capture: a pod is in the mesh (protocol HBONE) when its own label
  `istio.io/dataplane-mode` is `ambient`, or its namespace's is and the pod
  does not say `none`.
- Waypoints: `istio.io/use-waypoint` (+ `istio.io/use-waypoint-namespace`) on
  a Pod or Service wins over the Namespace's; the value `none` opts out.
  Whether the waypoint serves workloads or services (`istio.io/waypoint-for`)
  is decided at lookup time by the view.
- Services select pods of their own namespace; a named targetPort is resolved
  per endpoint from its container ports (`Workload.services`); an endpoint
  lacking the named port does not serve that port (as EndpointSlices do).
- AuthorizationPolicy scope: targetRefs -> TARGET_REF; a selector ->
  WORKLOAD_SELECTOR (listed in each selected `Workload.authorization_policies`;
  a selector policy in the root namespace selects across all namespaces);
  no selector -> GLOBAL in the root namespace, else NAMESPACE.
- A Gateway of class istio-waypoint -> a `Waypoint` and its Service
  `<name>.<ns>.svc.cluster.local` on 15008 whose endpoints are the pods
  labelled `gateway.networking.k8s.io/gateway-name: <name>`; its VIPs come
  from the Gateway's `spec.addresses`.
- `PILOT_AUTO_ALLOW_WAYPOINT_POLICY` (istiod's flag, off by default): each
  waypoint gets a synthetic ALLOW policy `istio_allow_waypoint_<ns>_<name>`
  for its identity, listed in the policies of every workload it serves
  (itself or through a Service), so it is OR-ed with their own ALLOWs.

Records of one namespace depend only on that namespace's resources and on
the root namespace's selector policies, which is what makes incremental
compilation per namespace sound (routing/incremental.py).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable

from shoal.core.constants import (DATAPLANE_AMBIENT, DATAPLANE_NONE, DEFAULT_CLUSTER,
                            DEFAULT_NETWORK, DEFAULT_TRUST_DOMAIN, HBONE_PORT,
                            LABEL_DATAPLANE_MODE, LABEL_GATEWAY_NAME, LABEL_USE_WAYPOINT,
                            LABEL_USE_WAYPOINT_NAMESPACE)
from shoal.core.model import (AuthorizationPolicy, ConfigError, ConfigSet, Deployment, EndpointSlice,
                        FieldError, Gateway, HTTPRoute, Namespace, Pod, Service, effective_pods)
from shoal.core import records as rec

ROOT_NAMESPACE = "istio-system"     # Istio's meshConfig.rootNamespace default
SVC_DOMAIN = "svc.cluster.local"
# Canonical service labels, in Istio's order of preference.
CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
CANONICAL_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version",
                             "version")


@dataclass(frozen=True, slots=True, kw_only=True)
class CompileOptions:
    cluster: str = DEFAULT_CLUSTER
    network: str = DEFAULT_NETWORK
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = ROOT_NAMESPACE
    auto_allow_waypoint: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "CompileOptions":
        """Options with istiod's environment switches applied (pass os.environ)."""
        flag = environ.get(ENV_AUTO_ALLOW_WAYPOINT, "").strip().lower()
        return cls(auto_allow_waypoint=flag in ("1", "t", "true"))


# istiod's feature flag for the synthetic allow-from-waypoint policies.
ENV_AUTO_ALLOW_WAYPOINT = "PILOT_AUTO_ALLOW_WAYPOINT_POLICY"
IMPLICIT_WAYPOINT_POLICY_PREFIX = "istio_allow_waypoint_"   # '_' is illegal in k8s names


@dataclass(slots=True, kw_only=True)
class NamespaceInput:
    """Everything one namespace's records depend on (besides root selector policies)."""
    name: str
    namespace: Namespace | None = None
    pods: list[Pod] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    policies: list[AuthorizationPolicy] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    routes: list[HTTPRoute] = field(default_factory=list)
    slices: list[EndpointSlice] = field(default_factory=list)


def slice_members(g: NamespaceInput) -> dict[str, set[str]]:
    """Service name -> pod names its EndpointSlices list (Services without a
    selector take their endpoints from these, as kube-proxy does)."""
    out: dict[str, set[str]] = {}
    for sl in g.slices:
        if sl.service_name:
            out.setdefault(sl.service_name, set()).update(sl.pods)
    return out


def group_by_namespace(cfg: ConfigSet | Iterable[Any], extra_pods: Iterable[Pod] = ()
                       ) -> dict[str, NamespaceInput]:
    """Resources per namespace; Deployments become replica pods; `extra_pods`
    (e.g. from a mesh builder, with IPs) replace same-named pods or add new ones."""
    resources = cfg.resources if isinstance(cfg, ConfigSet) else tuple(cfg)
    out: dict[str, NamespaceInput] = {}

    def ns_input(name: str) -> NamespaceInput:
        got = out.get(name)
        if got is None:
            got = out[name] = NamespaceInput(name=name)
        return got

    for r in resources:
        if isinstance(r, Namespace):
            ns_input(r.meta.name).namespace = r
        elif not isinstance(r, (Pod, Deployment)):
            kind = {Service: "services", AuthorizationPolicy: "policies", Gateway: "gateways",
                    HTTPRoute: "routes", EndpointSlice: "slices"}[type(r)]
            getattr(ns_input(r.meta.namespace), kind).append(r)
    pods = effective_pods(resources, extra_pods)
    for (ns, _), p in sorted(pods.items()):
        ns_input(ns).pods.append(p)
    for g in out.values():          # canonical order: equal inputs compare equal
        for bucket in (g.services, g.policies, g.gateways, g.routes, g.slices):
            bucket.sort(key=lambda r: r.meta.name)
    return out


def root_selector_policies(groups: dict[str, NamespaceInput],
                           options: CompileOptions) -> list[AuthorizationPolicy]:
    root = groups.get(options.root_namespace)
    return [p for p in root.policies if p.selector] if root else []


def compile_config(cfg: ConfigSet | Iterable[Any], *, extra_pods: Iterable[Pod] = (),
                   options: CompileOptions = CompileOptions()) -> list[Any]:
    """All records of a config, sorted by kind then key.

    Raises:
        ConfigError: cross-resource conflicts (two pods claiming one IP).
    """
    groups = group_by_namespace(cfg, extra_pods)
    root_pols = root_selector_policies(groups, options)
    out: list[Any] = []
    for name in sorted(groups):
        out += compile_namespace(groups[name], root_pols, options)
    check_conflicts(out)
    return out


def check_conflicts(records: Iterable[Any]) -> None:
    """Refuse two workloads with the same (network, IP): lookups would be ambiguous."""
    owners: dict[tuple[str, str], rec.Workload] = {}
    errors = []
    for w in records:
        if not isinstance(w, rec.Workload):
            continue
        for ip in w.ips:
            first = owners.setdefault((w.network, ip), w)
            if first is not w:
                errors.append(FieldError(file="", kind="Pod", namespace=w.namespace, name=w.name,
                                         field="status.podIP", message=f"IP {ip} is already used "
                                         f"by pod {first.namespace}/{first.name}"))
    if errors:
        raise ConfigError(errors)


def compile_namespace(g: NamespaceInput, root_policies: list[AuthorizationPolicy],
                      options: CompileOptions) -> list[Any]:
    """Records owned by one namespace (its workloads, services, policies, ...)."""
    ns_labels = g.namespace.meta.labels if g.namespace else {}
    out: list[Any] = []
    if g.namespace is not None:
        out.append(rec.Namespace(name=g.name, labels=dict(ns_labels)))
    services = [_service(s, ns_labels, options) for s in g.services]
    services += [_gateway_service(gw, options) for gw in g.gateways]
    selectors = [s.selector for s in g.services]
    selectors += [{LABEL_GATEWAY_NAME: gw.meta.name} for gw in g.gateways]
    selector_pols = [p for p in g.policies if p.selector] + \
        [p for p in root_policies if g.name != options.root_namespace]
    index = _LabelIndex([p.meta.labels for p in g.pods])
    svc_pods = [index.matching(sel) for sel in selectors]          # service i -> pod indexes
    members = slice_members(g)
    if members:
        position = {p.meta.name: i for i, p in enumerate(g.pods)}
        for si, svc in enumerate(g.services):
            if svc.selector is None:
                svc_pods[si] = sorted(position[n] for n in members.get(svc.meta.name, ())
                                      if n in position)
    pod_svcs: list[list[int]] = [[] for _ in g.pods]               # pod -> service indexes
    for si, pods in enumerate(svc_pods[:len(g.services)]):
        for pi in pods:
            pod_svcs[pi].append(si)
    pod_pols: list[list[str]] = [[] for _ in g.pods]
    for pol in selector_pols:
        for pi in index.matching(pol.selector):
            pod_pols[pi].append(f"{pol.meta.namespace}/{pol.meta.name}")
    workloads = [_workload(p, g, ns_labels, [g.services[si] for si in pod_svcs[i]],
                           pod_pols[i], options) for i, p in enumerate(g.pods)]
    for i, record in enumerate(services):
        eps = tuple(sorted(workloads[pi].uid for pi in svc_pods[i]))
        services[i] = _replace(record, endpoints=eps)
    out += workloads
    out += services
    out += [_policy(p, options) for p in g.policies]
    out += [_waypoint(gw, options) for gw in g.gateways]
    if options.auto_allow_waypoint:
        out += [_implicit_waypoint_policy(gw, options) for gw in g.gateways]
    out += [_route(r) for r in g.routes]
    return out


def implicit_waypoint_policy_key(ref: rec.WaypointRef) -> str:
    return f"{ref.namespace}/{IMPLICIT_WAYPOINT_POLICY_PREFIX}{ref.namespace}_{ref.name}"


def _implicit_waypoint_policy(gw: Gateway, options: CompileOptions) -> rec.Authorization:
    ns = gw.meta.namespace
    principal = f"{options.trust_domain}/ns/{ns}/sa/{gw.meta.name}"
    return rec.Authorization(
        name=f"{IMPLICIT_WAYPOINT_POLICY_PREFIX}{ns}_{gw.meta.name}", namespace=ns,
        scope="WORKLOAD_SELECTOR", action="ALLOW",
        rules=(rec.Rule(from_=(rec.Source(principals=(principal,)),)),))


def workload_uid(namespace: str, name: str, options: CompileOptions) -> str:
    return f"{options.cluster}//Pod/{namespace}/{name}"


def compile_pods(g: NamespaceInput, pods: Iterable[Pod], root_policies: list[AuthorizationPolicy],
                 options: CompileOptions) -> list[rec.Workload]:
    """Workloads of some pods of namespace `g` (the incremental compiler's pod path);
    equal to what `compile_namespace` yields for them."""
    ns_labels = g.namespace.meta.labels if g.namespace else {}
    selector_pols = [p for p in g.policies if p.selector] + \
        [p for p in root_policies if g.name != options.root_namespace]
    out = []
    members = slice_members(g)
    for p in pods:
        labels = p.meta.labels
        services = [s for s in g.services if _selects(s.selector, labels)
                    or (s.selector is None and p.meta.name in members.get(s.meta.name, ()))]
        pols = [f"{pol.meta.namespace}/{pol.meta.name}" for pol in selector_pols
                if _selects(pol.selector, labels)]
        out.append(_workload(p, g, ns_labels, services, pols, options))
    return out


def service_selectors(g: NamespaceInput) -> list[tuple[str, dict[str, str] | None]]:
    """(Service record key, pod selector) of every Service of `g`, waypoint ones included."""
    out = [(f"s/{s.meta.namespace}/{_hostname(s.meta.name, s.meta.namespace)}", s.selector)
           for s in g.services]
    out += [(f"s/{gw.meta.namespace}/{_hostname(gw.meta.name, gw.meta.namespace)}",
             {LABEL_GATEWAY_NAME: gw.meta.name}) for gw in g.gateways]
    return out


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return _selects(selector, labels)


def _replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)


class _LabelIndex:
    """Pods of one namespace indexed by label (key, value), so matching a
    selector costs its smallest posting list, not every pod."""

    def __init__(self, labels: list[dict[str, str]]) -> None:
        self._labels = labels
        self._postings: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, lbl in enumerate(labels):
            for kv in lbl.items():
                self._postings[kv].append(i)

    def matching(self, selector: dict[str, str] | None) -> list[int]:
        if selector is None:
            return []
        if not selector:
            return list(range(len(self._labels)))
        shortest = min((self._postings.get(kv, []) for kv in selector.items()), key=len)
        return [i for i in shortest if _selects(selector, self._labels[i])]


def _selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    # Kubernetes: no selector selects nothing (endpoints managed elsewhere);
    # an empty selector selects every pod of the namespace.
    if selector is None:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def _waypoint_ref(labels: dict[str, str], own_ns: str) -> rec.WaypointRef | None | str:
    """The object's own waypoint choice: a ref, DATAPLANE_NONE (opt out) or None (inherit)."""
    name = labels.get(LABEL_USE_WAYPOINT)
    if name is None or name == "":
        return None
    if name == DATAPLANE_NONE:
        return DATAPLANE_NONE
    return rec.WaypointRef(namespace=labels.get(LABEL_USE_WAYPOINT_NAMESPACE) or own_ns, name=name)


def _resolve_waypoint(own: dict[str, str], ns_labels: dict[str, str], ns: str,
                      is_waypoint: bool) -> rec.WaypointRef | None:
    if is_waypoint:
        return None                 # a waypoint never routes through a waypoint
    ref = _waypoint_ref(own, ns)
    if ref is None:
        ref = _waypoint_ref(ns_labels, ns)
    return ref if isinstance(ref, rec.WaypointRef) else None   # None or DATAPLANE_NONE


def _workload(p: Pod, g: NamespaceInput, ns_labels: dict[str, str], services: list[Service],
              policy_keys: list[str], options: CompileOptions) -> rec.Workload:
    labels = p.meta.labels
    mode = labels.get(LABEL_DATAPLANE_MODE)
    ambient = mode == DATAPLANE_AMBIENT or (
        mode != DATAPLANE_NONE and ns_labels.get(LABEL_DATAPLANE_MODE) == DATAPLANE_AMBIENT)
    workload_name = p.owner_deployment or p.meta.name
    waypoint = _resolve_waypoint(labels, ns_labels, p.meta.namespace, LABEL_GATEWAY_NAME in labels)
    if options.auto_allow_waypoint:
        refs = {waypoint} | {_resolve_waypoint(s.meta.labels, ns_labels, s.meta.namespace, False)
                             for s in services}
        policy_keys = list(policy_keys) + [implicit_waypoint_policy_key(r) for r in refs if r]
    return rec.Workload(
        uid=workload_uid(p.meta.namespace, p.meta.name, options),
        name=p.meta.name, namespace=p.meta.namespace, ips=tuple(p.ips), network=options.network,
        node=p.node, service_account=p.service_account, trust_domain=options.trust_domain,
        labels=dict(labels), protocol="HBONE" if ambient else "TCP",
        waypoint=waypoint,
        canonical_name=_first_label(labels, CANONICAL_NAME_LABELS) or workload_name,
        canonical_revision=_first_label(labels, CANONICAL_REVISION_LABELS) or "latest",
        workload_name=workload_name, workload_type="deployment" if p.owner_deployment else "pod",
        status="HEALTHY" if p.ips and p.ready else "UNHEALTHY",
        services=_port_maps(p, g, services),
        authorization_policies=tuple(sorted(set(policy_keys))))


def _first_label(labels: dict[str, str], keys: tuple[str, ...]) -> str:
    for k in keys:
        if labels.get(k):
            return labels[k]
    return ""


def _port_maps(p: Pod, g: NamespaceInput, services: list[Service]) -> dict[str, dict[int, int]]:
    """Service ports -> this pod's target ports, for the services selecting it."""
    out: dict[str, dict[int, int]] = {}
    for s in services:
        ports: dict[int, int] = {}
        for sp in s.ports:
            target = sp.target_port or p.container_ports.get(sp.target_port_name, 0)
            if target:
                ports[sp.port] = target
        out[f"{s.meta.namespace}/{_hostname(s.meta.name, s.meta.namespace)}"] = ports
    gw_name = p.meta.labels.get(LABEL_GATEWAY_NAME)
    if gw_name and any(gw.meta.name == gw_name for gw in g.gateways):
        out[f"{p.meta.namespace}/{_hostname(gw_name, p.meta.namespace)}"] = {HBONE_PORT: HBONE_PORT}
    return out


def _hostname(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.{SVC_DOMAIN}"


def _service(s: Service, ns_labels: dict[str, str], options: CompileOptions) -> rec.Service:
    ns = s.meta.namespace
    return rec.Service(
        name=s.meta.name, namespace=ns, hostname=_hostname(s.meta.name, ns), vips=s.cluster_ips,
        network=options.network,
        ports=tuple(rec.ServicePort(port=p.port, target_port=p.target_port,
                                    target_port_name=p.target_port_name, name=p.name,
                                    app_protocol=p.app_protocol) for p in s.ports),
        waypoint=_resolve_waypoint(s.meta.labels, ns_labels, ns, False),
        labels=dict(s.meta.labels))


def _gateway_service(gw: Gateway, options: CompileOptions) -> rec.Service:
    ns = gw.meta.namespace
    return rec.Service(
        name=gw.meta.name, namespace=ns, hostname=_hostname(gw.meta.name, ns), vips=gw.addresses,
        network=options.network,
        ports=(rec.ServicePort(port=HBONE_PORT, target_port=HBONE_PORT, name="mesh"),),
        labels={LABEL_GATEWAY_NAME: gw.meta.name})


def _waypoint(gw: Gateway, options: CompileOptions) -> rec.Waypoint:
    ns = gw.meta.namespace
    return rec.Waypoint(name=gw.meta.name, namespace=ns, waypoint_for=gw.waypoint_for,
                        service=f"{ns}/{_hostname(gw.meta.name, ns)}",
                        service_account=gw.meta.name, trust_domain=options.trust_domain)


def _policy(p: AuthorizationPolicy, options: CompileOptions) -> rec.Authorization:
    if p.target_refs:
        scope = "TARGET_REF"
    elif p.selector:
        scope = "WORKLOAD_SELECTOR"
    elif p.meta.namespace == options.root_namespace:
        scope = "GLOBAL"
    else:
        scope = "NAMESPACE"
    return rec.Authorization(name=p.meta.name, namespace=p.meta.namespace, scope=scope,
                             action=p.action, selector=dict(p.selector or {}),
                             target_refs=p.target_refs, rules=p.rules, dry_run=p.dry_run)


def _route(r: HTTPRoute) -> rec.HTTPRoute:
    return rec.HTTPRoute(name=r.meta.name, namespace=r.meta.namespace,
                         parent_refs=tuple(_replace(p, namespace=p.namespace or r.meta.namespace)
                                           for p in r.parent_refs),
                         hostnames=r.hostnames, rules=r.rules, creation_index=r.meta.index,
                         kind=r.meta.kind)


def records_by_kind(records: Iterable[Any]) -> dict[str, Any]:
    """Records grouped as StaticView's keyword arguments."""
    names = {rec.Workload: "workloads", rec.Service: "services", rec.Authorization: "policies",
             rec.Waypoint: "waypoints", rec.HTTPRoute: "routes", rec.Namespace: "namespaces"}
    out: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        out[names[type(r)]].append(r)
    return dict(out)
