"""Gateway API Mesh conformance, HTTP (issue 14, section 2).

Each test is one test of kubernetes-sigs/gateway-api conformance/tests/mesh/
(its short name in the marker), re-expressed against the local mesh: the
route manifest it applies is in manifests/, requests leave an echo pod
(apps/client.py) and the echo backend (apps/echo.py) reports what it got.
Every request takes the real path: client pod -> ztunnel -> HBONE ->
waypoint -> HBONE -> ztunnel -> echo pod.
"""

import pytest

from tests.e2e.conformance.harness import CONSUMER_NS, NS, Case

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]
conformance = pytest.mark.conformance

def served_by(case, backend, **kw):
    return Case(name=case, backend=backend, namespace=NS, **kw)


# ------------------------------------------------------------ basics

@conformance("MeshBasic")
def test_mesh_basic(mesh):
    mesh.expect([Case(name="plain GET to the service", host="echo")])


@conformance("MeshHTTPRouteSimpleSameNamespace")
def test_simple_same_namespace(routes):
    routes("simple-same-namespace.yaml").expect([served_by("to echo-v1", "echo-v1")])


@conformance("MeshTrafficSplit")
def test_traffic_split(routes):
    routes("split.yaml").expect([served_by("/v1", "echo-v1", path="/v1"),
                                 served_by("/v2", "echo-v2", path="/v2")])


@conformance("MeshHTTPRouteWeight")
def test_weight(routes):
    mesh = routes("weight.yaml")
    probe = Case(name="weighted", namespace=NS)
    mesh.expect([probe])
    mesh.expect_split(probe, {"echo-v1": 0.7, "echo-v2": 0.3})


# ------------------------------------------------------------ matching

@conformance("MeshHTTPRouteMatching")
def test_matching(routes):
    routes("matching.yaml").expect([
        served_by("/", "echo-v1", path="/"),
        served_by("/example", "echo-v1", path="/example"),
        served_by("version one", "echo-v1", headers={"Version": "one"}),
        served_by("/v2", "echo-v2", path="/v2"),
        served_by("/v2/example", "echo-v2", path="/v2/example"),
        served_by("version two", "echo-v2", headers={"Version": "two"}),
        served_by("/v2/", "echo-v2", path="/v2/"),
        served_by("/v2example is not under /v2", "echo-v1", path="/v2example"),
        served_by("/foo/v2/example", "echo-v1", path="/foo/v2/example"),
    ])


@conformance("MeshHTTPRouteQueryParamMatching")
def test_query_param_matching(routes):
    routes("query-param-matching.yaml").expect([
        served_by("whale", "echo-v1", path="/?animal=whale"),
        served_by("dolphin", "echo-v2", path="/?animal=dolphin"),
        served_by("whale + other", "echo-v1", path="/?animal=whale&otherparam=irrelevant"),
        served_by("dolphin + color", "echo-v2", path="/?animal=dolphin&color=yellow"),
        Case(name="color only", path="/?color=blue", status=404),
        Case(name="dog", path="/?animal=dog", status=404),
        Case(name="whaledolphin", path="/?animal=whaledolphin", status=404),
        Case(name="no query", path="/", status=404),
        served_by("path and query", "echo-v1", path="/path1?animal=whale"),
        served_by("header and query", "echo-v2", path="/?animal=whale", headers={"version": "one"}),
        served_by("first of two ORed matches", "echo-v1", path="/path3?animal=shark"),
        served_by("second of two ORed matches", "echo-v1", path="/path4?animal=kraken",
                  headers={"version": "three"}),
        Case(name="query without its path", path="/?animal=shark", status=404),
        Case(name="path and query without the header", path="/path4?animal=kraken", status=404),
        served_by("path beats query", "echo-v1", path="/path5?animal=hydra"),
    ])


@conformance("MeshHTTPRouteNamedRule")
def test_named_rule(routes):
    routes("named-rule.yaml").expect([
        served_by("named", "echo-v1", path="/named", echoed_path="/named"),
        served_by("unnamed", "echo-v2", path="/unnamed", echoed_path="/unnamed"),
    ])


# ------------------------------------------------------------ redirects

def redirect(case, request_path, status=302, **location):
    return Case(name=case, host="echo", path=request_path, status=status, redirect=location)


@pytest.mark.parametrize("manifest,path,status", [
    pytest.param("303-redirect.yaml", "/redirect", 303, marks=conformance("MeshHTTPRoute303Redirect")),
    pytest.param("307-redirect.yaml", "/temporary", 307, marks=conformance("MeshHTTPRoute307Redirect")),
    pytest.param("308-redirect.yaml", "/permanent", 308, marks=conformance("MeshHTTPRoute308Redirect")),
])
def test_redirect_status(routes, manifest, path, status):
    routes(manifest).expect([redirect(f"{status}", path, status, path=path)])


@conformance("MeshHTTPRouteRedirectHostAndStatus")
def test_redirect_host_and_status(routes):
    routes("redirect-host-and-status.yaml").expect([
        redirect("host", "/hostname-redirect", host="example.org"),
        redirect("host and status", "/host-and-status", 301, host="example.org"),
    ])


@conformance("MeshHTTPRouteRedirectPath")
def test_redirect_path(routes):
    routes("redirect-path.yaml").expect([
        redirect("prefix", "/original-prefix/lemon", path="/replacement-prefix/lemon"),
        redirect("full path", "/full/path/original", path="/full-path-replacement"),
        redirect("prefix and host", "/path-and-host", host="example.org",
                 path="/replacement-prefix"),
        redirect("prefix and status", "/path-and-status", 301, path="/replacement-prefix"),
        redirect("full path and host", "/full-path-and-host", host="example.org",
                 path="/replacement-full"),
        redirect("full path and status", "/full-path-and-status", 301, path="/replacement-full"),
    ])


@conformance("MeshHTTPRouteRedirectPort")
def test_redirect_port(routes):
    routes("redirect-port.yaml").expect([
        redirect("port", "/port", port="8083"),
        redirect("port and host", "/port-and-host", host="example.org", port="8083"),
        redirect("port and status", "/port-and-status", 301, port="8083"),
        redirect("port, host and status", "/port-and-host-and-status", host="example.org",
                 port="8083"),
    ])


@conformance("MeshHTTPRouteSchemeRedirect")
def test_redirect_scheme(routes):
    routes("redirect-scheme.yaml").expect([
        redirect("scheme", "/scheme", scheme="https"),
        redirect("scheme and host", "/scheme-and-host", scheme="https", host="example.org"),
        redirect("scheme and status", "/scheme-and-status", 301, scheme="https"),
        redirect("scheme, host and status", "/scheme-and-host-and-status", scheme="https",
                 host="example.org"),
    ])


# ------------------------------------------------------------ filters

def header_cases():
    """The request header modifier cases (the same for rule and backend filters)."""
    return [
        served_by("set adds", "echo-v1", path="/set", headers={"Some-Other-Header": "val"},
                  request_headers={"Some-Other-Header": "val",
                                   "X-Header-Set": "set-overwrites-values"}),
        served_by("set overwrites", "echo-v1", path="/set",
                  headers={"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
                  request_headers={"Some-Other-Header": "val",
                                   "X-Header-Set": "set-overwrites-values"}),
        served_by("add adds", "echo-v1", path="/add", headers={"Some-Other-Header": "val"},
                  request_headers={"Some-Other-Header": "val",
                                   "X-Header-Add": "add-appends-values"}),
        served_by("add appends", "echo-v1", path="/add",
                  headers={"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
                  request_headers={"X-Header-Add": "some-other-value,add-appends-values"}),
        served_by("remove", "echo-v1", path="/remove", headers={"X-Header-Remove": "val"},
                  absent_request_headers=("X-Header-Remove",)),
        served_by("multiple", "echo-v1", path="/multiple",
                  headers={"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                           "X-Header-Remove-2": "remove-val-2", "Another-Header": "another"},
                  request_headers={"X-Header-Set-1": "header-set-1",
                                   "X-Header-Set-2": "header-set-2",
                                   "X-Header-Add-1": "header-add-1",
                                   "X-Header-Add-2": "add-val-2,header-add-2",
                                   "X-Header-Add-3": "header-add-3", "Another-Header": "another"},
                  absent_request_headers=("X-Header-Remove-1", "X-Header-Remove-2")),
        served_by("names are case-insensitive", "echo-v1", path="/case-insensitivity",
                  headers={"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                           "x-header-remove": "original-val-remove", "Another-Header": "another"},
                  request_headers={"X-Header-Set": "header-set",
                                   "X-Header-Add": "original-val-add,header-add",
                                   "Another-Header": "another"},
                  absent_request_headers=("x-header-remove",)),
    ]


@conformance("MeshHTTPRouteRequestHeaderModifier")
def test_request_header_modifier(routes):
    routes("request-header-modifier.yaml").expect(header_cases())


@conformance("MeshHTTPRouteBackendRequestHeaderModifier")
def test_backend_request_header_modifier(routes):
    routes("request-header-modifier-backend.yaml").expect(header_cases())


@conformance("MeshHTTPRouteRewritePath")
def test_rewrite_path(routes):
    modified = {"X-Header-Add": "header-val-1", "X-Header-Add-Append": "append-val-1,header-val-2",
                "X-Header-Set": "set-overwrites-values"}
    sent = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
            "X-Header-Set": "set-val"}
    routes("rewrite-path.yaml").expect([
        served_by("prefix", "echo-v1", path="/prefix/one/two", echoed_path="/one/two"),
        served_by("strip prefix", "echo-v1", path="/strip-prefix/three", echoed_path="/three"),
        served_by("strip to /", "echo-v1", path="/strip-prefix", echoed_path="/"),
        served_by("full path", "echo-v1", path="/full/one/two", echoed_path="/one"),
        served_by("full path and headers", "echo-v1",
                  path="/full/rewrite-path-and-modify-headers/test", headers=sent,
                  echoed_path="/test", request_headers=modified,
                  absent_request_headers=("X-Header-Remove",)),
        served_by("prefix and headers", "echo-v1",
                  path="/prefix/rewrite-path-and-modify-headers/one", headers=sent,
                  echoed_path="/prefix/one", request_headers=modified,
                  absent_request_headers=("X-Header-Remove",)),
    ])


# ------------------------------------------------------------ frontends and parents

@conformance("MeshFrontend")
def test_frontend(routes, mesh):
    v2_ip = mesh.pod_ip(NS, "echo-v2")
    routes("frontend.yaml").expect([
        served_by("to the service", "echo-v2", host="echo-v2",
                  response_headers={"X-Header-Set": "set"}),
        served_by("to the pod IP: no route", "echo-v2", host=f"{v2_ip}:8080",
                  absent_response_headers=("X-Header-Set",)),
    ])


@conformance("MeshFrontendHostname")
def test_frontend_hostname(routes):
    routes("frontend.yaml").expect([
        served_by("echo-v2 with Host echo-v1", "echo-v2", host="echo-v2",
                  headers={"Host": "echo-v1"}, response_headers={"X-Header-Set": "set"}),
        served_by("echo-v1 with Host echo-v2", "echo-v1", host="echo-v1",
                  headers={"Host": "echo-v2"}, absent_response_headers=("X-Header-Set",)),
    ])


@conformance("MeshPorts")
def test_ports(routes):
    routes("ports.yaml").expect([
        served_by("parent port 80, to 80", "echo-v1", host="echo-v1",
                  response_headers={"X-Header-Set": "v1"}),
        served_by("parent port 80, to 8080", "echo-v1", host="echo-v1:8080",
                  absent_response_headers=("X-Header-Set",)),
        served_by("no parent port, to 80", "echo-v2", host="echo-v2",
                  response_headers={"X-Header-Set": "v2"}),
        served_by("no parent port, to 8080", "echo-v2", host="echo-v2:8080",
                  response_headers={"X-Header-Set": "v2"}),
    ])


@conformance("MeshConsumerRoute")
def test_consumer_route(routes, mesh):
    routes("consumer-route.yaml")
    target = f"echo-v1.{NS}"
    mesh.expect([served_by("from the route's namespace: route applies", "echo-v1", host=target,
                           response_headers={"X-Header-Set": "set"})],
                client=f"{CONSUMER_NS}/echo-v1")
    mesh.expect([served_by("from the service's namespace: route does not apply", "echo-v1",
                           host=target, absent_response_headers=("X-Header-Set",))])
