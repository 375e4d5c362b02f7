"""HTTP/2 upstream for HTTP/2 ports (appProtocol http2/grpc/kubernetes.io/h2c,
port names http2-*/grpc-*/h2c-*): a real h2c backend (asyncio + h2, in its
own thread) behind the waypoint, in plaintext mode and behind real HBONE."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http.client
import json

import h2.config
import h2.connection
import h2.events
import pytest

from shoal.core.hbone.pool import HbonePool
from shoal.core.hbone.server import Accept, HboneServer
from shoal.core.identity.tls import client_context, server_context
from shoal.core.pipe import connect_tcp
from shoal.core.records import ServicePort
from tests.helpers.waypoint_h2backend import H2Backend, pattern
from tests.helpers.waypoint_mesh import WAYPOINT_ID, Mesh, loopback_ip, running_waypoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CURL_ID = "spiffe://cluster.local/ns/default/sa/curl"
BIG = 8 * 1024 * 1024


@pytest.fixture
def h2backend():
    b = H2Backend(loopback_ip()).start()
    yield b
    b.stop()


def h2_service(mesh: Mesh, backend, *, name="grpc", app_protocol="", protocol="TCP"):
    svc = mesh.service("echo", [backend], protocol=protocol)
    p = ServicePort(port=8080, target_port=8080, name=name, app_protocol=app_protocol)
    mesh.services[-1] = dataclasses.replace(svc, ports=(p,))
    return mesh.services[-1]


class _Tcp:
    """asyncio streams as a core.pipe-like read/write endpoint."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, n):
        return await self.reader.read(n)

    async def write(self, data):
        self.writer.write(data)
        await self.writer.drain()

    def close(self):
        self.writer.close()


async def h2_exchange(stream, path, *, method="POST", body=b"", trailers=None,
                      authority="echo:8080"):
    """One HTTP/2 request with the h2 library as client.
    Returns (status, headers, body, trailers)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="latin-1"))
    conn.initiate_connection()
    conn.increment_flow_control_window(BIG)
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"),
                            (":authority", authority), ("te", "trailers"),
                            ("content-type", "application/grpc")],
                      end_stream=not body and not trailers)
    await stream.write(conn.data_to_send())
    resp = {"status": 0, "headers": {}, "body": bytearray(), "trailers": {}}
    ended = asyncio.Event()
    window = asyncio.Event()

    async def reader():
        while not ended.is_set():
            data = await stream.read(65536)
            assert data, "connection closed early"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    h = dict(ev.headers)
                    resp["status"], resp["headers"] = int(h[":status"]), h
                elif isinstance(ev, h2.events.DataReceived):
                    resp["body"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    resp["trailers"] = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.set()
                    window.set()       # a writer still waiting stops
                elif isinstance(ev, h2.events.StreamReset):
                    # after a complete response: "stop sending" (RFC 9113 8.1)
                    assert ended.is_set() and ev.error_code == 0, f"reset {ev.error_code}"
                    window.set()
                elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    window.set()
            out = conn.data_to_send()
            if out:
                await stream.write(out)

    async def writer():
        view = memoryview(body)
        while view:
            if ended.is_set() or conn.streams.get(sid) is None or conn.streams[sid].closed:
                return         # answered (and maybe reset) before the body ended
            n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if n <= 0:
                window.clear()
                await window.wait()
                continue
            conn.send_data(sid, view[:n].tobytes())
            view = view[n:]
            await stream.write(conn.data_to_send())
        if (body or trailers) and not ended.is_set():
            if trailers:
                conn.send_headers(sid, trailers, end_stream=True)
            else:
                conn.end_stream(sid)
            await stream.write(conn.data_to_send())

    await asyncio.wait_for(asyncio.gather(reader(), writer()), 30)
    return resp["status"], resp["headers"], bytes(resp["body"]), resp["trailers"]


async def open_plain(port):
    return _Tcp(*await asyncio.open_connection("127.0.0.1", port))


# -- plaintext mode -------------------------------------------------------------

@pytest.mark.parametrize("name,app_protocol", [("grpc", ""), ("http2-web", ""),
                                               ("h2c-api", ""), ("tcp", "kubernetes.io/h2c"),
                                               ("web", "http2")])
async def test_h2_client_gets_body_and_trailers(h2backend, name, app_protocol):
    mesh = Mesh()
    h2_service(mesh, h2backend, name=name, app_protocol=app_protocol)
    async with running_waypoint(mesh, plaintext=True) as wp:
        s = await open_plain(wp.plaintext_port)
        status, headers, body, trailers = await h2_exchange(
            s, "/pkg.Svc/Method", body=b"\x00\x00\x00\x00\x03abc",
            trailers=[("x-req-trailer", "yes")])
        s.close()
    assert status == 200
    assert headers["content-type"] == "application/grpc"
    assert trailers == {"grpc-status": "0", "grpc-message": "ok"}
    got = json.loads(body)
    assert got["protocol"] == "HTTP/2" and got["method"] == "POST"
    assert got["path"] == "/pkg.Svc/Method" and got["body_len"] == 8
    assert got["headers"]["te"] == "trailers"
    assert got["trailers"] == {"x-req-trailer": "yes"}
    assert h2backend.seen[-1].protocol == "HTTP/2"


async def test_concurrent_streams_share_one_upstream_connection(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend)
    async with running_waypoint(mesh, plaintext=True) as wp:
        conns = [await open_plain(wp.plaintext_port) for _ in range(4)]
        results = await asyncio.gather(*(h2_exchange(c, f"/m/{i}", method="GET")
                                         for i, c in enumerate(conns)))
        for c in conns:
            c.close()
    assert [r[0] for r in results] == [200] * 4
    assert all(r[3]["grpc-status"] == "0" for r in results)
    assert h2backend.connections == 1        # multiplexed on one pooled connection


async def test_http1_client_to_h2_backend(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend)
    async with running_waypoint(mesh, plaintext=True) as wp:
        def call():
            c = http.client.HTTPConnection("127.0.0.1", wp.plaintext_port, timeout=10)
            c.request("POST", "/from-h1", body=b"hello", headers={"Host": "echo:8080"})
            r = c.getresponse()
            data = r.read()
            c.close()
            return r, data
        r, data = await asyncio.to_thread(call)
    assert r.status == 200
    got = json.loads(data)
    assert got["protocol"] == "HTTP/2" and got["path"] == "/from-h1" and got["body_len"] == 5
    assert "transfer-encoding" not in got["headers"] and "connection" not in got["headers"]


async def test_http1_client_gets_trailers_as_chunked_trailers(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend)
    async with running_waypoint(mesh, plaintext=True) as wp:
        r, w = await asyncio.open_connection("127.0.0.1", wp.plaintext_port)
        w.write(b"GET /t HTTP/1.1\r\nHost: echo:8080\r\nTE: trailers\r\n\r\n")
        await w.drain()
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"grpc-message" not in data:
            more = await asyncio.wait_for(r.read(65536), 10)
            assert more
            data += more
        w.close()
    assert b"transfer-encoding: chunked" in data.lower()
    assert data.endswith(b"0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n")


async def test_large_bodies_both_ways_byte_exact(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend)
    big = pattern(BIG)
    async with running_waypoint(mesh, plaintext=True) as wp:
        s = await open_plain(wp.plaintext_port)
        status, _, echoed, trailers = await h2_exchange(s, "/echo", body=big)
        status2, _, down, _ = await h2_exchange(await open_plain(wp.plaintext_port),
                                                f"/bytes/{BIG}", method="GET")
        s.close()
    assert status == 200 and trailers["grpc-status"] == "0"
    assert len(echoed) == BIG and hashlib.sha256(echoed).digest() == hashlib.sha256(big).digest()
    assert status2 == 200 and down == big


async def test_http1_client_large_upload_to_h2_backend(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend)
    big = pattern(BIG)
    async with running_waypoint(mesh, plaintext=True) as wp:
        def call():
            c = http.client.HTTPConnection("127.0.0.1", wp.plaintext_port, timeout=20)
            c.request("PUT", "/echo", body=big, headers={"Host": "echo:8080"})
            r = c.getresponse()
            return r.status, r.read()
        status, data = await asyncio.to_thread(call)
    assert status == 200 and data == big


async def test_http1_port_still_speaks_http1(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend, name="http")           # plain HTTP port
    async with running_waypoint(mesh, plaintext=True) as wp:
        s = await open_plain(wp.plaintext_port)
        status, _, body, _ = await h2_exchange(s, "/plain", method="GET")
        s.close()
    assert status == 200
    assert json.loads(body)["protocol"] == "HTTP/1.1"
    assert h2backend.seen[-1].protocol == "HTTP/1.1" and h2backend.seen[-1].path == "/plain"


async def test_unreachable_h2_backend_is_503(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend)
    h2backend.stop()
    async with running_waypoint(mesh, plaintext=True) as wp:
        s = await open_plain(wp.plaintext_port)
        status, _, body, _ = await h2_exchange(s, "/gone", method="GET")
        s.close()
    assert status == 503 and b"connection failure" in body


# -- behind HBONE -----------------------------------------------------------------

async def test_h2_through_hbone_both_sides(pki, cert_dir, h2backend):
    pod_cert = pki.issue("spiffe://cluster.local/ns/default/sa/echo")
    tunnels = []

    async def handler(req):
        tunnels.append(req.authority)
        return Accept(upstream=await connect_tcp(req.host, req.port))

    pod = HboneServer(handler)
    await pod.listen(h2backend.host, 15008, server_context(pod_cert),
                     trust_domain="cluster.local")
    mesh = Mesh()
    svc = h2_service(mesh, h2backend, name="grpc", protocol="HBONE")
    mesh.workloads[-1] = dataclasses.replace(mesh.workloads[-1], service_account="echo")
    cert = pki.issue(CURL_ID)
    client = HbonePool(lambda _src: client_context(cert))
    big = pattern(BIG)
    try:
        async with running_waypoint(mesh, plaintext=False, hbone_cert_dir=cert_dir,
                                    upstream_plaintext=False) as wp:
            async def tunnel():
                return await client.open(src=CURL_ID, dst_identities=(WAYPOINT_ID,),
                                         address=("127.0.0.1", wp.hbone_port),
                                         authority=f"{svc.vips[0]}:8080",
                                         forwarded_for=("10.244.0.9", 40000))
            small = await h2_exchange(await tunnel(), "/pkg.Svc/Call", body=b"ping")
            large = await h2_exchange(await tunnel(), "/echo", body=big)
    finally:
        await client.close()
        await pod.close()
    assert small[0] == 200 and small[3] == {"grpc-status": "0", "grpc-message": "ok"}
    assert json.loads(small[2])["protocol"] == "HTTP/2"
    assert large[0] == 200 and large[2] == big and large[3]["grpc-status"] == "0"
    assert tunnels == [f"{h2backend.host}:{h2backend.port}"]   # one pooled h2 connection


async def test_sequential_streams_reuse_the_upstream_connection(h2backend):
    """Echo streams (the backend answers while the body still arrives), one
    after the other from separate clients: one pooled upstream connection."""
    mesh = Mesh()
    h2_service(mesh, h2backend)
    async with running_waypoint(mesh, plaintext=True) as wp:
        results = []
        for i in range(3):
            s = await open_plain(wp.plaintext_port)
            results.append(await h2_exchange(s, f"/echo/{i}", body=f"msg-{i}".encode() * 1000))
            s.close()
    assert [(r[0], r[2]) for r in results] == [(200, f"msg-{i}".encode() * 1000) for i in range(3)]
    assert all(r[3]["grpc-status"] == "0" for r in results)
    assert h2backend.connections == 1


async def test_answer_before_the_request_body_ends_is_delivered(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend)
    async with running_waypoint(mesh, plaintext=True) as wp:
        s = await open_plain(wp.plaintext_port)
        status, _, body, trailers = await h2_exchange(s, "/early", body=pattern(1024 * 1024))
        s.close()
        again = await h2_exchange(await open_plain(wp.plaintext_port), "/after", method="GET")
    assert (status, body, trailers["grpc-status"]) == (200, b"early", "0")
    assert again[0] == 200 and json.loads(again[2])["path"] == "/after"


async def test_upstream_stream_reset_before_headers_is_502(h2backend):
    mesh = Mesh()
    h2_service(mesh, h2backend)
    async with running_waypoint(mesh, plaintext=True) as wp:
        s = await open_plain(wp.plaintext_port)
        status, _, body, _ = await h2_exchange(s, "/reset", method="GET")
        s.close()
    assert status == 502 and b"connection termination" in body
