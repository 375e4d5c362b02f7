"""The waypoint app on loopback: routing, filters, timeouts, retries, errors.

Driven through the plaintext test listener (destination from the Host
header) with Python's http.client, curl and raw sockets, to real backends
(stdlib http.server). HBONE-specific behaviour is in test_waypoint_hbone.py.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time

import pytest

from shoal.core.records import (BackendRef, HeaderMatch, HeaderModifier, HTTPFilter, HTTPRoute,
                             ParentRef, PathMatch, PathModifier, RequestMirror, RequestRedirect,
                             Retry, RouteMatch, RouteRule, Timeouts, URLRewrite)
from tests.helpers.waypoint_mesh import Mesh, echo_waypoint, running_waypoint
from tests.integration.waypoint.conftest import Client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def ref(name, weight=1, port=8080):
    return BackendRef(name=name, namespace="default", port=port, weight=weight)


def route(*rules, name="r", hostnames=()):
    return HTTPRoute(name=name, namespace="default", hostnames=tuple(hostnames),
                     parent_refs=(ParentRef(kind="Service", name="echo", namespace="default"),),
                     rules=tuple(rules))


def prefix(v):
    return RouteMatch(path=PathMatch(type="PathPrefix", value=v))


def raw(port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and out.count(b"\r\n\r\n") >= 1:
                break
        return out


async def in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


async def test_no_route_forwards_to_the_original_service(backends):
    v1, v2 = backends("v1"), backends("v2")
    mesh = Mesh()
    mesh.service("echo", [v1, v2])
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            seen = {c.json("/x")[1]["backend"] for _ in range(6)}
            c.close()
            return seen
        assert await in_thread(go) == {"v1", "v2"}     # round robin over both endpoints


async def test_routing_by_path_and_header(backends):
    v1, v2 = backends("v1"), backends("v2")
    mesh = Mesh()
    mesh.service("echo", [v1])
    mesh.service("echo-v2", [v2])
    mesh.route(route(
        RouteRule(matches=(prefix("/"),), backend_refs=(ref("echo"),)),
        RouteRule(matches=(prefix("/v2"),), backend_refs=(ref("echo-v2"),)),
        RouteRule(matches=(RouteMatch(headers=(HeaderMatch(name="version", value="two"),)),),
                  backend_refs=(ref("echo-v2"),)),
    ))
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            out = [c.json("/")[1]["backend"], c.json("/v2/x")[1]["backend"],
                   c.json("/v2x")[1]["backend"],
                   c.json("/", headers={"Version": "two"})[1]["backend"]]
            c.close()
            return out
        assert await in_thread(go) == ["v1", "v2", "v1", "v2"]


async def test_weighted_split_within_statistical_bounds(backends):
    v1, v2 = backends("v1"), backends("v2")
    mesh = Mesh()
    mesh.service("echo", [v1])
    mesh.service("echo-v2", [v2])
    mesh.route(route(RouteRule(backend_refs=(ref("echo", 80), ref("echo-v2", 20)))))
    n = 400
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            got = [c.get("/w")[0].getheader("x-backend") for _ in range(n)]
            c.close()
            return got
        got = await in_thread(go)
    share = got.count("v2") / n
    # binomial sd = sqrt(0.2*0.8/400) = 0.02: accept +-4 sd
    assert abs(share - 0.2) < 0.08, share


async def test_redirect_rewrite_and_header_modifiers(backends):
    v1 = backends("v1")
    mesh = Mesh()
    mesh.service("echo", [v1])
    mesh.route(route(
        RouteRule(matches=(prefix("/old"),), filters=(HTTPFilter(
            type="RequestRedirect", request_redirect=RequestRedirect(
                hostname="example.org", status_code=301,
                path=PathModifier(type="ReplacePrefixMatch", value="/new"))),)),
        RouteRule(matches=(prefix("/api"),), backend_refs=(ref("echo"),), filters=(
            HTTPFilter(type="URLRewrite", url_rewrite=URLRewrite(
                hostname="rewritten.example", path=PathModifier(type="ReplacePrefixMatch", value="/v1"))),
            HTTPFilter(type="RequestHeaderModifier", request_header_modifier=HeaderModifier(
                set=(("x-set", "yes"),), add=(("x-add", "1"),), remove=("x-drop",))),
            HTTPFilter(type="ResponseHeaderModifier", response_header_modifier=HeaderModifier(
                add=(("x-resp", "added"),), remove=("server",))),
        )),
    ))
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            r1, _ = c.get("/old/page?q=1")
            loc = (r1.status, r1.getheader("location"))
            r2, body = c.json("/api/items?x=2", headers={"x-drop": "gone", "x-set": "no"})
            c.close()
            return loc, r2, body
        loc, r2, body = await in_thread(go)
    assert loc == (301, "http://example.org:8080/new/page?q=1")
    assert body["path"] == "/v1/items?x=2"
    assert body["headers"]["host"] == "rewritten.example"
    assert body["headers"]["x-set"] == "yes" and body["headers"]["x-add"] == "1"
    assert "x-drop" not in body["headers"]
    assert r2.getheader("x-resp") == "added" and r2.getheader("server") is None


async def test_request_mirror_copies_traffic(backends):
    v1, shadow = backends("v1"), backends("shadow")
    mesh = Mesh()
    mesh.service("echo", [v1])
    mesh.service("shadow", [shadow])
    mesh.route(route(RouteRule(backend_refs=(ref("echo"),), filters=(HTTPFilter(
        type="RequestMirror", request_mirror=RequestMirror(backend=ref("shadow"), percent=100)),))))
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            out = [c.json("/m", method="POST", body=b"payload")[1]["backend"] for _ in range(3)]
            c.close()
            return out
        assert await in_thread(go) == ["v1"] * 3
        deadline = time.monotonic() + 5
        while shadow.hits["/m"] < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert shadow.hits["/m"] == 3
    assert shadow.requests[0].body == b"payload"
    assert shadow.requests[0].headers["host"].endswith("-shadow")


async def test_request_timeout_gives_504(backends):
    v1 = backends("v1")
    mesh = Mesh()
    mesh.service("echo", [v1])
    mesh.route(route(RouteRule(backend_refs=(ref("echo"),), timeouts=Timeouts(request=0.3))))
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            t0 = time.monotonic()
            r, body = c.get("/slow/2000")
            took = time.monotonic() - t0
            r2, _ = c.get("/fast")        # the client connection is still usable
            c.close()
            return r.status, body, took, r2.status
        status, body, took, after = await in_thread(go)
    assert status == 504 and body == b"upstream request timeout"
    assert 0.25 < took < 1.5
    assert after == 200


async def test_backend_request_timeout_is_per_try(backends):
    v1 = backends("v1")
    mesh = Mesh()
    mesh.service("echo", [v1])
    mesh.route(route(RouteRule(backend_refs=(ref("echo"),),
                               timeouts=Timeouts(request=5.0, backend_request=0.2))))
    async with running_waypoint(mesh) as wp:
        r, _ = await in_thread(lambda: Client(wp.plaintext_port).get("/slow/1500"))
    assert r.status == 504


async def test_retry_on_503_until_success(backends):
    v1 = backends("v1")
    mesh = Mesh()
    mesh.service("echo", [v1])
    mesh.route(route(
        RouteRule(matches=(prefix("/flaky"),), backend_refs=(ref("echo"),),
                  retry=Retry(attempts=2, codes=(503,), backoff=0.01)),
        RouteRule(matches=(prefix("/noretry"),), backend_refs=(ref("echo"),)),
    ))
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            ok = c.get("/flaky/2")[0].status          # 503, 503, then 200: within 2 retries
            too_flaky = c.get("/flaky/5")[0].status   # still 503 after 3 tries
            c.close()
            return ok, too_flaky
        ok, too_flaky = await in_thread(go)
    assert ok == 200 and v1.hits["/flaky/2"] == 3
    assert too_flaky == 503 and v1.hits["/flaky/5"] == 3


async def test_error_statuses(backends):
    v1 = backends("v1")
    mesh = Mesh()
    mesh.service("echo", [v1])
    mesh.service("empty", [])
    dead = socket.socket()
    dead.bind((v1.host, 0))                   # a port nobody listens on
    dead_port = dead.getsockname()[1]

    class Dead:
        name, host, port = "dead", v1.host, dead_port
    mesh.service("gone", [Dead])
    async with running_waypoint(mesh) as wp:
        p = wp.plaintext_port
        malformed = await in_thread(raw, p, b"BAD REQUEST LINE\r\n\r\n")
        huge = await in_thread(raw, p, b"GET / HTTP/1.1\r\nHost: echo:8080\r\nX-Big: "
                               + b"a" * (70 * 1024) + b"\r\n\r\n")
        c = Client(p)
        no_healthy = await in_thread(c.get, "/", "empty:8080")
        reset = await in_thread(c.get, "/reset", "echo:8080")
        c2 = Client(p)
        refused = await in_thread(c2.get, "/", "gone:8080")
        c.close()
        c2.close()
    dead.close()
    assert malformed.startswith(b"HTTP/1.1 400 ") and b"connection: close" in malformed
    assert huge.startswith(b"HTTP/1.1 431 ")
    assert no_healthy[0].status == 503 and no_healthy[1] == b"no healthy upstream"
    assert reset[0].status == 502 and b"connection termination" in reset[1]
    assert refused[0].status == 503 and b"connection failure" in refused[1]


async def test_pipelined_requests_answered_in_order(backends):
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: echo:8080\r\n\r\n" % i for i in range(3))
        out = await in_thread(raw, wp.plaintext_port, reqs + b"GET /last HTTP/1.1\r\nHost: echo:8080\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 4
    assert out.index(b'"/p0"') < out.index(b'"/p1"') < out.index(b'"/p2"') < out.index(b'"/last"')


async def test_chunked_request_and_response_bodies(backends):
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        req = (b"POST /up HTTP/1.1\r\nHost: echo:8080\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
               b"GET /chunked HTTP/1.1\r\nHost: echo:8080\r\nConnection: close\r\n\r\n")
        out = await in_thread(raw, wp.plaintext_port, req)
    first, second = out.split(b"HTTP/1.1 200 OK")[1:]
    assert b'"body": "hello world"' in first            # chunked upload re-framed upstream
    assert b"transfer-encoding: chunked" in second.lower()
    body = second.split(b"\r\n\r\n", 1)[1]
    assert body == b"6\r\nhello \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n"


async def test_websocket_upgrade_is_tunnelled(backends):
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        def go():
            with socket.create_connection(("127.0.0.1", wp.plaintext_port), timeout=5) as s:
                s.sendall(b"GET /ws HTTP/1.1\r\nHost: echo:8080\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(4096)
                s.sendall(b"\x81\x05hello-opaque-bytes")
                echoed = b""
                while len(echoed) < 19:
                    echoed += s.recv(4096)
                return head, echoed
        head, echoed = await in_thread(go)
    assert head.startswith(b"HTTP/1.1 101 ") and b"upgrade: websocket" in head.lower()
    assert echoed == b"\x81\x05hello-opaque-bytes"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_http1_and_http2_prior_knowledge(backends):
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        url = f"http://127.0.0.1:{wp.plaintext_port}/curl"
        h1 = await asyncio.create_subprocess_exec(
            "curl", "-s", "-H", "Host: echo:8080", "-w", "\n%{http_code} %{http_version}", url,
            stdout=subprocess.PIPE)
        out1, _ = await asyncio.wait_for(h1.communicate(), 10)
        h2 = await asyncio.create_subprocess_exec(
            "curl", "-s", "--http2-prior-knowledge", "-H", "Host: echo:8080",
            "-d", "h2-body", "-w", "\n%{http_code} %{http_version}", url, stdout=subprocess.PIPE)
        out2, _ = await asyncio.wait_for(h2.communicate(), 10)
    assert out1.endswith(b"200 1.1") and b'"backend": "v1"' in out1
    assert out2.endswith(b"200 2") and b'"body": "h2-body"' in out2


async def test_expect_continue_and_large_streamed_upload(backends):
    v1 = backends("v1")
    mesh = Mesh()
    mesh.service("echo", [v1])
    big = b"z" * (300 * 1024)            # above RETRY_BUFFER_LIMIT: streamed upstream
    async with running_waypoint(mesh) as wp:
        def go():
            with socket.create_connection(("127.0.0.1", wp.plaintext_port), timeout=5) as s:
                s.sendall(b"POST /small HTTP/1.1\r\nHost: echo:8080\r\nContent-Length: 4\r\n"
                          b"Expect: 100-continue\r\n\r\n")
                interim = s.recv(4096)
                s.sendall(b"ping")
                resp = b""
                while b"}" not in resp:
                    resp += s.recv(65536)
            c = Client(wp.plaintext_port)
            r, body = c.json("/big", method="POST", body=big)
            c.close()
            return interim, resp, r.status, body
        interim, resp, status, body = await in_thread(go)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b'"body": "ping"' in resp and b"expect" not in resp.split(b"\r\n\r\n", 1)[1]
    assert status == 200 and len(body["body"]) == len(big)


async def test_failing_endpoint_is_ejected(backends):
    good, bad = backends("good"), backends("bad")
    bad.fail_status = 503
    mesh = Mesh()
    mesh.service("echo", [good, bad])
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            statuses = [c.get("/x")[0].status for _ in range(40)]
            c.close()
            return statuses
        statuses = await in_thread(go)
    # round robin alternates until 5 consecutive failures eject "bad" (30 s)
    assert bad.hits["/x"] == 5
    assert statuses.count(503) == 5 and statuses[10:] == [200] * 30


async def test_drain_finishes_busy_requests_and_closes_idle_clients(backends):
    v1 = backends("v1")
    async with echo_waypoint(v1) as wp:
        idle = socket.create_connection(("127.0.0.1", wp.plaintext_port), timeout=5)
        idle.sendall(b"GET /first HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
        first = await in_thread(idle.recv, 65536)
        busy = socket.create_connection(("127.0.0.1", wp.plaintext_port), timeout=5)
        busy.sendall(b"GET /slow/300 HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
        deadline = time.monotonic() + 5
        while v1.hits["/slow/300"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        drain = asyncio.ensure_future(wp.app.drain(time.monotonic() + 5))

        def read_all(s):
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk
        idle_rest, busy_resp = await asyncio.gather(in_thread(read_all, idle),
                                                    in_thread(read_all, busy))
        await drain
        took = time.monotonic() - t0
    idle.close()
    busy.close()
    assert first.startswith(b"HTTP/1.1 200") and idle_rest == b""     # idle: closed, no reply
    assert busy_resp.startswith(b"HTTP/1.1 200") and b"connection: close" in busy_resp
    assert took < 3


async def test_head_204_large_body_and_http10(backends):
    v1 = backends("v1")
    mesh = Mesh()
    mesh.service("echo", [v1])
    size = 5 * 1024 * 1024
    async with running_waypoint(mesh) as wp:
        def go():
            c = Client(wp.plaintext_port)
            head, head_body = c.get("/bytes/1234", method="HEAD")
            nc, nc_body = c.get("/status/204")
            big, big_body = c.get(f"/bytes/{size}")
            after, _ = c.get("/still-alive")
            c.close()
            old = raw(wp.plaintext_port, b"GET /chunked HTTP/1.0\r\nHost: echo:8080\r\n\r\n")
            return head, head_body, nc, nc_body, big, len(big_body), after, old
        head, head_body, nc, nc_body, big, big_len, after, old = await in_thread(go)
    assert head.status == 200 and head.getheader("content-length") == "1234" and head_body == b""
    assert nc.status == 204 and nc_body == b""
    assert big.status == 200 and big_len == size
    assert after.status == 200                      # the connection survived all of that
    # HTTP/1.0 client, chunked upstream: close-delimited body, no chunk framing
    assert old.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in old.lower()
    assert old.endswith(b"\r\n\r\nhello chunked world")


async def test_server_sending_a_body_with_204_does_not_poison_the_pool(backends):
    v1 = backends("v1")
    v1.bad_204 = True                   # "HTTP/1.1 204 ... content-length: 7\r\n\r\nstatus\n"
    async with echo_waypoint(v1) as wp:
        def go():
            c = Client(wp.plaintext_port)
            out = [c.get("/status/204")[0].status, c.get("/next")[0].status,
                   c.get("/status/204")[0].status, c.get("/next2")[0].status]
            c.close()
            return out
        assert await in_thread(go) == [204, 200, 204, 200]
