"""core.model: parsing and validation with file/resource/field errors."""

from pathlib import Path

import pytest

from shoal.core.model import (AuthorizationPolicy, ConfigError, Deployment, Gateway, HTTPRoute, Pod,
                        Service, load_dir, load_text, replica_pods)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "config"


def errors_of(text: str, file: str = "f.yaml"):
    with pytest.raises(ConfigError) as info:
        load_text(text, file=file)
    return info.value.errors


def test_fixture_mesh_loads_every_kind_and_notes_skipped():
    cfg = load_dir(FIXTURES / "mesh")
    assert cfg.counts() == {"AuthorizationPolicy": 4, "Deployment": 1, "Gateway": 1,
                            "HTTPRoute": 1, "Namespace": 3, "Pod": 4, "Service": 3}
    notes = [str(n) for n in cfg.notes]
    assert any("ConfigMap/unrelated" in n for n in notes)
    assert any("Gateway/shop/ingress" in n and "istio-waypoint" in n for n in notes)


def test_multi_document_and_list_kind():
    cfg = load_text("""
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Namespace, metadata: {name: a}}
  - {apiVersion: v1, kind: Namespace, metadata: {name: b}}
---
---
apiVersion: v1
kind: Namespace
metadata: {name: c}
""")
    assert [r.meta.name for r in cfg.resources] == ["a", "b", "c"]


def test_pod_ips_ports_and_defaults():
    cfg = load_text("""
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: x}}
spec:
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
""")
    (pod,) = cfg.of(Pod)
    assert pod.meta.namespace == "default" and pod.service_account == "default"
    assert pod.ips == ("10.0.0.1", "fd00::1")
    assert pod.container_ports == {"http": 8080}


def test_deployment_replicas_get_hash_names_and_annotation_ips():
    cfg = load_text("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: n, annotations: {shoal.io/pod-ips: "10.0.0.5, 10.0.0.6"}}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {serviceAccountName: sa, containers: [{name: c}]}
""")
    (d,) = cfg.of(Deployment)
    pods = replica_pods(d)
    assert [p.meta.name.rsplit("-", 1)[1] for p in pods] == ["0", "1", "2"]
    assert all(p.meta.name.startswith("web-") and len(p.meta.name.split("-")[1]) == 10 for p in pods)
    assert [p.ips for p in pods] == [("10.0.0.5",), ("10.0.0.6",), ()]
    assert all(p.owner_deployment == "web" and p.service_account == "sa" for p in pods)


def test_service_named_and_numeric_target_ports():
    cfg = load_text("""
apiVersion: v1
kind: Service
metadata: {name: s, namespace: n}
spec:
  selector: {app: x}
  clusterIP: 10.96.0.1
  ports:
    - {name: http, port: 80, targetPort: web}
    - {name: grpc-x, port: 90, targetPort: "9090"}
    - {port: 100}
""")
    (svc,) = cfg.of(Service)
    p = svc.ports
    assert (p[0].target_port, p[0].target_port_name, p[0].app_protocol) == (0, "web", "http")
    assert (p[1].target_port, p[1].app_protocol) == (9090, "grpc")
    assert p[2].target_port == 100
    assert svc.cluster_ips == ("10.96.0.1",)


def test_headless_service_has_no_vips():
    cfg = load_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
                    "spec: {clusterIP: None, ports: [{port: 80}]}\n")
    assert cfg.of(Service)[0].cluster_ips == ()


def test_every_error_names_file_resource_and_field():
    errors = errors_of("""
apiVersion: v1
kind: Service
metadata: {name: s, namespace: n}
spec:
  ports:
    - {port: 80, targetPort: 70000}
    - {port: "eighty"}
---
apiVersion: v1
kind: Pod
metadata: {name: Bad_Name, namespace: n}
status: {podIP: 300.1.1.1}
""", file="cfg/app.yaml")
    found = {(e.file, e.resource, e.field) for e in errors}
    assert ("cfg/app.yaml", "Service/n/s", "spec.ports[0].targetPort") in found
    assert ("cfg/app.yaml", "Service/n/s", "spec.ports[1].port") in found
    assert ("cfg/app.yaml", "Pod/n/Bad_Name", "metadata.name") in found
    assert ("cfg/app.yaml", "Pod/n/Bad_Name", "status.podIP") in found
    text = str(ConfigError(errors))
    assert "cfg/app.yaml" in text and "spec.ports[0].targetPort" in text


def test_bad_fixture_collects_all_errors():
    with pytest.raises(ConfigError) as info:
        load_dir(FIXTURES / "bad")
    fields = {e.field for e in info.value.errors}
    assert {"spec.ports[0].targetPort", "metadata.annotations[istio.io/dry-run]",
            "spec.rules[0].matches[0].path.value",
            "spec.rules[0].filters", "spec.rules[0].timeouts.request"} <= fields


def test_yaml_syntax_error_names_line():
    (err,) = errors_of("a: [1,\n", file="x.yaml")
    assert err.file == "x.yaml" and "line" in err.message


def test_duplicate_resource_refused():
    errors = errors_of("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
                       "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    assert any("duplicate" in e.message for e in errors)


def test_labels_must_be_strings():
    errors = errors_of("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: 1}}\n")
    assert errors[0].field.startswith("metadata.labels")


AP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: n}
spec:
"""


def test_authorization_policy_all_fields():
    cfg = load_text(AP + """
  action: DENY
  selector: {matchLabels: {app: x}}
  rules:
    - from:
        - source: {principals: [a], notNamespaces: [b], ipBlocks: [10.0.0.0/8], remoteIpBlocks: [1.2.3.4]}
      to:
        - operation: {hosts: [h], ports: ["80"], notMethods: [POST], paths: [/x]}
      when:
        - {key: "request.headers[x]", values: [v], notValues: [w]}
""")
    (pol,) = cfg.of(AuthorizationPolicy)
    assert pol.action == "DENY" and pol.selector == {"app": "x"}
    rule = pol.rules[0]
    assert rule.from_[0].principals == ("a",) and rule.from_[0].not_namespaces == ("b",)
    assert rule.to[0].ports == ("80",) and rule.to[0].not_methods == ("POST",)
    assert rule.when[0].key == "request.headers[x]" and rule.when[0].not_values == ("w",)


def test_authorization_policy_custom_and_bad_fields_refused():
    errors = errors_of(AP + """
  action: CUSTOM
  selector: {matchLabels: {a: b}}
  targetRefs: [{kind: Service, name: s}]
  rules:
    - from: [{source: {ipBlocks: [not-an-ip]}}]
      to: [{operation: {ports: [http]}}]
      typo: {}
""")
    fields = {e.field for e in errors}
    # CUSTOM is accepted (ztunnel ignores it) but needs its provider.
    assert "spec.action" not in fields and "spec.provider" in fields
    assert "spec.targetRefs" in fields
    assert "spec.rules[0].from[0].source.ipBlocks[0]" in fields
    assert "spec.rules[0].to[0].operation.ports[0]" in fields
    assert "spec.rules[0].typo" in fields


def test_target_refs_and_empty_rules():
    cfg = load_text(AP + "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n")
    (pol,) = cfg.of(AuthorizationPolicy)
    assert pol.target_refs[0].kind == "Gateway" and pol.target_refs[0].namespace == "n"
    assert pol.rules == ()


ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: n}
spec:
  parentRefs: [{kind: Service, group: "", name: svc}]
"""


def test_httproute_full_rule():
    cfg = load_text(ROUTE + """
  hostnames: [svc.n.svc.cluster.local]
  rules:
    - name: main
      matches:
        - path: {type: Exact, value: /a}
          headers: [{type: RegularExpression, name: x, value: "^v[0-9]+$"}]
          queryParams: [{name: q, value: "1"}]
          method: GET
      filters:
        - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /b}}}
        - {type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, percent: 50}}
        - {type: RequestMirror, requestMirror: {backendRef: {name: m2, port: 80}, fraction: {numerator: 1, denominator: 4}}}
        - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: a, value: b}]}}
      backendRefs: [{name: svc, port: 80, weight: 3}]
      timeouts: {request: 1m30s, backendRequest: "0s"}
      retry: {codes: [503], backoff: 25ms}
""")
    (route,) = cfg.of(HTTPRoute)
    rule = route.rules[0]
    assert route.parent_refs[0].kind == "Service"
    assert rule.matches[0].headers[0].type == "RegularExpression"
    assert [f.type for f in rule.filters] == ["URLRewrite", "RequestMirror", "RequestMirror",
                                              "ResponseHeaderModifier"]
    assert rule.filters[2].request_mirror.percent == 25.0
    assert rule.backend_refs[0].namespace == "n" and rule.backend_refs[0].weight == 3
    assert rule.timeouts.request == 90.0 and rule.timeouts.backend_request is None
    assert rule.retry.attempts == 2 and rule.retry.backoff == 0.025


def test_httproute_validation():
    errors = errors_of(ROUTE + """
  rules:
    - matches: [{path: {type: PathPrefix, value: nope}}]
      filters:
        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}
        - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [a]}}
        - {type: RequestRedirect, requestRedirect: {statusCode: 200}}
      backendRefs: [{name: x}]
      timeouts: {request: 1s, backendRequest: 2s}
      retry: {codes: [200]}
""")
    by_field = {e.field: e.message for e in errors}
    assert "spec.rules[0].matches[0].path.value" in by_field
    assert any("only once" in m for m in by_field.values())
    assert "spec.rules[0].filters[2].requestRedirect.statusCode" in by_field
    assert "spec.rules[0].backendRefs[0].port" in by_field
    assert "spec.rules[0].backendRefs" in by_field            # redirect + backends
    assert "spec.rules[0].timeouts.backendRequest" in by_field
    assert "spec.rules[0].retry.codes[0]" in by_field


def test_gateway_waypoint_for_label_validated():
    errors = errors_of("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: n, labels: {istio.io/waypoint-for: everything}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
""")
    assert errors[0].field == "metadata.labels[istio.io/waypoint-for]"
    cfg = load_text("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: n, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint}
""")
    assert cfg.of(Gateway)[0].waypoint_for == "all"
