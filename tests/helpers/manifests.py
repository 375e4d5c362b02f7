"""Kubernetes manifests that the CNI, local-mesh, waypoint and routing tests
share, as YAML text.

The tests feed these to `shoal mesh apply`, the node agent's config files,
the mesh planner, the config compiler and `shoal waypoint run`; writing each
object once keeps the fixtures of those tests the same objects, so a
difference between tests is a difference in the test.
"""

from __future__ import annotations

# One ambient namespace and one plain one: the two sides of every capture test.
NAMESPACES = """apiVersion: v1
kind: Namespace
metadata: {name: amb, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
"""

HTTP_PORT = 8080


def http_service(name: str, namespace: str) -> str:
    """A Service on port 80 for pods labelled `app: <name>` serving `http`."""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


def http_deployment(name: str, namespace: str, *, replicas: int = 1,
                    node: str | None = None) -> str:
    """A Deployment of Python's http.server (service account `<name>`) plus its Service."""
    pinned = f"\n      nodeName: {node}" if node else ""
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      serviceAccountName: {name}{pinned}
      containers:
      - name: web
        command: [python3, -m, http.server, "{HTTP_PORT}", --bind, 0.0.0.0]
        ports: [{{name: http, containerPort: {HTTP_PORT}}}]
---
""" + http_service(name, namespace)


def documents(*parts: str) -> str:
    """Join manifests into one multi-document YAML stream."""
    return "---\n".join(p if p.endswith("\n") else p + "\n" for p in parts)


def waypoint_gateway(namespace: str) -> str:
    """The Gateway of `namespace`'s waypoint (class istio-waypoint, HBONE)."""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: {namespace}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
"""


def waypoint_namespace(namespace: str) -> str:
    """A Namespace whose services use its waypoint, and that waypoint's Gateway."""
    return documents(f"""apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}, labels: {{istio.io/use-waypoint: waypoint}}}}
""", waypoint_gateway(namespace))


def service(name: str, namespace: str, cluster_ip: str, ports: str,
            selector: str | None = None) -> str:
    """A Service at `cluster_ip`; `ports` and `selector` (by default
    `{app: <name>}`) are YAML flow text."""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  clusterIP: {cluster_ip}
  selector: {selector or f"{{app: {name}}}"}
  ports: {ports}
"""


def service_route(name: str, namespace: str, service: str, *, kind: str = "HTTPRoute",
                  port: int | None = None, service_namespace: str | None = None) -> str:
    """A route (GAMMA: its parent is a Service) up to its rules: the caller
    writes `  rules:` and what follows."""
    parent = f"name: {service}" + (f", namespace: {service_namespace}" if service_namespace
                                   else "") + (f", port: {port}" if port else "")
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRefs: [{{group: "", kind: Service, {parent}}}]
"""
