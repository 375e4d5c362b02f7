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
from shoal.core.identity.certs import WorkloadCert, csr_pem, load_pem_certs, make_csr
from shoal.core.identity.spiffe import Identity

IDENT = Identity.parse("spiffe://cluster.local/ns/bench/sa/client")
SERVER = Identity.parse("spiffe://cluster.local/ns/bench/sa/server")


def _issue(ca: CertificateAuthority, ident: Identity) -> WorkloadCert:
    """A workload certificate from shoal's own CA (the installed package only:
    an operator runs these studies without the repository's tests/)."""
    key, csr = make_csr(ident)
    signed = ca.sign_csr(csr_pem(csr), ident.uri)
    return WorkloadCert.build(key, load_pem_certs(signed.cert_chain[0])[0], (),
                              load_pem_certs(signed.trust_bundle[0]))


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
    cert = _issue(CertificateAuthority.self_signed(), SERVER)
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
        spiffe.verify_server_identity(client, (SERVER.uri,))
        spiffe.verify_client_trust_domain(server, "cluster.local")


def test_handshake_hbone_mutual_tls13(benchmark):
    ca = CertificateAuthority.self_signed()
    c, s = tls.client_context(_issue(ca, IDENT)), tls.server_context(_issue(ca, SERVER))
    benchmark(_handshake, c, s, True)


def test_peer_handshake_stdlib_defaults(benchmark, tmp_path):
    server = _issue(CertificateAuthority.self_signed(), SERVER)
    (tmp_path / "key.pem").write_bytes(server.key_pem())
    (tmp_path / "cert.pem").write_text(server.chain_pem())
    (tmp_path / "ca.pem").write_text(server.roots_pem())
    s = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    s.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    c = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
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
