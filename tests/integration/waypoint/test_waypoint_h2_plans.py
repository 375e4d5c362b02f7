"""Plans for HTTP/2 clients (h2fastpath.py + native/plan.c's plan_h2), on loopback.

The same HTTP/2 conversation with plans and without (SHOAL_WAYPOINT_PLANS=0:
every request decided in Python) gives the client the same answers, the
backend the same heads (the random ids put aside) and telemetry the same
records; without an access log the C tally gives the same metrics; the
repeats of a URL are the ones served from plans, and an HTTP/2 request
finds a plan an HTTP/1.1 request left (and the other way round); a
plan-served stream under a tiny client window, reset by the client or cut
by the upstream ends as any fast stream does.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from shoal.waypoint.fastexchange import FAST_ENV
from shoal.waypoint.fastpath import FastSession
from shoal.waypoint.h1native import native
from shoal.waypoint.h2fastpath import H2Fast
from shoal.waypoint.planpath import PLANS_ENV
from tests.helpers.wait import until
from tests.helpers.waypoint_mesh import (CutBackend, ScriptedBackend, capture_access_log,
                                         echo_samples, echo_waypoint, flushed_access_lines,
                                         recorded_conversation, sample_deltas, scripted_run)
from tests.integration.waypoint.test_waypoint_h1native import TP, read_response
from tests.integration.waypoint.test_waypoint_h2_fastpath import H2Client
from tests.integration.waypoint.test_waypoint_plans import mask

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60),
              pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# (path, extra request fields, the backend's answer, close after it?), one
# stream at a time on one connection; each URL comes back, so the plans
# run serves the repeats from plans (with the responses of every kind the
# Exchange handles: sized, chunked, 204, 1xx, close-delimited, a 503).
CONVERSATION = [
    ("/a", [], [OK], False),
    ("/a", [("x-request-id", "mine")], [OK], False),
    ("/a", [("traceparent", TP), ("user-agent", "h2plans")],
     [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nyes"], False),
    ("/b?q=1", [("x-forwarded-for", "10.1.1.1"), ("te", "trailers")],
     [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"], False),
    ("/b?q=1", [("x-forwarded-proto", "https"), ("cookie", "a=1"), ("cookie", "b=2")],
     [b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"], False),
    ("/a", [("accept", "*/*"), ("host", "echo:8080")], [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"],
     False),
    ("/b?q=1", [], [b"HTTP/1.1 204 No Content\r\n\r\n"], False),
    ("/a", [], [b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"], False),
    ("/b?q=1", [], [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil", b" eof"], True),
    ("/a", [("content-type", "application/grpc")], [OK], False),     # never from a plan
    ("/a", [], [OK], False),
]
PART_GAP_S = 0.02


def converse(port: int) -> list[tuple]:
    c = H2Client(port)
    try:
        got = []
        for path, extra, _, _ in CONVERSATION:
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                    (":authority", "echo:8080")] + extra, end_stream=True)
            c.sock.sendall(c.h2.data_to_send())
            c.got[sid] = {"headers": None, "body": b"", "ended": False, "reset": False,
                          "head_ended": False}
            c.wait([sid])
            r = c.got[sid]
            got.append((r["headers"], r["body"], r["reset"]))
        return got
    finally:
        c.close()


def spy_plans(monkeypatch) -> list[str]:
    served: list[str] = []
    real = H2Fast._planned

    def spy(self, sid, down, req, *a):
        served.append(req.head.target)
        return real(self, sid, down, req, *a)
    monkeypatch.setattr(H2Fast, "_planned", spy)
    return served


async def run(monkeypatch, plans: bool):
    monkeypatch.setenv(PLANS_ENV, "1" if plans else "0")
    served = spy_plans(monkeypatch)
    got, heads, telemetry = await scripted_run(monkeypatch, CONVERSATION, PART_GAP_S, converse,
                                               mask)
    assert len(telemetry) == len(CONVERSATION)
    answers = [({k: v for k, v in (h or {}).items() if k not in (b"date",)}, body, reset)
               for h, body, reset in got]
    return answers, heads, telemetry, served


async def test_h2_plans_give_the_same_answers_heads_and_records(monkeypatch):
    monkeypatch.setenv(FAST_ENV, "1")
    got, heads, telemetry, served = await run(monkeypatch, True)
    py_got, py_heads, py_telemetry, py_served = await run(monkeypatch, False)
    # Every repeat of a URL came from its plan, except the gRPC one.
    assert served == ["/a", "/a", "/b?q=1", "/a", "/b?q=1", "/a", "/b?q=1", "/a"]
    assert py_served == []
    assert got == py_got
    assert heads == py_heads
    assert telemetry == py_telemetry
    # What the conversation is meant to show, on both.
    assert [int(h[b":status"]) for h, _, _ in got] == \
        [200, 200, 200, 200, 503, 404, 204, 200, 200, 200, 200]
    assert got[3][1] == b"abc" and got[8][1] == b"until eof"
    assert "x-request-id: mine\r\n" in heads[1]
    assert f"traceparent: {TP[:36]}<span>-01" in heads[2]
    assert heads[0].startswith("GET /a HTTP/1.1\r\nhost: echo:8080\r\n")
    assert heads[5].startswith("GET /a HTTP/1.1\r\naccept: */*\r\nhost: echo:8080\r\n")
    assert "\r\nte:" not in heads[3] and "\r\ncookie: a=1; b=2\r\n" in heads[4]
    assert "x-forwarded-proto: http\r\n" in heads[4] and "https" not in heads[4]
    assert {t[1]["request_protocol"] for t in telemetry} == {"http2"}


async def h2_metric_deltas(monkeypatch, plans: bool):
    monkeypatch.setenv(PLANS_ENV, "1" if plans else "0")
    served = spy_plans(monkeypatch)
    before = echo_samples()
    backend = ScriptedBackend([(parts, close) for _, _, parts, close in CONVERSATION],
                              PART_GAP_S)
    async with echo_waypoint(backend, close_backend=True, access_log=False) as wp:
        tel = wp.app.proxy.telemetry
        recorded: list = []
        real = tel.record
        monkeypatch.setattr(tel, "record", lambda r: (recorded.append(r), real(r)))
        await asyncio.to_thread(converse, wp.plaintext_port)
        tel.flush_metrics()
        after = echo_samples()
    return sample_deltas(before, after), len(served), len(recorded)


async def test_h2_requests_counted_in_c_give_the_same_metrics(monkeypatch):
    """Without an access log, plan-served HTTP/2 responses are counted in
    the C tally: after a flush, the same series with the same values, and
    those requests made no Python record."""
    monkeypatch.setenv(FAST_ENV, "1")
    c, c_served, c_recorded = await h2_metric_deltas(monkeypatch, True)
    py, py_served, py_recorded = await h2_metric_deltas(monkeypatch, False)
    assert (c_served, py_served) == (8, 0)
    assert py_recorded == len(CONVERSATION)
    assert c_recorded == len(CONVERSATION) - c_served
    assert c == py
    total = {k: v for k, v in c.items() if k.startswith("istio_requests_total")}
    assert sum(total.values()) == len(CONVERSATION)
    assert all('request_protocol="http2"' in k for k in total)


async def test_h1_and_h2_requests_share_plans(monkeypatch):
    """A plan is a decision for (method, target, host): an HTTP/2 request
    finds the one an HTTP/1.1 request left, and the other way round; each
    is counted under its own protocol."""
    monkeypatch.setenv(FAST_ENV, "1")
    monkeypatch.setenv(PLANS_ENV, "1")
    served = spy_plans(monkeypatch)
    h1_served: list[str] = []
    real = FastSession._planned

    def spy(self, plan, parsed, *a):
        h1_served.append(parsed[1])
        return real(self, plan, parsed, *a)
    monkeypatch.setattr(FastSession, "_planned", spy)
    backend = ScriptedBackend([([OK], False)] * 4, PART_GAP_S)
    records: list = []

    def mixed(port: int) -> list[int]:
        out = []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /h1 HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
            out.append(int(read_response(s).split(b" ", 2)[1]))
        c = H2Client(port)
        try:
            out += [int(r["headers"][b":status"]) for r in c.get("/h1", "/h2")]
        finally:
            c.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /h2 HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
            out.append(int(read_response(s).split(b" ", 2)[1]))
        return out
    got = await recorded_conversation(monkeypatch, backend, mixed, records)
    assert got == [200] * 4
    assert served == ["/h1"] and h1_served == ["/h2"]
    assert [r.protocol for r in records] == ["http", "http2", "http2", "http"]
    assert all("x-request-id: " in h.decode() for h in backend.received)


def status(r: dict) -> int:
    return int(r["headers"][b":status"])


async def test_a_plan_served_stream_under_a_tiny_window_gets_its_whole_body(monkeypatch,
                                                                            backends):
    monkeypatch.setenv(FAST_ENV, "1")
    monkeypatch.setenv(PLANS_ENV, "1")
    served = spy_plans(monkeypatch)
    async with echo_waypoint(backends("v1")) as wp:
        c = H2Client(wp.plaintext_port, window=100)
        try:
            got = [await asyncio.to_thread(c.get, "/bytes/70000") for _ in range(2)]
        finally:
            c.close()
    assert served == ["/bytes/70000"]
    assert [(status(r), r["body"]) for (r,) in got] == [(200, b"x" * 70000)] * 2


async def test_a_plan_served_stream_reset_mid_exchange_is_one_dc_record(monkeypatch, backends,
                                                                        caplog):
    caplog.set_level(logging.INFO, logger="shoal.access")
    monkeypatch.setenv(FAST_ENV, "1")
    monkeypatch.setenv(PLANS_ENV, "1")
    served = spy_plans(monkeypatch)
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        written = capture_access_log(wp)
        c = H2Client(wp.plaintext_port)
        try:
            (first,) = await asyncio.to_thread(c.get, "/slow/400")
            slow = await asyncio.to_thread(c.start, "/slow/400")
            await until(lambda: v1.hits["/slow/400"] == 2, what="the second at the backend")
            await asyncio.to_thread(c.reset, slow)
            (after,) = await asyncio.to_thread(c.get, "/after")

            def lines():
                return flushed_access_lines(wp, written)
            await until(lambda: len(lines()) == 3, what=lambda: f"three lines, got {lines()}")
            got = [(f["path"], f["response_flags"]) for f in lines()]
        finally:
            c.close()
    assert served == ["/slow/400"]
    assert status(first) == 200 and status(after) == 200
    assert sorted(got) == [("/after", "-"), ("/slow/400", "-"), ("/slow/400", "DC")]


async def cut_metrics(monkeypatch, plans: bool):
    monkeypatch.setenv(PLANS_ENV, "1" if plans else "0")
    served = spy_plans(monkeypatch)
    before = echo_samples()
    backend = CutBackend()
    async with echo_waypoint(backend, close_backend=True, access_log=False) as wp:
        c = H2Client(wp.plaintext_port)
        try:
            got = [await asyncio.to_thread(c.get, "/cut") for _ in range(2)]
        finally:
            c.close()
        wp.app.proxy.telemetry.flush_metrics()
        after = echo_samples()
    return sample_deltas(before, after), served, [(r["reset"], r["body"]) for (r,) in got]


async def test_an_upstream_cut_on_a_plan_served_stream_is_counted_as_ur(monkeypatch):
    """The tally counts the cut response under its own label set (flag UR),
    as the Python record does."""
    monkeypatch.setenv(FAST_ENV, "1")
    c, served, got = await cut_metrics(monkeypatch, True)
    py, py_served, py_got = await cut_metrics(monkeypatch, False)
    assert (served, py_served) == (["/cut"], [])
    assert got == py_got == [(True, b"0123456789")] * 2
    assert c == py
    assert [v for k, v in c.items() if k.startswith("istio_requests_total")
            and 'response_flags="UR"' in k] == [2.0]
