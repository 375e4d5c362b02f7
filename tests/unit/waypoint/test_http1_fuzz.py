"""Hypothesis: the HTTP/1.1 core never raises on any input, and parses any
well-formed request identically however the bytes are split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.waypoint.http1 import (BodyReceived, H1ResponseParser, H1Server, MessageEnded,
                            ProtocolFailed, RequestReceived)

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 -_/.:;=", max_size=30).map(str.strip)
PATH = st.lists(TOKEN, max_size=4).map(lambda parts: "/" + "/".join(parts))


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [p for p in out if p]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_arbitrary_bytes_never_raise(data, cuts):
    p = H1Server()
    events = []
    for piece in splits(data, cuts):
        events += p.receive_data(piece)
    events += p.receive_data(b"")
    failed = [e for e in events if isinstance(e, ProtocolFailed)]
    assert len(failed) <= 1
    if failed:
        assert failed[0].status in (400, 414, 431) and events[-1] is failed[0]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_upstream_bytes_raise_only_valueerror(data, cuts):
    p = H1ResponseParser("GET")
    try:
        for piece in splits(data, cuts):
            p.receive_data(piece)
        p.receive_data(b"")
    except ValueError:
        pass


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), path=PATH,
       headers=st.lists(st.tuples(TOKEN.map(lambda t: "x-" + t), VALUE), max_size=6),
       body=st.binary(max_size=200), chunked=st.booleans(),
       cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_wellformed_request_any_split(method, path, headers, body, chunked, cuts):
    head = [f"{method} {path} HTTP/1.1", "Host: h"] + [f"{k}: {v}" for k, v in headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        wire_body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        wire_body = body
    wire = ("\r\n".join(head) + "\r\n\r\n").encode() + wire_body
    p = H1Server()
    events = []
    for piece in splits(wire + wire, cuts):       # two pipelined copies
        events += p.receive_data(piece)
    reqs = [e for e in events if isinstance(e, RequestReceived)]
    assert len(reqs) == 2 and events[-1] == MessageEnded()
    for r in reqs:
        assert (r.head.method, r.head.target) == (method, path)
        assert r.head.headers[1:1 + len(headers)] == [(k, v) for k, v in headers]
    got = b"".join(e.data for e in events if isinstance(e, BodyReceived))
    assert got == body + body
