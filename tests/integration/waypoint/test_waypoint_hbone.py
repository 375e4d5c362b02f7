"""The waypoint behind real HBONE: a core.hbone client (the source ztunnel's
role) connects to the waypoint's HBONE listener with a workload identity;
upstream, the waypoint opens HBONE to a "pod" HBONE server (the destination
ztunnel's role) that forwards to a real backend.

The pod servers listen on <pod loopback IP>:15008 (Istio's fixed HBONE port,
which the waypoint dials); every test process uses its own 127.x/16, so
these binds never collide.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from shoal.core.hbone import HboneError
from shoal.core.hbone.pool import HbonePool
from shoal.core.hbone.server import Accept, HboneServer
from shoal.core.identity.tls import client_context, server_context
from shoal.core.pipe import connect_tcp
from shoal.core.records import (Authorization, Operation, Rule, Source, TargetRef)
from tests.helpers.waypoint_mesh import WAYPOINT_ID, Mesh, capture_access_log, running_waypoint
from shoal.waypoint.http1 import BodyReceived, H1ResponseParser, MessageEnded, ResponseReceived

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CURL_ID = "spiffe://cluster.local/ns/default/sa/curl"
OTHER_ID = "spiffe://cluster.local/ns/other/sa/intruder"


class HboneClient:
    """A source-ztunnel stand-in: one pool, one identity."""

    def __init__(self, pki, identity: str) -> None:
        self.identity = identity
        cert = pki.issue(identity)
        self.pool = HbonePool(lambda _src: client_context(cert))

    async def open(self, port: int, authority: str):
        return await self.pool.open(src=self.identity, dst_identities=(WAYPOINT_ID,),
                                    address=("127.0.0.1", port), authority=authority,
                                    forwarded_for=("10.244.0.9", 40000))

    async def close(self):
        await self.pool.close()


async def request(stream, method="GET", path="/", body=b"", host="echo:8080"):
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    await stream.write(head.encode() + body)
    p = H1ResponseParser(method)
    status, data, done = 0, b"", False
    while not done:
        chunk = await asyncio.wait_for(stream.read(65536), 10)
        for e in p.receive_data(chunk):
            if isinstance(e, ResponseReceived):
                status = e.head.status
            elif isinstance(e, BodyReceived):
                data += e.data
            elif isinstance(e, MessageEnded):
                done = True
    return status, data


async def test_connect_must_name_a_destination_of_this_waypoint(pki, cert_dir, backends):
    mesh = Mesh()
    mine = mesh.service("echo", [backends("v1")])
    other = mesh.service("elsewhere", [backends("v2")], waypoint=False)
    client = HboneClient(pki, CURL_ID)
    async with running_waypoint(mesh, plaintext=False, hbone_cert_dir=cert_dir) as wp:
        stream = await client.open(wp.hbone_port, f"{mine.vips[0]}:8080")
        assert (await request(stream))[0] == 200
        for authority in (f"{other.vips[0]}:8080", "10.255.255.1:80", f"{mine.vips[0]}:9999"):
            with pytest.raises(HboneError) as err:
                await client.open(wp.hbone_port, authority)
            assert err.value.status == 400
    await client.close()


async def test_l7_authorization_with_peer_identity(pki, cert_dir, backends):
    mesh = Mesh()
    svc = mesh.service("echo", [backends("v1")])
    mesh.policy(Authorization(
        name="get-from-curl", namespace="default", scope="TARGET_REF", action="ALLOW",
        target_refs=(TargetRef(kind="Service", name="echo"),),
        rules=(Rule(from_=(Source(principals=("cluster.local/ns/default/sa/curl",)),),
                    to=(Operation(methods=("GET",)),)),)))
    mesh.policy(Authorization(
        name="no-admin", namespace="default", scope="TARGET_REF", action="DENY",
        target_refs=(TargetRef(kind="Gateway", name="waypoint"),),
        rules=(Rule(to=(Operation(paths=("/admin/*",)),)),)))
    mesh.policy(Authorization(                     # mesh-wide, every waypoint
        name="mesh-block", namespace="istio-system", scope="TARGET_REF", action="DENY",
        target_refs=(TargetRef(kind="GatewayClass", name="istio-waypoint"),),
        rules=(Rule(to=(Operation(paths=("/blocked-everywhere",)),)),)))
    curl, intruder = HboneClient(pki, CURL_ID), HboneClient(pki, OTHER_ID)
    authority = f"{svc.vips[0]}:8080"
    async with running_waypoint(mesh, plaintext=False, hbone_cert_dir=cert_dir) as wp:
        s = await curl.open(wp.hbone_port, authority)
        ok = await request(s, "GET", "/hello")
        post = await request(s, "POST", "/hello", b"x")
        admin = await request(s, "GET", "/admin/users")
        blocked = await request(s, "GET", "/blocked-everywhere")   # a GET the ALLOW permits
        s2 = await intruder.open(wp.hbone_port, authority)
        denied = await request(s2, "GET", "/hello")
    await curl.close()
    await intruder.close()
    assert ok[0] == 200
    assert json.loads(ok[1])["headers"]["traceparent"].startswith("00-")
    assert post == (403, b"RBAC: access denied")
    assert admin == (403, b"RBAC: access denied")
    assert blocked == (403, b"RBAC: access denied")
    assert denied == (403, b"RBAC: access denied")


async def test_upstream_is_a_new_hbone_tunnel_to_the_pod(pki, cert_dir, backends):
    backend = backends("v1")
    pod_cert = pki.issue("spiffe://cluster.local/ns/default/sa/echo")
    seen = []

    async def handler(req):
        seen.append((req.authority, str(req.peer_identity)))
        return Accept(upstream=await connect_tcp(req.host, req.port))

    pod = HboneServer(handler)
    await pod.listen(backend.host, 15008, server_context(pod_cert),
                     trust_domain="cluster.local")
    mesh = Mesh()
    # the pod runs as the "default" service account in the mesh's records
    svc = mesh.service("echo", [backend], protocol="HBONE")
    mesh.workloads[-1] = dataclasses.replace(mesh.workloads[-1], service_account="echo")
    client = HboneClient(pki, CURL_ID)
    try:
        async with running_waypoint(mesh, plaintext=False, hbone_cert_dir=cert_dir,
                                    upstream_plaintext=False) as wp:
            s = await client.open(wp.hbone_port, f"{svc.vips[0]}:8080")
            results = [await request(s, "GET", f"/via-hbone/{i}") for i in range(3)]
    finally:
        await client.close()
        await pod.close()
    assert [r[0] for r in results] == [200, 200, 200]
    assert seen and seen[0] == (f"{backend.host}:{backend.port}", WAYPOINT_ID)
    assert len(seen) == 1          # the upstream HTTP/1.1 connection was kept alive


async def test_metrics_and_access_log(pki, cert_dir, backends, caplog):
    import logging

    from shoal.core import metrics as core_metrics
    caplog.set_level(logging.INFO, logger="shoal.access")   # restored after the test
    mesh = Mesh()
    svc = mesh.service("echo", [backends("v1")])
    client = HboneClient(pki, CURL_ID)
    try:
        async with running_waypoint(mesh, plaintext=False, hbone_cert_dir=cert_dir) as wp:
            written = capture_access_log(wp)
            s = await client.open(wp.hbone_port, f"{svc.vips[0]}:8080")
            await request(s, "GET", "/metered")
            await request(s, "GET", "/status/418")
            wp.app.proxy.telemetry.flush()
    finally:
        await client.close()
    text = core_metrics.render()[0].decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("istio_requests_total{")
             and 'reporter="waypoint"' in ln and 'destination_service="echo.default.svc.cluster.local"' in ln]
    assert any('response_code="418"' in ln and 'source_principal="spiffe://cluster.local/ns/default/sa/curl"' in ln
               for ln in lines), lines
    assert "istio_request_duration_milliseconds_bucket" in text
    fields = [json.loads(line) for chunk in written for line in chunk.splitlines()]
    assert any(f["path"] == "/metered" and f["response_code"] == 200 and f["scope"] == "access"
               and f["source_principal"] == CURL_ID and f["downstream_peer"] == "10.244.0.9"
               and f["downstream_local_address"] == f"{svc.vips[0]}:8080"
               for f in fields), fields


@pytest.mark.parametrize("sa,labelled", [("curl", True), ("impostor", False)])
async def test_source_workload_only_with_the_verified_identity(pki, cert_dir, backends, sa,
                                                               labelled):
    """The workload at the forwarded client address labels the request only
    when its identity is the peer certificate's (an address is not proof)."""
    from shoal.core import metrics as core_metrics
    from shoal.core.records import Workload
    mesh = Mesh()
    svc = mesh.service(f"echo-{sa}", [backends("v1")])
    mesh.workloads.append(Workload(uid=f"Kubernetes//Pod/default/client-{sa}", name=f"client-{sa}",
                                   namespace="default", ips=("10.244.0.9",), service_account=sa))
    client = HboneClient(pki, CURL_ID)
    try:
        async with running_waypoint(mesh, plaintext=False, hbone_cert_dir=cert_dir) as wp:
            s = await client.open(wp.hbone_port, f"{svc.vips[0]}:8080")
            await request(s, "GET", "/who")
            wp.app.proxy.telemetry.flush()
    finally:
        await client.close()
    lines = [ln for ln in core_metrics.render()[0].decode().splitlines()
             if ln.startswith("istio_requests_total{") and f'destination_service="{svc.hostname}"' in ln]
    assert lines and all(f'source_principal="{CURL_ID}"' in ln for ln in lines), lines
    assert all((f'source_workload="client-{sa}"' in ln) == labelled for ln in lines), lines


async def test_http2_prior_knowledge_inside_the_tunnel(pki, cert_dir, backends):
    import h2.config
    import h2.connection
    import h2.events
    mesh = Mesh()
    svc = mesh.service("echo", [backends("v1")])
    client = HboneClient(pki, CURL_ID)
    async with running_waypoint(mesh, plaintext=False, hbone_cert_dir=cert_dir) as wp:
        stream = await client.open(wp.hbone_port, f"{svc.vips[0]}:8080")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sids = []
        for i in range(3):                      # three concurrent streams
            sid = conn.get_next_available_stream_id()
            sids.append(sid)
            conn.send_headers(sid, [(":method", "POST"), (":path", f"/h2/{i}"),
                                    (":scheme", "http"), (":authority", "echo:8080")])
            conn.send_data(sid, f"body-{i}".encode(), end_stream=True)
        await stream.write(conn.data_to_send())
        status, bodies, ended = {}, {s: b"" for s in sids}, set()
        while len(ended) < 3:
            data = await asyncio.wait_for(stream.read(65536), 10)
            assert data, "tunnel closed early"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status[ev.stream_id] = dict(ev.headers)[b":status"]
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.add(ev.stream_id)
            await stream.write(conn.data_to_send())
    await client.close()
    assert set(status.values()) == {b"200"}
    for i, sid in enumerate(sids):
        got = json.loads(bodies[sid])
        assert got["path"] == f"/h2/{i}" and got["body"] == f"body-{i}"
