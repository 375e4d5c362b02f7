"""How one response is framed for an HTTP/1.x client (sans-IO).

The same rules serve the coroutine path (`server._Sink`) and the callback
fast path (`fastpath.py`): each method returns the bytes to write, nothing
here does I/O.

- A response of unknown length goes chunked to an HTTP/1.1 client; an
  HTTP/1.0 client gets it close-delimited (`close_after`).
- While the proxy drains, every response says `connection: close` and the
  connection closes after it (Envoy's drain).
- The head is held back and sent with the first body bytes (or the end),
  so a small response leaves in one write.
"""

from __future__ import annotations

from shoal.waypoint.http1 import (LAST_CHUNK, RequestReceived, encode_chunk,
                                  serialize_response_head, simple_response)
from shoal.waypoint.message import Headers


class ResponseFramer:
    """Frames one response to `req` (see the module docstring)."""

    __slots__ = ("req", "draining", "chunked", "close_after", "_head", "_trailers")

    def __init__(self, req: RequestReceived, draining: bool) -> None:
        self.req = req
        self.draining = draining
        self.chunked = False
        self.close_after = False
        self._head = b""
        self._trailers = b""

    def informational(self, status: int) -> bytes:
        """A 1xx to pass on: only `100 Continue`, and only to HTTP/1.1."""
        if status == 100 and self.req.http_version == "1.1":
            return serialize_response_head(100, [])
        return b""

    def start(self, status: int, headers: Headers, *, content_length: int | None,
              reason: str = "", no_body: bool = False) -> None:
        """Build the head (held until `body` or `end`)."""
        if status == 101:
            self._head = serialize_response_head(101, headers, reason)
            return
        req = self.req
        if not no_body and content_length is None:
            if req.http_version == "1.1":
                headers = headers + [("transfer-encoding", "chunked")]
                self.chunked = True
            else:
                self.close_after = True
        if self.draining:
            self.close_after = True    # Envoy's drain: close after this response
        if not req.keep_alive or self.close_after:
            headers = headers + [("connection", "close")]
        elif req.http_version == "1.0":
            headers = headers + [("connection", "keep-alive")]
        self._head = serialize_response_head(status, headers, reason)

    def take_head(self) -> bytes:
        head, self._head = self._head, b""
        return head

    def body(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire (the held head first)."""
        if self.chunked:
            data = encode_chunk(data)
        if self._head:
            data, self._head = self._head + data, b""
        return data

    def trailers(self, headers: Headers) -> None:
        """Trailers from an HTTP/2 upstream: sent as chunked trailers
        (RFC 9112 7.1.2); a sized or HTTP/1.0 response has no room for them."""
        if self.chunked:
            self._trailers = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")

    def end(self) -> bytes:
        """What is left to write once the body is complete."""
        tail = (b"0\r\n" + self._trailers + b"\r\n" if self._trailers else LAST_CHUNK) \
            if self.chunked else b""
        if self._head:
            tail, self._head = self._head + tail, b""
        return tail

    def local(self, status: int, body: bytes, extra: Headers) -> tuple[bytes, bool]:
        """A whole response made by the waypoint: (bytes, keep the connection)."""
        req = self.req
        close = not req.keep_alive or req.upgrade or self.draining
        return simple_response(status, body, close=close, extra=extra), not close
