"""Ports, marks and names fixed by Istio's ambient mode.

They are the wire contract between shoal's processes and the ones Istio users
already run, so each one matches Istio's value (reference/istio-ztunnel.md).
"""

# Ports (Istio's numbers, so manifests, NetworkPolicies and habits carry over).
OUTBOUND_CAPTURE_PORT = 15001   # in each enrolled pod's netns; SO_ORIGINAL_DST
INBOUND_PLAINTEXT_PORT = 15006  # pod netns; traffic from outside the mesh
HBONE_PORT = 15008              # pod netns and waypoints; mTLS + HTTP/2 CONNECT
ADMIN_PORT = 15000              # localhost only
CA_PORT = 15012                 # control plane: CSR signing over mutual TLS
METRICS_PORT = 15020            # Prometheus text
READINESS_PORT = 15021          # /healthz/ready
DNS_PORT = 15053                # in-pod DNS proxy

# Connections to these ports from the proxy itself would loop forever.
PROXY_PORTS = frozenset({OUTBOUND_CAPTURE_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})
# Istio's "Ports used by Istio" (15004 and 15009 HBONE/debug, 15090 Envoy's
# Prometheus): applications must not listen on them, and proxies do. An
# inbound tunnel (CONNECT) or captured plaintext connection to one of them is
# refused, so a mesh identity can never reach a proxy's admin, metrics or
# readiness endpoint, nor its capture listeners, through the data path.
RESERVED_PORTS = frozenset({ADMIN_PORT, OUTBOUND_CAPTURE_PORT, 15004, INBOUND_PLAINTEXT_PORT,
                            HBONE_PORT, 15009, METRICS_PORT, READINESS_PORT, DNS_PORT, 15090})

# SO_MARK on every socket a proxy opens, so the pod's redirection rules skip
# the proxy's own traffic (istio-cni InpodMark); 0x111 marks connections whose
# replies must return to the proxy (InpodTProxyMark); both under mask 0xfff.
PROXY_MARK = 0x539
TPROXY_MARK = 0x111
MARK_MASK = 0xFFF
INBOUND_ROUTE_TABLE = 100

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_CLUSTER = "Kubernetes"
DEFAULT_NETWORK = ""

# Labels with Istio's spelling.
LABEL_DATAPLANE_MODE = "istio.io/dataplane-mode"
LABEL_USE_WAYPOINT = "istio.io/use-waypoint"
LABEL_USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
LABEL_WAYPOINT_FOR = "istio.io/waypoint-for"
LABEL_GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"
WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
DATAPLANE_AMBIENT = "ambient"
DATAPLANE_NONE = "none"
