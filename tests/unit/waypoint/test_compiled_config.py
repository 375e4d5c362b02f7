"""The waypoint's pure pieces on records made by the real compiler from
Kubernetes YAML (core.model + routing.compile), not hand-built ones."""

from __future__ import annotations

import random

from shoal.core.authz import L7, Request, evaluate
from shoal.core.model.loader import load_text
from shoal.routing.compile import compile_config
from shoal.routing.view import StaticView
from shoal.waypoint import message
from shoal.waypoint.filters import plan
from shoal.waypoint.message import RequestHead
from shoal.waypoint.routes import RouteInput, RouteTable
from tests.helpers.manifests import documents, service, service_route, waypoint_namespace

YAML = documents(waypoint_namespace("shop"),
                 service("cart", "shop", "10.96.1.1", "[{name: http, port: 80, targetPort: 8080}]"),
                 service_route("cart", "shop", "cart", port=80) + """  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: shop.example, statusCode: 301,
                        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "yes"}]}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: canary}]}
    backendRefs: [{name: cart, port: 80}]
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {attempts: 3, codes: [502, 503], backoff: 50ms}
  - backendRefs: [{name: cart, port: 80}]
""", """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-get, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: cart}]
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [shop]}}]
    to: [{operation: {methods: [GET], paths: ["/api/*", "/old/*"]}}]
""")


def _view():
    return StaticView.from_records(compile_config(load_text(YAML, "mesh.yaml")))


def test_compiled_routes_select_and_plan():
    v = _view()
    svc = v.service_by_vip("10.96.1.1")
    assert svc is not None and v.waypoint_for_service(svc).key == "shop/waypoint"
    table = RouteTable(v.routes_for_service("shop", "cart"))
    sel = table.select(RouteInput(method="GET", path="/api/items", query="", host="cart",
                                  headers={"x-canary": "yes"}))
    assert sel.rule_index == 1
    assert sel.rule.timeouts.request == 2.0 and sel.rule.timeouts.backend_request == 0.5
    assert sel.rule.retry.attempts == 3 and 503 in sel.rule.retry.codes
    head = RequestHead(method="GET", target="/api/items?x=1", headers=[("host", "cart")],
                       authority="cart")
    p = plan(head, sel.rule, sel.match, 80, random.Random(1))
    assert p.request.target == "/v2/items?x=1" and message.get(p.request.headers, "x-route") == "canary"
    old = table.select(RouteInput(method="GET", path="/old/a", host="cart", headers={}))
    r = plan(RequestHead(method="GET", target="/old/a", authority="cart"), old.rule, old.match,
             80, random.Random(1))
    assert (r.redirect.status, r.redirect.location) == (301, "https://shop.example/new/a")
    assert table.select(RouteInput(method="GET", path="/other", host="cart", headers={})).rule_index == 2


def test_compiled_policy_evaluates_at_l7():
    v = _view()
    pols = v.policies_for_target("Service", "shop", "cart")
    assert [p.key for p in pols] == ["shop/cart-get"]
    ok = Request(source_principal="spiffe://cluster.local/ns/shop/sa/web", method="GET",
                 path="/api/x", host="cart", destination_port=80)
    assert evaluate(pols, ok, L7).allowed
    assert not evaluate(pols, Request(source_principal=ok.source_principal, method="POST",
                                      path="/api/x"), L7).allowed
