"""gRPC message counting and status (byte by byte), and the OTLP
configuration the waypoint reads (flags, then OpenTelemetry's variables)."""

from __future__ import annotations

import pytest

from shoal.waypoint.grpcstats import MessageCounter, grpc_status, is_grpc
from shoal.waypoint.tracing import GRPC, HTTP_PROTOBUF, otlp_config, span_name


def frame(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


STREAM = frame(b"hello") + frame(b"") + frame(b"x" * 300, compressed=True) + frame(b"z")


def test_messages_counted_in_one_piece_and_byte_by_byte():
    whole = MessageCounter()
    whole.feed(STREAM)
    assert whole.count == 4
    one = MessageCounter()
    for i in range(len(STREAM)):
        one.feed(STREAM[i:i + 1])
    assert one.count == 4


def test_a_message_counts_from_its_first_byte():
    # Envoy's frame inspector: a stream cut mid-message still counts it.
    c = MessageCounter()
    c.feed(frame(b"abc")[:1])
    assert c.count == 1
    c.feed(frame(b"abc")[1:] + frame(b"defg")[:3])
    assert c.count == 2


def test_grpc_content_types():
    assert is_grpc("application/grpc") and is_grpc("application/grpc+proto")
    assert is_grpc("Application/GRPC; charset=utf-8".replace(" ", ""))
    assert not is_grpc("application/grpc-web") and not is_grpc("application/json")
    assert not is_grpc(None)


def test_grpc_status_from_trailers_then_headers_then_http_status():
    assert grpc_status([("grpc-status", "5")], [("grpc-status", "0")], 200) == "5"
    assert grpc_status(None, [("content-type", "application/grpc"), ("grpc-status", "7")], 200) == "7"
    # Envoy's httpToGrpcStatus for answers without a grpc-status.
    assert grpc_status(None, [], 503) == "14"
    assert grpc_status(None, [], 403) == "7"
    assert grpc_status(None, [], 404) == "12"
    assert grpc_status(None, [], 200) == "2"
    assert grpc_status(None, None, 0) == "14"


def test_otlp_config_from_flags_then_environment():
    assert otlp_config(env={}) is None
    assert otlp_config("http://c:4317", env={}) == otlp_config(
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert otlp_config(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}).protocol == GRPC
    # http/protobuf: /v1/traces is appended to the generic endpoint only.
    cfg = otlp_config(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/",
                           "OTEL_EXPORTER_OTLP_PROTOCOL": HTTP_PROTOBUF})
    assert cfg.endpoint == "http://c:4318/v1/traces" and cfg.protocol == HTTP_PROTOBUF
    cfg = otlp_config(env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/t",
                           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:1",
                           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": HTTP_PROTOBUF})
    assert cfg.endpoint == "http://c:4318/t"
    with pytest.raises(ValueError, match="protocol"):
        otlp_config("http://c:4317", "http/json", env={})
    with pytest.raises(ValueError, match="URL"):
        otlp_config("c:4317", env={})


def test_span_name_is_envoys_default_operation():
    assert span_name("reviews:9080", "reviews.default.svc.cluster.local") == \
        "reviews.default.svc.cluster.local:9080/*"
    assert span_name("10.0.0.1", "") == "10.0.0.1:80/*"
