"""Kubernetes manifests that the CNI and local-mesh tests share, as YAML text.

The tests feed these to `shoal mesh apply`, the node agent's config files and
the mesh planner; writing each object once keeps the fixtures of those tests
the same objects, so a difference between tests is a difference in the test.
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
