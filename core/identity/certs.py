"""Workload certificates held in memory, and the CSRs that request them.

A `WorkloadCert` is what the certificate manager hands to the TLS layer: the
private key (a `cryptography` object, never serialized to disk), the leaf, the
intermediates and the trust bundle (one or more roots; several during a root
rotation). Istio's CSR shape (reference/istio-ztunnel.md §7): an ECDSA P-256
key and the SPIFFE URI as the only SAN, no subject.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.core.identity.spiffe import Identity, identity_of_cert


class CertError(ValueError):
    """A certificate, chain or CSR that cannot be used; `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_key() -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key, as Istio's workload keys."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(identity: Identity, key: ec.EllipticCurvePrivateKey | None = None
             ) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
    """A CSR for `identity`: empty subject, the SPIFFE URI as the only SAN.

    Returns:
        (private key, CSR). The key stays with the caller; only the CSR is sent.
    """
    key = key or new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(identity.uri)]), critical=True)
           .sign(key, hashes.SHA256()))
    return key, csr


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def load_pem_certs(data: str | bytes) -> list[x509.Certificate]:
    """All certificates in a PEM blob (a chain or a bundle of roots)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        return x509.load_pem_x509_certificates(raw)
    except ValueError as e:
        raise CertError("bad_pem", f"cannot parse PEM certificates: {e}") from e


def certs_pem(certs: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def cert_json(cert: x509.Certificate) -> dict[str, str]:
    """One certificate as ztunnel's /config_dump shows it (admin.rs dump_cert):
    base64 of the PEM, the serial in decimal, RFC 3339 times to the second."""
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return {"pem": base64.b64encode(pem).decode(), "serialNumber": str(cert.serial_number),
            "validFrom": cert.not_valid_before_utc.strftime(RFC3339),
            "expirationTime": cert.not_valid_after_utc.strftime(RFC3339)}


RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadCert:
    """A workload's certificate with its key, in memory only.

    Attributes:
        identity: the SPIFFE identity the leaf certifies.
        key: the private key (never written anywhere).
        leaf: the leaf certificate.
        chain: intermediates, leaf's issuer first (may be empty).
        roots: the trust bundle (one or more root certificates).
    """

    identity: Identity
    key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    @classmethod
    def build(cls, key, leaf: x509.Certificate, chain=(), roots=()) -> "WorkloadCert":
        """Check that the pieces fit together and take the identity from the leaf.

        Raises:
            CertError: key does not match the leaf, no roots, or no SPIFFE SAN.
        """
        pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        leaf_pub = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        if pub != leaf_pub:
            raise CertError("key_mismatch", "private key does not match the leaf certificate")
        if not roots:
            raise CertError("no_roots", "a workload certificate needs a trust bundle (at least one root)")
        try:
            identity = identity_of_cert(leaf)
        except ValueError as e:
            raise CertError("no_identity", f"leaf certificate has no usable SPIFFE identity: {e}") from e
        return cls(identity=identity, key=key, leaf=leaf, chain=tuple(chain), roots=tuple(roots))

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial(self) -> str:
        return serial_hex(self.leaf)

    @property
    def trust_domain(self) -> str:
        return self.identity.trust_domain

    def chain_pem(self) -> str:
        """Leaf then intermediates, PEM."""
        return certs_pem((self.leaf, *self.chain))

    def roots_pem(self) -> str:
        return certs_pem(self.roots)

    def key_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM. Only for loading into an in-memory TLS context."""
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def with_roots(self, roots) -> "WorkloadCert":
        """The same leaf with another trust bundle (root rotation)."""
        return WorkloadCert(identity=self.identity, key=self.key, leaf=self.leaf,
                            chain=self.chain, roots=tuple(roots))

    def lifetime_fraction(self, now: float) -> float:
        """How much of the validity has elapsed at unix time `now` (0..1+)."""
        start, end = self.not_before.timestamp(), self.not_after.timestamp()
        return (now - start) / max(end - start, 1e-9)

    def __repr__(self) -> str:  # never print key material
        return (f"WorkloadCert(identity={self.identity.uri}, serial={self.serial}, "
                f"not_after={self.not_after.isoformat()})")
