"""Certificate renewal and root rotation while TLS traffic flows.

A real CA (CaServer over mutual TLS on loopback) signs for two CertManagers
(a client node and a server node); an echo server takes its certificate from
the manager at each handshake, as the HBONE server does.
"""

import ssl
import time

import pytest

from shoal.controlplane import store
from shoal.controlplane.authority import NODE_CN_PREFIX
from shoal.controlplane.server import CaServer
from shoal.core.identity import tls
from shoal.core.identity.caclient import CaClient
from shoal.core.identity.certs import WorkloadCert, load_pem_certs
from shoal.core.identity.manager import CertManager
from shoal.core.identity.spiffe import Identity, verify_server_identity
from tests.integration.identity.conftest import connect, roundtrip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SERVER = Identity.parse("spiffe://cluster.local/ns/a/sa/server")
CLIENT = Identity.parse("spiffe://cluster.local/ns/b/sa/client")
ZTUNNEL = Identity.parse("spiffe://cluster.local/ns/istio-system/sa/ztunnel")
HOUR = 3600.0


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.time() + self.offset


def node_credential(ca, node) -> WorkloadCert:
    key, signed = ca.issue_credential(ZTUNNEL, NODE_CN_PREFIX + node)
    chain = [load_pem_certs(p)[0] for p in signed.cert_chain]
    return WorkloadCert.build(key, chain[0], chain[1:], [load_pem_certs(p)[0] for p in signed.trust_bundle])


@pytest.fixture
async def mesh(tmp_path):
    ca = store.load_or_create(tmp_path)
    placement = {"node-a": {CLIENT.uri}, "node-b": {SERVER.uri}}
    server = CaServer(ca, lambda node: placement.get(node, set()))
    port = await server.start()
    clock = Clock()
    managers = {}
    for node in ("node-a", "node-b"):
        client = CaClient(("127.0.0.1", port), node_credential(ca, node))
        managers[node] = CertManager(client, node_name=node, clock=clock, background=False)
    yield server, managers["node-a"], managers["node-b"], clock, tmp_path
    for m in managers.values():
        await m.close()
    await server.close()


async def renew(mgr, clock, hours):
    clock.offset += hours * HOUR
    mgr.tick()
    await mgr.idle()


async def test_renewal_keeps_live_connections_and_new_ones_get_the_new_serial(mesh, echo_server):
    _, client_mgr, server_mgr, clock, _ = mesh
    first = await server_mgr.fetch(SERVER)
    srv = await echo_server(tls.rotating_server_context(lambda: server_mgr.server_context(SERVER)))
    reader, writer, serial = await connect(srv.port, await client_mgr.client_context_for(CLIENT))
    assert serial == first.serial
    assert await roundtrip(reader, writer) == b"ping\n"

    await renew(server_mgr, clock, 13)                 # past half-life of 24 h
    second = server_mgr.get(SERVER)
    assert second.serial != first.serial
    assert await roundtrip(reader, writer, b"still here\n") == b"still here\n"
    r2, w2, serial2 = await connect(srv.port, client_mgr.client_context(CLIENT))
    assert serial2 == second.serial
    assert await roundtrip(r2, w2) == b"ping\n"
    assert await roundtrip(reader, writer) == b"ping\n"
    rows = {r["identity"]: r for r in server_mgr.list()}
    assert rows[SERVER.uri]["serial"] == second.serial and rows[SERVER.uri]["state"] == "Available"
    writer.close()
    w2.close()


async def test_root_rotation_with_overlapping_bundle_keeps_traffic_flowing(mesh, echo_server):
    ca_server, client_mgr, server_mgr, clock, state = mesh
    old_root = ca_server.ca.signing_cert
    await server_mgr.fetch(SERVER)
    srv = await echo_server(tls.rotating_server_context(lambda: server_mgr.server_context(SERVER)))
    reader, writer, _ = await connect(srv.port, await client_mgr.client_context_for(CLIENT))

    async def new_connection_works():
        r, w, _ = await connect(srv.port, client_mgr.client_context(CLIENT))
        verify_server_identity(w.get_extra_info("ssl_object"), (SERVER,))
        ok = await roundtrip(r, w) == b"ping\n"
        w.close()
        return ok

    # 1. add: both nodes learn the new root; the old one still signs.
    store.rotate_root(state, "add")
    ca_server.reload_ca(store.load_or_create(state))
    for m in (client_mgr, server_mgr):
        await m.refresh_trust_bundle()
        assert len(m.roots) == 2
    assert await new_connection_works()

    # 2. activate: only the server node renews, so its leaf chains to the new
    #    root while the client's leaf still chains to the old one.
    store.rotate_root(state, "activate")
    ca_server.reload_ca(store.load_or_create(state))
    await renew(server_mgr, clock, 13)
    new_root = ca_server.ca.signing_cert
    assert new_root != old_root
    server_mgr.get(SERVER).leaf.verify_directly_issued_by(new_root)
    client_mgr.get(CLIENT).leaf.verify_directly_issued_by(old_root)
    assert await new_connection_works()
    assert await roundtrip(reader, writer) == b"ping\n"   # the live connection too

    # 3. the client renews as well; the operator re-issues the node
    #    credentials (they chain to the old root too), then retires it.
    await renew(client_mgr, clock, 0)
    client_mgr.get(CLIENT).leaf.verify_directly_issued_by(new_root)
    for node, m in (("node-a", client_mgr), ("node-b", server_mgr)):
        m.ca.set_credential(node_credential(ca_server.ca, node))
    store.rotate_root(state, "retire")
    ca_server.reload_ca(store.load_or_create(state))
    for m in (client_mgr, server_mgr):
        await m.refresh_trust_bundle()
        assert m.roots == (new_root,)
    assert await new_connection_works()
    assert await roundtrip(reader, writer) == b"ping\n"
    writer.close()


async def test_without_overlap_an_old_peer_is_refused(mesh, echo_server):
    """The control case: a peer that never learned the new root cannot verify it."""
    ca_server, client_mgr, server_mgr, clock, state = mesh
    await client_mgr.fetch(CLIENT)
    store.rotate_root(state, "add")
    ca_server.reload_ca(store.load_or_create(state))
    await server_mgr.refresh_trust_bundle()   # the client node never does
    store.rotate_root(state, "activate")
    ca_server.reload_ca(store.load_or_create(state))
    await server_mgr.fetch(SERVER)          # leaf from the new root
    srv = await echo_server(tls.rotating_server_context(lambda: server_mgr.server_context(SERVER)))
    assert len(client_mgr.roots) == 1
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(srv.port, client_mgr.client_context(CLIENT))
