"""gRPC facts for the waypoint's telemetry (pure): is a request gRPC, how
many length-prefixed messages crossed in each direction, and its status.

Istio's stats filter labels HTTP metrics with `grpc_response_status` (empty
for other requests) and counts `istio_request_messages_total` /
`istio_response_messages_total` for gRPC streams. Messages are counted as
Envoy's gRPC frame inspector does: a message counts when the first byte of
its 5-byte prefix (flag, 4-byte big-endian length) is seen, so a stream cut
off mid-message still counts the messages that started.
"""

from __future__ import annotations

from typing import Iterable

GRPC_CONTENT_TYPE = "application/grpc"   # also application/grpc+proto, +json...
PREFIX_LEN = 5

# Envoy's Grpc::Utility::httpToGrpcStatus: the status a gRPC client sees for
# an HTTP answer without grpc-status (a proxy's local reply, say).
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2
GRPC_OK = 0


def is_grpc(content_type: str | None) -> bool:
    """Envoy's Grpc::Common::isGrpcRequestHeaders test on the content type."""
    if not content_type:
        return False
    ct = content_type.lower()
    return ct == GRPC_CONTENT_TYPE or ct.startswith(GRPC_CONTENT_TYPE + "+") \
        or ct.startswith(GRPC_CONTENT_TYPE + ";")


def grpc_status(trailers: Iterable[tuple[str, str]] | None,
                headers: Iterable[tuple[str, str]] | None, http_status: int) -> str:
    """The response's gRPC status as Istio labels it: grpc-status from the
    trailers, else from the headers (a trailers-only answer), else derived
    from the HTTP status (200 without a status is UNKNOWN, as in Envoy)."""
    for block in (trailers, headers):
        for k, v in block or ():
            if k.lower() == "grpc-status" and v.strip().isdigit():
                return str(int(v))
    if http_status == 0:
        return str(14)          # no answer from upstream: UNAVAILABLE
    return str(HTTP_TO_GRPC.get(http_status, GRPC_UNKNOWN))


class MessageCounter:
    """Counts gRPC messages in one direction of a stream, fed in any chunks."""

    __slots__ = ("count", "_need", "_header", "_have")

    def __init__(self) -> None:
        self.count = 0
        self._need = 0          # payload bytes of the current message still to come
        self._header = bytearray()
        self._have = 0          # prefix bytes seen of the next message

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._need:
                take = min(self._need, n - i)
                self._need -= take
                i += take
                continue
            if self._have == 0:
                self.count += 1         # the flag byte: a message has started
            take = min(PREFIX_LEN - self._have, n - i)
            self._header += data[i:i + take]
            self._have += take
            i += take
            if self._have == PREFIX_LEN:
                self._need = int.from_bytes(self._header[1:5], "big")
                self._header.clear()
                self._have = 0
