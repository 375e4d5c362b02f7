"""Parsers for core Kubernetes kinds: Namespace, Pod, Deployment, Service."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable

from shoal.core.model.errors import quote
from shoal.core.model.fields import MAX_PORT, Ctx, join
from shoal.core.model.resources import (Deployment, EndpointSlice, Meta, Namespace, Pod, Service,
                                  ServicePortSpec)

# A Deployment replica's IPs: "10.0.0.5,10.0.0.6" (one entry per replica;
# dual-stack replicas separate their addresses with "|").
ANNOTATION_POD_IPS = "shoal.io/pod-ips"
MAX_REPLICAS = 10_000       # a local mesh is far smaller; this catches typos (1e6)
PROTOCOLS = ("TCP", "UDP", "SCTP")


def parse_namespace(ctx: Ctx, meta: Meta, doc: dict) -> Namespace:
    return Namespace(meta=meta)


def _container_ports(ctx: Ctx, pod_spec: dict, path: str) -> dict[str, int]:
    ports: dict[str, int] = {}
    for cpath, container in ctx.maps(pod_spec, "containers", path):
        for ppath, port in ctx.maps(container, "ports", cpath):
            number = ctx.port(port, "containerPort", ppath, required=True)
            name = ctx.str(port, "name", ppath)
            if name and number:
                ports[name] = number
    return ports


def _pod_spec_common(ctx: Ctx, spec: dict, path: str) -> tuple[str, str, dict[str, int]]:
    node = ctx.str(spec, "nodeName", path)
    sa = ctx.str(spec, "serviceAccountName", path) or ctx.str(spec, "serviceAccount", path)
    return node, sa or "default", _container_ports(ctx, spec, path)


def parse_pod(ctx: Ctx, meta: Meta, doc: dict) -> Pod:
    spec = ctx.map(doc, "spec", "")
    status = ctx.map(doc, "status", "")
    node, sa, ports = _pod_spec_common(ctx, spec, "spec")
    ips: list[str] = []
    for i, (ipath, entry) in enumerate(ctx.maps(status, "podIPs", "status")):
        ip = ctx.str(entry, "ip", ipath, required=True)
        if ip and ctx.ip(ip, join(ipath, "ip")):
            ips.append(ip)
    primary = ctx.str(status, "podIP", "status")
    if primary and ctx.ip(primary, "status.podIP") and primary not in ips:
        ips.insert(0, primary)
    phase = ctx.str(status, "phase", "status", default="Running")
    return Pod(meta=meta, node=node, service_account=sa, ips=tuple(ips), container_ports=ports,
               ready=phase in ("Running", "") and _ready_condition(ctx, status)
               and not ctx.str(ctx.map(doc, "metadata", ""), "deletionTimestamp", "metadata"))


def _ready_condition(ctx: Ctx, status: dict) -> bool:
    """The kubelet's Ready condition when the pod has one (a pod written by hand
    has none: Running is then enough). A terminating pod (deletionTimestamp)
    is not ready either, as Kubernetes drops it from EndpointSlices."""
    for cpath, cond in ctx.maps(status, "conditions", "status"):
        if ctx.str(cond, "type", cpath) == "Ready":
            return ctx.str(cond, "status", cpath, choices=("True", "False", "Unknown")) == "True"
    return True


def parse_deployment(ctx: Ctx, meta: Meta, doc: dict) -> Deployment:
    spec = ctx.map(doc, "spec", "", required=True)
    replicas = ctx.int(spec, "replicas", "spec", default=1, lo=0, hi=MAX_REPLICAS)
    selector = ctx.str_map(ctx.map(spec, "selector", "spec"), "matchLabels", "spec.selector")
    template = ctx.map(spec, "template", "spec", required=True)
    tmeta = ctx.map(template, "metadata", "spec.template")
    labels = ctx.str_map(tmeta, "labels", "spec.template.metadata")
    annotations = ctx.str_map(tmeta, "annotations", "spec.template.metadata")
    for k, v in selector.items():
        if labels.get(k) != v:
            ctx.err("spec.selector.matchLabels",
                    f"selector {k}={v} does not match the template labels (the API server refuses this)")
    node, sa, ports = _pod_spec_common(ctx, ctx.map(template, "spec", "spec.template"),
                                       "spec.template.spec")
    pod_ips = _pod_ips(ctx, meta, replicas)
    return Deployment(meta=meta, replicas=replicas, selector=selector, template_labels=labels,
                      template_annotations=annotations, node=node, service_account=sa,
                      container_ports=ports, pod_ips=pod_ips)


def _pod_ips(ctx: Ctx, meta: Meta, replicas: int) -> tuple[tuple[str, ...], ...]:
    raw = meta.annotations.get(ANNOTATION_POD_IPS)
    if raw is None:
        return ()
    path = f"metadata.annotations[{ANNOTATION_POD_IPS}]"
    out = []
    for entry in (e.strip() for e in raw.split(",") if e.strip()):
        ips = tuple(ip.strip() for ip in entry.split("|"))
        if all(ctx.ip(ip, path) for ip in ips):
            out.append(ips)
    if len(out) > replicas:
        ctx.err(path, f"lists {len(out)} pod IPs for {replicas} replicas")
    return tuple(out)


def replica_pods(d: Deployment) -> list[Pod]:
    """The pods a Deployment stands for, named `<deploy>-<hash>-<n>`.

    The hash is derived from the pod template (like Kubernetes'
    pod-template-hash), so a template change yields new pod names. IPs come
    from the `shoal.io/pod-ips` annotation; replicas without one get none
    (a mesh builder supplies them as overlay Pods with the same names).
    """
    digest = hashlib.sha256(repr((sorted(d.template_labels.items()), d.service_account,
                                  d.node, sorted(d.container_ports.items()))).encode())
    tmpl_hash = digest.hexdigest()[:10]
    pods = []
    for n in range(d.replicas):
        name = f"{d.meta.name}-{tmpl_hash}-{n}"
        meta = Meta(kind="Pod", name=name, namespace=d.meta.namespace,
                    labels=dict(d.template_labels), annotations=dict(d.template_annotations),
                    file=d.meta.file, index=d.meta.index)
        ips = d.pod_ips[n] if n < len(d.pod_ips) else ()
        pods.append(Pod(meta=meta, node=d.node, service_account=d.service_account, ips=ips,
                        container_ports=dict(d.container_ports), owner_deployment=d.meta.name))
    return pods


def effective_pods(resources: Iterable[object], extra_pods: Iterable[Pod] = ()
                   ) -> dict[tuple[str, str], Pod]:
    """Every pod the config stands for, by (namespace, name).

    Precedence for one (namespace, name): overlay pod (`extra_pods`, e.g. a
    mesh builder's, with IPs) > explicit Pod > Deployment replica, whatever
    the file order (a mesh builder writes Pods for replicas). A Pod that
    stands for a replica keeps the Deployment as its owner.
    """
    pods: dict[tuple[str, str], Pod] = {}
    explicit: list[Pod] = []
    for r in resources:
        if isinstance(r, Pod):
            explicit.append(r)
        elif isinstance(r, Deployment):
            for p in replica_pods(r):
                pods[(p.meta.namespace, p.meta.name)] = p
    for p in (*explicit, *extra_pods):
        key = (p.meta.namespace, p.meta.name)
        replaced = pods.get(key)
        if replaced is not None and replaced.owner_deployment and not p.owner_deployment:
            p = dataclasses.replace(p, owner_deployment=replaced.owner_deployment)
        pods[key] = p
    return pods


def parse_service(ctx: Ctx, meta: Meta, doc: dict) -> Service:
    spec = ctx.map(doc, "spec", "", required=True)
    selector = ctx.str_map(spec, "selector", "spec") if "selector" in spec else None
    ports = []
    names: set[str] = set()
    for ppath, p in ctx.maps(spec, "ports", "spec"):
        ports.append(_service_port(ctx, p, ppath, names))
    ips = list(ctx.strs(spec, "clusterIPs", "spec"))
    primary = ctx.str(spec, "clusterIP", "spec")
    if primary and primary not in ips:
        ips.insert(0, primary)
    for i, ip in enumerate(ips):
        if ip != "None":
            ctx.ip(ip, f"spec.clusterIPs[{i}]")
    headless = "None" in ips
    svc_type = ctx.str(spec, "type", "spec", default="ClusterIP",
                       choices=("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"))
    return Service(meta=meta, selector=selector, ports=tuple(ports),
                   cluster_ips=() if headless else tuple(ips), type=svc_type)


def _service_port(ctx: Ctx, p: dict, path: str, names: set[str]) -> ServicePortSpec:
    port = ctx.port(p, "port", path, required=True)
    name = ctx.str(p, "name", path)
    if name in names:
        ctx.err(join(path, "name"), f"duplicate port name {quote(name)}")
    names.add(name)
    target = p.get("targetPort", port or None)    # default: the port itself
    tnum, tname = 0, ""
    if target is None:
        pass
    elif isinstance(target, bool) or not isinstance(target, (int, str)):
        ctx.err(join(path, "targetPort"), f"must be a port number or a container port name; got {quote(target)}")
    elif isinstance(target, int) or target.isdigit():
        tnum = int(target)
        if not 1 <= tnum <= MAX_PORT:
            ctx.err(join(path, "targetPort"), f"must be between 1 and {MAX_PORT}; got {tnum}")
            tnum = 0
    else:
        tname = target
    protocol = ctx.str(p, "protocol", path, default="TCP", choices=PROTOCOLS)
    app_protocol = ctx.str(p, "appProtocol", path) or _protocol_from_name(name)
    return ServicePortSpec(port=port, name=name, protocol=protocol, target_port=tnum,
                           target_port_name=tname, app_protocol=app_protocol)


# Istio's protocol selection: a port named "<proto>" or "<proto>-<suffix>".
_NAMED_PROTOCOLS = ("http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo",
                    "mysql", "redis")


def _protocol_from_name(name: str) -> str:
    lowered = name.lower()
    for proto in sorted(_NAMED_PROTOCOLS, key=len, reverse=True):
        if lowered == proto or lowered.startswith(proto + "-"):
            return proto
    return ""


# The label that ties an EndpointSlice to its Service.
LABEL_SERVICE_NAME = "kubernetes.io/service-name"


def parse_endpoint_slice(ctx: Ctx, meta: Meta, doc: dict) -> EndpointSlice:
    pods: list[str] = []
    for epath, ep in ctx.maps(doc, "endpoints", ""):
        cond = ctx.map(ep, "conditions", epath)
        ready = cond.get("ready")
        if ready is not None and not isinstance(ready, bool):
            ctx.err(join(join(epath, "conditions"), "ready"), f"must be true or false; got {ready!r}")
        ref = ctx.map(ep, "targetRef", epath)
        if ready is not False and ctx.str(ref, "kind", join(epath, "targetRef")) == "Pod":
            name = ctx.str(ref, "name", join(epath, "targetRef"), required=True)
            if name:
                pods.append(name)
    return EndpointSlice(meta=meta, service_name=meta.labels.get(LABEL_SERVICE_NAME, ""),
                         pods=tuple(sorted(set(pods))))
