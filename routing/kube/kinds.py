"""The Kubernetes kinds the API source watches, and their lightkube classes.

Every kind is a lightkube *generic* resource: objects arrive as plain
mappings, which go through the same parsers as a YAML file's documents
(core/model), so there is one validation of a Pod, not two. Deployments are
not watched: on a cluster the ReplicaSet controller makes real Pods.

EndpointSlices are read only where they are not the EndpointSlice
controller's (label `endpointslice.kubernetes.io/managed-by`): those mirror
Services with a selector, whose endpoints shoal computes from the Pods, and
watching them would double every pod event. What is left are the slices of
Services without a selector, their only source of endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lightkube.generic_resource import create_global_resource, create_namespaced_resource


@dataclass(frozen=True, slots=False, kw_only=True)
class Kind:
    kind: str
    group: str          # "" for the core API group
    version: str
    plural: str
    namespaced: bool = True
    crd: bool = False   # may be absent from a cluster (a CRD not installed): skipped, not fatal
    label_selector: str = ""    # list and watch only the objects it selects

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name(self) -> str:
        """`plural.group` as RBAC and `kubectl get` spell it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @cached_property
    def resource(self):
        make = create_namespaced_resource if self.namespaced else create_global_resource
        return make(self.group, self.version, self.kind, self.plural)


NAMESPACE = Kind(kind="Namespace", group="", version="v1", plural="namespaces", namespaced=False)
POD = Kind(kind="Pod", group="", version="v1", plural="pods")
SERVICE = Kind(kind="Service", group="", version="v1", plural="services")
AUTHORIZATION_POLICY = Kind(kind="AuthorizationPolicy", group="security.istio.io", version="v1",
                            plural="authorizationpolicies", crd=True)
GATEWAY = Kind(kind="Gateway", group="gateway.networking.k8s.io", version="v1",
               plural="gateways", crd=True)
HTTP_ROUTE = Kind(kind="HTTPRoute", group="gateway.networking.k8s.io", version="v1",
                  plural="httproutes", crd=True)
GRPC_ROUTE = Kind(kind="GRPCRoute", group="gateway.networking.k8s.io", version="v1",
                  plural="grpcroutes", crd=True)

ENDPOINT_SLICE = Kind(kind="EndpointSlice", group="discovery.k8s.io", version="v1",
                      plural="endpointslices",
                      label_selector="endpointslice.kubernetes.io/managed-by!="
                                     "endpointslice-controller.k8s.io")

# The order of the initial sync: namespaces first, so the first table already
# knows which namespaces are ambient.
WATCHED = (NAMESPACE, POD, SERVICE, ENDPOINT_SLICE, AUTHORIZATION_POLICY, GATEWAY, GRPC_ROUTE,
           HTTP_ROUTE)
