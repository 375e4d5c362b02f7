"""The waypoint's spans, exported over OTLP (OpenTelemetry's Python SDK).

Sampling is decided where the traceparent is written (forward.py): an
incoming traceparent's `sampled` flag is kept, a new trace is sampled at
`--trace-sampling` percent (Istio's default 1 %). Each sampled request
becomes one SERVER span whose span id is the parent id the waypoint sent
upstream, and whose parent is the caller's span, so the backend's spans
hang under the waypoint's as under Envoy's.

The span is built whole once the request ends (its ids are already on the
wire) and handed to a BatchSpanProcessor: the request's task only appends
to a bounded queue; encoding and the network happen on the processor's
thread. A full queue drops spans (the SDK counts them), never waits.

Configuration, as OpenTelemetry's SDKs and Istio's providers read it:
    --otlp-endpoint, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
        OTEL_EXPORTER_OTLP_ENDPOINT (for http/protobuf `/v1/traces` is added
        to this generic one, as the OTLP exporter spec says); none: no export.
    --otlp-protocol, else OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else
        OTEL_EXPORTER_OTLP_PROTOCOL: `grpc` (default, Istio's OpenTelemetry
        provider speaks gRPC to :4317) or `http/protobuf` (:4318).
    OTEL_SERVICE_NAME: the resource's service.name (default
        `<waypoint>.<namespace>`, Istio's `<canonical service>.<namespace>`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

GRPC, HTTP_PROTOBUF = "grpc", "http/protobuf"
PROTOCOLS = (GRPC, HTTP_PROTOBUF)
TRACES_PATH = "/v1/traces"
# Envoy marks a span as an error for 5xx answers (and for gRPC, non-OK).
SERVER_ERROR = 500
# BatchSpanProcessor bounds: the SDK's defaults (2048 queued, 512 per export,
# every 5 s) keep a burst of sampled requests in memory without ever
# blocking a request; a collector that is down costs at most the queue.
MAX_QUEUE = 2048
MAX_EXPORT_BATCH = 512
SCHEDULE_DELAY_MS = 5000
# Seconds one export may take before the SDK gives it up (OTLP's default 10 s).
EXPORT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    endpoint: str
    protocol: str = GRPC


def otlp_config(endpoint: str | None = None, protocol: str | None = None,
                env: Mapping[str, str] = os.environ) -> OtlpConfig | None:
    """The collector to export to, from flags then the OTEL_* variables;
    None when none is configured. Raises ValueError on an unknown protocol."""
    proto = (protocol or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
             or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or GRPC).strip()
    if proto not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {proto!r}: use one of {', '.join(PROTOCOLS)}")
    url = endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not url:
        url = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if url and proto == HTTP_PROTOBUF:
            url = url.rstrip("/") + TRACES_PATH
    if not url:
        return None
    if "://" not in url:
        raise ValueError(f"OTLP endpoint {url!r}: give a URL, e.g. http://collector:4317")
    return OtlpConfig(endpoint=url, protocol=proto)


def span_name(authority: str, hostname: str) -> str:
    """Envoy's default operation name in Istio: `<service host>:<port>/*`."""
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit():
        host, port = authority, "80"
    return f"{hostname or host}:{port}/*"


def span_attributes(r: Any, *, canonical_service: str, namespace: str) -> dict[str, Any]:
    """The tags Envoy's tracer writes on an Istio proxy's span (their names)."""
    attrs: dict[str, Any] = {
        "component": "proxy",
        "node_id": f"waypoint~{namespace}~{canonical_service}",
        "istio.canonical_service": canonical_service,
        "istio.namespace": namespace,
        "http.method": r.method,
        "http.url": f"http://{r.authority}{r.path}",
        "http.protocol": "HTTP/2" if r.protocol == "http2" else "HTTP/1.1",
        "http.status_code": str(r.status),
        "response_flags": r.flags,
        "request_size": str(r.request_bytes),
        "response_size": str(r.response_bytes),
        "upstream_address": r.upstream or "-",
        "peer.address": r.source_ip,
        "user_agent": r.user_agent or "-",
        "guid:x-request-id": r.request_id,
    }
    if r.destination is not None:
        port = r.authority.rpartition(":")[2] or "80"
        attrs["upstream_cluster"] = f"outbound|{port}||{r.destination.hostname}"
        attrs["upstream_cluster.name"] = attrs["upstream_cluster"]
    if r.grpc_status:
        attrs["grpc.status_code"] = r.grpc_status
    if r.status >= SERVER_ERROR or r.status == 0 or r.grpc_status not in ("", "0"):
        attrs["error"] = "true"
    return attrs


class SpanExporter:
    """Turns finished, sampled requests into spans for one OTLP collector."""

    def __init__(self, config: OtlpConfig, *, canonical_service: str, namespace: str,
                 exporter: Any = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        self._trace, self._span = trace, ReadableSpan     # looked up once, not per span
        self.canonical_service, self.namespace = canonical_service, namespace
        service = os.environ.get("OTEL_SERVICE_NAME") or f"{canonical_service}.{namespace}"
        self.resource = Resource.create({"service.name": service,
                                         "k8s.namespace.name": namespace})
        self.scope = InstrumentationScope("shoal.waypoint")
        self.processor = BatchSpanProcessor(
            exporter or _exporter(config), max_queue_size=MAX_QUEUE,
            max_export_batch_size=MAX_EXPORT_BATCH, schedule_delay_millis=SCHEDULE_DELAY_MS)

    def record(self, r: Any) -> None:
        """Queue the span of request `r` (its traceparent is sampled)."""
        t = self._trace
        SpanContext, TraceFlags, StatusCode = t.SpanContext, t.TraceFlags, t.StatusCode
        _, trace_hex, span_hex, flags = r.traceparent.split("-")
        trace_id, flags_i = int(trace_hex, 16), TraceFlags(int(flags, 16))
        context = SpanContext(trace_id, int(span_hex, 16), is_remote=False, trace_flags=flags_i)
        parent = (SpanContext(trace_id, int(r.parent_span_id, 16), is_remote=True,
                              trace_flags=flags_i) if r.parent_span_id else None)
        attrs = span_attributes(r, canonical_service=self.canonical_service,
                                namespace=self.namespace)
        start = int(r.start_time * 1e9)
        self.processor.on_end(self._span(
            name=span_name(r.authority, r.destination.hostname if r.destination else ""),
            context=context, parent=parent, resource=self.resource, attributes=attrs,
            kind=t.SpanKind.SERVER, instrumentation_scope=self.scope,
            status=t.Status(StatusCode.ERROR if "error" in attrs else StatusCode.UNSET),
            start_time=start, end_time=start + int(r.duration_ms * 1e6)))

    def shutdown(self) -> None:
        """Export what is queued, then stop the processor's thread (blocking:
        call from a thread when a loop is running)."""
        self.processor.shutdown()


def _exporter(config: OtlpConfig) -> Any:
    if config.protocol == HTTP_PROTOBUF:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=config.endpoint, timeout=EXPORT_TIMEOUT_S)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter)
    # http:// means a plaintext channel (the OTLP exporters' own rule).
    return GrpcExporter(endpoint=config.endpoint, insecure=config.endpoint.startswith("http://"),
                        timeout=EXPORT_TIMEOUT_S)
