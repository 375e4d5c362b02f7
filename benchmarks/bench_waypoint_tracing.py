"""CPU cost on the request's path of exporting a sampled request's span
(pytest-benchmark): `Telemetry.record` for one request with no span export,
and for a sampled one whose span goes to the SDK's BatchSpanProcessor (the
processor's thread exports; an in-memory exporter here, so no network cost
lands in the measured loop or beside it).

    pytest benchmarks -o python_files='bench_*.py' --benchmark-enable -k tracing
"""

from __future__ import annotations

import logging

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shoal.core.records import Service
from shoal.waypoint.telemetry import RequestRecord, Telemetry
from shoal.waypoint.tracing import OtlpConfig, SpanExporter

SVC = Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
              vips=("10.96.0.1",))
RECORD = RequestRecord(
    source_principal="spiffe://cluster.local/ns/default/sa/curl", source_ip="10.244.0.9",
    source_workload=None, destination=SVC, destination_workload=None, upstream="10.244.1.2:8080",
    method="GET", path="/api/v1/items/42", authority="echo:8080", protocol="http", status=200,
    flags="-", duration_ms=1.7, request_bytes=0, response_bytes=1024, request_id="0123",
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    parent_span_id="00f067aa0ba902b7", start_time=1.8e9)


def _telemetry(spans):
    logging.getLogger("shoal.access").setLevel(logging.WARNING)   # the log is measured elsewhere
    return Telemetry(None, access_log=False, spans=spans)


def test_record_without_span_export(benchmark):
    t = _telemetry(None)
    benchmark(t.record, RECORD)


def test_record_with_span_export(benchmark):
    exporter = InMemorySpanExporter()
    spans = SpanExporter(OtlpConfig("http://127.0.0.1:4317"), canonical_service="waypoint",
                         namespace="default", exporter=exporter)
    t = _telemetry(spans)
    try:
        benchmark(t.record, RECORD)
    finally:
        spans.shutdown()
    assert exporter.get_finished_spans()     # the spans really went through the processor
