"""waypoint.http1: the sans-IO HTTP/1.1 core, fed whole, byte by byte and in
random splits (h11's habit), plus limits and serializers."""

from __future__ import annotations

import random

import pytest

from shoal.waypoint import http1
from shoal.waypoint.http1 import (LAST_CHUNK, MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_REQUEST_LINE,
                            BodyReceived, H1ResponseParser, H1Server, MessageEnded,
                            ProtocolFailed, RequestReceived, ResponseReceived, TunnelData,
                            encode_chunk, serialize_request_head, serialize_response_head,
                            simple_response, strip_hop_by_hop)
from shoal.waypoint.message import RequestHead


def normalise(events):
    """Merge adjacent body/tunnel pieces so different splits compare equal."""
    out = []
    for e in events:
        if out and type(e) in (BodyReceived, TunnelData) and type(out[-1]) is type(e):
            out[-1] = type(e)(out[-1].data + e.data)
        else:
            out.append(e)
    return out


def feed(parser_factory, data: bytes, how: str, eof: bool = False):
    p = parser_factory()
    events = []
    if how == "whole":
        pieces = [data]
    elif how == "bytes":
        pieces = [data[i:i + 1] for i in range(len(data))]
    else:
        rng = random.Random(len(data))
        pieces, i = [], 0
        while i < len(data):
            n = rng.randint(1, 7)
            pieces.append(data[i:i + n])
            i += n
    for piece in pieces:
        events += p.receive_data(piece)
    if eof:
        events += p.receive_data(b"")
    return normalise(events)


HOW = ["whole", "bytes", "random"]

GET = b"GET /a/b?x=1 HTTP/1.1\r\nHost: echo:8080\r\nUser-Agent: t\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n")


@pytest.mark.parametrize("how", HOW)
def test_get(how):
    ev = feed(H1Server, GET, how)
    assert len(ev) == 2 and ev[1] == MessageEnded()
    r = ev[0]
    assert isinstance(r, RequestReceived)
    assert (r.head.method, r.head.target, r.head.path, r.head.query) == ("GET", "/a/b?x=1", "/a/b", "x=1")
    assert r.head.headers == [("Host", "echo:8080"), ("User-Agent", "t")]
    assert r.head.authority == "echo:8080"
    assert (r.http_version, r.keep_alive, r.upgrade, r.chunked, r.content_length) == \
        ("1.1", True, False, False, None)


@pytest.mark.parametrize("how", HOW)
def test_post_with_length(how):
    ev = feed(H1Server, POST, how)
    assert [type(e) for e in ev] == [RequestReceived, BodyReceived, MessageEnded]
    assert ev[0].content_length == 5 and ev[1].data == b"hello"


@pytest.mark.parametrize("how", HOW)
def test_chunked_body_is_decoded(how):
    ev = feed(H1Server, CHUNKED, how)
    assert ev[0].chunked and ev[1] == BodyReceived(b"hello world") and ev[2] == MessageEnded()


@pytest.mark.parametrize("how", HOW)
def test_pipelined_requests_in_order(how):
    ev = feed(H1Server, GET + POST + GET, how)
    kinds = [type(e).__name__ for e in ev]
    assert kinds == ["RequestReceived", "MessageEnded", "RequestReceived", "BodyReceived",
                     "MessageEnded", "RequestReceived", "MessageEnded"]
    assert [e.head.method for e in ev if isinstance(e, RequestReceived)] == ["GET", "POST", "GET"]


@pytest.mark.parametrize("how", HOW)
def test_upgrade_switches_to_opaque_bytes(how):
    data = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            b"\x81\x05GET / HTTP/1.1\r\n")
    ev = feed(H1Server, data, how)
    assert ev[0].upgrade and ev[1] == MessageEnded()
    assert ev[2] == TunnelData(b"\x81\x05GET / HTTP/1.1\r\n")


def test_connect_is_an_upgrade():
    ev = H1Server().receive_data(b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\nxyz")
    assert ev[0].upgrade and ev[-1] == TunnelData(b"xyz")


@pytest.mark.parametrize("data,keep", [
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
])
def test_keep_alive(data, keep):
    assert H1Server().receive_data(data)[0].keep_alive is keep


@pytest.mark.parametrize("data,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADER_COUNT + 1))
     + b"\r\n", 431),
    (b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n\r\n", 414),
])
@pytest.mark.parametrize("how", ["whole", "random"])
def test_errors_carry_status_and_stop_parsing(data, status, how):
    ev = feed(H1Server, data, how)
    failed = [e for e in ev if isinstance(e, ProtocolFailed)]
    assert failed and failed[0].status == status


def test_error_is_terminal():
    p = H1Server()
    assert isinstance(p.receive_data(b"GARBAGE\r\n\r\n")[-1], ProtocolFailed)
    assert p.receive_data(GET) == []


def test_head_that_never_ends_is_bounded():
    p = H1Server()
    p.receive_data(b"GET / HTTP/1.1\r\nX: ")
    out = []
    for _ in range(200):
        out += p.receive_data(b"a" * 4096)
        if out:
            break
    assert out and out[0].status == 431


def test_eof_mid_head_is_400_and_eof_when_idle_is_quiet():
    p = H1Server()
    p.receive_data(b"GET / HTTP/1.1\r\nHost")
    assert p.receive_data(b"")[0].status == 400
    q = H1Server()
    q.receive_data(GET)
    assert q.receive_data(b"") == []


# -- responses ---------------------------------------------------------------

RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc"
RESP_CHUNKED = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("data,status,body", [(RESP, 200, b"abc"), (RESP_CHUNKED, 201, b"abcde")])
def test_response(how, data, status, body):
    ev = feed(lambda: H1ResponseParser("GET"), data, how)
    assert isinstance(ev[0], ResponseReceived) and ev[0].head.status == status
    assert ev[1] == BodyReceived(body) and ev[2] == MessageEnded()


@pytest.mark.parametrize("how", HOW)
def test_close_delimited_response_ends_at_eof(how):
    ev = feed(lambda: H1ResponseParser("GET"), b"HTTP/1.1 200 OK\r\n\r\nuntil close", how, eof=True)
    assert ev[1] == BodyReceived(b"until close") and ev[-1] == MessageEnded()
    assert not ev[0].keep_alive


@pytest.mark.parametrize("method,data", [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
])
def test_bodiless_responses_end_at_the_head(method, data):
    ev = H1ResponseParser(method).receive_data(data)
    assert [type(e) for e in ev] == [ResponseReceived, MessageEnded]


@pytest.mark.parametrize("how", HOW)
def test_informational_then_final(how):
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    ev = feed(lambda: H1ResponseParser("POST"), data, how)
    assert [e.head.status for e in ev if isinstance(e, ResponseReceived)] == [100, 200]
    assert ev[-1] == MessageEnded()


def test_switching_protocols_keeps_tunnel_bytes():
    p = H1ResponseParser("GET")
    ev = p.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\n\r\n\x81\x01x")
    assert ev[0].head.status == 101 and p.upgraded == b"\x81\x01x"


@pytest.mark.parametrize("data", [b"NOT HTTP\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n"])
def test_malformed_response_raises(data):
    with pytest.raises(ValueError):
        H1ResponseParser("GET").receive_data(data)


def test_truncated_response_raises_at_eof():
    p = H1ResponseParser("GET")
    p.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ValueError):
        p.receive_data(b"")
    with pytest.raises(ValueError):
        H1ResponseParser("GET").receive_data(b"")


# -- serializers -----------------------------------------------------------------

def test_strip_hop_by_hop():
    h = [("Connection", "keep-alive, X-Private"), ("X-Private", "1"), ("Keep-Alive", "t=5"),
         ("Transfer-Encoding", "chunked"), ("TE", "trailers"), ("Upgrade", "ws"), ("X-Ok", "1")]
    assert strip_hop_by_hop(h) == [("X-Ok", "1")]
    kept = strip_hop_by_hop([("Connection", "Upgrade"), ("Upgrade", "websocket")], keep_upgrade=True)
    assert kept == [("Connection", "Upgrade"), ("Upgrade", "websocket")]


def test_serializers():
    head = RequestHead(method="GET", target="/x?y", headers=[])
    assert serialize_request_head(head, [("Host", "a")]) == b"GET /x?y HTTP/1.1\r\nHost: a\r\n\r\n"
    assert serialize_response_head(404, []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert serialize_response_head(299, []) == b"HTTP/1.1 299 \r\n\r\n"
    assert serialize_response_head(200, [], "Fine") == b"HTTP/1.1 200 Fine\r\n\r\n"
    assert encode_chunk(b"abc") == b"3\r\nabc\r\n" and encode_chunk(b"") == b""
    assert LAST_CHUNK == b"0\r\n\r\n"
    r = simple_response(403, b"RBAC: access denied", close=True)
    assert r.startswith(b"HTTP/1.1 403 Forbidden\r\n") and r.endswith(b"\r\n\r\nRBAC: access denied")
    assert b"connection: close" in r and b"content-length: 19" in r


def test_round_trip_through_our_own_parser():
    head = RequestHead(method="POST", target="/r", headers=[])
    wire = serialize_request_head(head, [("Host", "h"), ("Content-Length", "2")]) + b"ok"
    ev = H1Server().receive_data(wire)
    assert ev[0].head.target == "/r" and ev[1] == BodyReceived(b"ok")


@pytest.mark.parametrize("extra", [b"status\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
def test_bytes_after_the_response_mark_it_unclean(extra):
    p = H1ResponseParser("GET")
    ev = p.receive_data(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n" + extra)
    assert [type(e) for e in ev] == [ResponseReceived, MessageEnded]
    assert not p.clean
    q = H1ResponseParser("GET")
    q.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert q.clean
    q.receive_data(b"late")
    assert not q.clean


def test_a_reason_phrase_split_over_two_reads_is_whole():
    # llhttp hands the reason in two pieces; the second must not replace the first.
    p = H1ResponseParser("GET")
    assert p.receive_data(b"HTTP/1.1 503 Serv") == []
    head = p.receive_data(b"ice Unavailable\r\ncontent-length: 0\r\n\r\n")[0].head
    assert head.reason == "Service Unavailable"


def test_trailers_are_not_added_to_the_response_head():
    # A chunked body's trailers arrive after the head was reported (in the
    # same read, before the events are read): they must not join it.
    p = H1ResponseParser("GET")
    events = p.receive_data(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                            b"1\r\na\r\n0\r\nx-sum: 1\r\n\r\n")
    assert events[0].head.headers == [("transfer-encoding", "chunked")]
    assert [type(e).__name__ for e in events[1:]] == ["BodyReceived", "MessageEnded"]


def test_trailers_count_against_the_header_limit():
    p = H1ResponseParser("GET")
    p.receive_data(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n")
    with pytest.raises(ValueError):
        p.receive_data(b"".join(b"t%d: v\r\n" % i for i in range(MAX_HEADER_COUNT)) + b"\r\n")


def test_response_head_that_never_ends_is_refused_at_the_memory_bound():
    """An upstream sending one endless header value: httptools holds the
    value until it ends, so the bytes of an incomplete head are bounded as
    for requests (MAX_INCOMPLETE_HEAD_BYTES), and the caller answers 502."""
    p = H1ResponseParser("GET")
    start = b"HTTP/1.1 200 OK\r\nX: "
    p.receive_data(start)
    sent = len(start)
    with pytest.raises(ValueError, match="too large"):
        while sent <= 2 * http1.MAX_INCOMPLETE_HEAD_BYTES:
            sent += 4096
            p.receive_data(b"v" * 4096)
    assert http1.MAX_INCOMPLETE_HEAD_BYTES < sent <= http1.MAX_INCOMPLETE_HEAD_BYTES + 4096


def test_response_bound_counts_only_the_head():
    """A body, however long, and heads that do end are not held to it."""
    p = H1ResponseParser("GET")
    p.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n")
    p.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 20))
    for _ in range(256):
        p.receive_data(b"b" * 4096)
    assert p.clean
