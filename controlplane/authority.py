"""The certificate authority: signs SPIFFE workload CSRs and node credentials.

Signing rules (Istio's CA behaviour, DESIGN.md "Identity and certificates"):
- The identity comes from the request, not from the CSR: the CSR must ask
  for exactly that identity (one URI SAN, equal to it, and no other SAN).
- The identity must be in the CA's trust domain.
- The CSR key must be ECDSA P-256 and the CSR signature must verify.
- The leaf: empty subject, the SPIFFE URI as the only SAN (critical, as the
  subject is empty), digitalSignature + keyEncipherment, serverAuth +
  clientAuth, not a CA, lifetime `ttl` (default 24 h, at most
  MAX_CERT_TTL) and never past the signing certificate's own expiry.
- The response: the chain (leaf then intermediates, no root) and the trust
  bundle (every root currently trusted; several during a root rotation).

Node credentials (how a ztunnel or waypoint proves who it is to the CA) are
leaves for `spiffe://<td>/ns/istio-system/sa/ztunnel` (or the waypoint's
identity) whose subject CN is `node:<node name>` (or
`waypoint:<namespace>/<name>`). Workload leaves have an empty subject, so a
workload certificate can never pass for a node credential.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.core.constants import DEFAULT_TRUST_DOMAIN
from shoal.core.identity.certs import certs_pem, new_key
from shoal.core.identity.spiffe import Identity, IdentityError, uri_sans

# Istio's default workload certificate lifetime (SECRET_TTL / DEFAULT_WORKLOAD_CERT_TTL).
DEFAULT_CERT_TTL = dt.timedelta(hours=24)
# Istio's MAX_WORKLOAD_CERT_TTL default: a leaked key stays useful at most this long.
MAX_CERT_TTL = dt.timedelta(days=90)
# Shortest lifetime we sign: below this, renewal at half-life would hammer the CA.
MIN_CERT_TTL = dt.timedelta(seconds=60)
# Leaves start this much in the past so a peer whose clock lags a little
# does not reject a fresh certificate as not yet valid.
CLOCK_SKEW_BACKDATE = dt.timedelta(seconds=60)
# A self-created root lives 10 years, as Istio's self-signed root.
ROOT_CERT_TTL = dt.timedelta(days=3650)
# Node credentials are bootstrap secrets: rotated by the operator, 1 year.
NODE_CERT_TTL = dt.timedelta(days=365)
# A CSR larger than this is not a P-256 CSR with one SAN; refuse before parsing.
MAX_CSR_BYTES = 8 * 1024

SYSTEM_NAMESPACE = "istio-system"
ZTUNNEL_SERVICE_ACCOUNT = "ztunnel"
ISTIOD_SERVICE_ACCOUNT = "istiod"
NODE_CN_PREFIX = "node:"
WAYPOINT_CN_PREFIX = "waypoint:"


class SigningError(Exception):
    """The CA refuses a request. `status` is the HTTP status to answer with."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class Signed:
    """What the CA returns: PEM strings, leaf first; roots separately."""
    cert_chain: tuple[str, ...]
    trust_bundle: tuple[str, ...]
    serial: str
    not_after: dt.datetime


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def make_root(trust_domain: str, *, now: dt.datetime, key=None, generation: int = 0):
    """A self-signed root CA for `trust_domain` (Istio's self-signed mode).

    Returns:
        (key, cert)
    """
    key = key or new_key()
    cn = f"shoal root CA {generation}" if generation else "shoal root CA"
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_BACKDATE).not_valid_after(now + ROOT_CERT_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


class CertificateAuthority:
    """Signs leaves with `signing_key`/`signing_cert` (a root or an intermediate).

    Args:
        intermediates: certificates between the signing cert and the root,
            signing cert first (empty when the signing cert is the root;
            contains the signing cert itself when it is an intermediate).
        roots: the trust bundle handed to workloads (current root first).
        clock: unix time, injectable for tests.
    """

    def __init__(self, *, signing_key, signing_cert: x509.Certificate,
                 intermediates: tuple[x509.Certificate, ...], roots: tuple[x509.Certificate, ...],
                 trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 clock: Callable[[], float] = time.time) -> None:
        if not roots:
            raise SigningError("no_roots", "the CA needs at least one root certificate", 500)
        self.signing_key = signing_key
        self.signing_cert = signing_cert
        self.intermediates = tuple(intermediates)
        self.roots = tuple(roots)
        self.trust_domain = trust_domain
        self.clock = clock

    @classmethod
    def self_signed(cls, trust_domain: str = DEFAULT_TRUST_DOMAIN, *,
                    clock: Callable[[], float] = time.time) -> "CertificateAuthority":
        key, root = make_root(trust_domain, now=_utc(clock()))
        return cls(signing_key=key, signing_cert=root, intermediates=(), roots=(root,),
                   trust_domain=trust_domain, clock=clock)

    # ------------------------------------------------------------------
    @property
    def trust_bundle_pem(self) -> tuple[str, ...]:
        return tuple(_pem(r) for r in self.roots)

    def sign_csr(self, csr_pem: str | bytes, identity: str, *,
                 ttl: dt.timedelta | None = None) -> Signed:
        """Sign a workload CSR for `identity`.

        Raises:
            SigningError: 400 with a code saying which rule the request broke.
        """
        ident = self._parse_identity(identity)
        csr = self._parse_csr(csr_pem)
        self._check_csr(csr, ident)
        return self._issue(csr.public_key(), ident, ttl=self._ttl(ttl))

    def issue_credential(self, identity: Identity, subject_cn: str, *,
                         ttl: dt.timedelta = NODE_CERT_TTL, dns_names: tuple[str, ...] = ()):
        """Issue a key + leaf with a subject CN (node/waypoint/control plane credentials).

        Returns:
            (key, Signed)
        """
        key = new_key()
        return key, self._issue(key.public_key(), identity, ttl=ttl, subject_cn=subject_cn,
                                dns_names=dns_names)

    # ------------------------------------------------------------------
    def _parse_identity(self, identity: str) -> Identity:
        try:
            ident = Identity.parse(identity)
        except IdentityError as e:
            raise SigningError("bad_identity", f"requested identity is invalid: {e}") from e
        if ident.trust_domain != self.trust_domain:
            raise SigningError("wrong_trust_domain",
                               f"identity {ident.uri} is not in this CA's trust domain "
                               f"{self.trust_domain!r}", 403)
        return ident

    @staticmethod
    def _parse_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
        raw = csr_pem.encode() if isinstance(csr_pem, str) else bytes(csr_pem)
        if len(raw) > MAX_CSR_BYTES:
            raise SigningError("csr_too_large", f"CSR larger than {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(raw)
        except ValueError as e:
            raise SigningError("bad_csr", f"cannot parse the CSR (PEM expected): {e}") from e
        if not csr.is_signature_valid:
            raise SigningError("bad_csr_signature", "the CSR signature does not verify")
        return csr

    @staticmethod
    def _check_csr(csr: x509.CertificateSigningRequest, ident: Identity) -> None:
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise SigningError("bad_key", "the CSR key must be ECDSA P-256")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise SigningError("csr_no_san", f"the CSR has no SAN; it must ask for {ident.uri}") from None
        names = list(san)
        uris = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
        if len(names) != 1 or uris != [ident.uri]:
            got = [getattr(n, "value", str(n)) for n in names]
            raise SigningError("csr_identity_mismatch",
                               f"the CSR must have exactly one SAN, the URI {ident.uri}; it has {got}")

    @staticmethod
    def _ttl(ttl: dt.timedelta | None) -> dt.timedelta:
        ttl = ttl or DEFAULT_CERT_TTL
        if ttl < MIN_CERT_TTL or ttl > MAX_CERT_TTL:
            raise SigningError("bad_ttl", f"certificate lifetime must be between {MIN_CERT_TTL} "
                                          f"and {MAX_CERT_TTL}, got {ttl}")
        return ttl

    def _issue(self, public_key, ident: Identity, *, ttl: dt.timedelta, subject_cn: str = "",
               dns_names: tuple[str, ...] = ()) -> Signed:
        now = _utc(self.clock())
        not_after = min(now + ttl, self.signing_cert.not_valid_after_utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)] if subject_cn else [])
        sans = [x509.UniformResourceIdentifier(ident.uri), *(x509.DNSName(d) for d in dns_names)]
        leaf = (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(self.signing_cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW_BACKDATE).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                             content_commitment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.signing_key.public_key()), critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=not subject_cn)
                .sign(self.signing_key, hashes.SHA256()))
        chain = (_pem(leaf), *(_pem(c) for c in self.intermediates if not _is_self_signed(c)))
        return Signed(cert_chain=chain, trust_bundle=self.trust_bundle_pem,
                      serial=format(leaf.serial_number, "x"), not_after=not_after)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def node_of_cert(cert: x509.Certificate) -> tuple[str, str]:
    """Which caller a credential names: ("node", name) or ("waypoint", "ns/name").

    Raises:
        SigningError: 403 when the certificate is not a node/waypoint credential.
    """
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if cn.startswith(NODE_CN_PREFIX) and len(cn) > len(NODE_CN_PREFIX):
        uris = uri_sans(cert)
        expected = f"/ns/{SYSTEM_NAMESPACE}/sa/{ZTUNNEL_SERVICE_ACCOUNT}"
        if len(uris) != 1 or not uris[0].endswith(expected):
            raise SigningError("bad_node_credential",
                               f"node credential must carry the ztunnel identity (…{expected}), got {uris}",
                               403)
        return "node", cn[len(NODE_CN_PREFIX):]
    if cn.startswith(WAYPOINT_CN_PREFIX) and "/" in cn:
        return "waypoint", cn[len(WAYPOINT_CN_PREFIX):]
    raise SigningError("not_a_node_credential",
                       "client certificate is not a node or waypoint credential (subject CN must be "
                       "node:<name> or waypoint:<namespace>/<name>; see `shoal controlplane "
                       "issue-node-cert`)", 403)


def pem_chain(certs) -> str:
    return certs_pem(tuple(certs))
