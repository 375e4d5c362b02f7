"""HTTP/1.1 for the waypoint, sans-IO, on httptools (llhttp).

Why httptools: parsing one typical request costs about 1.4 µs with httptools
against about 36 µs for h11 (parse + serialize) on this machine class
(docs/bench/waypoint.md); the parser is the per-request hot path.

`H1Server` turns the bytes a client sends into events (`RequestReceived`,
`BodyReceived`, `MessageEnded`, `TunnelData`, `ProtocolFailed`);
`H1ResponseParser` does the same for one upstream response. Serializers at
the bottom build the bytes to send. Nothing here does I/O.

Rules of this module:
- Every limit is a named constant below with its reason.
- Any parse error ends the connection: the caller answers the status hint of
  `ProtocolFailed` (400, 414 or 431) with `Connection: close` and closes,
  as Envoy does.
- Pipelined requests are parsed and queued as events in order; the caller
  serves them one at a time and reads more bytes only when it needs the
  next event, so at most one read of pipelined requests is ever queued.
- After an Upgrade (or CONNECT) request every later byte is opaque
  (`TunnelData`); llhttp signals the switch and we stop parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import httptools

from shoal.waypoint.message import Headers, RequestHead, ResponseHead

# Envoy's default `max_request_headers_kb` is 60 KiB; beyond it Envoy answers
# 431, so clients tuned for Istio fit and oversized heads get the same code.
MAX_HEADER_BYTES = 60 * 1024
# Envoy's default `max_headers_count`; also bounds per-request work.
MAX_HEADER_COUNT = 100
# Longest request target; nginx's large_client_header_buffers default (8 KiB)
# is a common client ceiling, we allow twice that. Longer: 414.
MAX_REQUEST_LINE = 16 * 1024
# Memory backstop for a head that never completes (a header line without
# end is buffered inside llhttp before any callback): at most this many raw
# bytes may arrive while one head is incomplete (a request's or an
# upstream response's).
MAX_INCOMPLETE_HEAD_BYTES = 2 * MAX_HEADER_BYTES + 64 * 1024

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade"})


# --------------------------------------------------------------------------
# events

# Not frozen: made for every request, and a frozen dataclass sets each field
# through object.__setattr__ (about twice the cost). Treat it as read-only.
@dataclass(slots=True, kw_only=True)
class RequestReceived:
    head: RequestHead
    http_version: str            # "1.1" | "1.0"
    keep_alive: bool
    upgrade: bool                # Upgrade/CONNECT: the body is a tunnel
    chunked: bool
    content_length: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseReceived:
    head: ResponseHead
    http_version: str
    keep_alive: bool
    chunked: bool
    content_length: int | None


@dataclass(frozen=True, slots=True)
class BodyReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnded:
    pass


@dataclass(frozen=True, slots=True)
class TunnelData:
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolFailed:
    status: int                  # 400 | 414 | 431 (response status hint)
    reason: str


MESSAGE_ENDED = MessageEnded()


class _Limit(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------
# server side (requests)

class H1Server:
    """Parses a client's byte stream into request events."""

    __slots__ = ("_parser", "_events", "_url", "_headers", "_head_bytes", "_incomplete",
                 "_in_head", "_in_message", "_tunnel", "_failed", "_chunked", "_clen", "_host")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._events: list = []
        self._url = bytearray()
        self._headers: Headers = []
        self._head_bytes = 0
        self._incomplete = 0
        self._in_head = False
        self._in_message = False
        self._tunnel = False
        self._failed = False
        self._chunked = False
        self._clen: int | None = None
        self._host = ""

    @property
    def tunneling(self) -> bool:
        return self._tunnel

    @property
    def idle(self) -> bool:
        """Between messages, nothing partial held: the next bytes may be
        parsed elsewhere (the C head parser, h1native.py) without this
        parser missing them."""
        return not (self._in_message or self._tunnel or self._failed)

    def receive_data(self, data: bytes) -> list:
        """Feed bytes (b"" for EOF) and get the events they complete."""
        if self._failed:
            return []
        if self._tunnel:
            return [TunnelData(data)] if data else []
        events = self._events = []
        try:
            if data:
                self._parser.feed_data(data)
                if self._in_head:
                    self._incomplete += len(data)
                    if self._incomplete > MAX_INCOMPLETE_HEAD_BYTES:
                        raise _Limit(431, "request headers too large")
        except httptools.HttpParserUpgrade as up:
            self._tunnel = True
            offset = up.args[0] if up.args else len(data)
            rest = data[offset:]
            if rest:
                events.append(TunnelData(bytes(rest)))
        except _Limit as e:
            return self._fail(events, e.status, e.reason)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Limit):
                return self._fail(events, cause.status, cause.reason)
            return self._fail(events, 400, f"malformed request: {e}")
        except httptools.HttpParserError as e:
            return self._fail(events, 400, f"malformed request: {e}")
        if not data and self._in_head and (self._url or self._headers):
            return self._fail(events, 400, "connection closed in the middle of a request head")
        return events

    def _fail(self, events: list, status: int, reason: str) -> list:
        self._failed = True
        events.append(ProtocolFailed(status=status, reason=reason))
        return events

    # -- httptools callbacks ------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._in_message = True
        self._incomplete = 0
        self._url = bytearray()
        self._headers = []
        self._head_bytes = 0
        self._chunked = False
        self._clen = None
        self._host = ""

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_REQUEST_LINE:
            raise _Limit(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEADER_BYTES:
            raise _Limit(431, "request headers too large")
        if len(self._headers) >= MAX_HEADER_COUNT:
            raise _Limit(431, "too many request headers")
        n = name.decode("latin-1")
        v = value.decode("latin-1")
        ln = n.lower()
        if ln == "transfer-encoding" and "chunked" in v.lower():
            self._chunked = True
        elif ln == "content-length":
            self._clen = int(v) if v.strip().isdigit() else None
        elif ln == "host":
            self._host = v
        self._headers.append((n, v))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._incomplete = 0
        p = self._parser
        method = p.get_method().decode("latin-1")
        target = self._url.decode("latin-1")
        head = RequestHead(method=method, target=target, headers=self._headers,
                           authority=self._host)
        self._events.append(RequestReceived(
            head=head, http_version=p.get_http_version(), keep_alive=p.should_keep_alive(),
            upgrade=p.should_upgrade() or method == "CONNECT", chunked=self._chunked,
            content_length=self._clen))

    def on_body(self, body: bytes) -> None:
        self._events.append(BodyReceived(body))

    def on_message_complete(self) -> None:
        self._in_message = False
        self._events.append(MESSAGE_ENDED)


# --------------------------------------------------------------------------
# client side (one response)

_NO_BODY_STATUS = frozenset({204, 304})


class H1ResponseParser:
    """Parses the response to one request sent upstream.

    Make a new one per request: a response to HEAD (or a 204/304) ends at
    its head even when it announces a Content-Length.
    """

    __slots__ = ("_parser", "_events", "_headers", "_head_bytes", "_no_body", "_done",
                 "_chunked", "_clen", "_reason", "_head_seen", "_trailers", "_incomplete",
                 "upgraded", "clean")

    def __init__(self, request_method: str = "GET") -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._events: list = []
        self._headers: Headers = []
        self._head_bytes = 0
        self._no_body = request_method == "HEAD"
        self._done = False
        self._chunked = False
        self._clen: int | None = None
        self._reason = ""
        self._head_seen = False
        self._trailers = -1        # trailer fields seen (-1: still in the head)
        self._incomplete = 0       # bytes received while the head is incomplete
        self.upgraded = b""
        # False once bytes arrive after the response ended (e.g. a body sent
        # with a 204): the connection must not be reused.
        self.clean = True      # bytes after a 101 head (the tunnel's first bytes)

    def receive_data(self, data: bytes) -> list:
        """Feed bytes (b"" at EOF: ends a close-delimited body).

        Raises:
            ValueError: the upstream sent a malformed or oversized response
                (the caller answers 502).
        """
        events = self._events = []
        if self._done:
            if data:
                self.clean = False
            return events
        try:
            if data:
                self._parser.feed_data(data)
                if self._trailers < 0:
                    # httptools holds a header until it ends: as H1Server.
                    self._incomplete += len(data)
                    if self._incomplete > MAX_INCOMPLETE_HEAD_BYTES:
                        raise _Limit(502, "upstream response head too large")
        except httptools.HttpParserUpgrade as up:
            offset = up.args[0] if up.args else len(data)
            self.upgraded = bytes(data[offset:])
            self._done = True
        except (httptools.HttpParserError, _Limit) as e:
            if not self._done:
                raise ValueError(f"malformed upstream response: {e}") from None
            self.clean = False   # garbage after the end of the response
        if not data and not self._done:
            if self._head_seen and self._clen is None and not self._chunked:
                events.append(MESSAGE_ENDED)        # close-delimited body
                self._done = True
            else:
                raise ValueError("upstream closed before the response was complete")
        return events

    def on_message_begin(self) -> None:
        if self._done:
            self.clean = False   # a second response we never asked for
            return
        self._headers = []
        self._head_bytes = 0
        self._chunked = False
        self._clen = None
        self._reason = ""
        self._trailers = -1

    def on_status(self, status: bytes) -> None:
        # llhttp hands a reason split over two reads in two pieces.
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._done:
            return
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEADER_BYTES or \
                len(self._headers) + max(self._trailers, 0) >= MAX_HEADER_COUNT:
            raise _Limit(502, "upstream response headers too large")
        if self._trailers >= 0:
            # Trailers of a chunked body: counted against the limits, not
            # forwarded (the head they would join may be out already).
            self._trailers += 1
            return
        n = name.decode("latin-1")
        v = value.decode("latin-1")
        ln = n.lower()
        if ln == "transfer-encoding" and "chunked" in v.lower():
            self._chunked = True
        elif ln == "content-length":
            self._clen = int(v) if v.strip().isdigit() else None
        self._headers.append((n, v))

    def on_headers_complete(self) -> None:
        if self._done:
            self.clean = False
            return
        p = self._parser
        status = p.get_status_code()
        self._trailers = 0
        self._incomplete = 0
        head = ResponseHead(status=status, headers=self._headers, reason=self._reason)
        self._events.append(ResponseReceived(
            head=head, http_version=p.get_http_version(), keep_alive=p.should_keep_alive(),
            chunked=self._chunked, content_length=self._clen))
        if 100 <= status < 200 and status != 101:
            return                                  # informational: llhttp ends it itself
        self._head_seen = True
        if self._no_body or status in _NO_BODY_STATUS:
            self._events.append(MESSAGE_ENDED)
            self._done = True

    def on_body(self, body: bytes) -> None:
        if not self._done:
            self._events.append(BodyReceived(body))
        else:
            self.clean = False

    def on_message_complete(self) -> None:
        if self._done:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._events.append(MESSAGE_ENDED)      # end of the 1xx; a final response follows
            return
        self._events.append(MESSAGE_ENDED)
        self._done = True


# --------------------------------------------------------------------------
# serializers

STATUS_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    204: "No Content", 206: "Partial Content", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
    414: "URI Too Long", 421: "Misdirected Request", 426: "Upgrade Required",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}
# Precomputed status lines (uvicorn's trick: no formatting per response).
_STATUS_LINE = {code: f"HTTP/1.1 {code} {STATUS_REASONS.get(code, '')}\r\n".encode("latin-1")
                for code in range(100, 600)}

LAST_CHUNK = b"0\r\n\r\n"


def hop_by_hop_names(headers: Headers, keep_upgrade: bool = False) -> frozenset[str]:
    """The lower-case names not to forward (RFC 9110 7.6.1): the hop-by-hop
    ones and those that `Connection` names; Upgrade/Connection are kept for
    a protocol switch."""
    drop = _DROP_UPGRADE if keep_upgrade else HOP_BY_HOP
    named = None
    for k, v in headers:
        if k.lower() == "connection":
            named = {t.strip().lower() for t in v.split(",")} - {""}
    if named:
        drop = drop | (named - {"upgrade", "connection"} if keep_upgrade else named)
    return drop


def strip_hop_by_hop(headers: Headers, keep_upgrade: bool = False) -> Headers:
    """`headers` without those `hop_by_hop_names` gives."""
    drop = hop_by_hop_names(headers, keep_upgrade)
    return [(k, v) for k, v in headers if k.lower() not in drop]


_DROP_UPGRADE = HOP_BY_HOP - {"upgrade", "connection"}


def _header_block(headers: Headers) -> bytes:
    return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1")


def serialize_request_head(head: RequestHead, headers: Headers) -> bytes:
    line = f"{head.method} {head.target} HTTP/1.1\r\n".encode("latin-1")
    return line + _header_block(headers) + b"\r\n"


def serialize_response_head(status: int, headers: Headers, reason: str | None = None) -> bytes:
    if reason:
        line = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
    else:
        line = _STATUS_LINE.get(status) or f"HTTP/1.1 {status} \r\n".encode("latin-1")
    return line + _header_block(headers) + b"\r\n"


def encode_chunk(data: bytes) -> bytes:
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def simple_response(status: int, body: bytes = b"", *, close: bool = False,
                    extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """A complete local response (errors, redirects, 403)."""
    headers: Headers = [("content-length", str(len(body)))]
    if body:
        headers.insert(0, ("content-type", "text/plain"))
    headers.extend(extra)
    if close:
        headers.append(("connection", "close"))
    return serialize_response_head(status, headers) + body
