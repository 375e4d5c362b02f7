"""Istio's CA protocol (istio/api security/v1alpha1/ca.proto) in both directions.

1. An Istio-style client (grpcio, messages from the proto, the metadata
   ztunnel sends) asks shoal's CA on its real TLS listener: what Istio's
   ztunnel does against `shoal controlplane run`.
2. shoal's `GrpcCaClient` asks an IstioCertificateService written here with
   grpcio from the same proto, serving as istiod does (a certificate for
   istiod.istio-system.svc): a shoal ztunnel using istiod as its CA.
"""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from shoal.controlplane.authority import NODE_CN_PREFIX, CertificateAuthority, SigningError
from shoal.controlplane.nodeauth import Caller
from shoal.controlplane.server import CaServer
from shoal.core.identity import istioca
from shoal.core.identity.caclient import CaError
from shoal.core.identity.certs import WorkloadCert, csr_pem, load_pem_certs, make_csr
from shoal.core.identity.grpcca import CA_SERVER_NAME, GrpcCaClient
from shoal.core.identity.spiffe import Identity, identity_of_cert

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ZTUNNEL = Identity.parse("spiffe://cluster.local/ns/istio-system/sa/ztunnel")
REVIEWS = Identity.parse("spiffe://cluster.local/ns/bookinfo/sa/reviews")
RATINGS = Identity.parse("spiffe://cluster.local/ns/bookinfo/sa/ratings")
PEM = serialization.Encoding.PEM


def node_credential(ca: CertificateAuthority, node: str = "node-1") -> WorkloadCert:
    key, signed = ca.issue_credential(ZTUNNEL, NODE_CN_PREFIX + node)
    return WorkloadCert.build(key, load_pem_certs(signed.cert_chain[0])[0], (),
                              load_pem_certs(signed.trust_bundle[0]))


def channel_credentials(cred: WorkloadCert | None, roots) -> grpc.ChannelCredentials:
    root_pem = b"".join(r.public_bytes(PEM) for r in roots)
    if cred is None:
        return grpc.ssl_channel_credentials(root_certificates=root_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=root_pem,
        private_key=cred.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()),
        certificate_chain=cred.leaf.public_bytes(PEM))


def create_certificate(channel):
    return channel.unary_unary(istioca.METHOD_PATH,
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=istioca.IstioCertificateResponse.FromString)


def istio_request(identity: Identity, ttl: int = 3600):
    req = istioca.IstioCertificateRequest(csr=csr_pem(make_csr(identity)[1]), validity_duration=ttl)
    req.metadata.fields[istioca.IMPERSONATED_IDENTITY].string_value = identity.uri
    return req


@pytest.fixture
async def shoal_ca():
    ca = CertificateAuthority.self_signed()
    tokens = {"Bearer good-token": Caller(kind="node", name="node-1", identity=ZTUNNEL)}

    async def token_auth(authorization: str) -> Caller:
        # Stands in for controlplane/tokenauth.py's TokenReview.
        if authorization not in tokens:
            raise SigningError("token_rejected", "token not accepted", 401)
        return tokens[authorization]

    server = CaServer(ca, lambda node: {REVIEWS.uri} if node == "node-1" else set(),
                      token_auth=token_auth)
    port = await server.start()
    yield ca, port
    await server.close()


async def test_istio_client_gets_a_certificate_from_shoal(shoal_ca):
    ca, port = shoal_ca
    cred = node_credential(ca)
    opts = [("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(cred, cred.roots),
                                       options=opts) as ch:
        resp = await create_certificate(ch)(istio_request(REVIEWS), timeout=10)
    certs = [load_pem_certs(p)[0] for p in resp.cert_chain]
    assert identity_of_cert(certs[0]) == REVIEWS
    assert certs[-1] == cred.roots[0]                       # root last, as Istio's CA
    life = certs[0].not_valid_after_utc - certs[0].not_valid_before_utc
    assert life <= dt.timedelta(seconds=3600 + 300)         # validity_duration honoured


async def test_istio_client_with_a_token_and_no_certificate(shoal_ca):
    # Istio's ztunnel authenticates with a bearer token (its SA token).
    ca, port = shoal_ca
    opts = [("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(None, ca.roots),
                                       options=opts) as ch:
        call = create_certificate(ch)
        resp = await call(istio_request(REVIEWS), timeout=10,
                          metadata=(("authorization", "Bearer good-token"),))
        assert identity_of_cert(load_pem_certs(resp.cert_chain[0])[0]) == REVIEWS
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(istio_request(REVIEWS), timeout=10,
                       metadata=(("authorization", "Bearer bad"),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(istio_request(REVIEWS), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_istio_client_refused_for_a_pod_not_on_its_node(shoal_ca):
    ca, port = shoal_ca
    cred = node_credential(ca)
    opts = [("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(cred, cred.roots),
                                       options=opts) as ch:
        call = create_certificate(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(istio_request(RATINGS), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "node-1" in e.value.details()
        bad = istioca.IstioCertificateRequest(csr="not a csr")
        bad.metadata.fields[istioca.IMPERSONATED_IDENTITY].string_value = REVIEWS.uri
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(bad, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_shoal_grpc_client_against_shoals_ca(shoal_ca):
    ca, port = shoal_ca
    client = GrpcCaClient(("127.0.0.1", port), node_credential(ca))
    try:
        resp = await client.sign(REVIEWS, csr_pem(make_csr(REVIEWS)[1]))
        assert identity_of_cert(resp.cert_chain[0]) == REVIEWS
        assert resp.trust_bundle == tuple(ca.roots)
        with pytest.raises(CaError) as e:
            await client.sign(RATINGS, csr_pem(make_csr(RATINGS)[1]))
        assert e.value.status == 403
    finally:
        await client.close()


class IstiodStandIn:
    """IstioCertificateService written from ca.proto with grpcio, signing
    with a CertificateAuthority and answering leaf first, root last."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.seen: list[tuple[str, str]] = []

    async def create(self, request, context):
        ident = istioca.impersonated_identity(request)
        peer = context.auth_context().get("x509_pem_cert", [b""])[0]
        token = dict(context.invocation_metadata()).get("authorization", "")
        self.seen.append((ident, "cert" if peer else "none", token))
        signed = self.ca.sign_csr(request.csr, ident)
        return istioca.IstioCertificateResponse(
            cert_chain=[*signed.cert_chain, *signed.trust_bundle])


@pytest.fixture
async def istiod():
    ca = CertificateAuthority.self_signed()
    key, signed = ca.issue_credential(Identity.parse(
        "spiffe://cluster.local/ns/istio-system/sa/istiod"), "istiod",
        dns_names=(CA_SERVER_NAME,))
    stand_in = IstiodStandIn(ca)
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(istioca.SERVICE, {
        "CreateCertificate": grpc.unary_unary_rpc_method_handler(
            stand_in.create, request_deserializer=istioca.IstioCertificateRequest.FromString,
            response_serializer=lambda m: m.SerializeToString())})
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
          signed.cert_chain[0].encode())],
        root_certificates=signed.trust_bundle[0].encode(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    yield ca, port, stand_in
    await server.stop(None)


async def test_shoal_token_client_against_shoals_ca(shoal_ca, tmp_path):
    # A cluster ztunnel: no client certificate, the token and the published roots.
    ca, port = shoal_ca
    (tmp_path / "token").write_text("good-token")
    (tmp_path / "root-cert.pem").write_bytes(b"".join(r.public_bytes(PEM) for r in ca.roots))
    client = GrpcCaClient.with_token(("127.0.0.1", port), str(tmp_path / "token"),
                                     str(tmp_path / "root-cert.pem"))
    try:
        resp = await client.sign(REVIEWS, csr_pem(make_csr(REVIEWS)[1]))
    finally:
        await client.close()
    assert identity_of_cert(resp.cert_chain[0]) == REVIEWS


async def test_shoal_client_uses_an_istio_ca(istiod, tmp_path):
    ca, port, stand_in = istiod
    token = tmp_path / "istio-token"
    token.write_text("a-service-account-token\n")
    client = GrpcCaClient(("127.0.0.1", port), node_credential(ca), token_file=str(token))
    try:
        resp = await client.sign(REVIEWS, csr_pem(make_csr(REVIEWS)[1]))
    finally:
        await client.close()
    assert identity_of_cert(resp.cert_chain[0]) == REVIEWS
    assert resp.trust_bundle == tuple(ca.roots) and len(resp.cert_chain) == 1
    assert stand_in.seen == [(REVIEWS.uri, "cert", "Bearer a-service-account-token")]
