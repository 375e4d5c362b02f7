"""A real grpcio server for waypoint tests (raw-bytes messages, no codegen).

    b = GrpcBackend("127.0.0.1").start()
    /test.Echo/Unary    answers the request bytes
    /test.Echo/Chat     answers each request message, then one more (b"done")
    /test.Echo/Missing  aborts with NOT_FOUND
Each call's `traceparent` metadata is kept in `b.traceparents`.
"""

from __future__ import annotations

from concurrent import futures

import grpc

SERVICE = "test.Echo"
WORKERS = 4         # the tests make a few calls at a time


class GrpcBackend:
    def __init__(self, host: str) -> None:
        self.host = host
        self.traceparents: list[str] = []

    def _seen(self, context) -> None:
        md = dict(context.invocation_metadata())
        self.traceparents.append(md.get("traceparent", ""))

    def _unary(self, request: bytes, context) -> bytes:
        self._seen(context)
        return request

    def _chat(self, requests, context):
        self._seen(context)
        for r in requests:
            yield r
        yield b"done"

    def _missing(self, request: bytes, context) -> bytes:
        self._seen(context)
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def start(self) -> "GrpcBackend":
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Chat": grpc.stream_stream_rpc_method_handler(self._chat),
            "Missing": grpc.unary_unary_rpc_method_handler(self._missing),
        }),))
        self.port = self.server.add_insecure_port(f"{self.host}:0")
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(None)
