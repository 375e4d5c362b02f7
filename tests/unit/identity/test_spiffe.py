"""SPIFFE ID parsing and the post-handshake identity checks."""

import pytest

from shoal.core.identity.spiffe import (Identity, IdentityError, PeerVerificationError, identity_of_cert,
                                  peer_identity, verify_client_trust_domain, verify_server_identity)
from tests.helpers.pki import TestPKI

URI = "spiffe://cluster.local/ns/bookinfo/sa/reviews"


def test_parse_and_format_round_trip():
    ident = Identity.parse(URI)
    assert (ident.trust_domain, ident.namespace, ident.service_account) == (
        "cluster.local", "bookinfo", "reviews")
    assert str(ident) == ident.uri == URI
    assert Identity.of(ident) is ident
    assert Identity.of(URI) == ident
    assert hash(Identity.parse(URI)) == hash(ident)


@pytest.mark.parametrize("bad,code", [
    ("http://cluster.local/ns/a/sa/b", "bad_scheme"),
    ("spiffe://cluster.local/ns/a", "bad_path"),
    ("spiffe://cluster.local/ns/a/sa/b/extra", "bad_path"),
    ("spiffe://cluster.local/sa/a/ns/b", "bad_path"),
    ("spiffe://Cluster.Local/ns/a/sa/b", "bad_trust_domain"),
    ("spiffe:///ns/a/sa/b", "bad_trust_domain"),
    ("spiffe://cluster.local/ns//sa/b", "bad_path_segment"),
    ("spiffe://cluster.local/ns/../sa/b", "bad_path_segment"),
    ("spiffe://cluster.local:8080/ns/a/sa/b", "bad_characters"),
    ("spiffe://cluster.local/ns/a/sa/b?x=1", "bad_characters"),
    ("spiffe://cluster.local/ns/a%2f/sa/b", "bad_characters"),
    ("spiffe://cluster.local/ns/a b/sa/b", "bad_path_segment"),
    ("spiffe://td/ns/" + "a" * 3000 + "/sa/b", "too_long"),
])
def test_parse_rejects_malformed_ids_with_a_code(bad, code):
    with pytest.raises(IdentityError) as e:
        Identity.parse(bad)
    assert e.value.code == code
    assert str(e.value)


def test_parse_rejects_non_strings():
    with pytest.raises(IdentityError):
        Identity.parse(b"spiffe://td/ns/a/sa/b")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki():
    return TestPKI()


def test_identity_of_cert_reads_the_only_uri_san(pki):
    cert = pki.issue(URI)
    assert identity_of_cert(cert.leaf) == Identity.parse(URI)
    der = cert.leaf.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                            fromlist=["Encoding"]).Encoding.DER)
    assert peer_identity(der) == Identity.parse(URI)


def test_identity_of_cert_refuses_no_san_and_several_uris(pki):
    with pytest.raises(PeerVerificationError) as e:
        identity_of_cert(pki.issue(URI, no_san=True).leaf)
    assert e.value.code == "no_spiffe_san"
    with pytest.raises(PeerVerificationError) as e:
        identity_of_cert(pki.issue(URI, extra_uris=("spiffe://cluster.local/ns/x/sa/y",)).leaf)
    assert e.value.code == "bad_uri_sans"


def test_dns_sans_are_ignored(pki):
    assert identity_of_cert(pki.issue(URI, dns_names=("reviews.bookinfo",)).leaf).namespace == "bookinfo"


class _FakeSSLObject:
    def __init__(self, der):
        self.der = der

    def getpeercert(self, binary_form=False):
        return self.der


def test_no_peer_certificate_is_refused():
    with pytest.raises(PeerVerificationError) as e:
        peer_identity(_FakeSSLObject(None))
    assert e.value.code == "no_peer_cert"


def test_verify_server_identity_names_expected_and_got():
    got = Identity.parse(URI)
    assert verify_server_identity(got, ("spiffe://cluster.local/ns/x/sa/y", URI)) == got
    with pytest.raises(PeerVerificationError) as e:
        verify_server_identity(got, ("spiffe://cluster.local/ns/bookinfo/sa/ratings",))
    assert e.value.code == "identity_mismatch"
    assert "ratings" in str(e.value) and "reviews" in str(e.value)


def test_verify_client_trust_domain():
    assert verify_client_trust_domain(Identity.parse(URI), "cluster.local").service_account == "reviews"
    with pytest.raises(PeerVerificationError) as e:
        verify_client_trust_domain(Identity.parse("spiffe://other.td/ns/a/sa/b"), "cluster.local")
    assert e.value.code == "trust_domain_mismatch"
    assert "other.td" in str(e.value)


from hypothesis import given, strategies as st  # noqa: E402

_SEG = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_",
               min_size=1, max_size=30).filter(lambda s: s not in (".", ".."))
_TD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=30)


@given(td=_TD, ns=_SEG, sa=_SEG)
def test_valid_ids_round_trip(td, ns, sa):
    ident = Identity(trust_domain=td, namespace=ns, service_account=sa)
    assert Identity.parse(ident.uri) == ident


@given(st.text(max_size=200))
def test_parse_never_fails_with_anything_but_identity_error(text):
    try:
        ident = Identity.parse(text)
    except IdentityError as e:
        assert e.code
    else:
        assert ident.uri == text
