"""A real OTLP trace receiver, as a collector runs it: gRPC
(`opentelemetry.proto.collector.trace.v1.TraceService/Export`, port 4317's
service) or HTTP/protobuf (`POST /v1/traces`), decoded with opentelemetry-proto.

    with OtlpReceiver("grpc") as rx:             # or "http/protobuf"
        ... rx.endpoint ...                      # URL to configure the exporter with
        spans = rx.wait_spans(1)                 # [Span protobuf], with their resource
"""

from __future__ import annotations

import http.server
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class ReceivedSpan:
    span: Any                   # opentelemetry.proto.trace.v1.Span
    resource: dict[str, str]    # resource attributes (string values)

    @property
    def attributes(self) -> dict[str, Any]:
        return {kv.key: _value(kv.value) for kv in self.span.attributes}


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


class OtlpReceiver:
    def __init__(self, protocol: str = "grpc") -> None:
        self.protocol = protocol
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._cond = threading.Condition()
        self._grpc = self._http = None

    def _take(self, req: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._cond:
            self.requests += 1
            for rs in req.resource_spans:
                res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    self.spans.extend(ReceivedSpan(s, res) for s in ss.spans)
            self._cond.notify_all()

    def __enter__(self) -> "OtlpReceiver":
        if self.protocol == "grpc":
            import grpc
            receiver = self

            class Service(trace_service_pb2_grpc.TraceServiceServicer):
                def Export(self, request, context):
                    receiver._take(request)
                    return trace_service_pb2.ExportTraceServiceResponse()

            self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._grpc)
            port = self._grpc.add_insecure_port("127.0.0.1:0")
            self._grpc.start()
            self.endpoint = f"http://127.0.0.1:{port}"
        else:
            receiver = self

            class Handler(http.server.BaseHTTPRequestHandler):
                def do_POST(self):
                    body = self.rfile.read(int(self.headers["content-length"]))
                    ok = (self.path == "/v1/traces"
                          and self.headers["content-type"] == "application/x-protobuf")
                    if ok:
                        req = trace_service_pb2.ExportTraceServiceRequest()
                        req.ParseFromString(body)
                        receiver._take(req)
                    out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                    self.send_response(200 if ok else 404)
                    self.send_header("content-type", "application/x-protobuf")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)

                def log_message(self, *args):
                    pass

            self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
            self.endpoint = f"http://127.0.0.1:{self._http.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        if self._grpc is not None:
            self._grpc.stop(None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def wait_spans(self, n: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.spans) >= n, timeout):
                raise TimeoutError(f"{len(self.spans)} spans received, wanted {n}")
            return list(self.spans)
