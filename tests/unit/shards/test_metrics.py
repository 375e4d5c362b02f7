"""core.metrics: label dicts, Istio's names and buckets."""

import pytest

from shoal.core import metrics


def test_labels_default_to_unknown_and_extras_are_refused():
    m = metrics.istio()
    vals = m.values_for(m.tcp_opened, {"reporter": "source", "source_workload": "sleep"})
    names = list(metrics.TCP_LABELS)
    assert vals[names.index("reporter")] == "source"
    assert vals[names.index("source_workload")] == "sleep"
    assert vals[names.index("destination_service")] == "unknown"
    with pytest.raises(ValueError, match="unknown labels"):
        m.values_for(m.tcp_opened, {"colour": "red"})


def test_istio_label_set_and_http_extras():
    assert metrics.TCP_LABELS[0] == "reporter"
    for label in ("source_principal", "destination_principal", "destination_service_name",
                  "request_protocol", "response_flags", "connection_security_policy"):
        assert label in metrics.TCP_LABELS
    assert metrics.HTTP_LABELS[-2:] == ("response_code", "grpc_response_status")
    # Istio's stats filter: empty, not "unknown", on requests that are not gRPC.
    m = metrics.istio()
    values = dict(zip(metrics.HTTP_LABELS, m.values_for(m.requests, {"reporter": "waypoint"})))
    assert values["grpc_response_status"] == "" and values["source_workload"] == "unknown"
    assert list(metrics.DURATION_BUCKETS_MS) == sorted(metrics.DURATION_BUCKETS_MS)


def test_render_has_istio_names():
    m = metrics.istio()
    m.inc(m.tcp_opened, {"reporter": "destination"})
    m.observe(m.request_duration, {"reporter": "waypoint", "response_code": "200"}, 3.0)
    body, ctype = metrics.render()
    text = body.decode()
    assert ctype.startswith("text/plain")
    assert "istio_tcp_connections_opened_total{" in text
    assert 'istio_request_duration_milliseconds_bucket{' in text and 'le="5.0"' in text
