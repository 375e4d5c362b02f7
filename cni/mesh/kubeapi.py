"""`shoal mesh up --kubeconfig FILE`: the mesh publishes what its proxies read
to a Kubernetes API server, as a kubelet (pods with their IPs and nodes) and
the controllers (namespaces, services with VIPs, policies, gateways) would.

The ztunnels of such a mesh read only the API (`--kubeconfig`): every pod IP
they route to was learned from it. Deployments are not published: their
replicas are published as the Pods a ReplicaSet would make (plan.config_docs
writes one per replica, with its node and IP). The node agents and the CA
keep reading the mesh's config directory (the local mesh's node credentials
stay; on a cluster the CA reads pods from the API, controlplane/kubepods.py).
"""

from __future__ import annotations

from typing import Any

from shoal.routing.kube.kinds import WATCHED

HTTP_CONFLICT = 409
HTTP_NOT_FOUND = 404
_KINDS = {k.kind: k for k in WATCHED}


def _key(doc: dict) -> str:
    md = doc.get("metadata") or {}
    kind = _KINDS[doc["kind"]]
    ns = (md.get("namespace") or "default") if kind.namespaced else ""
    return f"{doc['kind']}/{ns}/{md.get('name')}"


class Publisher:
    def __init__(self, kubeconfig: str) -> None:
        from lightkube import Client, KubeConfig
        self.client = Client(config=KubeConfig.from_file(kubeconfig), field_manager="shoal-mesh")

    def sync(self, docs: list[dict], published: list[str]) -> list[str]:
        """Create or replace every doc of a watched kind; delete what was
        published before and is gone now. Returns the keys now published."""
        from lightkube.core.exceptions import ApiError
        now: dict[str, Any] = {}
        for doc in docs:
            kind = _KINDS.get(doc.get("kind", ""))
            if kind is None:
                continue
            doc = {**doc, "apiVersion": kind.api_version}    # v1beta1 policies: same schema
            md = doc.setdefault("metadata", {})
            if kind.namespaced:
                md.setdefault("namespace", "default")
            obj = kind.resource(doc)
            try:
                self.client.create(obj)
            except ApiError as e:
                if e.status.code != HTTP_CONFLICT:
                    raise
                self.client.replace(obj)
            now[_key(doc)] = kind
        for key in set(published) - set(now):
            kind_name, ns, name = key.split("/", 2)
            kind = _KINDS[kind_name]
            try:
                if kind.namespaced:
                    self.client.delete(kind.resource, name, namespace=ns)
                else:
                    self.client.delete(kind.resource, name)
            except ApiError as e:
                if e.status.code != HTTP_NOT_FOUND:
                    raise
        return sorted(now)
