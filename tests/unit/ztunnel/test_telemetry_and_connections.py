"""Istio TCP labels, the access log line, and the live-connection re-check."""

from __future__ import annotations

from shoal.core.records import Authorization, Rule, Source
from tests.unit.ztunnel.conftest import CLIENT, ECHO, SERVER_A, make_view
from shoal.ztunnel import telemetry
from shoal.ztunnel.connections import LATE_REJECTION, ConnectionManager
from shoal.ztunnel.inbound import ConnInfo


def meta(**kw):
    base = dict(reporter="destination", src_addr="10.0.0.1:40000", dst_addr="10.0.1.1:8080",
                hbone_addr="10.0.1.1:8080", src_workload=CLIENT, src_identity=CLIENT.identity,
                dst_workload=SERVER_A, dst_identity=SERVER_A.identity, dst_service=ECHO,
                mtls=True)
    base.update(kw)
    return telemetry.ConnectionMeta(**base)


def test_labels_have_istio_names_and_values():
    labels = telemetry.tcp_labels(meta())
    assert tuple(labels) == telemetry.TCP_LABELS
    assert labels["reporter"] == "destination"
    assert labels["source_workload"] == "client"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/sleep"
    assert labels["destination_service"] == "echo.default.svc.cluster.local"
    assert labels["destination_service_name"] == "echo"
    assert labels["destination_workload_namespace"] == "default"
    assert labels["request_protocol"] == "tcp"
    assert labels["response_flags"] == "-"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["destination_cluster"] == "Kubernetes"


def test_missing_values_are_unknown_and_plaintext_is_unknown_security():
    labels = telemetry.tcp_labels(meta(src_workload=None, src_identity="", dst_service=None,
                                       mtls=False), response_flags="DENY")
    assert labels["source_workload"] == "unknown" and labels["source_principal"] == "unknown"
    assert labels["destination_service"] == "unknown"
    assert labels["connection_security_policy"] == "unknown"
    assert labels["response_flags"] == "DENY"


def test_access_log_fields():
    f = telemetry.access_fields(meta(reporter="source"), bytes_sent=10, bytes_recv=20,
                                duration=0.0134)
    assert f == {"src.addr": "10.0.0.1:40000", "src.workload": "client",
                 "src.namespace": "default", "src.identity": CLIENT.identity,
                 "dst.addr": "10.0.1.1:8080", "dst.hbone_addr": "10.0.1.1:8080",
                 "dst.service": "echo.default.svc.cluster.local", "dst.workload": "server-a",
                 "dst.namespace": "default", "dst.identity": SERVER_A.identity,
                 "direction": "outbound", "bytes_sent": 10, "bytes_recv": 20,
                 "duration": "13ms"}
    f = telemetry.access_fields(meta(), bytes_sent=0, bytes_recv=0, duration=1, error="denied")
    assert f["direction"] == "inbound" and f["error"] == "denied"


def test_policy_change_closes_now_denied_connections():
    cm = ConnectionManager()
    closed = []
    allowed = ConnInfo(src_identity="spiffe://cluster.local/ns/default/sa/ok", src_ip="10.0.0.1",
                       dst_ip="10.0.1.1", dst_port=8080)
    doomed = ConnInfo(src_identity=CLIENT.identity, src_ip="10.0.0.1", dst_ip="10.0.1.1",
                      dst_port=8080)
    cm.register("10.0.1.1", allowed, lambda r: closed.append(("ok", r)))
    cm.register("10.0.1.1", doomed, lambda r: closed.append(("doomed", r)))
    assert cm.observe(make_view()) == []             # first generation: nothing to do
    deny = Authorization(name="deny-sleep", namespace="default", scope="NAMESPACE",
                         action="DENY", rules=(Rule(from_=(Source(
                             principals=("cluster.local/ns/default/sa/sleep",)),)),))
    v2 = make_view([deny])
    v2._generation = 2
    out = cm.observe(v2)
    assert [c for c, _ in out] == [doomed]
    assert closed[0][0] == "doomed" and closed[0][1].startswith(LATE_REJECTION)
    assert "default/deny-sleep" in closed[0][1]
    assert len(cm) == 1
    assert cm.observe(v2) == []                      # same generation: no re-check


def test_baggage_header_like_istio():
    assert telemetry.baggage(SERVER_A) == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.pod.name=server-a,"
        "service.name=server-a,service.version=latest")
    assert telemetry.baggage(None) is None
