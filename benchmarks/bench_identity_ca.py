"""CPU cost of identity work: CSR creation, CA signing, TLS context build, handshakes.

Peers measured in the same run, for ratios:
- signing: a bare ECDSA P-256 signature with `cryptography` (the floor the CA
  cannot go under) against the full `sign_csr` (parse, check, build, sign);
- handshake: a mutual TLS 1.3 handshake with shoal's HBONE contexts plus the
  SPIFFE checks, against the same handshake with stdlib default contexts
  (server-only authentication, no SPIFFE checks). Both run in memory
  (ssl.MemoryBIO), so the numbers are CPU only, no sockets.

    .venv/bin/python -m pytest benchmarks/bench_identity_ca.py -o python_files='bench_*.py' \
        --benchmark-enable
"""

import ssl

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.controlplane.authority import CertificateAuthority
from shoal.core.identity import spiffe, tls
from shoal.core.identity.certs import csr_pem, make_csr
from shoal.core.identity.spiffe import Identity
from tests.helpers.pki import TestPKI, write_pem

IDENT = Identity.parse("spiffe://cluster.local/ns/bench/sa/client")
SERVER = "spiffe://cluster.local/ns/bench/sa/server"


def test_csr_create(benchmark):
    benchmark(make_csr, IDENT)


def test_ca_sign_csr(benchmark):
    ca = CertificateAuthority.self_signed()
    pem = csr_pem(make_csr(IDENT)[1])
    benchmark(ca.sign_csr, pem, IDENT.uri)


def test_peer_raw_ecdsa_p256_sign(benchmark):
    key = ec.generate_private_key(ec.SECP256R1())
    benchmark(key.sign, b"x" * 300, ec.ECDSA(hashes.SHA256()))


def test_server_context_build(benchmark):
    cert = TestPKI().issue(SERVER)
    benchmark(tls.server_context, cert)


def _handshake(client_ctx, server_ctx, check: bool) -> None:
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=None)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    while not (done_c and done_s):
        for obj, done in ((client, done_c), (server, done_s)):
            if not done:
                try:
                    obj.do_handshake()
                    if obj is client:
                        done_c = True
                    else:
                        done_s = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    if check:
        spiffe.verify_server_identity(client, (SERVER,))
        spiffe.verify_client_trust_domain(server, "cluster.local")


def test_handshake_hbone_mutual_tls13(benchmark):
    pki = TestPKI()
    c, s = tls.client_context(pki.issue(IDENT)), tls.server_context(pki.issue(SERVER))
    benchmark(_handshake, c, s, True)


def test_peer_handshake_stdlib_defaults(benchmark, tmp_path):
    pki = TestPKI()
    files = write_pem(pki.issue(SERVER), tmp_path, "server")
    s = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    s.load_cert_chain(files.cert, files.key)
    c = ssl.create_default_context(cafile=str(files.ca))
    c.check_hostname = False
    benchmark(_handshake, c, s, False)


def test_ca_request_over_mutual_tls(benchmark, tmp_path):
    """One certificate fetch end to end: TLS handshake to the CA, CSR, sign, answer."""
    import asyncio

    from shoal.controlplane.authority import NODE_CN_PREFIX
    from shoal.controlplane.server import CaServer
    from shoal.core.identity.caclient import CaClient
    from shoal.core.identity.certs import WorkloadCert, load_pem_certs

    ca = CertificateAuthority.self_signed()
    loop = asyncio.new_event_loop()
    server = CaServer(ca, lambda node: {IDENT.uri})
    port = loop.run_until_complete(server.start())
    key, signed = ca.issue_credential(Identity.parse("spiffe://cluster.local/ns/istio-system/sa/ztunnel"),
                                      NODE_CN_PREFIX + "bench")
    cred = WorkloadCert.build(key, load_pem_certs(signed.cert_chain[0])[0], (),
                              load_pem_certs(signed.trust_bundle[0]))
    client = CaClient(("127.0.0.1", port), cred)

    def fetch():
        _, csr = make_csr(IDENT)
        loop.run_until_complete(client.sign(IDENT, csr_pem(csr)))

    try:
        benchmark.pedantic(fetch, rounds=50, warmup_rounds=2)
    finally:
        loop.run_until_complete(server.close())
        loop.close()
