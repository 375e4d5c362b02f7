"""GAMMA pieces on records made by the real compiler from YAML: backendRef
filters, GRPCRoute (method/service/header matches, filters, weights) and
producer/consumer routes (issue 14, section 2)."""

from __future__ import annotations

import random

import pytest

from shoal.core.model import ConfigError
from shoal.core.model.loader import load_text
from shoal.routing.compile import compile_config
from shoal.routing.view import StaticView
from shoal.waypoint import message
from shoal.waypoint.filters import plan, plan_backend
from shoal.waypoint.message import RequestHead
from shoal.waypoint.routes import RouteInput, RouteTable, routes_for_client
from tests.helpers.manifests import documents, service, service_route, waypoint_namespace

BASE = documents(waypoint_namespace("prod"),
                 service("echo", "prod", "10.96.2.1",
                         "[{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 7070}]"))


def _view(extra: str) -> StaticView:
    return StaticView.from_records(compile_config(load_text(BASE + extra, "mesh.yaml")))


def _errors(extra: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        load_text(BASE + extra, "mesh.yaml")
    return {e.field: e.message for e in exc.value.errors}


def _select(view, path, headers=None, client_ns=None, ns="prod", name="echo"):
    routes = routes_for_client(view.routes_for_service(ns, name), ns, client_ns)
    return RouteTable(routes).select(RouteInput(method="POST", path=path, host=name,
                                                headers=headers or {}))


# ---------------------------------------------------------------- backendRef filters

BACKEND_FILTERS = "---\n" + service_route("echo", "prod", "echo", port=80) + """  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-rule, value: rule}]}
    backendRefs:
    - name: echo
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: X-Header-Set, value: backend}]
          add: [{name: X-Header-Add, value: added}]
          remove: [X-Header-Remove]
      - type: ResponseHeaderModifier
        responseHeaderModifier: {set: [{name: x-resp, value: backend}]}
"""


def test_backend_filters_apply_after_the_rule_filters():
    sel = _select(_view(BACKEND_FILTERS), "/any")
    ref = sel.rule.backend_refs[0]
    assert [f.type for f in ref.filters] == ["RequestHeaderModifier", "ResponseHeaderModifier"]
    head = RequestHead(method="GET", target="/any", authority="echo",
                       headers=[("host", "echo"), ("x-header-set", "old"), ("x-header-add", "orig"),
                                ("x-header-remove", "gone")])
    rng = random.Random(1)
    p = plan_backend(plan(head, sel.rule, sel.match, 80, rng), ref, sel.match, 80, rng)
    h = p.request.headers
    assert message.get(h, "x-rule") == "rule"
    assert message.get(h, "x-header-set") == "backend"
    assert [v for k, v in h if k.lower() == "x-header-add"] == ["orig", "added"]
    assert message.get(h, "x-header-remove") is None
    assert p.response_headers.set == (("x-resp", "backend"),)


def test_backend_filters_refuse_a_redirect_and_repeats():
    errors = _errors("---\n" + service_route("echo", "prod", "echo") + """  rules:
  - backendRefs:
    - name: echo
      port: 80
      filters:
      - {type: RequestRedirect, requestRedirect: {statusCode: 301}}
      - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [a]}}
      - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [b]}}
""")
    assert "not supported here" in errors["spec.rules[0].backendRefs[0].filters[0].type"]
    assert "only once" in errors["spec.rules[0].backendRefs[0].filters"]


# ---------------------------------------------------------------- GRPCRoute

GRPC = "---\n" + service_route("echo", "prod", "echo", kind="GRPCRoute", port=7070) + """  rules:
  - matches: [{method: {service: pkg.Echo, method: Say}}]
    backendRefs: [{name: exact, port: 7070}]
  - matches: [{method: {service: pkg.Echo}}]
    backendRefs: [{name: service, port: 7070}]
  - matches: [{method: {method: Other}}]
    backendRefs: [{name: method, port: 7070}]
  - matches: [{method: {type: RegularExpression, service: "pkg\\\\..*", method: "Re.*"}}]
    backendRefs: [{name: regex, port: 7070}]
  - matches: [{headers: [{name: x-test-case, value: set}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-header-set, value: set-overwrites-values}]}
    backendRefs: [{name: header, port: 7070}]
  - backendRefs:
    - {name: v1, port: 7070, weight: 70}
    - {name: v2, port: 7070, weight: 30}
    - {name: v3, port: 7070, weight: 0}
---
""" + service_route("echo", "prod", "echo", port=80) + """  rules: [{backendRefs: [{name: http, port: 80}]}]
"""


def test_grpcroute_and_httproute_of_one_name_are_two_records():
    keys = sorted(r.key for r in _view(GRPC).routes_for_service("prod", "echo"))
    assert keys == ["prod/GRPCRoute:echo", "prod/echo"]


@pytest.mark.parametrize("path,backend", [
    ("/pkg.Echo/Say", "exact"),            # service and method beat service only
    ("/pkg.Echo/Other", "service"),        # the service's characters beat the method's
    ("/other.Svc/Other", "method"),
    ("/pkg.X/Regex", "regex"),
    ("/pkg.EchoMore/Regex", "regex"),      # a service prefix is a whole element
    ("/pkg.EchoMore/Say", "v1"),
    ("/other.Svc/Nothing", "v1"),
])
def test_grpcroute_method_matches(path, backend):
    routes = [r for r in _view(GRPC).routes_for_service("prod", "echo") if r.kind == "GRPCRoute"]
    sel = RouteTable(routes).select(RouteInput(method="POST", path=path, host="echo", headers={}))
    if backend == "v1":
        assert [b.name for b in sel.rule.backend_refs] == ["v1", "v2", "v3"]
    else:
        assert sel.rule.backend_refs[0].name == backend


def test_grpcroute_header_match_and_filter():
    routes = [r for r in _view(GRPC).routes_for_service("prod", "echo") if r.kind == "GRPCRoute"]
    sel = RouteTable(routes).select(RouteInput(method="POST", path="/a.B/C", host="echo",
                                               headers={"x-test-case": "set"}))
    assert sel.rule.backend_refs[0].name == "header"
    head = RequestHead(method="POST", target="/a.B/C", authority="echo",
                       headers=[("x-header-set", "old")])
    p = plan(head, sel.rule, sel.match, 7070, random.Random(1))
    assert message.get(p.request.headers, "x-header-set") == "set-overwrites-values"


def test_grpcroute_validation():
    errors = _errors("---\n" + service_route("bad", "prod", "echo", kind="GRPCRoute") + """  rules:
  - matches:
    - method: {}
    - method: {service: "not a service", method: "1x"}
    - method: {type: RegularExpression, service: "("}
    - path: {value: /x}
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: x}}
    timeouts: {request: 1s}
""")
    assert "one or both" in errors["spec.rules[0].matches[0].method"]
    assert "spec.rules[0].matches[1].method.service" in errors
    assert "spec.rules[0].matches[1].method.method" in errors
    assert "not valid RE2" in errors["spec.rules[0].matches[2].method.service"]
    assert "spec.rules[0].matches[3].path" in errors             # no path match in gRPC
    assert "not supported here" in errors["spec.rules[0].filters[0].type"]
    assert "spec.rules[0].timeouts" in errors                    # no timeouts in GRPCRoute


# ---------------------------------------------------------------- consumer routes

CONSUMER = """
---
apiVersion: v1
kind: Namespace
metadata: {name: consumer}
---
apiVersion: v1
kind: Namespace
metadata: {name: third}
---
""" + service_route("producer", "prod", "echo") + """  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
""" + service_route("mine", "consumer", "echo", service_namespace="prod") + """  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-header-set, value: set}]}
    backendRefs: [{name: echo, namespace: prod, port: 80}]
"""


@pytest.mark.parametrize("client_ns,route", [
    ("consumer", "consumer/mine"),       # a consumer route replaces the producer's
    ("prod", "prod/producer"),
    ("third", "prod/producer"),          # another namespace's consumer route never applies
    (None, "prod/producer"),             # no client identity: producer routes only
])
def test_consumer_routes_apply_only_to_their_namespace(client_ns, route):
    sel = _select(_view(CONSUMER), "/", client_ns=client_ns)
    assert sel.route.key == route
