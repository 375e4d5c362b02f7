"""CPU cost per request of the waypoint's pure L7 pieces (pytest-benchmark).

    pytest benchmarks -o python_files='bench_*.py' --benchmark-enable -k waypoint

Route selection over a realistic table (20 routes x 4 rules, path/header/
query matches), L7 policy evaluation (3 policies incl. a DENY), and HTTP/1.1
parsing of one typical request and response.
"""

from __future__ import annotations

import random

from shoal.core.authz import L4, L7, Request, evaluate
from shoal.core.records import (Authorization, BackendRef, Condition, HeaderMatch, HTTPRoute,
                             Operation, PathMatch, QueryParamMatch, RouteMatch, RouteRule,
                             Rule, Source)
from shoal.waypoint.http1 import (H1ResponseParser, H1Server, serialize_request_head,
                            strip_hop_by_hop)
from shoal.waypoint.routes import RouteInput, RouteTable, pick_backend

REQ = (b"GET /api/v1/items/42?page=2 HTTP/1.1\r\nHost: shop.default.svc.cluster.local:8080\r\n"
       b"User-Agent: wrk\r\nAccept: */*\r\nX-Request-Id: 0123456789abcdef\r\n"
       b"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
RESP = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 1024\r\nConnection: keep-alive\r\n\r\n" + b"x" * 1024)


def _table() -> RouteTable:
    routes = []
    for i in range(20):
        rules = (
            RouteRule(matches=(RouteMatch(path=PathMatch(type="Exact", value=f"/svc{i}/exact")),)),
            RouteRule(matches=(RouteMatch(path=PathMatch(value=f"/svc{i}/"),
                                          headers=(HeaderMatch(name="x-version", value="v2"),)),)),
            RouteRule(matches=(RouteMatch(path=PathMatch(value=f"/svc{i}/"),
                                          query_params=(QueryParamMatch(name="debug", value="1"),)),)),
            RouteRule(matches=(RouteMatch(path=PathMatch(type="RegularExpression",
                                                         value=f"/svc{i}/v[0-9]+/.*")),)),
        )
        routes.append(HTTPRoute(name=f"r{i}", namespace="default", rules=rules, creation_index=i))
    routes.append(HTTPRoute(name="api", namespace="default", creation_index=99, rules=(
        RouteRule(matches=(RouteMatch(path=PathMatch(value="/api/v1")),),
                  backend_refs=(BackendRef(name="a", namespace="default", weight=90),
                                BackendRef(name="b", namespace="default", weight=10))),)))
    return RouteTable(routes)


def test_waypoint_route_select(benchmark):
    table = _table()
    inp = RouteInput(method="GET", path="/api/v1/items/42", query="page=2",
                     host="shop.default.svc.cluster.local:8080",
                     headers={"user-agent": "wrk", "accept": "*/*"})
    rng = random.Random(1)

    def run():
        sel = table.select(inp)
        return pick_backend(sel.rule.backend_refs, rng)
    assert benchmark(run).name in ("a", "b")


POLICIES = [
    Authorization(name="deny-admin", namespace="default", scope="TARGET_REF", action="DENY",
                  rules=(Rule(to=(Operation(paths=("/admin/*",)),)),)),
    Authorization(name="allow-frontend", namespace="default", scope="TARGET_REF", action="ALLOW",
                  rules=(Rule(from_=(Source(principals=("cluster.local/ns/web/sa/frontend",)),),
                              to=(Operation(methods=("GET", "HEAD")),)),)),
    Authorization(name="allow-api", namespace="default", scope="TARGET_REF", action="ALLOW",
                  rules=(Rule(from_=(Source(namespaces=("default", "shop")),),
                              to=(Operation(methods=("GET",), paths=("/api/*",)),),
                              when=(Condition(key="request.headers[x-request-id]", values=("*",)),)),)),
]
REQUEST = Request(source_principal="spiffe://cluster.local/ns/shop/sa/cart", source_ip="10.0.0.4",
                  destination_ip="10.96.0.10", destination_port=8080, method="GET",
                  host="shop:8080", path="/api/v1/items/42?page=2",
                  headers={"x-request-id": "0123", "user-agent": "wrk"})


def test_waypoint_authz_l7(benchmark):
    assert benchmark(evaluate, POLICIES, REQUEST, L7).allowed


def test_waypoint_authz_l4(benchmark):
    # ztunnel's per-connection decision with the same policies (L7 rules fail closed)
    assert not benchmark(evaluate, POLICIES, REQUEST, L4).allowed


def test_waypoint_parse_request(benchmark):
    def run():
        return H1Server().receive_data(REQ)
    assert len(benchmark(run)) == 2


def test_waypoint_parse_request_keepalive(benchmark):
    # One parser reused for many requests, as on a keep-alive connection.
    p = H1Server()
    assert len(benchmark(p.receive_data, REQ)) == 2


def test_waypoint_parse_response(benchmark):
    def run():
        return H1ResponseParser("GET").receive_data(RESP)
    assert len(benchmark(run)) == 3


def test_waypoint_request_head_out(benchmark):
    head = H1Server().receive_data(REQ)[0].head

    def run():
        return serialize_request_head(head, strip_hop_by_hop(head.headers))
    assert benchmark(run).startswith(b"GET ")


class _Bare:
    """The peer: httptools with callbacks that only collect, no events."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url):
        self.url = url

    def on_header(self, name, value):
        self.headers.append((name, value))


def test_waypoint_parse_request_bare_httptools(benchmark):
    import httptools

    def run():
        b = _Bare()
        httptools.HttpRequestParser(b).feed_data(REQ)
        return b.headers
    assert len(benchmark(run)) == 5
