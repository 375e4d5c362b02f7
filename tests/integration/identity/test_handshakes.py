"""HBONE TLS handshakes over loopback: what is accepted and what is refused."""

import ssl

import pytest

from shoal.core.identity import spiffe, tls
from tests.helpers.pki import TestPKI
from tests.integration.identity.conftest import connect, roundtrip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SERVER = "spiffe://cluster.local/ns/a/sa/server"
CLIENT = "spiffe://cluster.local/ns/b/sa/client"


@pytest.fixture(scope="module")
def pki():
    return TestPKI(intermediate=True)


async def refused(port, ctx) -> bool:
    """True if the handshake, or the first read after it, fails."""
    try:
        reader, writer, _ = await connect(port, ctx)
        line = await roundtrip(reader, writer)
        writer.close()
        return line == b""
    except (ssl.SSLError, ConnectionError):
        return True


async def test_mutual_tls_with_intermediate_chain(pki, echo_server):
    srv = await echo_server(tls.server_context(pki.issue(SERVER)))
    reader, writer, _ = await connect(srv.port, tls.client_context(pki.issue(CLIENT)))
    assert spiffe.verify_server_identity(writer.get_extra_info("ssl_object"), (SERVER,)).uri == SERVER
    assert await roundtrip(reader, writer) == b"ping\n"
    assert [i.uri for i in srv.accepted] == [CLIENT]
    writer.close()


@pytest.mark.parametrize("bad", ["expired", "not_yet_valid", "wrong_key_usage", "untrusted"])
async def test_server_refuses_bad_client_certs(pki, echo_server, bad):
    srv = await echo_server(tls.server_context(pki.issue(SERVER)))
    if bad == "untrusted":
        cert = TestPKI(name="stranger").issue(CLIENT, roots=pki.roots)
    else:
        cert = pki.issue(CLIENT, **{bad: True})
    assert await refused(srv.port, tls.client_context(cert))
    assert srv.accepted == []


@pytest.mark.parametrize("bad", ["expired", "not_yet_valid", "wrong_key_usage", "untrusted"])
async def test_client_refuses_bad_server_certs(pki, echo_server, bad):
    if bad == "untrusted":
        cert = TestPKI(name="stranger").issue(SERVER, roots=pki.roots)
    else:
        cert = pki.issue(SERVER, **{bad: True})
    srv = await echo_server(tls.server_context(cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(srv.port, tls.client_context(pki.issue(CLIENT)))


async def test_server_refuses_another_trust_domain(pki, echo_server):
    # Same root, so the chain verifies; the SPIFFE trust domain check refuses it.
    srv = await echo_server(tls.server_context(pki.issue(SERVER)))
    assert await refused(srv.port, tls.client_context(pki.issue("spiffe://other.td/ns/b/sa/client")))
    assert srv.refused == ["trust_domain_mismatch"]


async def test_server_refuses_a_client_without_spiffe_san(pki, echo_server):
    srv = await echo_server(tls.server_context(pki.issue(SERVER)))
    assert await refused(srv.port, tls.client_context(pki.issue(CLIENT, no_san=True)))
    assert srv.refused == ["no_spiffe_san"]


async def test_client_refuses_an_unexpected_server_identity(pki, echo_server):
    srv = await echo_server(tls.server_context(pki.issue("spiffe://cluster.local/ns/a/sa/impostor")))
    reader, writer, _ = await connect(srv.port, tls.client_context(pki.issue(CLIENT)))
    with pytest.raises(spiffe.PeerVerificationError) as e:
        spiffe.verify_server_identity(writer.get_extra_info("ssl_object"), (SERVER,))
    assert e.value.code == "identity_mismatch"
    assert "impostor" in str(e.value) and SERVER in str(e.value)
    writer.close()


async def test_client_without_certificate_is_refused(pki, echo_server):
    srv = await echo_server(tls.server_context(pki.issue(SERVER)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    assert await refused(srv.port, ctx)
    assert srv.accepted == []


async def test_rotating_server_context_swaps_certificate_per_handshake(pki, echo_server):
    current = {"ctx": tls.server_context(pki.issue(SERVER))}
    srv = await echo_server(tls.rotating_server_context(lambda: current["ctx"]))
    client = tls.client_context(pki.issue(CLIENT))
    r1, w1, serial1 = await connect(srv.port, client)
    assert w1.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    current["ctx"] = tls.server_context(pki.issue(SERVER))
    r2, w2, serial2 = await connect(srv.port, client)
    assert serial1 != serial2
    assert await roundtrip(r1, w1) == b"ping\n" and await roundtrip(r2, w2) == b"ping\n"
    current["ctx"] = None                          # no certificate: refuse
    assert await refused(srv.port, client)
    w1.close()
    w2.close()


async def test_rotating_server_context_still_requires_a_trusted_client(pki, echo_server):
    srv = await echo_server(tls.rotating_server_context(lambda: tls.server_context(pki.issue(SERVER))))
    stranger = TestPKI(name="stranger").issue(CLIENT, roots=pki.roots)
    assert await refused(srv.port, tls.client_context(stranger))
    ctx = tls.client_context(pki.issue(CLIENT))
    ctx.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await refused(srv.port, ctx)
    assert srv.accepted == []
