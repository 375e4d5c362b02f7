"""CSR shape, WorkloadCert consistency checks, TLS context settings."""

import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.core.identity import tls
from shoal.core.identity.certs import CertError, WorkloadCert, make_csr
from shoal.core.identity.spiffe import Identity
from tests.helpers.pki import TestPKI

IDENT = Identity.parse("spiffe://cluster.local/ns/default/sa/sleep")


def test_csr_is_p256_with_only_the_spiffe_uri_san():
    key, csr = make_csr(IDENT)
    assert isinstance(key.curve, ec.SECP256R1)
    assert csr.is_signature_valid
    assert list(csr.subject) == []
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert [n.value for n in san.value] == [IDENT.uri]


@pytest.fixture(scope="module")
def pki():
    return TestPKI(intermediate=True)


def test_workload_cert_build_checks_key_roots_and_identity(pki):
    good = pki.issue(IDENT)
    built = WorkloadCert.build(good.key, good.leaf, good.chain, good.roots)
    assert built.identity == IDENT and built.serial == good.serial and len(built.chain) == 1
    with pytest.raises(CertError) as e:
        WorkloadCert.build(ec.generate_private_key(ec.SECP256R1()), good.leaf, good.chain, good.roots)
    assert e.value.code == "key_mismatch"
    with pytest.raises(CertError) as e:
        WorkloadCert.build(good.key, good.leaf, good.chain, ())
    assert e.value.code == "no_roots"
    nosan = pki.issue(IDENT, no_san=True)
    with pytest.raises(CertError) as e:
        WorkloadCert.build(nosan.key, nosan.leaf, nosan.chain, nosan.roots)
    assert e.value.code == "no_identity"


def test_repr_never_shows_key_material(pki):
    text = repr(pki.issue(IDENT))
    assert "PRIVATE" not in text and IDENT.uri in text


def test_lifetime_fraction(pki):
    c = pki.issue(IDENT)
    mid = (c.not_before.timestamp() + c.not_after.timestamp()) / 2
    assert c.lifetime_fraction(mid) == pytest.approx(0.5)


@pytest.mark.parametrize("build", [tls.client_context, tls.server_context])
def test_contexts_are_tls13_only_aes_gcm_mutual_h2(pki, build):
    ctx = build(pki.issue(IDENT))
    assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.check_hostname
    tls13 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
    assert tls13 == {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"}
    assert ctx.options & ssl.OP_NO_TICKET
    roots = ctx.get_ca_certs()
    assert len(roots) == 1


def test_server_context_sends_no_session_tickets(pki):
    assert tls.server_context(pki.issue(IDENT)).num_tickets == 0


def test_key_is_never_written_to_a_file(pki, monkeypatch):
    # load_key_and_chain may only open /proc/self/fd/N of an anonymous memfd.
    opened = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, keyfile=None, password=None):
        opened.append(certfile)
        return real(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    before = set(os.listdir("/proc/self/fd"))
    tls.server_context(pki.issue(IDENT))
    assert len(opened) == 1 and opened[0].startswith("/proc/self/fd/")
    assert not set(os.listdir("/proc/self/fd")) - before  # the memfd is closed again


def test_both_trust_bundle_roots_are_loaded(pki):
    other = TestPKI(name="second root")
    cert = pki.issue(IDENT, roots=(pki.root_cert, other.root_cert))
    assert len(tls.client_context(cert).get_ca_certs()) == 2
