"""waypoint.destination (which tunnels a waypoint accepts, endpoints) and
waypoint.telemetry (Istio labels, traceparent)."""

from __future__ import annotations

import random

import pytest

from shoal.core.records import (Service, ServicePort, Waypoint, WaypointRef, Workload)
from shoal.routing.view import StaticView
from shoal.waypoint.destination import NotForUs, endpoints, resolve, resolve_host
from shoal.waypoint.telemetry import RequestRecord, labels_for, traceparent, valid_traceparent

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


class _Metrics:
    """core.metrics.IstioMetrics without multiprocess files."""

    def __init__(self):
        import shoal.core.metrics as cm
        self.m = cm.IstioMetrics()

    def __getattr__(self, name):
        return getattr(self.m, name)


def _record(status=200, dur=3.0, resp=1024):
    svc = Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
                  vips=("10.96.0.1",))
    return RequestRecord(source_principal=None, source_ip="1.2.3.4", source_workload=None,
                         destination=svc, destination_workload=None, upstream="", method="GET",
                         path="/", authority="echo", protocol="http", status=status, flags="-",
                         duration_ms=dur, request_bytes=0, response_bytes=resp)


def test_metrics_are_aggregated_then_flushed():
    from prometheus_client import CollectorRegistry, generate_latest

    from shoal.waypoint.telemetry import AccessLog, Telemetry
    clock = [0.0]
    m = _Metrics()
    t = Telemetry(m, access_log=False, log=AccessLog(lambda b: None), clock=lambda: clock[0])
    for d in (0.3, 3.0, 3.0, 700.0):
        t.record(_record(dur=d))
    reg = CollectorRegistry()
    for metric in m.all():
        reg.register(metric)
    before = generate_latest(reg).decode()
    assert 'istio_requests_total{' not in before or ' 4.0' not in before
    clock[0] = 1.5
    t.record(_record(status=503))        # past FLUSH_INTERVAL: flushes everything
    text = generate_latest(reg).decode()
    ok = [ln for ln in text.splitlines() if ln.startswith("istio_requests_total{")
          and 'response_code="200"' in ln]
    assert ok and ok[0].endswith(" 4.0")
    buckets = {ln.split('le="')[1].split('"')[0]: float(ln.rsplit(" ", 1)[1])
               for ln in text.splitlines()
               if ln.startswith("istio_request_duration_milliseconds_bucket{")
               and 'response_code="200"' in ln}
    assert buckets["0.5"] == 1 and buckets["5.0"] == 3 and buckets["1000.0"] == 4
    t.flush()
    text = generate_latest(reg).decode()
    assert any('response_code="503"' in ln and ln.endswith(" 1.0") for ln in text.splitlines()
               if ln.startswith("istio_requests_total{"))


def test_access_log_batches_whole_lines(caplog):
    import json
    import logging

    from shoal.waypoint.telemetry import ACCESS_LOG_BATCH, AccessLog, access_fields
    caplog.set_level(logging.INFO, logger="shoal.access")
    writes: list[bytes] = []
    now = [1000.0]
    log = AccessLog(writes.append, clock=lambda: now[0])
    for _ in range(20):
        log.emit(access_fields(_record()))
    assert writes and all(len(w) <= ACCESS_LOG_BATCH and w.endswith(b"\n") for w in writes)
    log.flush()
    lines = [json.loads(x) for w in writes for x in w.splitlines()]
    assert len(lines) == 20 and lines[0]["scope"] == "access" and lines[0]["message"] == "request"
    assert lines[0]["time"] == "1970-01-01T00:16:40.000Z"
    caplog.set_level(logging.WARNING, logger="shoal.access")
    log.emit(access_fields(_record()))
    log.flush()
    assert sum(len(w.splitlines()) for w in writes) == 20     # silenced by the logger level


# Istio's default JSON access log format (meshConfig accessLogEncoding: JSON).
ISTIO_DEFAULT_KEYS = ("start_time", "method", "path", "protocol", "response_code",
                      "response_flags", "bytes_received", "bytes_sent", "duration",
                      "upstream_host", "user_agent", "x_forwarded_for", "request_id",
                      "authority", "route_name", "downstream_remote_address",
                      "response_code_details", "upstream_cluster", "requested_server_name",
                      "connection_termination_details", "downstream_local_address")


def test_access_log_has_istios_default_json_keys():
    import dataclasses

    from shoal.waypoint.telemetry import access_fields
    r = dataclasses.replace(_record(dur=12.7), start_time=0.25, user_agent="curl/8.0",
                            x_forwarded_for="10.0.0.9")
    f = access_fields(r)
    assert set(ISTIO_DEFAULT_KEYS) <= set(f)
    assert f["start_time"] == "1970-01-01T00:00:00.250Z" and f["duration"] == 12
    assert f["user_agent"] == "curl/8.0" and f["x_forwarded_for"] == "10.0.0.9"
    assert access_fields(_record())["user_agent"] == "-"     # absent: "-" as Envoy prints
    # Envoy's %PROTOCOL% and %RESPONSE_CODE_DETAILS%.
    assert f["protocol"] in ("HTTP/1.1", "HTTP/2")
    denied = dataclasses.replace(_record(), status=403, flags="RBAC", policy="ns/deny-get",
                                 upstream="")
    assert access_fields(denied)["response_code_details"] == \
        "rbac_access_denied_matched_policy[ns/deny-get]"


def test_new_traces_sampled_at_the_configured_rate():
    import random

    from shoal.waypoint.telemetry import is_sampled, traceparent, valid_traceparent
    rng = random.Random(7)
    tps = [traceparent(rng, 1.0) for _ in range(20000)]
    assert all(valid_traceparent(t) for t in tps)
    share = sum(map(is_sampled, tps)) / len(tps)
    assert 0.005 < share < 0.015                      # Istio's default: 1%
    assert not any(is_sampled(traceparent(rng, 0.0)) for _ in range(1000))
    assert all(is_sampled(traceparent(rng, 100.0)) for _ in range(1000))


def test_incoming_traceparent_keeps_trace_and_sampled_flag():
    import random

    from shoal.waypoint.telemetry import child_traceparent, is_sampled
    rng = random.Random(1)
    for flags in ("00", "01"):
        parent = f"00-{'a' * 32}-{'b' * 16}-{flags}"
        child = child_traceparent(parent, rng)
        assert child.split("-")[1] == "a" * 32 and child.split("-")[2] != "b" * 16
        assert is_sampled(child) is (flags == "01")
