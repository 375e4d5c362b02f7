"""Which pods are in the ambient mesh, decided from the config. Pure.

Istio's rule (`cni/pkg/util/podutil.go`, `PodRedirectionEnabled`): a pod is
captured when its namespace or the pod itself has
`istio.io/dataplane-mode=ambient`, unless the pod says
`istio.io/dataplane-mode=none`. Waypoint pods are never captured (their
template carries `dataplane-mode: none`, and a Gateway's pods are not in
the config as Pods here anyway).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shoal.cni.protocol import SNAPSHOT_HEADER
from shoal.core.constants import DATAPLANE_AMBIENT, DATAPLANE_NONE, DEFAULT_CLUSTER, LABEL_DATAPLANE_MODE
from shoal.core.model import ConfigSet, Deployment, Namespace, Pod, replica_pods


@dataclass(frozen=True, slots=True, kw_only=True)
class PodFacts:
    """What the config says about one pod."""
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str = "default"
    known: bool = False          # the pod (or its Deployment replica) is in the config


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshView:
    """Namespace labels and pods, indexed for enrollment decisions."""
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: dict[tuple[str, str], PodFacts] = field(default_factory=dict)

    def facts(self, namespace: str, name: str) -> PodFacts:
        return self.pods.get((namespace, name)) or PodFacts(namespace=namespace, name=name)

    def ambient(self, namespace: str, name: str) -> bool:
        pod = self.facts(namespace, name)
        mode = pod.labels.get(LABEL_DATAPLANE_MODE)
        if mode == DATAPLANE_NONE:
            return False
        if mode == DATAPLANE_AMBIENT:
            return True
        return self.namespaces.get(namespace, {}).get(LABEL_DATAPLANE_MODE) == DATAPLANE_AMBIENT


def view_of(cfg: ConfigSet) -> MeshView:
    namespaces = {n.meta.name: dict(n.meta.labels) for n in cfg.of(Namespace)}
    pods: dict[tuple[str, str], PodFacts] = {}
    all_pods = list(cfg.of(Pod))
    for d in cfg.of(Deployment):
        all_pods += replica_pods(d)
    for p in all_pods:
        ns = p.meta.namespace or "default"
        pods[(ns, p.meta.name)] = PodFacts(namespace=ns, name=p.meta.name, labels=dict(p.meta.labels),
                                           service_account=p.service_account, known=True)
    return MeshView(namespaces=namespaces, pods=pods)


def workload_uid(namespace: str, name: str, cluster: str = DEFAULT_CLUSTER) -> str:
    """The routing table's workload uid (core/records.py `Workload.uid`)."""
    return f"{cluster}//Pod/{namespace}/{name}"


# What the plugin binary's `sscanf("%253s")` reads back: Kubernetes names
# never hold blanks, but a hand-written config might; such lines are left out.
_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}")


def snapshot(view: MeshView, excluded: frozenset[str]) -> bytes:
    """The enrollment snapshot the plugin reads while the agent is down.

    Lines after the header: `ns NAME` for each ambient namespace and
    `pod NS NAME ambient|none` for each pod with its own label (a pod label
    wins, as in `MeshView.ambient`). Excluded namespaces never appear.
    """
    lines = [SNAPSHOT_HEADER]
    for ns, labels in sorted(view.namespaces.items()):
        if (ns not in excluded and _SNAPSHOT_NAME.fullmatch(ns)
                and labels.get(LABEL_DATAPLANE_MODE) == DATAPLANE_AMBIENT):
            lines.append(f"ns {ns}")
    for (ns, name), pod in sorted(view.pods.items()):
        mode = pod.labels.get(LABEL_DATAPLANE_MODE)
        if (ns not in excluded and mode in (DATAPLANE_AMBIENT, DATAPLANE_NONE)
                and _SNAPSHOT_NAME.fullmatch(ns) and _SNAPSHOT_NAME.fullmatch(name)):
            lines.append(f"pod {ns} {name} {mode}")
    return ("\n".join(lines) + "\n").encode()
