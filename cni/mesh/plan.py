"""The local mesh's plan: which pods run where, with which addresses. Pure.

Input is the user's Kubernetes YAML (raw documents, so what we write back
for the proxies is their manifest plus what a cluster would have filled in).
The mesh plays the API server and scheduler:
- places every Pod, Deployment replica and waypoint replica on a node
  (an explicit `nodeName` wins, and a Deployment template's pins all its
  replicas; otherwise each replica on its own node, as the default topology
  spread does, then the least-loaded node; see `place`);
- allocates Service cluster IPs and waypoint addresses from the VIP range;
- records pod IPs once the CNI chain assigned them;
- writes the config the proxies read: the user's resources with those
  fields filled in, plus one `Pod` per Deployment/waypoint replica carrying
  its node and IP (the compiler lets such Pods stand for the replicas of the
  same name, routing/compile.py `group_by_namespace`). Replicas of one
  Deployment may sit on different nodes, so the node lives only on those
  Pods: the Deployment's template keeps the user's `nodeName` (or none),
  which also keeps the replica names (template hash) independent of placement.

Addresses (BASE is `--cidr-base`, default 244, so nothing clashes with
another mesh or test using a different base):
  10.BASE.0.0/24      node network on the host bridge (.1 host, .2 control plane, .10+i node i)
  10.BASE.i.0/24      pod CIDR of node i (1..MAX_NODES), gateway .1 on the node's cni0
  10.BASE.128.0/17    service VIPs
"""

from __future__ import annotations

import copy
import ipaddress
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable

from shoal.core.constants import (DATAPLANE_NONE, LABEL_DATAPLANE_MODE, LABEL_GATEWAY_NAME,
                            WAYPOINT_GATEWAY_CLASS)
from shoal.core.model import ANNOTATION_POD_IPS, replica_pods

MAX_NODES = 100                 # pod CIDRs 10.BASE.1-100.0/24 stay below the VIP range
VIP_OFFSET = 128 * 256          # 10.BASE.128.0
MAX_VIPS = 128 * 256 - 2
DOMAIN = "svc.cluster.local"
ANNOTATION_SOURCE_DIR = "shoal.io/source-dir"   # where a container's relative paths start
# A waypoint Gateway's replica count (`shoal mesh scale waypoint NS/NAME N`
# writes it). istiod generates a Deployment per waypoint that users scale;
# the local mesh has no such Deployment, so the count lives on the Gateway.
ANNOTATION_WAYPOINT_REPLICAS = "shoal.io/waypoint-replicas"
MAX_WAYPOINT_REPLICAS = 20      # each replica is a Python process tree on a small machine


class PlanError(ValueError):
    """The input cannot be turned into a mesh (message names the resource)."""


def node_name(i: int) -> str:
    return f"node-{i}"


def node_ip(base: int, i: int) -> str:
    return f"10.{base}.0.{10 + i}"


def host_ip(base: int) -> str:
    return f"10.{base}.0.1"


def controlplane_ip(base: int) -> str:
    return f"10.{base}.0.2"


def pod_subnet(base: int, i: int) -> str:
    return f"10.{base}.{i}.0/24"


def pod_gateway(base: int, i: int) -> str:
    return f"10.{base}.{i}.1"


def doc_key(doc: dict) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what `apply` replaces by."""
    api = str(doc.get("apiVersion", ""))
    group = api.rsplit("/", 1)[0] if "/" in api else ""
    meta = doc.get("metadata") or {}
    ns = "" if doc.get("kind") == "Namespace" else str(meta.get("namespace") or "default")
    return group, str(doc.get("kind", "")), ns, str(meta.get("name", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PodPlan:
    namespace: str
    name: str
    labels: dict[str, str]
    service_account: str
    containers: tuple[Container, ...]
    spec: dict[str, Any]                 # the pod spec to write back (overlay Pods)
    owner: str = ""                      # "Deployment/<name>" | "Gateway/<name>" | ""
    node: str = ""                       # filled by `place`
    annotations: dict[str, str] = field(default_factory=dict)   # a replica's template annotations

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _containers(spec: dict, source_dir: str, where: str) -> tuple[Container, ...]:
    out = []
    for c in spec.get("containers") or ():
        argv = [*(c.get("command") or ()), *(c.get("args") or ())]
        if not argv:
            raise PlanError(f"{where}: container {c.get('name')!r} has no command: the local "
                            "mesh runs host programs, not images (set `command`)")
        env = {str(e["name"]): str(e.get("value", "")) for e in c.get("env") or () if "name" in e}
        out.append(Container(name=str(c.get("name", "main")), argv=tuple(str(a) for a in argv),
                             env=env, cwd=str(c.get("workingDir") or source_dir)))
    return tuple(out)


def waypoint_replicas(doc: dict) -> int:
    """How many replicas a waypoint Gateway asks for (default 1)."""
    raw = ((doc.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_WAYPOINT_REPLICAS, 1)
    try:
        n = int(raw)
    except (TypeError, ValueError):
        n = -1
    if not 0 <= n <= MAX_WAYPOINT_REPLICAS:
        meta = doc.get("metadata") or {}
        raise PlanError(f"Gateway/{meta.get('namespace') or 'default'}/{meta.get('name')}: "
                        f"annotation {ANNOTATION_WAYPOINT_REPLICAS}={raw!r} must be an integer "
                        f"0..{MAX_WAYPOINT_REPLICAS}")
    return n


def _waypoint_pods(doc: dict, source_dir: str, shoal: str) -> list[PodPlan]:
    """The waypoint's replicas `<name>-0` ... `<name>-<N-1>` (a StatefulSet's names:
    scaling down removes the highest indices, scaling up keeps the others)."""
    meta = doc["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    argv = (shoal, "waypoint", "run", "--name", name, "--namespace", ns,
            "--config", "{config_dir}", "--ca-address", "{ca_address}",
            "--ca-credential", "{waypoint_cred:" + f"{ns}/{name}" + "}", "--workers", "1",
            "--admin-port", "15000")
    labels = {LABEL_GATEWAY_NAME: name, LABEL_DATAPLANE_MODE: DATAPLANE_NONE}
    return [PodPlan(namespace=ns, name=f"{name}-{i}", labels=dict(labels), service_account=name,
                    containers=(Container(name="waypoint", argv=argv, cwd=source_dir),),
                    spec={"serviceAccountName": name,
                          "containers": [{"name": "waypoint", "ports": [
                              {"name": "mesh", "containerPort": 15008}]}]},
                    owner=f"Gateway/{name}")
            for i in range(waypoint_replicas(doc))]


def pods_of(docs: Iterable[dict], shoal: str = "shoal") -> list[PodPlan]:
    """Every pod the documents ask for, in document order (unplaced)."""
    from shoal.core.model import Deployment, load_text
    out: list[PodPlan] = []
    for doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        src = (meta.get("annotations") or {}).get(ANNOTATION_SOURCE_DIR, "")
        where = f"{kind}/{meta.get('namespace', 'default')}/{meta.get('name')}"
        if kind == "Pod":
            spec = doc.get("spec") or {}
            out.append(PodPlan(namespace=meta.get("namespace") or "default", name=meta["name"],
                               labels=dict(meta.get("labels") or {}),
                               service_account=spec.get("serviceAccountName") or "default",
                               containers=_containers(spec, src, where), spec=spec))
        elif kind == "Deployment":
            spec = (((doc.get("spec") or {}).get("template") or {}).get("spec")) or {}
            containers = _containers(spec, src, where)
            # The model names replicas (template hash), so names match the
            # workload uids the routing table derives from the Deployment.
            dep = load_text(_yaml_dump(doc)).of(Deployment)[0]
            for rp in replica_pods(dep):
                out.append(PodPlan(namespace=rp.meta.namespace or "default", name=rp.meta.name,
                                   labels=dict(rp.meta.labels), service_account=rp.service_account,
                                   containers=containers, spec=spec,
                                   owner=f"Deployment/{meta['name']}",
                                   annotations=dict(rp.meta.annotations)))
        elif kind == "Gateway" and (doc.get("spec") or {}).get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS:
            out += _waypoint_pods(doc, src, shoal)
    return out


def _yaml_dump(doc: dict) -> str:
    import yaml
    return yaml.safe_dump(doc, sort_keys=False)


def place(pods: list[PodPlan], nodes: int, current: dict[str, str]) -> list[PodPlan]:
    """Give every pod a node, as the Kubernetes scheduler would.

    A pod already placed stays where it is; an explicit `nodeName` (a Pod's,
    or a Deployment template's, which pins every replica) wins; otherwise the
    replicas of one Deployment or waypoint spread across nodes like the
    default topology spread (the node with the fewest replicas of the same
    owner), then least-loaded (fewest pods), ties broken by node index.
    """
    from dataclasses import replace
    names = [node_name(i) for i in range(1, nodes + 1)]
    load = {n: 0 for n in names}
    spread: dict[tuple[str, str], dict[str, int]] = {}

    def count(p: PodPlan, node: str) -> None:
        load[node] += 1
        if p.owner:
            per = spread.setdefault((p.namespace, p.owner), dict.fromkeys(names, 0))
            per[node] += 1

    for p in pods:                       # kept pods first: they are the current load
        node = current.get(p.key)
        if node in load:
            count(p, node)
    out = []
    for p in pods:
        node = current.get(p.key) or ""
        if node in load:
            out.append(replace(p, node=node))
            continue
        node = str(p.spec.get("nodeName") or "")
        if node and node not in load:
            raise PlanError(f"pod {p.key} asks for node {node!r}; this mesh has {names}")
        if not node:
            per = spread.get((p.namespace, p.owner), {}) if p.owner else {}
            node = min(names, key=lambda n: (per.get(n, 0), load[n], names.index(n)))
        count(p, node)
        out.append(replace(p, node=node))
    return out


class VipAllocator:
    """Service VIPs from 10.BASE.128.0/17; stable for a given key."""

    def __init__(self, base: int, taken: dict[str, str] | None = None) -> None:
        self.net0 = int(ipaddress.IPv4Address(f"10.{base}.0.0")) + VIP_OFFSET
        self.by_key: dict[str, str] = dict(taken or {})

    def get(self, key: str) -> str:
        if key in self.by_key:
            return self.by_key[key]
        used = set(self.by_key.values())
        for n in range(1, MAX_VIPS):
            ip = str(ipaddress.IPv4Address(self.net0 + n))
            if ip not in used:
                self.by_key[key] = ip
                return ip
        raise PlanError(f"no service VIP left in the mesh range ({MAX_VIPS} in use)")


def services_of(docs: Iterable[dict]) -> list[tuple[str, str, str]]:
    """(namespace, name, fixed clusterIP or "") of Services and waypoint Gateways."""
    out = []
    for d in docs:
        meta = d.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        if d.get("kind") == "Service":
            ip = (d.get("spec") or {}).get("clusterIP") or ""
            if ip != "None":
                out.append((ns, meta["name"], ip))
        elif d.get("kind") == "Gateway" and (d.get("spec") or {}).get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS:
            addrs = (d.get("spec") or {}).get("addresses") or []
            out.append((ns, meta["name"], addrs[0].get("value", "") if addrs else ""))
    return out


def config_docs(docs: list[dict], pods: list[PodPlan], vips: dict[str, str],
                pod_ips: dict[str, str]) -> list[dict]:
    """What the proxies read: the user's resources + addresses + replica Pods."""
    out = []
    placed = {p.key: p for p in pods}
    for d in docs:
        d = copy.deepcopy(d)
        meta = d.setdefault("metadata", {})
        (meta.get("annotations") or {}).pop(ANNOTATION_SOURCE_DIR, None)
        ns = meta.get("namespace") or "default"
        key = f"{ns}/{meta.get('name')}"
        kind = d.get("kind")
        if kind == "Service" and key in vips and not (d.get("spec") or {}).get("clusterIP"):
            d.setdefault("spec", {})["clusterIP"] = vips[key]
        elif kind == "Gateway" and key in vips and not (d.get("spec") or {}).get("addresses"):
            d.setdefault("spec", {})["addresses"] = [{"type": "IPAddress", "value": vips[key]}]
        elif kind == "Deployment":
            _fill_deployment(d, ns, pods, pod_ips)
        elif kind == "Pod" and key in placed:
            d.setdefault("spec", {})["nodeName"] = placed[key].node
            if key in pod_ips:
                d["status"] = {"phase": "Running", "podIP": pod_ips[key],
                               "podIPs": [{"ip": pod_ips[key]}]}
        out.append(d)
    for p in pods:
        if not p.owner:
            continue
        spec = copy.deepcopy(p.spec)
        spec["nodeName"] = p.node
        spec["serviceAccountName"] = p.service_account
        spec["containers"] = [{k: v for k, v in c.items() if k in ("name", "ports")}
                              for c in spec.get("containers") or ()]
        doc = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": p.name, "namespace": p.namespace, "labels": dict(p.labels),
                            "annotations": {**p.annotations, "shoal.io/owner": p.owner}},
               "spec": spec}
        if p.key in pod_ips:
            doc["status"] = {"phase": "Running", "podIP": pod_ips[p.key],
                             "podIPs": [{"ip": pod_ips[p.key]}]}
        out.append(doc)
    return out


def _fill_deployment(d: dict, ns: str, pods: list[PodPlan], pod_ips: dict[str, str]) -> None:
    """The replicas' IPs (`shoal.io/pod-ips`, by replica index). Their nodes
    are on the replica Pods `config_docs` adds (one per replica)."""
    owner = f"Deployment/{d['metadata'].get('name')}"
    replicas = sorted((p for p in pods if p.namespace == ns and p.owner == owner),
                      key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if not replicas:
        return
    ips = [pod_ips.get(p.key, "") for p in replicas]
    if all(ips):
        d["metadata"].setdefault("annotations", {})[ANNOTATION_POD_IPS] = ",".join(ips)


def hosts_file(pod: PodPlan, pod_ip: str, services: list[tuple[str, str]], vips: dict[str, str]) -> str:
    """/etc/hosts for a pod: service names resolve to VIPs as with cluster DNS.

    `NAME.NS.svc.cluster.local`, `NAME.NS.svc` and `NAME.NS` everywhere;
    the bare `NAME` only in the pod's own namespace (its search path).
    """
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if pod_ip:
        lines.append(f"{pod_ip}\t{pod.name}")
    for ns, name in services:
        vip = vips.get(f"{ns}/{name}")
        if not vip:
            continue
        names = [f"{name}.{ns}.{DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == pod.namespace:
            names.append(name)
        lines.append(f"{vip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    return (f"search {namespace}.{DOMAIN} {DOMAIN} cluster.local\n"
            "nameserver 127.0.0.1\noptions ndots:5\n")


def command_line(argv: tuple[str, ...]) -> str:
    return shlex.join(argv)
