"""The plaintext listener's callback fast path (waypoint/fastpath.py) on loopback.

Real sockets, real backends: which requests it serves itself, how it hands
a request to the coroutine path and takes the connection back, the pooled
connection that went stale, an upstream cut mid-body, a client that leaves
mid-exchange, and one telemetry record per request. The behaviour tests in
test_waypoint_http.py run through it as well (and with SHOAL_WAYPOINT_FAST=0
through the coroutine path only).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from shoal.waypoint.fastpath import FAST_ENV, FastSession
from tests.helpers.wait import until
from tests.helpers.waypoint_mesh import (CutBackend, ThreadedBackend, access_lines,
                                         capture_access_log, echo_waypoint)
from tests.integration.waypoint.conftest import Client
from tests.integration.waypoint.test_waypoint_h1native import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def fast_path_on(monkeypatch):
    """These tests are about the fast path, whatever the environment says."""
    monkeypatch.setenv(FAST_ENV, "1")


def fast_sessions(wp) -> list[FastSession]:
    return [s.stream for s in wp.app.proxy.sessions if isinstance(s.stream, FastSession)]


async def test_keepalive_gets_are_served_without_a_coroutine(backends):
    async with echo_waypoint(backends("v1")) as wp:
        c = Client(wp.plaintext_port)

        def go():
            return [c.json(f"/k{i}", headers={"x-request-id": f"id-{i}"}) for i in range(5)]
        got = await asyncio.to_thread(go)
        served = sum(f.served_fast for f in fast_sessions(wp))
        c.close()
    assert [r.status for r, _ in got] == [200] * 5
    seen = [body["headers"] for _, body in got]
    assert [h["x-request-id"] for h in seen] == [f"id-{i}" for i in range(5)]
    assert all(h["traceparent"].startswith("00-") and h["x-forwarded-proto"] == "http"
               and h["host"] == "echo:8080" for h in seen)
    assert served == 5


async def test_a_body_goes_down_the_coroutine_path_and_the_connection_comes_back(backends):
    async with echo_waypoint(backends("v1")) as wp:
        c = Client(wp.plaintext_port)

        def go():
            a = c.json("/before")
            b = c.json("/upload", method="POST", body=b"payload")
            d = c.json("/after")
            return a, b, d
        a, b, d = await asyncio.to_thread(go)
        served = sum(f.served_fast for f in fast_sessions(wp))
        c.close()
    assert (a[0].status, b[0].status, d[0].status) == (200, 200, 200)
    assert b[1]["body"] == "payload" and d[1]["path"] == "/after"
    assert served == 2            # the POST was the coroutine path's


async def test_local_answers_and_pipelining_on_the_fast_path(backends):
    async with echo_waypoint(backends("v1")) as wp:
        reqs = (b"GET /a HTTP/1.1\r\nHost: nowhere:8080\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: echo:8080\r\n\r\n"
                b"GET /c HTTP/1.1\r\nHost: echo:8080\r\nConnection: close\r\n\r\n")

        def go():
            with socket.create_connection(("127.0.0.1", wp.plaintext_port), timeout=5) as s:
                s.sendall(reqs)
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
                return out
        out = await asyncio.to_thread(go)
    assert out.startswith(b"HTTP/1.1 404 ")          # unknown Host: Envoy's NR
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.index(b'"/b"') < out.index(b'"/c"')
    assert out.rstrip().endswith(b"}") and b"connection: close" in out.split(b'"/b"')[1]


class _StaleBackend(ThreadedBackend):
    """Answers the first request of each connection with keep-alive, then
    closes that connection when its second request arrives (an idle
    keep-alive the server dropped while our request was on its way)."""

    BODY = b"fresh"

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def serve(self, conn: socket.socket) -> None:
        for answered, _ in enumerate(self.request_heads(conn)):
            self.requests += 1
            if answered:
                return                       # close without answering
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(self.BODY), self.BODY))


async def test_a_stale_pooled_connection_is_replaced_once():
    backend = _StaleBackend()
    async with echo_waypoint(backend, close_backend=True) as wp:
        c = Client(wp.plaintext_port)
        got = await asyncio.to_thread(lambda: [c.get("/s")[1], c.get("/s")[1]])
        served = sum(f.served_fast for f in fast_sessions(wp))
        c.close()
    assert got == [b"fresh", b"fresh"]
    assert served == 2
    assert backend.connections == 2 and backend.requests == 3


async def test_upstream_cut_mid_body_resets_the_client_and_logs_ur(caplog):
    caplog.set_level(logging.INFO, logger="shoal.access")
    backend = CutBackend()
    async with echo_waypoint(backend, close_backend=True) as wp:
        written = capture_access_log(wp)

        def go():
            with socket.create_connection(("127.0.0.1", wp.plaintext_port), timeout=5) as s:
                s.sendall(b"GET /cut HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
                return read_all(s)
        out = await asyncio.to_thread(go)
        wp.app.proxy.telemetry.flush()
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"0123456789")
    assert [(f["path"], f["response_code"], f["response_flags"], f["bytes_sent"])
            for f in access_lines(written)] == [("/cut", 200, "UR", 10)]


async def test_a_client_resetting_mid_exchange_is_one_dc_record(backends, caplog):
    caplog.set_level(logging.INFO, logger="shoal.access")
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        written = capture_access_log(wp)
        reader, writer = await asyncio.open_connection("127.0.0.1", wp.plaintext_port)
        writer.write(b"GET /slow/300 HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
        await writer.drain()
        await until(lambda: any(f.exchange is not None for f in fast_sessions(wp)),
                    what="the request in flight upstream")
        writer.get_extra_info("socket").setsockopt(   # a reset, not a half-close
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

        def recorded():
            wp.app.proxy.telemetry.flush()
            return written
        await until(recorded, what="the access-log line")
        # The upstream connection was reset when the client left: the slow
        # answer has nowhere to go and makes no second record (closing the
        # app flushes whatever else there would be).
    assert [(f["path"], f["response_flags"]) for f in access_lines(written)] == [("/slow/300", "DC")]
