"""Where pods run, for the CA on a cluster: the Kubernetes source's Pods.

The CA watches Pods through the same source and parser as the routing table
(routing/kube/, core/model): no second reader of Pod objects. It answers the
two questions of node authorization:

- `node_of_pod(namespace, name)`: the node of the calling ztunnel's own pod
  (its token is bound to that pod; controlplane/tokenauth.py);
- `identities_on_node(node)`: the SPIFFE ids of the pods scheduled there
  (controlplane/nodeauth.authorize), rebuilt only after the pods changed.
"""

from __future__ import annotations

from typing import Any

from shoal.core.identity.spiffe import Identity
from shoal.routing.kube.kinds import POD


class KubePods:
    def __init__(self, source: Any, trust_domain: str) -> None:
        self.source = source            # a KubeSource watching at least Pods
        self.trust_domain = trust_domain
        self._by_node: dict[str, set[str]] = {}
        self._version = -1

    def node_of_pod(self, namespace: str, name: str) -> str:
        with self.source.lock:
            pod = self.source.store.get(("Pod", namespace, name))
        return pod.node if pod is not None else ""

    def __call__(self, node: str) -> set[str]:
        with self.source.lock:
            if self.source.store.version != self._version:
                self._version = self.source.store.version
                self._by_node = self._index(self.source.store.valid(POD.kind))
        return set(self._by_node.get(node, ()))

    def _index(self, pods: list) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for p in pods:
            if p.node:
                ident = Identity(trust_domain=self.trust_domain, namespace=p.meta.namespace,
                                 service_account=p.service_account)
                out.setdefault(p.node, set()).add(ident.uri)
        return out
