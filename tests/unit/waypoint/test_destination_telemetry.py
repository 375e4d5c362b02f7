"""waypoint.destination (which tunnels a waypoint accepts, endpoints) and
waypoint.telemetry (Istio labels, traceparent)."""

from __future__ import annotations

import random

import pytest

from routing.records import (Service, ServicePort, Waypoint, WaypointRef, Workload)
from routing.view import StaticView
from waypoint.destination import NotForUs, endpoints, resolve, resolve_host
from waypoint.telemetry import RequestRecord, labels_for, traceparent, valid_traceparent

WP = WaypointRef(namespace="default", name="waypoint")
KEY = "default/echo.default.svc.cluster.local"


def view(waypoint_for="service"):
    w1 = Workload(uid="c//Pod/default/echo-1", name="echo-1", namespace="default",
                  ips=("10.0.0.1",), services={KEY: {80: 8080}}, waypoint=WP,
                  labels={"app": "echo", "version": "v1"}, canonical_name="echo")
    w2 = Workload(uid="c//Pod/default/echo-2", name="echo-2", namespace="default",
                  ips=("10.0.0.2",), services={KEY: {80: 9090}}, status="UNHEALTHY")
    echo = Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
                   vips=("10.96.0.1",), ports=(ServicePort(port=80, target_port=8080),),
                   endpoints=(w1.uid, w2.uid), waypoint=WP)
    other = Service(name="other", namespace="default", hostname="other.default.svc.cluster.local",
                    vips=("10.96.0.2",), ports=(ServicePort(port=80),))
    return StaticView(workloads=[w1, w2], services=[echo, other],
                      waypoints=[Waypoint(name="waypoint", namespace="default",
                                          waypoint_for=waypoint_for)])


def test_resolve_accepts_only_our_destinations():
    v = view()
    t = resolve(v, WP, "10.96.0.1", 80)
    assert t.service.name == "echo" and t.port == 80 and t.name == "echo.default.svc.cluster.local"
    with pytest.raises(NotForUs, match="does not use waypoint"):
        resolve(v, WP, "10.96.0.2", 80)
    with pytest.raises(NotForUs, match="no port 81"):
        resolve(v, WP, "10.96.0.1", 81)
    with pytest.raises(NotForUs, match="neither"):
        resolve(v, WP, "192.0.2.1", 80)
    # a pod IP: only when the waypoint serves workloads
    with pytest.raises(NotForUs):
        resolve(v, WP, "10.0.0.1", 8080)
    assert resolve(view("all"), WP, "10.0.0.1", 8080).workload.name == "echo-1"


def test_endpoints_resolve_target_ports_and_skip_unhealthy():
    v = view()
    eps = endpoints(v, v.service_by_vip("10.96.0.1"), 80)
    assert [(e.ip, e.port, e.key) for e in eps] == [("10.0.0.1", 8080, "10.0.0.1:8080")]
    assert not eps[0].hbone
    assert len(endpoints(v, v.service_by_vip("10.96.0.1"), 80, only_healthy=False)) == 2


def test_resolve_host_plaintext_mode():
    v = view()
    assert resolve_host(v, "default", "echo", 80).service.name == "echo"
    assert resolve_host(v, "default", "echo.default.svc.cluster.local", 0).port == 80
    assert resolve_host(v, "default", "10.96.0.1", 80).address == "10.96.0.1"
    assert resolve_host(v, "default", "missing", 80) is None


def test_traceparent():
    tp = traceparent(random.Random(1))
    assert valid_traceparent(tp) and tp.startswith("00-") and tp.endswith("-01")
    assert not valid_traceparent("00-" + "0" * 32 + "-" + "1" * 16 + "-01")
    assert not valid_traceparent("garbage") and not valid_traceparent(None)


def test_istio_labels():
    v = view()
    svc = v.service_by_vip("10.96.0.1")
    w = v.workload_by_ip("10.0.0.1")
    rec = RequestRecord(source_principal="spiffe://cluster.local/ns/web/sa/curl", source_ip="10.0.9.9",
                        source_workload=None, destination=svc, destination_workload=w,
                        upstream="10.0.0.1:8080", method="GET", path="/", authority="echo",
                        protocol="http", status=200, flags="-", duration_ms=1.0,
                        request_bytes=0, response_bytes=10)
    labels = labels_for(rec)
    assert labels["reporter"] == "waypoint" and labels["response_code"] == "200"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/web/sa/curl"
    assert labels["source_workload_namespace"] == "web"
    assert labels["destination_service"] == "echo.default.svc.cluster.local"
    assert labels["destination_app"] == "echo" and labels["destination_version"] == "v1"
    assert labels["connection_security_policy"] == "mutual_tls"
