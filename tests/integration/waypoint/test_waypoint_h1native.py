"""The fast path with its heads in C (h1native.py) against the same fast path
on the Python parsers (SHOAL_NATIVE=0's), on real sockets: one scripted
client conversation through the waypoint to a scripted backend, run once
each way in the same process. The client must receive the same bytes, the
backend the same bytes (trace span ids aside: they are random), and the
telemetry the same records (access-log fields and metric labels, timings
aside).
"""

from __future__ import annotations

import asyncio
import re
import socket

import pytest

from shoal.waypoint import fastexchange, fastpath
from shoal.waypoint.fastpath import FAST_ENV, FastSession
from shoal.waypoint.h1native import native
from shoal.waypoint.http1 import H1ResponseParser, MessageEnded
from shoal.waypoint.planpath import PLANS_ENV
from shoal.waypoint.telemetry import access_fields, labels_for
from tests.helpers.waypoint_mesh import ScriptedBackend, recorded_conversation

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60),
              pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")]

# Above _h1.c's MAX_RAW_HEAD (16 KiB), below a 256 KiB socket read.
LARGE_BODY = 200 * 1024
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# (request bytes, the backend's answer as the parts it sends, pausing
# between them so they arrive as separate reads; close after it?)
SCRIPT = [
    ("GET /plain", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: b\r\n\r\nhello"], False),
    ("GET /chunked", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                      b"lo\r\n3\r\nabc\r\n", b"0\r\n\r\n"], False),
    ("GET /split-head", [b"HTTP/1.1 200 Al", b"l Good\r\nContent-Le",
                         b"ngth: 2\r\n\r\nok"], False),
    ("GET /hop", [b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n"
                  b"Keep-Alive: timeout=5\r\nX-Public: 2\r\nContent-Length: 1\r\n\r\nz"], False),
    ("GET /sized-zero", [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], False),
    ("GET /no-content", [b"HTTP/1.1 204 No Content\r\n\r\n"], False),
    ("GET /continue", [b"HTTP/1.1 100 Continue\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"], False),
    ("GET /error", [b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"], False),
    ("GET /trailers", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n"
                       b"X-Sum: 1\r\n\r\n"], False),
    ("GET /head-only", [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", b"body"], False),
    # One write larger than the head bytes C keeps for a fallback: the
    # waypoint's first read may hold the head and most of the body (how
    # much arrives per read is the kernel's; test_h1native.py makes it one).
    ("GET /large", [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % LARGE_BODY
                    + b"L" * LARGE_BODY], False),
    ("GET /eof-delimited", [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil", b" eof"],
     True),
    ("GET /cut", [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"], True),
]
# How long the backend waits between the parts of one answer, so they are
# separate reads at the waypoint (the comparison does not depend on it:
# chunked bodies are compared re-chunked, same_chunking; it only makes
# split heads and bodies likely).
PART_GAP_S = 0.02


def converse(port: int) -> list[bytes]:
    """SCRIPT's requests on one keep-alive connection (a new one after the
    backend's close-delimited answer), then hostile ones on their own: what
    the client read for each."""
    got = []
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    for i, (line, _, _) in enumerate(SCRIPT):
        version = "1.0" if line.endswith("/sized-zero") else "1.1"
        extra = "Content-Length: 0\r\nConnection: keep-alive\r\n" if version == "1.0" else ""
        s.sendall(f"{line} HTTP/{version}\r\nHost: echo:8080\r\nX-Request-Id: r{i}\r\n"
                  f"traceparent: {TP}\r\nUser-Agent: diff\r\n{extra}\r\n".encode())
        got.append(read_response(s))
    s.close()
    for bad in (b"GET / HTTP/1.1\r\nHost: echo:8080\r\nContent-Length: 0\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"GET /x HTTP/9.9\r\nHost: echo:8080\r\n\r\n",
                b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: echo:8080\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: echo:8080\r\nX: " + b"v" * 70000 + b"\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as h:
            h.sendall(bad)
            got.append(read_all(h))
    return got


def read_response(s: socket.socket) -> bytes:
    """One response's bytes (to its end, or to EOF / reset)."""
    p, raw = H1ResponseParser("GET"), b""
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        raw += data
        try:
            events = p.receive_data(data)
        except ValueError:
            return raw
        if not data or any(type(e) is MessageEnded for e in events):
            if b" 100 Continue" in raw.split(b"\r\n", 1)[0] and data and \
                    raw.count(b"HTTP/1.1 ") < 2:
                p = H1ResponseParser("GET")    # the 1xx ended; the answer follows
                continue
            return raw


def read_all(s: socket.socket) -> bytes:
    """Every byte until the peer closes or resets the connection
    (socket.timeout: it did neither)."""
    raw = b""
    try:
        while data := s.recv(65536):
            raw += data
    except ConnectionResetError:
        pass
    return raw


def same_chunking(raw: bytes) -> bytes:
    """A response with its chunked body re-chunked as one chunk: both
    paths frame each upstream read as one chunk, and how the backend's
    parts fall into reads is the kernel's (one read on a loaded machine)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return raw
    data, end = b"", b"<cut>"
    while body:
        size, crlf, rest = body.partition(b"\r\n")
        n = int(size, 16) if crlf and size.strip() else -1
        if n < 0 or len(rest) < n + 2:
            break
        if n == 0:
            end = b"<end>" + rest
            break
        data, body = data + rest[:n], rest[n + 2:]
    return head + sep + b"%x\r\n" % len(data) + data + end


class Counting:
    """The C module, counting the heads it parsed and the responses it framed."""

    def __init__(self) -> None:
        self.parsed = self.responses = 0

    def __getattr__(self, name):
        return getattr(native, name)

    def parse_request(self, data):
        t = native.parse_request(data)
        self.parsed += t is not None
        return t

    def Response(self, *args):      # noqa: N802 (the C type's name)
        self.responses += 1
        return native.Response(*args)


async def run_once(monkeypatch, use_native: bool):
    counting = Counting()
    monkeypatch.setattr(fastpath, "native", counting if use_native else None)
    monkeypatch.setattr(fastexchange, "native", counting if use_native else None)
    monkeypatch.setattr(FastSession, "native_h1", use_native)
    backend = ScriptedBackend([(parts, close) for _, parts, close in SCRIPT], PART_GAP_S)
    records: list = []
    got = await recorded_conversation(monkeypatch, backend, converse, records)
    upstream = [re.sub(rb"(traceparent: 00-[0-9a-f]{32}-)[0-9a-f]{16}", rb"\1<span>", h)
                for h in backend.received]
    timeless = {"start_time", "duration", "duration_ms"}

    def same_run(v):
        """What differs between two runs by construction: the random span
        id, the backend's port, the service VIP each mesh is given."""
        if not isinstance(v, str):
            return v
        v = re.sub(r"^(00-[0-9a-f]{32}-)[0-9a-f]{16}", r"\1<span>", v)
        v = v.replace(f"127.0.0.1:{backend.port}", "<backend>")
        return re.sub(r"^10\.96\.\d+\.\d+:", "<vip>:", v)
    telemetry = [({k: same_run(v) for k, v in access_fields(r).items() if k not in timeless},
                  {k: same_run(v) for k, v in labels_for(r).items()}) for r in records]
    return got, upstream, telemetry, counting


async def test_c_heads_and_python_heads_give_the_same_bytes_and_records(monkeypatch):
    monkeypatch.setenv(FAST_ENV, "1")
    # The heads alone (plans, which parse in plan.c, have their own test:
    # test_waypoint_plans.py).
    monkeypatch.setenv(PLANS_ENV, "0")
    c = await run_once(monkeypatch, True)
    py = await run_once(monkeypatch, False)
    got, upstream, telemetry, counting = c
    # Every scripted request's head and response went through C (those C
    # hands back, the 204 and the 100, included), none on the Python run.
    assert (counting.parsed, counting.responses) == (len(SCRIPT), len(SCRIPT))
    assert (py[3].parsed, py[3].responses) == (0, 0)
    assert [same_chunking(g) for g in got] == [same_chunking(g) for g in py[0]]
    assert upstream == py[1]
    assert telemetry == py[2]
    # The conversation reached what it is meant to: every scripted answer,
    # the cut (UR) and each hostile request's own status.
    assert len(upstream) == len(SCRIPT)
    assert got[0].endswith(b"\r\n\r\nhello") and b"x-private" not in got[3].lower()
    assert [t[0]["response_flags"] for t in telemetry][len(SCRIPT) - 1] == "UR"
    assert [g.split(b"\r\n", 1)[0] for g in got[len(SCRIPT):]] == [
        b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 414 URI Too Long", b"HTTP/1.1 431 Request Header Fields Too Large"]
