"""gRPC telemetry and OTLP spans of the waypoint, with real peers: grpcio
clients and server through the waypoint's h2c listener, and an OTLP
receiver (gRPC and HTTP/protobuf) decoding what the SDK's exporter sent."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import grpc
import pytest

from shoal.core import metrics as core_metrics
from shoal.core.records import ServicePort
from tests.helpers.grpc_backend import SERVICE, GrpcBackend
from tests.helpers.otlp_receiver import OtlpReceiver
from tests.helpers.waypoint_mesh import Mesh, loopback_ip, running_waypoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOST = "echo.default.svc.cluster.local"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def backend():
    b = GrpcBackend(loopback_ip()).start()
    yield b
    b.stop()


def grpc_mesh(backend) -> Mesh:
    mesh = Mesh()
    svc = mesh.service("echo", [backend])
    mesh.services[-1] = dataclasses.replace(
        svc, ports=(ServicePort(port=8080, target_port=8080, name="grpc", app_protocol="grpc"),))
    return mesh


def call(port: int, method: str, payload, *, traceparent: str | None = None):
    """One call through the waypoint's plaintext (h2c) listener, in a thread
    (grpcio's client blocks)."""
    def run():
        md = (("traceparent", traceparent),) if traceparent else None
        with grpc.insecure_channel(f"127.0.0.1:{port}",
                                   options=[("grpc.default_authority", f"{HOST}:8080")]) as ch:
            if method == "Chat":
                return list(ch.stream_stream(f"/{SERVICE}/Chat")(iter(payload), metadata=md,
                                                                  timeout=10))
            try:
                return ch.unary_unary(f"/{SERVICE}/{method}")(payload, metadata=md, timeout=10)
            except grpc.RpcError as e:
                return e.code()
    return asyncio.to_thread(run)


def series(text: str, name: str, **want: str) -> list[float]:
    """Values of `name` samples whose labels include `want`."""
    out = []
    for ln in text.splitlines():
        m = re.match(rf"{name}{{(.*)}} (\S+)$", ln)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in want.items()):
            out.append(float(m.group(2)))
    return out


async def test_grpc_status_label_and_message_counters(backend, backends):
    mesh = grpc_mesh(backend)
    http_svc = mesh.service("web", [backends("v1")])
    base = core_metrics.render()[0].decode()

    def delta(text, name, **want):
        return sum(series(text, name, **want)) - sum(series(base, name, **want))

    async with running_waypoint(mesh, plaintext=True) as wp:
        assert await call(wp.plaintext_port, "Unary", b"hello") == b"hello"
        assert await call(wp.plaintext_port, "Chat", [b"a", b"b", b"c"]) == \
            [b"a", b"b", b"c", b"done"]
        assert await call(wp.plaintext_port, "Missing", b"x") == grpc.StatusCode.NOT_FOUND
        from tests.integration.waypoint.conftest import Client
        c = Client(wp.plaintext_port)
        reply = await asyncio.to_thread(c.get, "/plain", host=f"{http_svc.hostname}:8080")
        assert reply[0].status == 200
        wp.app.proxy.telemetry.flush()
    text = core_metrics.render()[0].decode()
    common = dict(reporter="waypoint", destination_service=HOST)
    # Unary + Chat ended with grpc-status 0, Missing with 5 (NOT_FOUND).
    assert delta(text, "istio_requests_total", grpc_response_status="0", **common) == 2
    assert delta(text, "istio_requests_total", grpc_response_status="5", **common) == 1
    # Messages: 1 + 3 + 1 from the clients; 1 + 4 + 0 from the server.
    assert delta(text, "istio_request_messages_total", **common) == 5
    assert delta(text, "istio_response_messages_total", **common) == 5
    assert delta(text, "istio_response_messages_total", grpc_response_status="5", **common) == 0
    # A plain HTTP request: the label is empty and no message series exists.
    plain = dict(reporter="waypoint", destination_service=http_svc.hostname)
    assert delta(text, "istio_requests_total", grpc_response_status="", **plain) == 1
    assert series(text, "istio_request_messages_total", **plain) == []


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_spans_exported_over_otlp(backend, protocol):
    mesh = grpc_mesh(backend)
    with OtlpReceiver(protocol) as rx:
        endpoint = rx.endpoint + ("/v1/traces" if protocol != "grpc" else "")
        async with running_waypoint(mesh, plaintext=True, trace_sampling=0.0,
                                    otlp_endpoint=endpoint, otlp_protocol=protocol) as wp:
            # The caller's decision is kept: not sampled, then sampled.
            await call(wp.plaintext_port, "Unary", b"no", traceparent=f"00-{'1' * 32}-{CALLER_SPAN}-00")
            await call(wp.plaintext_port, "Unary", b"yes", traceparent=f"00-{TRACE}-{CALLER_SPAN}-01")
            # New traces at 0 %: none sampled.
            await call(wp.plaintext_port, "Unary", b"new")
        # Draining the app exported what was queued.
        spans = rx.wait_spans(1)
    assert len(spans) == 1, [s.span.name for s in spans]
    s = spans[0]
    up = backend.traceparents[1].split("-")
    assert up[1] == TRACE and up[3] == "01"
    assert s.span.trace_id.hex() == TRACE
    assert s.span.parent_span_id.hex() == CALLER_SPAN
    assert s.span.span_id.hex() == up[2]           # the backend's parent is the waypoint's span
    assert s.span.name == f"{HOST}:8080/*"
    assert s.span.kind == 2                        # SPAN_KIND_SERVER
    a = s.attributes
    assert a["http.method"] == "POST" and a["http.status_code"] == "200"
    assert a["grpc.status_code"] == "0" and "error" not in a
    assert a["upstream_cluster"] == f"outbound|8080||{HOST}"
    assert a["istio.canonical_service"] == "waypoint" and a["istio.namespace"] == "default"
    assert a["http.url"] == f"http://{HOST}:8080/{SERVICE}/Unary"
    assert s.resource["service.name"] == "waypoint.default"
    assert s.span.end_time_unix_nano > s.span.start_time_unix_nano


async def test_new_traces_sampled_at_the_configured_rate(backend):
    mesh = grpc_mesh(backend)
    with OtlpReceiver("grpc") as rx:
        async with running_waypoint(mesh, plaintext=True, trace_sampling=100.0,
                                    otlp_endpoint=rx.endpoint) as wp:
            await call(wp.plaintext_port, "Missing", b"x")
            # A request the waypoint answers itself (no route: 404) is traced too.
            from tests.integration.waypoint.conftest import Client
            reply = await asyncio.to_thread(Client(wp.plaintext_port).get, "/", host="nowhere:80")
            assert reply[0].status == 404
        spans = rx.wait_spans(2)
    local = next(x for x in spans if x.attributes["http.status_code"] == "404")
    assert local.attributes["response_flags"] == "NR" and local.span.parent_span_id == b""
    s = next(x for x in spans if x is not local)
    _, trace, span, flags = backend.traceparents[0].split("-")
    assert flags == "01" and s.span.trace_id.hex() == trace and s.span.span_id.hex() == span
    assert s.span.parent_span_id == b""            # a trace the waypoint started
    assert s.attributes["grpc.status_code"] == "5" and s.attributes["error"] == "true"
    assert s.span.status.code == 2                 # STATUS_CODE_ERROR
