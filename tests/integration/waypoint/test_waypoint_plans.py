"""Plans (waypoint/planpath.py, native/plan.c) through a real waypoint.

The same conversation with plans and without (SHOAL_WAYPOINT_PLANS=0, the
decision made in Python for every request) gives the client the same bytes,
the backend the same heads (the random ids put aside) and telemetry the same
records; a new routing generation (a route, a policy) takes effect on the
next request; a policy, a header-match route, a mirror and a body are never
served from a plan and behave as before.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import logging
import re
import socket
import struct
import sys

import pytest

from shoal.core.records import (Authorization, BackendRef, HeaderMatch, HeaderModifier,
                                HTTPFilter, HTTPRoute, Operation, ParentRef, PathMatch,
                                RequestMirror, RouteMatch, RouteRule, Rule, TargetRef)
from shoal.waypoint.fastpath import FAST_ENV, FastSession
from shoal.waypoint.h1native import native
from shoal.waypoint.lb import Balancer
from shoal.waypoint.planpath import PLANS_ENV
from tests.helpers.wait import until
from tests.helpers.waypoint_mesh import (Mesh, ScriptedBackend, ThreadedBackend, access_lines,
                                         capture_access_log, echo_samples, echo_waypoint,
                                         running_waypoint, sample_deltas, scripted_run)
from tests.integration.waypoint.conftest import Client
from tests.integration.waypoint.test_waypoint_h1native import (TP, read_all, read_response,
                                                              same_chunking)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60),
              pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# (path, extra request headers, the backend's answer in parts (sent as
# separate writes), close after it?); each path comes back later in the
# conversation, so the plans run serves the repeats from plans, the last
# ones through what a CExchange hands to Python (a 1xx, a close-delimited
# body, a reused connection closed before the head, a cut).
CONVERSATION = [
    ("/a", "", [OK], False),
    ("/a", "X-Request-Id: mine\r\n", [OK], False),
    ("/a", f"traceparent: {TP}\r\nConnection: X-Gone\r\nX-Gone: 1\r\n",
     [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nyes"], False),
    ("/b?q=1", "User-Agent: plans\r\nX-Forwarded-For: 10.1.1.1\r\n",
     [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"], False),
    ("/b?q=1", "x-forwarded-proto: https\r\n",
     [b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"], False),
    ("/a", "", [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"], False),
    ("/b?q=1", "", [b"HTTP/1.1 204 No Content\r\n\r\n"], False),
    ("/a", "", [b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"], False),
    ("/b?q=1", "", [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil", b" eof"], True),
    ("/a", "", [OK], False),
    ("/a", "", [], True),               # closed unanswered: retried on a fresh connection
    (None, "", [OK], False),            # (that retry's answer)
    ("/a", "", [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"], True),
]
STATUSES = [b"200", b"200", b"200", b"200", b"503", b"404", b"204", b"100", b"200", b"200",
            b"200", b"200"]
# Between the parts of one answer, so they are separate reads at the waypoint.
PART_GAP_S = 0.02


def converse(port: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        got = []
        for path, extra, _, _ in CONVERSATION:
            if path is not None:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: echo:8080\r\n{extra}\r\n".encode())
                got.append(read_response(s))
        return got


def mask(text: str) -> str:
    """The ids each run makes at random: new trace ids, span ids, request ids."""
    text = re.sub(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]",
                  lambda m: m.group(0)[:36] + "<span>" + m.group(0)[-3:]
                  if m.group(0).startswith(TP[:36]) else "<trace>", text)
    return re.sub(r"(?<![-0-9a-f])[0-9a-f]{32}(?![-0-9a-f])", "<rid>", text)


async def run(monkeypatch, plans: bool):
    monkeypatch.setenv(PLANS_ENV, "1" if plans else "0")
    served: list = []
    for name, log in (("_planned", lambda a: served.append(a[1][1])),
                      ("_c_done", lambda a: served.append("done")),
                      ("_c_adopt", lambda a: served.append(a[1]))):
        def spy(self, *a, _real=getattr(FastSession, name), _log=log):
            _log(a)
            return _real(self, *a)
        monkeypatch.setattr(FastSession, name, spy)
    got, heads, telemetry = await scripted_run(monkeypatch, CONVERSATION, PART_GAP_S, converse,
                                               mask)
    assert len(telemetry) == len(CONVERSATION) - 1
    return got, heads, telemetry, served


async def test_plans_give_the_same_bytes_and_records_as_python_decisions(monkeypatch):
    monkeypatch.setenv(FAST_ENV, "1")
    got, heads, telemetry, served = await run(monkeypatch, True)
    py_got, py_heads, py_telemetry, py_served = await run(monkeypatch, False)
    # Every repeat of a URL came from its plan; nothing without plans.
    # Every repeat came from its plan; responses ended in C (done) or were
    # handed to Python: the 204, the 100, the EOF before the head (then
    # retried on a fresh connection), the cut. The one after the
    # close-delimited answer had no idle connection: an Exchange's.
    assert served == ["/a", "done", "/a", "done", "/b?q=1", "done", "/a", "done",
                      "/b?q=1", "result", "/a", "result", "/b?q=1", "done", "/a",
                      "/a", "result", "/a", "result"]
    assert py_served == []
    assert got == py_got
    assert heads == py_heads
    assert telemetry == py_telemetry
    # What the conversation is meant to show, on both.
    assert [g.split(b"\r\n", 1)[0][9:12] for g in got] == STATUSES
    assert got[7].endswith(b"\r\n\r\nyes") and b"\r\n9\r\nuntil eof<end>" in same_chunking(got[8])
    assert heads[10] == heads[11]                  # the retry sent the same head
    assert "X-Request-Id: mine\r\n" in heads[1] and "X-Gone" not in heads[2]
    assert f"traceparent: {TP[:36]}<span>-01" in heads[2]
    assert "x-forwarded-proto: http" in heads[4] and "https" not in heads[4]
    assert [t[0]["response_code"] for t in telemetry] == \
        [200, 200, 200, 200, 503, 404, 204, 200, 200, 200, 200, 200]
    assert [t[0]["response_flags"] for t in telemetry][-1] == "UR"


def route(*rules):
    return HTTPRoute(name="r", namespace="default",
                     parent_refs=(ParentRef(kind="Service", name="echo", namespace="default"),),
                     rules=tuple(rules))


def to(name: str) -> BackendRef:
    return BackendRef(name=name, namespace="default", port=8080)


def fast_sessions(wp) -> list[FastSession]:
    return [s.stream for s in wp.app.proxy.sessions if isinstance(s.stream, FastSession)]


def plan_keys(wp) -> list[str]:
    return sorted(wp.app.proxy.plans.plans)


async def test_a_new_generation_takes_effect_on_the_next_request(monkeypatch, backends):
    monkeypatch.setenv(FAST_ENV, "1")
    mesh = Mesh()
    mesh.service("echo", [backends("v1")])
    mesh.service("other", [backends("v2")])
    async with running_waypoint(mesh) as wp:
        c = Client(wp.plaintext_port)

        def who():
            r, _ = c.get("/p")
            return r.status, r.getheader("x-backend")
        assert await asyncio.to_thread(lambda: [who(), who()]) == [(200, "v1")] * 2
        assert plan_keys(wp) == ["GET /p echo:8080"]
        mesh.route(route(RouteRule(backend_refs=(to("other"),))))
        wp.set_view(mesh.view())
        assert await asyncio.to_thread(lambda: [who(), who()]) == [(200, "v2")] * 2
        mesh.policy(Authorization(
            name="deny-p", namespace="default", scope="TARGET_REF", action="DENY",
            target_refs=(TargetRef(kind="Service", name="echo"),),
            rules=(Rule(to=(Operation(paths=("/p",)),)),)))
        wp.set_view(mesh.view())
        assert await asyncio.to_thread(lambda: [who(), who()]) == [(403, None)] * 2
        assert plan_keys(wp) == []
        c.close()


async def test_what_plans_never_serve_behaves_as_before(monkeypatch, backends):
    """A header-match route, a mirror and a body: decided per request."""
    monkeypatch.setenv(FAST_ENV, "1")
    mesh = Mesh()
    mesh.service("echo", [backends("v1")])
    mesh.service("other", [backends("v2")])
    mirror = backends("m")
    mesh.service("mirror", [mirror])
    mesh.route(route(
        RouteRule(matches=(RouteMatch(path=PathMatch(type="PathPrefix", value="/h"),
                                      headers=(HeaderMatch(name="x-v", value="2"),)),),
                  backend_refs=(to("other"),)),
        RouteRule(matches=(RouteMatch(path=PathMatch(type="PathPrefix", value="/m")),),
                  filters=(HTTPFilter(type="RequestMirror",
                                      request_mirror=RequestMirror(backend=to("mirror"))),),
                  backend_refs=(to("echo"),)),
        RouteRule(backend_refs=(to("echo"),))))
    async with running_waypoint(mesh) as wp:
        c = Client(wp.plaintext_port)

        def go():
            out = []
            for hdrs in ({}, {"x-v": "2"}, {}, {"x-v": "2"}):
                r, _ = c.get("/h", headers=hdrs)
                out.append(r.getheader("x-backend"))
            for _ in range(2):
                r, _ = c.get("/m")
                out.append(r.getheader("x-backend"))
            r, body = c.json("/body", method="POST", body=b"payload")
            out.append(body["body"])
            r, body = c.json("/body", method="POST", body=b"again")
            out.append(body["body"])
            return out
        got = await asyncio.to_thread(go)
        await until(lambda: mirror.hits["/m"] == 2)
        assert plan_keys(wp) == []      # the table reads headers: nothing is kept
        c.close()
    assert got == ["v1", "v2", "v1", "v2", "v1", "v1", "payload", "again"]


async def test_a_client_resetting_mid_exchange_from_a_plan_is_one_dc_record(monkeypatch,
                                                                             backends, caplog):
    """The client leaves while a CExchange waits for the answer: Python
    takes the exchange over and makes the one DC record, as without plans."""
    monkeypatch.setenv(FAST_ENV, "1")
    caplog.set_level(logging.INFO, logger="shoal.access")
    mesh = Mesh()
    mesh.service("echo", [backends("v1")])
    request = b"GET /slow/300 HTTP/1.1\r\nHost: echo:8080\r\n\r\n"
    async with running_waypoint(mesh) as wp:
        written = capture_access_log(wp)
        reader, writer = await asyncio.open_connection("127.0.0.1", wp.plaintext_port)
        writer.write(request)
        await reader.readuntil(b"}")            # the first answer, whole (a JSON body)
        assert plan_keys(wp) == ["GET /slow/300 echo:8080"]
        writer.write(request)
        await writer.drain()
        await until(lambda: any(type(f.exchange).__name__ == "CExchange"
                                for f in fast_sessions(wp)), what="the request from its plan")
        writer.get_extra_info("socket").setsockopt(   # a reset, not a half-close
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

        def recorded():
            wp.app.proxy.telemetry.flush()
            return len(access_lines(written)) == 2
        await until(recorded, what="the access-log lines")
    assert [(f["path"], f["response_code"], f["response_flags"])
            for f in access_lines(written)] == [("/slow/300", 200, "-"), ("/slow/300", 0, "DC")]


class Fixed(ThreadedBackend):
    """1 KiB answers, keep-alive (the waypoint may reset a connection)."""

    def serve(self, conn: socket.socket) -> None:
        try:
            for _ in self.request_heads(conn):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024)
        except ConnectionResetError:
            pass


def keepalive_gets(port: int, n: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(n):
            s.sendall(b"GET /k HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
            read_response(s)


async def test_thousands_of_plan_served_requests_keep_no_references(monkeypatch):
    """What a request served from a plan holds (its plan, its connection,
    C objects) is let go when it ends: the plan's reference count and the
    number of live objects do not grow with the requests."""
    monkeypatch.setenv(FAST_ENV, "1")
    async with echo_waypoint(Fixed(), close_backend=True, access_log=False) as wp:
        port = wp.plaintext_port
        await asyncio.to_thread(keepalive_gets, port, 200)
        plan = wp.app.proxy.plans.plans["GET /k echo:8080"]
        gc.collect()
        refs, objects = sys.getrefcount(plan), len(gc.get_objects())
        await asyncio.to_thread(keepalive_gets, port, 3000)
        gc.collect()
        assert sys.getrefcount(plan) == refs
        assert len(gc.get_objects()) - objects < 300      # not one per request


async def metric_deltas(monkeypatch, plans: bool):
    monkeypatch.setenv(PLANS_ENV, "1" if plans else "0")
    counted: list[bool] = []
    real = FastSession._c_done

    def spy(self, cex):
        counted.append(cex.counted)
        return real(self, cex)
    monkeypatch.setattr(FastSession, "_c_done", spy)
    before = echo_samples()
    backend = ScriptedBackend([(parts, close) for _, _, parts, close in CONVERSATION],
                              PART_GAP_S)
    async with echo_waypoint(backend, close_backend=True, access_log=False) as wp:
        await asyncio.to_thread(converse, wp.plaintext_port)
        wp.app.proxy.telemetry.flush_metrics()
        after = echo_samples()
    return sample_deltas(before, after), counted


async def test_requests_counted_in_c_give_the_same_metrics(monkeypatch):
    """Without an access log, responses that end in a CExchange are counted
    in the C tally: after a flush, the same series with the same values."""
    monkeypatch.setenv(FAST_ENV, "1")
    c, counted = await metric_deltas(monkeypatch, True)
    py, py_counted = await metric_deltas(monkeypatch, False)
    assert counted == [True] * 5 and py_counted == []
    assert c == py
    total = {k: v for k, v in c.items() if k.startswith("istio_requests_total")}
    assert sum(total.values()) == len(CONVERSATION) - 1
    assert any('response_code="503"' in k for k in total)


async def test_filters_and_weighted_backends_are_decided_per_request(monkeypatch, backends):
    """A rule with a header filter, and one splitting traffic by weight:
    each request gets the filter and its own weighted pick (a plan would
    send every request to the backend the first one drew)."""
    monkeypatch.setenv(FAST_ENV, "1")
    mesh = Mesh()
    v1, v2 = backends("v1"), backends("v2")
    mesh.service("echo", [v1])
    mesh.service("one", [v1])
    mesh.service("two", [v2])
    mesh.route(route(
        RouteRule(matches=(RouteMatch(path=PathMatch(type="PathPrefix", value="/f")),),
                  filters=(HTTPFilter(type="RequestHeaderModifier",
                                      request_header_modifier=HeaderModifier(
                                          set=(("x-added", "yes"),))),),
                  backend_refs=(to("echo"),)),
        RouteRule(backend_refs=(BackendRef(name="one", namespace="default", port=8080),
                                BackendRef(name="two", namespace="default", port=8080)))))
    async with running_waypoint(mesh) as wp:
        c = Client(wp.plaintext_port)

        def go():
            added = [c.json("/f")[1]["headers"].get("x-added") for _ in range(3)]
            split = [c.get("/w")[0].getheader("x-backend") for _ in range(40)]
            return added, split
        added, split = await asyncio.to_thread(go)
        assert plan_keys(wp) == []
        c.close()
    assert added == ["yes"] * 3
    assert set(split) == {"v1", "v2"}       # 40 even draws: both (1 in 2**39 fails)


async def test_a_failure_inside_a_cexchange_costs_one_request(monkeypatch, backends, caplog):
    """As with Exchange: an exception while a response is handled (here the
    balancer's, at the head) cuts that client off (UR), is logged, and the
    waypoint serves the next request as ever."""
    monkeypatch.setenv(FAST_ENV, "1")
    caplog.set_level(logging.INFO, logger="shoal.access")
    async with echo_waypoint(backends("v1")) as wp:
        written = capture_access_log(wp)
        c = Client(wp.plaintext_port)
        await asyncio.to_thread(c.get, "/x")            # plan made, connection pooled
        real = Balancer.finished

        def broken(self, *a):
            monkeypatch.setattr(Balancer, "finished", real)
            raise RuntimeError("a bug")
        monkeypatch.setattr(Balancer, "finished", broken)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            await asyncio.to_thread(c.get, "/x")
        c.close()
        again = Client(wp.plaintext_port)
        r, _ = await asyncio.to_thread(again.get, "/x")
        again.close()
        wp.app.proxy.telemetry.flush()
    assert r.status == 200
    assert [f["response_flags"] for f in access_lines(written)] == ["-", "UR", "-"]
    assert "response handling failed inside the waypoint" in caplog.text


async def test_a_python_call_raising_under_a_cexchange_cuts_and_never_wedges(monkeypatch,
                                                                               caplog):
    """A bug in a Python call a CExchange makes (here the telemetry slot
    lookup when the response ends) costs that one request, as
    Exchange.upstream_data makes it: logged, the client cut off (UR). The
    connection is not left holding an exchange that never ends (its next
    request unanswered, never closed), and the worker serves on."""
    monkeypatch.setenv(FAST_ENV, "1")
    caplog.set_level(logging.ERROR, logger="shoal.waypoint")
    backend = Fixed()
    request = b"GET /k HTTP/1.1\r\nHost: echo:8080\r\n\r\n"
    async with echo_waypoint(backend, close_backend=True, access_log=False) as wp:
        telemetry = wp.app.proxy.telemetry
        assert telemetry.counts_in_c
        real = type(telemetry).slot
        calls: list = []

        def slot_once_broken(self, r):
            calls.append(r)
            if len(calls) == 1:
                raise RuntimeError("a telemetry bug")
            return real(self, r)
        monkeypatch.setattr(type(telemetry), "slot", slot_once_broken)

        def first_then_from_plan() -> bytes:
            with socket.create_connection(("127.0.0.1", wp.plaintext_port),
                                          timeout=10) as s:
                s.sendall(request)
                assert read_response(s).endswith(b"x" * 1024)
                s.sendall(request)          # served from the plan: the slot raises
                return read_all(s)
        await asyncio.to_thread(first_then_from_plan)
        assert len(calls) == 1
        assert any("response handling failed" in r.getMessage() and r.exc_info
                   and "a telemetry bug" in str(r.exc_info[1]) for r in caplog.records)
        # The worker serves on, from the plan, counted in C.
        assert await asyncio.to_thread(keepalive_gets, wp.plaintext_port, 3) is None
        assert len(calls) == 2


async def test_a_failure_after_a_cexchange_hands_over_is_cut_as_in_exchange(monkeypatch,
                                                                              caplog):
    """A 204 from a plan-served request goes to the Python parser (adopt
    "result"); a bug there (the balancer's, at the head) is caught where
    Exchange.upstream_data catches it: logged, that client cut off (UR),
    not escaping into asyncio as the upstream protocol's fatal error."""
    monkeypatch.setenv(FAST_ENV, "1")
    caplog.set_level(logging.INFO)
    backend = ResetTolerant([([OK], False), ([b"HTTP/1.1 204 No Content\r\n\r\n"], False),
                             ([OK], False)], PART_GAP_S)
    request = b"GET /n HTTP/1.1\r\nHost: echo:8080\r\n\r\n"
    async with echo_waypoint(backend, close_backend=True) as wp:
        written = capture_access_log(wp)
        real = Balancer.finished

        def broken(self, *a):
            monkeypatch.setattr(Balancer, "finished", real)
            raise RuntimeError("a bug")

        def converse_and_break() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", wp.plaintext_port),
                                          timeout=10) as s:
                s.sendall(request)
                first = read_response(s)
                monkeypatch.setattr(Balancer, "finished", broken)
                s.sendall(request)
                return first, read_all(s)
        first, cut = await asyncio.to_thread(converse_and_break)
        again = await asyncio.to_thread(lambda: converse_one(wp.plaintext_port, request))
        wp.app.proxy.telemetry.flush()
    assert first.endswith(b"ok") and cut == b"" and again.endswith(b"ok")
    assert [f["response_flags"] for f in access_lines(written)] == ["-", "UR", "-"]
    assert "response handling failed inside the waypoint" in caplog.text
    assert "Fatal error" not in caplog.text


class ResetTolerant(ScriptedBackend):
    """A ScriptedBackend whose connection the waypoint may reset (a cut)."""

    def serve(self, conn: socket.socket) -> None:
        try:
            super().serve(conn)
        except ConnectionResetError:
            pass


def converse_one(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        return read_response(s)


class Answering(ThreadedBackend):
    """Keep-alive answers with one status; counts the requests it got and,
    with `close_idle`, closes each connection once it answered (a backend
    closing its idle keep-alive connections)."""

    def __init__(self, status: bytes, close_idle: bool = False) -> None:
        super().__init__()
        self.status, self.close_idle, self.requests = status, close_idle, 0

    def serve(self, conn: socket.socket) -> None:
        for _ in self.request_heads(conn):
            self.requests += 1
            conn.sendall(b"HTTP/1.1 " + self.status + b" X\r\nContent-Length: 2\r\n\r\nok")
            if self.close_idle:
                return


async def pool_and_balancer_run(monkeypatch, plans: bool, bad_status: bytes,
                                close_idle: bool, n: int):
    """`n` keep-alive GETs on one client connection to a service with a
    good and a bad endpoint, without an access log (so plan-served
    responses end in C, cend.c): the statuses, the requests each endpoint
    got, the upstream connections they saw and how the ends went."""
    monkeypatch.setenv(PLANS_ENV, "1" if plans else "0")
    cexes: list = []
    real = FastSession._planned

    def spy(self, *a):
        real(self, *a)
        if type(self.exchange).__name__ == "CExchange":
            cexes.append(self.exchange)
    monkeypatch.setattr(FastSession, "_planned", spy)
    good, bad = Answering(b"200", close_idle), Answering(bad_status, close_idle)
    mesh = Mesh()
    mesh.service("echo", [good, bad])
    statuses = []
    try:
        async with running_waypoint(mesh, access_log=False) as wp:
            pool = wp.app.proxy.pool
            reader, writer = await asyncio.open_connection("127.0.0.1", wp.plaintext_port)
            for _ in range(n):
                writer.write(b"GET /p HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                statuses.append(head[9:12])
                if close_idle:      # the backend's FIN reached the pooled connection
                    await until(lambda: all(c.stream.at_eof for q in pool._idle.values()
                                            for c in q), what="the idle connection closed")
            writer.close()
            idle = pool.idle_count()
    finally:
        good.close()
        bad.close()
    return statuses, (good.requests, bad.requests, good.connections, bad.connections, idle), \
        [c.ended_in_c for c in cexes]


async def test_outlier_ejection_and_pool_reuse_are_the_same_when_ends_are_in_c(monkeypatch):
    """The bad endpoint's 5xx go to Balancer.finished: it is ejected after
    CONSECUTIVE_FAILURES of them with plans as without; the 200s end in C
    and their connections are reused from the pool as before."""
    monkeypatch.setenv(FAST_ENV, "1")
    c = await pool_and_balancer_run(monkeypatch, True, b"503", False, 20)
    py = await pool_and_balancer_run(monkeypatch, False, b"503", False, 20)
    assert c[:2] == py[:2]
    assert c[0].count(b"503") == 5 and c[0][-8:] == [b"200"] * 8     # ejected after the 5th
    assert c[1][:4] == (15, 5, 1, 1)       # one upstream connection each, reused
    assert True in c[2] and py[2] == []


async def test_a_backend_closing_idle_pooled_connections_is_the_same(monkeypatch):
    """Each pooled connection is closed by the backend while idle: the next
    request opens a new one (no CExchange on a dead connection), with plans
    as without."""
    monkeypatch.setenv(FAST_ENV, "1")
    c = await pool_and_balancer_run(monkeypatch, True, b"200", True, 6)
    py = await pool_and_balancer_run(monkeypatch, False, b"200", True, 6)
    assert c[:2] == py[:2]
    assert c[0] == [b"200"] * 6 and c[1][:4] == (3, 3, 3, 3)
    assert c[2] == [] and py[2] == []
