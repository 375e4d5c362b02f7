"""Gateway API Mesh conformance, gRPC (issue 14, section 2): GRPCRoute.

The suite's conformance/tests/mesh/grpcroute-*.go re-expressed: real gRPC
calls (grpcio, apps/client.py) from an echo pod to `echo:7070`, through the
waypoint's HTTP/2 path, to grpcio servers (apps/echo.py) that report the
metadata they received.
"""

import pytest

from tests.e2e.conformance.harness import NS, Case

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]


def call(name, backend, case_header, sent=None, **kw):
    return Case(name=name, protocol="grpc", host="echo:7070", path="", backend=backend,
                namespace=NS, headers={"x-test-case": case_header, **(sent or {})}, **kw)


@pytest.mark.conformance("MeshGRPCRouteRequestHeaderModifier")
def test_grpc_request_header_modifier(routes):
    mesh = routes("grpcroute-request-header-modifier.yaml")
    mesh.expect([
        call("set overwrites", "echo-v1", "set",
             {"some-other-header": "this-header-should-be-set",
              "x-header-set": "this-value-should-be-overwritten"},
             request_headers={"x-test-case": "set",
                              "some-other-header": "this-header-should-be-set",
                              "x-header-set": "set-overwrites-values"}),
        call("add appends", "echo-v1", "add", {"x-header-add": "this-value-should-be-appended"},
             request_headers={"x-test-case": "add", "x-header-add":
                              "this-value-should-be-appended,add-appends-values"}),
        call("remove", "echo-v1", "remove", {"x-header-remove": "this-should-be-removed"},
             request_headers={"x-test-case": "remove"},
             absent_request_headers=("x-header-remove",)),
    ])
    mesh.expect([
        call("set, add and remove", "echo-v2", "multi",
             {"x-header-set-2": "set-header-2", "x-header-add-2": "add-header-2",
              "x-header-remove-2": "should-be-removed-2"},
             request_headers={"x-test-case": "multi", "x-header-set-1": "header-set-1",
                              "x-header-set-2": "header-set-2", "x-header-add-1": "header-add-1",
                              "x-header-add-2": "add-header-2,header-add-2"},
             absent_request_headers=("x-header-remove-1", "x-header-remove-2")),
    ], client=f"{NS}/echo-v2")


@pytest.mark.conformance("MeshGRPCRouteWeight")
def test_grpc_weight(routes):
    mesh = routes("grpcroute-weight.yaml")
    probe = Case(name="grpc weighted", protocol="grpc", host="echo:7070", path="", namespace=NS)
    mesh.expect([probe])
    # echo-v3 has weight 0 (and does not exist): never chosen, so v1 + v2 is everything.
    mesh.expect_split(probe, {"echo-v1": 0.7, "echo-v2": 0.3})
