"""Per-request state, written as the pipeline goes and read once by
telemetry, and the waypoint's own answers (403, 404, 503...)."""

from __future__ import annotations

from typing import Any, Sequence

from shoal.waypoint.downstream import Downstream, ResponseSink
from shoal.waypoint.grpcstats import MessageCounter
from shoal.waypoint.message import RequestHead

RBAC_DENIED = b"RBAC: access denied"
NO_HEALTHY_UPSTREAM = b"no healthy upstream"
NO_ROUTE = b"no route"


class RequestState:
    """One request as telemetry sees it (plain slots: written as we go)."""
    __slots__ = ("down", "head", "t0", "authority", "target", "backend", "upstream", "status",
                 "flags", "request_bytes", "response_bytes", "request_id", "traceparent",
                 "route", "policy", "upstream_workload", "backend_port", "parent_span",
                 "grpc_in", "grpc_out", "grpc_status")

    def __init__(self, *, down: Downstream, head: RequestHead, t0: float) -> None:
        self.down, self.head, self.t0 = down, head, t0
        self.authority = ""
        self.target: Any = None
        self.backend: Any = None
        self.backend_port = 0
        self.upstream = ""
        self.upstream_workload: Any = None   # the chosen endpoint's pod: destination_* labels
        self.status = 0
        self.flags = "-"
        self.request_bytes = self.response_bytes = 0
        self.request_id = self.traceparent = self.route = self.policy = ""
        self.parent_span = ""                # the caller's span id (incoming traceparent)
        # gRPC requests only: message counters (client -> upstream, back) and
        # the response's grpc-status once seen.
        self.grpc_in: MessageCounter | None = None
        self.grpc_out: MessageCounter | None = None
        self.grpc_status = ""


async def local_reply(st: RequestState, sink: ResponseSink, status: int, body: bytes,
                      flags: str, extra: Sequence[tuple[str, str]] = ()) -> bool:
    """Answer the request ourselves (Envoy's local reply) with response `flags`.
    Returns False when the client connection must close."""
    st.status, st.flags = status, flags
    st.response_bytes = len(body)
    return await sink.local(status, body, list(extra))
