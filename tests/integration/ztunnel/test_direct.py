"""Two in-process ztunnel proxies on loopback: HBONE, authorization, telemetry.

The fast tier (like ztunnel's tests/direct.rs): real sockets, real TLS and
HTTP/2, real CertManager and CA signing, apps as real processes; no supervisor.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest

from shoal.core import metrics as core_metrics
from shoal.core.records import (Authorization, Rule, Service, ServicePort, Source, Workload)
from shoal.routing.view import StaticView
from tests.helpers.ztunnel_apps import expected_hash, pattern
from tests.helpers.ztunnel_direct import LocalCa, ViewBox, start_proxy
from tests.helpers.ztunnel_mesh import unique_prefix
from tests.helpers.ports import APP_PORT, free_port
from tests.helpers.ztunnel_peers import python_app
from tests.helpers.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

VIP = "10.96.7.7"
EMPTY_VIP = "10.96.7.8"


def wl(name, ip, node, sa):
    return Workload(uid=f"Kubernetes//Pod/default/{name}", name=name, namespace="default",
                    ips=(ip,), node=node, service_account=sa, protocol="HBONE",
                    labels={"app": name}, canonical_name=name, workload_name=name,
                    services={"default/echo.default.svc.cluster.local": {80: APP_PORT}}
                    if name.startswith("echo") else {})




class Rig:
    def __init__(self, tmp_path):
        p = unique_prefix()
        self.ip = {"a": p + "250", "b": p + "251", "client": p + "1", "echo-1": p + "11",
                   "echo-2": p + "12"}
        self.client = wl("client", self.ip["client"], "node-a", "sleep")
        self.echo = [wl("echo-1", self.ip["echo-1"], "node-b", "echo"),
                     wl("echo-2", self.ip["echo-2"], "node-b", "echo")]
        self.service = Service(name="echo", namespace="default",
                               hostname="echo.default.svc.cluster.local", vips=(VIP,),
                               ports=(ServicePort(port=80, target_port=APP_PORT),),
                               endpoints=tuple(sorted(w.uid for w in self.echo)))
        self.tmp = tmp_path
        self.fixed = {(VIP, 80): free_port(), (self.ip["echo-1"], APP_PORT): free_port(),
                      (EMPTY_VIP, 80): free_port()}
        self.fixed_inbound = {(self.ip["echo-1"], APP_PORT): free_port()}
        self.empty = Service(name="empty", namespace="default",
                             hostname="empty.default.svc.cluster.local", vips=(EMPTY_VIP,),
                             ports=(ServicePort(port=80, target_port=APP_PORT),))
        self.view = ViewBox(self.make_view())

    def make_view(self, policies=(), generation=1):
        return StaticView(workloads=(self.client, *self.echo),
                          services=(self.service, self.empty),
                          policies=policies, generation=generation)

    async def start(self):
        self.apps = [python_app(w.name, f"{w.ips[0]}:{APP_PORT}", self.tmp) for w in self.echo]
        ca = LocalCa()
        hb = free_port()
        m = core_metrics.istio()
        self.a = await start_proxy(node="node-a", bind=self.ip["a"], view=self.view, ca=ca,
                                   metrics=m, hbone_port=hb, outbound_port=free_port(),
                                   inbound_port=free_port(), fixed=self.fixed)
        self.b = await start_proxy(node="node-b", bind=self.ip["b"], view=self.view, ca=ca,
                                   metrics=m, hbone_port=hb, outbound_port=free_port(),
                                   inbound_port=free_port(), fixed={},
                                   fixed_inbound=self.fixed_inbound)
        for _ in range(200):
            if self.a.ready() and self.b.ready():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("certificates not fetched")

    async def stop(self):
        await self.a.close(0.5)
        await self.b.close(0.5)
        for p in self.apps:
            p.stop()

    async def open(self, dst):
        return await asyncio.open_connection(self.ip["a"], self.fixed[dst],
                                             local_addr=(self.ip["client"], 0))


@pytest.fixture
async def rig(tmp_path):
    r = Rig(tmp_path)
    await r.start()
    yield r
    await r.stop()


async def echo_once(rig, dst, payload=b"ping"):
    reader, writer = await rig.open(dst)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_echo_through_two_ztunnels_by_vip_and_pod_ip(rig):
    assert await echo_once(rig, (VIP, 80)) == b"ping"
    assert await echo_once(rig, (rig.ip["echo-1"], APP_PORT), b"x" * 100000) == b"x" * 100000


async def test_byte_exact_both_ways_with_half_close(rig):
    size = 8 << 20
    reader, writer = await rig.open((VIP, 80))
    writer.write(f"XFER {size} 8\n".encode())
    for block in pattern(7, size):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    line = await reader.readline()
    h = hashlib.sha256()
    n = 0
    while chunk := await reader.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    writer.close()
    assert line.split()[0].decode() == expected_hash(7, size)
    assert (n, h.hexdigest()) == (size, expected_hash(8, size))


async def test_denied_connection_is_reset(rig):
    deny = Authorization(name="deny-sleep", namespace="default", scope="NAMESPACE",
                         action="DENY", rules=(Rule(from_=(Source(
                             principals=("cluster.local/ns/default/sa/sleep",)),)),))
    rig.view.view = rig.make_view([deny], generation=2)
    with pytest.raises(ConnectionResetError):
        data = await echo_once(rig, (VIP, 80))
        if not data:
            raise ConnectionResetError("closed without data")



async def plaintext_echo(rig, src_ip):
    port = rig.fixed_inbound[(rig.ip["echo-1"], APP_PORT)]
    reader, writer = await asyncio.open_connection(rig.ip["b"], port, local_addr=(src_ip, 0))
    writer.write(b"plain")
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_plaintext_inbound_is_authorized_without_identity(rig):
    outsider = rig.ip["client"].rsplit(".", 1)[0] + ".99"     # not a workload
    assert await plaintext_echo(rig, outsider) == b"plain"
    # A namespace rule needs an identity: plaintext never matches it.
    ns_only = Authorization(name="ns-only", namespace="default", scope="NAMESPACE",
                            action="ALLOW", rules=(Rule(from_=(Source(
                                namespaces=("default",)),)),))
    rig.view.view = rig.make_view([ns_only], generation=2)
    with pytest.raises(ConnectionResetError):
        if await plaintext_echo(rig, outsider) == b"":
            raise ConnectionResetError("closed without data")
    # ipBlocks apply to plaintext.
    by_ip = Authorization(name="by-ip", namespace="default", scope="NAMESPACE", action="ALLOW",
                          rules=(Rule(from_=(Source(ip_blocks=(f"{outsider}/32",)),)),))
    rig.view.view = rig.make_view([by_ip], generation=3)
    assert await plaintext_echo(rig, outsider) == b"plain"


async def test_service_without_healthy_endpoint_resets_and_says_so(rig, caplog):
    with pytest.raises(ConnectionResetError):
        if await echo_once(rig, (EMPTY_VIP, 80)) == b"":
            raise ConnectionResetError("closed without data")
    assert any("NO_HEALTHY_UPSTREAM" in str(getattr(r, "fields", {}).get("error", ""))
               for r in caplog.records)


async def test_app_reset_reaches_the_client_and_both_logs(rig, caplog):
    """The app resets without reading (RST, bytes unread): the destination
    ztunnel resets the tunnel, the source ztunnel resets the client (as
    ztunnel: never a clean end for bytes that were not delivered), and both
    ends' connection records carry the error, each once."""
    caplog.set_level(logging.INFO, logger="shoal.access")
    reader, writer = await rig.open((rig.ip["echo-1"], APP_PORT))
    writer.write(b"RSET" + b"x" * (4 << 20))
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(writer.drain(), 20)
        await asyncio.wait_for(reader.read(), 20)
    writer.close()

    def completions(direction):
        return [r for r in caplog.records if r.getMessage() == "connection complete"
                and getattr(r, "fields", {}).get("direction") == direction]
    await until(lambda: completions("outbound") and completions("inbound"), 10,
                "both connection records closed")
    (src,), (dst,) = completions("outbound"), completions("inbound")
    assert "reset" in str(src.fields.get("error", "")), src.fields
    assert "reset" in str(dst.fields.get("error", "")), dst.fields


async def test_every_proxy_socket_carries_mark_0x539(rig):
    import socket as s
    from shoal.core.constants import PROXY_MARK
    from shoal.core.sockets import SO_MARK
    for proxy in (rig.a, rig.b):
        socks = proxy.listening_sockets()
        assert socks
        assert all(x.getsockopt(s.SOL_SOCKET, SO_MARK) == PROXY_MARK for x in socks)
        raw = proxy.inputs.sockets.new_socket(s.AF_INET)      # what the HBONE pool connects
        try:
            assert raw.getsockopt(s.SOL_SOCKET, SO_MARK) == PROXY_MARK
        finally:
            raw.close()
    # Upstream (app) connections: made through the same factory.
    up = await rig.b.inputs.sockets.connect(rig.ip["echo-1"], APP_PORT)
    try:
        assert up.getsockopt(s.SOL_SOCKET, SO_MARK) == PROXY_MARK
    finally:
        up.close()


async def _connect_status(rig, authority, via=None):
    """Open a tunnel from node A as the client pod to `via`'s (default: the
    authority's) 15008; the CONNECT status (200 ok)."""
    from shoal.core.hbone import HboneError
    await rig.a.inputs.certs.fetch(rig.client.identity)
    ip = via or authority.rsplit(":", 1)[0]
    try:
        stream = await rig.a.inputs.pool.open(
            src=rig.client.identity, dst_identities=(rig.echo[0].identity,),
            address=(ip, rig.a.inputs.options.hbone_port), authority=authority)
    except HboneError as e:
        return e.status
    stream.close()
    return 200


async def test_hbone_statuses_200_401_503_400(rig):
    ip = rig.ip["echo-1"]
    assert await _connect_status(rig, f"{ip}:{APP_PORT}") == 200
    assert await _connect_status(rig, f"{ip}:{APP_PORT + 1}") == 503     # app unreachable
    # The authority names another pod than the one whose 15008 was reached.
    assert await _connect_status(rig, f"{rig.ip['echo-2']}:{APP_PORT}", via=ip) == 400
    deny = Authorization(name="deny-all", namespace="default", scope="NAMESPACE", action="DENY",
                         rules=(Rule(),))
    rig.view.view = rig.make_view([deny], generation=2)
    assert await _connect_status(rig, f"{ip}:{APP_PORT}") == 401


async def test_capture_listener_counts_against_the_worker_connection_limit(rig, monkeypatch):
    """15001 obeys core.overload like 15008: at the limit a new captured
    connection is closed at once (FIN, no bytes); the one already in is kept."""
    from shoal.core import overload
    # Both rig nodes live in this process and share its Overload: the first
    # captured connection on node-a plus its (pooled) HBONE connection into
    # node-b fill a limit of two.
    monkeypatch.setattr(overload, "_WORKER", overload.Overload(max_connections=2))
    reader, writer = await rig.open((VIP, 80))
    writer.write(b"first ")
    await writer.drain()
    r2, w2 = await rig.open((VIP, 80))
    assert await asyncio.wait_for(r2.read(), 10) == b""      # refused: closed, nothing sent
    w2.close()
    assert overload._WORKER.refused == {"max_connections": 1}
    writer.write(b"still served")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b"first still served"
    writer.close()
    # The captured connection is released; the pooled HBONE one stays.
    await until(lambda: overload._WORKER.connections == 1)


async def test_close_waits_for_a_connection_accepted_as_the_drain_began(rig):
    """A captured connection's task starts when its transport is made, a
    callback or two after the accept: one accepted just before the drain
    closed the listeners must be waited for, not cancelled or exited under
    (the reset test_faults saw at SIGHUP)."""
    order: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(down, dst, t0):
        started.set()
        await release.wait()
        order.append("tunnel finished")

    async def drain():
        await rig.a.close(5)
        order.append("drain returned")

    end = rig.a._capture_end(handler, ("127.0.0.1", 9))
    closing = asyncio.create_task(drain())
    await asyncio.sleep(0)              # the drain has begun (listeners closed)
    end.made.set_result(end)            # the connection's transport is made now
    await asyncio.wait_for(started.wait(), 5)
    release.set()
    await asyncio.wait_for(closing, 10)
    assert order == ["tunnel finished", "drain returned"]
