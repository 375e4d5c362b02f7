"""The CA's signing rules, its state directory, root rotation, node authorization."""

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from shoal.controlplane import store
from shoal.controlplane.authority import (DEFAULT_CERT_TTL, MAX_CERT_TTL, NODE_CN_PREFIX, CertificateAuthority,
                               SigningError, node_of_cert)
from shoal.controlplane.nodeauth import Caller, ConfigIdentities, authorize
from shoal.controlplane.server import HttpError, parse_head, response_bytes
from shoal.core.identity.certs import csr_pem, load_pem_certs, make_csr
from shoal.core.identity.spiffe import Identity, identity_of_cert
from tests.helpers.pki import TestPKI

T0 = 1_900_000_000.0
ID = Identity.parse("spiffe://cluster.local/ns/bookinfo/sa/reviews")
ZT = Identity.parse("spiffe://cluster.local/ns/istio-system/sa/ztunnel")


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority.self_signed(clock=lambda: T0)


def _csr(sans, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_signs_a_p256_leaf_with_only_the_spiffe_san(ca):
    _, csr = make_csr(ID)
    signed = ca.sign_csr(csr_pem(csr), ID.uri)
    leaf = load_pem_certs(signed.cert_chain[0])[0]
    assert identity_of_cert(leaf) == ID
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and len(list(san.value)) == 1
    assert list(leaf.subject) == []
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.not_valid_after_utc.timestamp() == T0 + DEFAULT_CERT_TTL.total_seconds()
    assert leaf.not_valid_before_utc.timestamp() < T0
    assert len(signed.cert_chain) == 1 and len(signed.trust_bundle) == 1
    leaf.verify_directly_issued_by(load_pem_certs(signed.trust_bundle[0])[0])


def test_ttl_is_configurable_and_bounded(ca):
    _, csr = make_csr(ID)
    signed = ca.sign_csr(csr_pem(csr), ID.uri, ttl=dt.timedelta(hours=1))
    assert signed.not_after.timestamp() == T0 + 3600
    for bad in (MAX_CERT_TTL + dt.timedelta(seconds=1), dt.timedelta(seconds=5)):
        with pytest.raises(SigningError) as e:
            ca.sign_csr(csr_pem(csr), ID.uri, ttl=bad)
        assert e.value.code == "bad_ttl"


@pytest.mark.parametrize("sans,code", [
    ([x509.UniformResourceIdentifier("spiffe://cluster.local/ns/bookinfo/sa/ratings")], "csr_identity_mismatch"),
    ([x509.UniformResourceIdentifier(ID.uri), x509.DNSName("reviews")], "csr_identity_mismatch"),
    ([x509.UniformResourceIdentifier(ID.uri),
      x509.UniformResourceIdentifier("spiffe://cluster.local/ns/x/sa/y")], "csr_identity_mismatch"),
    ([], "csr_no_san"),
])
def test_csr_must_ask_for_exactly_the_requested_identity(ca, sans, code):
    with pytest.raises(SigningError) as e:
        ca.sign_csr(_csr(sans), ID.uri)
    assert e.value.code == code and e.value.status == 400


def test_refuses_rsa_keys_bad_pem_other_trust_domain_bad_identity(ca):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SigningError) as e:
        ca.sign_csr(_csr([x509.UniformResourceIdentifier(ID.uri)], rsa_key), ID.uri)
    assert e.value.code == "bad_key"
    with pytest.raises(SigningError) as e:
        ca.sign_csr("not a csr", ID.uri)
    assert e.value.code == "bad_csr"
    with pytest.raises(SigningError) as e:
        ca.sign_csr("x" * 10000, ID.uri)
    assert e.value.code == "csr_too_large"
    other = "spiffe://evil.td/ns/bookinfo/sa/reviews"
    with pytest.raises(SigningError) as e:
        ca.sign_csr(_csr([x509.UniformResourceIdentifier(other)]), other)
    assert e.value.code == "wrong_trust_domain" and e.value.status == 403
    with pytest.raises(SigningError) as e:
        ca.sign_csr(_csr([x509.UniformResourceIdentifier(ID.uri)]), "spiffe://cluster.local/x")
    assert e.value.code == "bad_identity"


def test_leaf_never_outlives_the_signing_cert():
    pki = TestPKI()  # root valid 10 years from now
    ca = CertificateAuthority(signing_key=pki.root_key, signing_cert=pki.root_cert, intermediates=(),
                              roots=(pki.root_cert,),
                              clock=lambda: pki.root_cert.not_valid_after_utc.timestamp() - 3600)
    _, csr = make_csr(ID)
    signed = ca.sign_csr(csr_pem(csr), ID.uri)
    assert signed.not_after == pki.root_cert.not_valid_after_utc


def test_node_credential_names_the_node(ca):
    _, signed = ca.issue_credential(ZT, NODE_CN_PREFIX + "node-1")
    leaf = load_pem_certs(signed.cert_chain[0])[0]
    assert node_of_cert(leaf) == ("node", "node-1")
    with pytest.raises(SigningError) as e:
        node_of_cert(load_pem_certs(ca.sign_csr(csr_pem(make_csr(ID)[1]), ID.uri).cert_chain[0])[0])
    assert e.value.code == "not_a_node_credential" and e.value.status == 403
    _, fake = ca.issue_credential(ID, NODE_CN_PREFIX + "node-1")  # node CN, workload identity
    with pytest.raises(SigningError) as e:
        node_of_cert(load_pem_certs(fake.cert_chain[0])[0])
    assert e.value.code == "bad_node_credential"


def test_node_authorization():
    on_node = {"node-1": {ID.uri}}.get
    node1 = Caller(kind="node", name="node-1", identity=ZT)
    authorize(node1, ID, lambda n: on_node(n, set()))
    with pytest.raises(SigningError) as e:
        authorize(Caller(kind="node", name="node-2", identity=ZT), ID, lambda n: on_node(n, set()))
    assert e.value.status == 403 and e.value.code == "not_on_node"
    assert "node-2" in str(e.value) and ID.uri in str(e.value)
    wp = Identity.parse("spiffe://cluster.local/ns/bookinfo/sa/waypoint")
    authorize(Caller(kind="waypoint", name="bookinfo/waypoint", identity=wp), wp, lambda n: set())
    with pytest.raises(SigningError) as e:
        authorize(Caller(kind="waypoint", name="bookinfo/waypoint", identity=wp), ID, lambda n: set())
    assert e.value.code == "not_waypoint_identity"


def test_config_identities_from_pod_yaml(tmp_path):
    (tmp_path / "pods.yaml").write_text("""
apiVersion: v1
kind: Pod
metadata: {name: r1, namespace: bookinfo}
spec: {nodeName: node-1, serviceAccountName: reviews}
---
apiVersion: v1
kind: Pod
metadata: {name: p1}
spec: {nodeName: node-2}
""")
    now = [0.0]
    ids = ConfigIdentities(tmp_path, clock=lambda: now[0])
    assert ids("node-1") == {ID.uri}
    assert ids("node-2") == {"spiffe://cluster.local/ns/default/sa/default"}
    assert ids("node-3") == set()


def test_config_identities_count_deployment_replicas_and_overlay_pods(tmp_path):
    """The one model: replicas of a Deployment and a mesh builder's overlay
    Pods (which override a replica of the same name) count, as in routing."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "deploy.yaml").write_text("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews, namespace: bookinfo}
spec:
  replicas: 1
  selector: {matchLabels: {app: reviews}}
  template:
    metadata: {labels: {app: reviews}}
    spec: {nodeName: node-1, serviceAccountName: reviews}
""")
    overlay = tmp_path / "overlay"
    ids = ConfigIdentities(tmp_path / "cfg", overlay=overlay, clock=lambda: 0.0)
    assert ids("node-1") == {ID.uri}      # the overlay does not exist yet: fine
    assert ids("node-2") == set()


def test_state_dir_creates_a_root_once_and_reloads_it(tmp_path):
    a = store.load_or_create(tmp_path, clock=lambda: T0)
    b = store.load_or_create(tmp_path, clock=lambda: T0)
    assert a.signing_cert == b.signing_cert and a.roots == (a.signing_cert,)
    assert oct((tmp_path / "root-key.pem").stat().st_mode & 0o777) == "0o600"


def test_loads_an_istio_cacerts_directory(tmp_path):
    pki = TestPKI()
    pki.write_cacerts(tmp_path / "cacerts")
    ca = store.load_or_create(tmp_path / "state", cacerts=tmp_path / "cacerts")
    signed = ca.sign_csr(csr_pem(make_csr(ID)[1]), ID.uri)
    assert len(signed.cert_chain) == 2  # leaf + plug-in intermediate
    assert load_pem_certs(signed.trust_bundle[0])[0] == pki.root_cert
    inter = load_pem_certs(signed.cert_chain[1])[0]
    load_pem_certs(signed.cert_chain[0])[0].verify_directly_issued_by(inter)
    # <state-dir>/cacerts is picked up without the flag, like Istio's mounted secret
    pki.write_cacerts(tmp_path / "state" / "cacerts")
    assert store.load_or_create(tmp_path / "state").roots == (pki.root_cert,)


def test_incomplete_cacerts_is_a_clear_error(tmp_path):
    (tmp_path / "ca-cert.pem").write_text("")
    with pytest.raises(SigningError) as e:
        store.load_or_create(tmp_path / "state", cacerts=tmp_path)
    assert e.value.code == "cacerts_incomplete" and "ca-key.pem" in str(e.value)


def test_root_rotation_phases_overlap_trust(tmp_path):
    first = store.load_or_create(tmp_path)
    store.rotate_root(tmp_path, "add")
    staged = store.load_or_create(tmp_path)
    assert staged.signing_cert == first.signing_cert and len(staged.roots) == 2
    with pytest.raises(SigningError):
        store.rotate_root(tmp_path, "add")
    store.rotate_root(tmp_path, "activate")
    active = store.load_or_create(tmp_path)
    assert active.signing_cert != first.signing_cert and first.signing_cert in active.roots
    assert active.roots[0] == active.signing_cert
    store.rotate_root(tmp_path, "retire")
    assert store.load_or_create(tmp_path).roots == (active.signing_cert,)
    with pytest.raises(SigningError):
        store.rotate_root(tmp_path, "activate")


def test_parse_head_and_response():
    assert parse_head(b"POST /v1/certificates HTTP/1.1\r\nContent-Length: 5\r\nHost: x") == (
        "POST", "/v1/certificates", {"content-length": "5", "host": "x"})
    for bad in (b"GARBAGE", b"GET / HTTP/1.1\r\nno-colon", b"GET / SPDY/3", b"GET /\xff HTTP/1.1"):
        with pytest.raises(HttpError) as e:
            parse_head(bad)
        assert e.value.status == 400
    out = response_bytes(403, {"error": "no", "code": "x"})
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n") and out.endswith(b'{"error":"no","code":"x"}')


def test_a_bad_config_keeps_the_last_good_node_view(tmp_path):
    good = """
apiVersion: v1
kind: Pod
metadata: {name: r1, namespace: bookinfo}
spec: {nodeName: node-1, serviceAccountName: reviews}
"""
    (tmp_path / "pods.yaml").write_text(good)
    now = [0.0]
    ids = ConfigIdentities(tmp_path, clock=lambda: now[0])
    assert ids("node-1") == {ID.uri}
    (tmp_path / "pods.yaml").write_text(good.replace("kind: Pod", "kind: Pod\nspec: [not, a, map]"))
    now[0] += 5
    assert ids("node-1") == {ID.uri}
    (tmp_path / "pods.yaml").write_text(good.replace("node-1", "node-2"))
    now[0] += 5
    assert ids("node-1") == set() and ids("node-2") == {ID.uri}


def test_config_rescans_are_rate_limited(tmp_path):
    (tmp_path / "pods.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {nodeName: n}\n")
    now = [0.0]
    ids = ConfigIdentities(tmp_path, clock=lambda: now[0])
    assert ids("n")
    (tmp_path / "pods.yaml").write_text("")
    assert ids("n")           # within CONFIG_RESCAN_INTERVAL: not re-read yet
    now[0] += 2
    assert ids("n") == set()


def test_a_rewrite_keeping_mtime_size_and_inode_is_still_read(tmp_path):
    # routing's DirectorySource distrusts a file read right after its last
    # write (a coarse file clock): the stat-only stamp this replaced missed it.
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {nodeName: node-1}\n")
    st = pods.stat()
    now = [0.0]
    ids = ConfigIdentities(tmp_path, clock=lambda: now[0])
    assert ids("node-1")
    with open(pods, "r+") as f:                      # same inode, same size
        f.write("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {nodeName: node-2}\n")
    os.utime(pods, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (pods.stat().st_mtime_ns, pods.stat().st_size, pods.stat().st_ino) == \
        (st.st_mtime_ns, st.st_size, st.st_ino)
    now[0] += 5
    assert ids("node-1") == set() and ids("node-2")
