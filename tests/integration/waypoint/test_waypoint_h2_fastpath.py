"""HTTP/2 clients on the callback fast path (waypoint/h2fastpath.py), on loopback.

A real h2 client on a real socket (h2c prior knowledge on the plaintext
listener), real backends: which streams are served from callbacks, flow
control against a client with a tiny window, the waypoint's own answers,
a request body on the same connection (the task per stream), a client
resetting a stream mid-exchange, and the same answers with
SHOAL_WAYPOINT_FAST=0 (the task per stream for everything).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from shoal.waypoint import h2fastpath
from shoal.waypoint.fastexchange import FAST_ENV
from tests.helpers.wait import until
from tests.helpers.waypoint_mesh import (CutBackend, access_lines, capture_access_log,
                                         echo_waypoint, flushed_access_lines)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(params=["fast", "coroutine"])
def path(request, monkeypatch):
    monkeypatch.setenv(FAST_ENV, "1" if request.param == "fast" else "0")
    return request.param


class H2Client:
    """A blocking h2 client (prior knowledge) on one connection."""

    def __init__(self, port: int, window: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.sock.sendall(self.h2.data_to_send())
        self.got: dict[int, dict] = {}

    def start(self, path: str, *, method: str = "GET", authority: str = "echo:8080",
              body: bytes | None = None) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"),
                                   (":authority", authority)], end_stream=body is None)
        if body is not None:
            self.h2.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        self.got[sid] = {"headers": None, "body": b"", "ended": False, "reset": False,
                         "head_ended": False}
        return sid

    def reset(self, sid: int) -> None:
        self.h2.reset_stream(sid)
        self.sock.sendall(self.h2.data_to_send())
        self.got[sid]["reset"] = True

    def wait(self, sids) -> None:
        while not all(self.got[s]["ended"] or self.got[s]["reset"] for s in sids):
            data = self.sock.recv(65536)
            assert data, "the waypoint closed the connection"
            for ev in self.h2.receive_data(data):
                r = self.got.get(getattr(ev, "stream_id", 0))
                if isinstance(ev, h2.events.ResponseReceived):
                    r["headers"] = dict(ev.headers)
                    r["head_ended"] = ev.stream_ended is not None
                elif isinstance(ev, h2.events.DataReceived):
                    r["body"] += ev.data
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    r["ended"] = True
                elif isinstance(ev, h2.events.StreamReset):
                    r["reset"], r["code"] = True, ev.error_code
            if out := self.h2.data_to_send():
                self.sock.sendall(out)

    def get(self, *paths, **kw) -> list[dict]:
        sids = [self.start(p, **kw) for p in paths]
        self.wait(sids)
        return [self.got[s] for s in sids]

    def close(self) -> None:
        self.sock.close()


def served_fast(before: set) -> int:
    """Requests served from callbacks by connections made since `before`
    (a snapshot of h2fastpath.LIVE: it keeps older ones from going away)."""
    return sum(f.served_fast for f in h2fastpath.LIVE if f not in before)


def status(r: dict) -> int:
    return int(r["headers"][b":status"])


async def test_bodyless_requests_are_served_from_callbacks(backends, path):
    async with echo_waypoint(backends("v1")) as wp:
        before = set(h2fastpath.LIVE)
        c = H2Client(wp.plaintext_port)
        got = await asyncio.to_thread(c.get, *[f"/k{i}" for i in range(20)])
        served = served_fast(before)
        c.close()
    assert [status(r) for r in got] == [200] * 20
    bodies = [json.loads(r["body"]) for r in got]
    assert [b["path"] for b in bodies] == [f"/k{i}" for i in range(20)]
    assert len({b["headers"]["x-request-id"] for b in bodies}) == 20
    assert all(b["headers"]["host"] == "echo:8080" and b["headers"]["traceparent"]
               for b in bodies)
    assert all(r["headers"][b"content-type"] == b"application/json"
               and b"connection" not in r["headers"] for r in got)
    assert served == (20 if path == "fast" else 0)


async def test_a_tiny_client_window_gets_the_whole_body_as_it_opens(backends, path):
    async with echo_waypoint(backends("v1")) as wp:
        c = H2Client(wp.plaintext_port, window=100)
        sized, chunked = await asyncio.to_thread(c.get, "/bytes/70000", "/chunked")
        c.close()
    assert status(sized) == 200 and sized["body"] == b"x" * 70000
    assert status(chunked) == 200 and chunked["body"] == b"hello chunked world"


async def test_local_answers_head_and_no_body_statuses(backends, path):
    async with echo_waypoint(backends("v1")) as wp:
        c = H2Client(wp.plaintext_port)

        def go():
            nr = c.get("/a", authority="nowhere:8080")[0]
            head = c.get("/bytes/10", method="HEAD")[0]
            none = c.get("/status/204")[0]
            return nr, head, none
        nr, head, none = await asyncio.to_thread(go)
        c.close()
    assert status(nr) == 404 and nr["body"] == b"no route"
    assert nr["headers"][b"content-length"] == b"8"
    assert status(head) == 200 and head["body"] == b"" and head["head_ended"]
    assert head["headers"][b"content-length"] == b"10"
    assert status(none) == 204 and none["body"] == b"" and none["head_ended"]


async def test_an_unreachable_endpoint_is_a_503(backends, path):
    dead = backends("gone")
    dead.stop()
    async with echo_waypoint(dead) as wp:
        c = H2Client(wp.plaintext_port)
        (r,) = await asyncio.to_thread(c.get, "/x")
        c.close()
    assert status(r) == 503


async def test_a_request_body_takes_the_task_path_beside_fast_streams(backends, path):
    async with echo_waypoint(backends("v1")) as wp:
        before = set(h2fastpath.LIVE)
        c = H2Client(wp.plaintext_port)

        def go():
            a = c.start("/a")
            b = c.start("/upload", method="POST", body=b"payload")
            d = c.start("/d")
            c.wait([a, b, d])
            return c.got[a], c.got[b], c.got[d]
        a, b, d = await asyncio.to_thread(go)
        served = served_fast(before)
        c.close()
    assert [status(r) for r in (a, b, d)] == [200, 200, 200]
    assert json.loads(b["body"])["body"] == "payload"
    assert served == (2 if path == "fast" else 0)


async def test_a_stream_reset_mid_exchange_is_one_dc_record(backends, path, caplog):
    caplog.set_level(logging.INFO, logger="shoal.access")
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        written = capture_access_log(wp)
        c = H2Client(wp.plaintext_port)
        slow = await asyncio.to_thread(c.start, "/slow/400")
        await until(lambda: v1.hits["/slow/400"], what="the request at the backend")
        await asyncio.to_thread(c.reset, slow)
        (after,) = await asyncio.to_thread(c.get, "/after")

        def lines():
            return flushed_access_lines(wp, written)
        await until(lambda: len(lines()) == 2, what=lambda: f"two access-log lines, got {lines()}")
        got = sorted((f["path"], f["response_flags"]) for f in lines())
        c.close()
    assert status(after) == 200
    assert got == [("/after", "-"), ("/slow/400", "DC")]


async def test_the_client_leaving_mid_exchange_is_one_dc_record_per_stream(backends, path,
                                                                           caplog):
    caplog.set_level(logging.INFO, logger="shoal.access")
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        written = capture_access_log(wp)
        c = H2Client(wp.plaintext_port)
        for p in ("/slow/400", "/slow/401"):
            await asyncio.to_thread(c.start, p)
        await until(lambda: v1.hits["/slow/400"] and v1.hits["/slow/401"],
                    what="both requests at the backend")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()                         # a reset, not a half-close

        def lines():
            return sorted((x["path"], x["response_flags"])
                          for x in flushed_access_lines(wp, written))
        await until(lambda: len(lines()) == 2, what=lambda: f"two records, got {lines()}")
        got = lines()
    assert got == [("/slow/400", "DC"), ("/slow/401", "DC")]


async def test_an_upstream_cut_mid_body_resets_the_stream_and_logs_ur(path, caplog):
    caplog.set_level(logging.INFO, logger="shoal.access")
    backend = CutBackend()
    async with echo_waypoint(backend, close_backend=True) as wp:
        written = capture_access_log(wp)
        c = H2Client(wp.plaintext_port)
        (r,) = await asyncio.to_thread(c.get, "/cut")
        (after,) = await asyncio.to_thread(c.get, "/nowhere", authority="nowhere:8080")
        c.close()
        wp.app.proxy.telemetry.flush()
    assert r["reset"] and r["code"] == h2.errors.ErrorCodes.INTERNAL_ERROR
    assert status(r) == 200 and r["body"] == b"0123456789"
    assert status(after) == 404               # the connection lives on
    assert [(f["path"], f["response_code"], f["response_flags"], f["bytes_sent"])
            for f in access_lines(written)] == [
        ("/cut", 200, "UR", 10), ("/nowhere", 404, "NR", 8)]
