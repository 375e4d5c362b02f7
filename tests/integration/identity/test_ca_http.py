"""The CA's HTTP layer over real mutual TLS: malformed requests get precise errors."""

import asyncio
import ssl

import orjson
import pytest

from shoal.controlplane.authority import NODE_CN_PREFIX, CertificateAuthority
from shoal.controlplane.server import MAX_BODY_BYTES, CaServer, control_plane_context
from shoal.core.identity.certs import WorkloadCert, load_pem_certs
from shoal.core.identity.spiffe import Identity

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ZTUNNEL = Identity.parse("spiffe://cluster.local/ns/istio-system/sa/ztunnel")


@pytest.fixture
async def ca_port():
    ca = CertificateAuthority.self_signed()
    server = CaServer(ca, lambda node: set())
    port = await server.start()
    key, signed = ca.issue_credential(ZTUNNEL, NODE_CN_PREFIX + "node-1")
    cred = WorkloadCert.build(key, load_pem_certs(signed.cert_chain[0])[0], (),
                              load_pem_certs(signed.trust_bundle[0]))
    yield port, control_plane_context(cred, server_side=False)
    await server.close()


async def raw(port, ctx, data: bytes) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=None)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


def post(body: bytes, path="/v1/certificates", method="POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("request_bytes,status,code", [
    (post(b"{not json"), 400, "bad_json"),
    (post(b'{"csr": 1}'), 400, "bad_request"),
    (post(b'{"csr": "x", "identity": "spiffe://cluster.local/ns/a/sa/b"}'), 403, "not_on_node"),
    (post(b'{"csr": "x", "identity": "nope"}'), 400, "bad_identity"),
    (post(b'{"csr": "x", "identity": "spiffe://cluster.local/ns/a/sa/b", "ttl_seconds": "1h"}'),
     400, "bad_ttl"),
    (post(b"", path="/v1/other"), 404, "not_found"),
    (post(b"", method="GET"), 405, "method_not_allowed"),
    (b"GET /v1/trust-bundle HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413,
     "body_too_large"),
    (b"BLAH\r\n\r\n", 400, "bad_request"),
])
async def test_malformed_requests_get_a_status_and_a_code(ca_port, request_bytes, status, code):
    port, ctx = ca_port
    got_status, body = await raw(port, ctx, request_bytes)
    assert (got_status, body["code"]) == (status, code)
    assert body["error"]


async def test_trust_bundle_and_readiness(ca_port):
    port, ctx = ca_port
    status, body = await raw(port, ctx, b"GET /v1/trust-bundle HTTP/1.1\r\n\r\n")
    assert status == 200 and len(body["trust_bundle"]) == 1
    status, body = await raw(port, ctx, b"GET /healthz/ready HTTP/1.1\r\n\r\n")
    assert status == 200 and body == {"status": "ok"}


async def test_a_client_without_certificate_is_refused(ca_port):
    port, _ = ca_port
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=None)
        writer.write(b"GET /v1/trust-bundle HTTP/1.1\r\n\r\n")
        out = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    except (ssl.SSLError, ConnectionError):
        out = b""
    assert out == b""          # no HTTP answer at all
