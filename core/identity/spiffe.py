"""SPIFFE identities and the checks run on a peer after a TLS handshake.

Istio's workload identity is the URI `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`,
carried as the only URI SAN of the workload certificate
(reference/istio-ztunnel.md §2). Python's `ssl` has no verify callback, so
the chain is checked by OpenSSL during the handshake and the SPIFFE rules are
checked here right after it, before any byte of application data is sent:

- the client (outbound) requires the server's identity to be exactly one of
  the identities it expected (ztunnel's `IdentityVerifier`);
- the server (inbound) requires the client to be in its own trust domain
  (ztunnel's `TrustDomainVerifier`); the exact principal is left to RBAC.

Pure module: no sockets, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from cryptography import x509

SPIFFE_SCHEME = "spiffe://"

# SPIFFE ID spec §2: a SPIFFE ID is at most 2048 bytes (URI SAN size limits in
# common X.509 stacks); we refuse longer ones before parsing.
MAX_SPIFFE_ID_LENGTH = 2048

# SPIFFE ID spec §2.1/§2.2: trust domain is lowercase letters, digits, '.', '-'
# and '_'; path segments add uppercase letters. Kubernetes names are a subset.
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class IdentityError(ValueError):
    """A malformed SPIFFE ID, or a peer whose identity fails a check.

    `code` is a stable machine-readable reason (used in logs and metrics).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PeerVerificationError(IdentityError):
    """The TLS peer presented a certificate whose identity is not acceptable."""


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Identity:
    """`spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not self.trust_domain or not _TRUST_DOMAIN_RE.match(self.trust_domain):
            raise IdentityError(
                "bad_trust_domain",
                f"invalid SPIFFE trust domain {self.trust_domain!r}: "
                "use lowercase letters, digits, '.', '-' or '_'")
        for what, value in (("namespace", self.namespace),
                            ("service account", self.service_account)):
            if not value or value in (".", "..") or not _SEGMENT_RE.match(value):
                raise IdentityError(
                    "bad_path_segment",
                    f"invalid {what} {value!r} in SPIFFE ID: use letters, digits, '.', '-' or '_'")

    @classmethod
    def parse(cls, uri: str) -> "Identity":
        """Parse `spiffe://td/ns/NS/sa/SA`.

        Raises:
            IdentityError: the string is not a SPIFFE ID of Istio's form.
        """
        if not isinstance(uri, str):
            raise IdentityError("not_a_string", f"SPIFFE ID must be a string, got {type(uri).__name__}")
        if len(uri) > MAX_SPIFFE_ID_LENGTH:
            raise IdentityError("too_long", f"SPIFFE ID longer than {MAX_SPIFFE_ID_LENGTH} bytes")
        if not uri.startswith(SPIFFE_SCHEME):
            raise IdentityError("bad_scheme", f"not a SPIFFE ID (must start with {SPIFFE_SCHEME}): {uri!r}")
        rest = uri[len(SPIFFE_SCHEME):]
        if any(c in rest for c in "?#%@:"):
            raise IdentityError(
                "bad_characters", f"SPIFFE ID must not contain query, fragment, port, "
                f"userinfo or percent-encoding: {uri!r}")
        parts = rest.split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise IdentityError(
                "bad_path", f"SPIFFE ID must look like spiffe://<trust-domain>/ns/<namespace>/sa/"
                f"<service-account>, got {uri!r}")
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])

    @classmethod
    def of(cls, value: "Identity | str") -> "Identity":
        return value if isinstance(value, Identity) else cls.parse(value)

    @property
    def uri(self) -> str:
        return f"{SPIFFE_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri


# --------------------------------------------------------------------------
# Certificates -> identity

def uri_sans(cert: x509.Certificate) -> list[str]:
    """All URI SANs of a certificate (empty when it has no SAN extension)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def identity_of_cert(cert: x509.Certificate) -> Identity:
    """The SPIFFE identity of a certificate: exactly one URI SAN, a SPIFFE ID.

    Raises:
        PeerVerificationError: no URI SAN, several, or not a valid SPIFFE ID.
    """
    uris = uri_sans(cert)
    if not uris:
        raise PeerVerificationError("no_spiffe_san", "peer certificate has no URI SAN (no SPIFFE identity)")
    spiffe = [u for u in uris if u.startswith(SPIFFE_SCHEME)]
    if len(spiffe) != 1 or len(uris) != 1:
        raise PeerVerificationError(
            "bad_uri_sans", f"peer certificate must carry exactly one URI SAN, a SPIFFE ID; got {uris}")
    try:
        return Identity.parse(spiffe[0])
    except IdentityError as e:
        raise PeerVerificationError("bad_spiffe_id", f"peer certificate SPIFFE ID is invalid: {e}") from e


def peer_certificate(ssl_object: Any) -> x509.Certificate:
    """The peer's leaf certificate of a finished handshake.

    Accepts an `ssl.SSLObject`/`ssl.SSLSocket` (anything with
    `getpeercert(binary_form=True)`), DER bytes or an x509.Certificate.
    """
    if isinstance(ssl_object, x509.Certificate):
        return ssl_object
    der = ssl_object if isinstance(ssl_object, (bytes, bytearray)) else ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerVerificationError("no_peer_cert", "peer presented no certificate")
    return x509.load_der_x509_certificate(bytes(der))


def peer_identity(ssl_object: Any) -> Identity:
    """The SPIFFE identity of the TLS peer (see `identity_of_cert`)."""
    return identity_of_cert(peer_certificate(ssl_object))


def verify_server_identity(peer: Identity | Any, expected: Iterable[Identity | str]) -> Identity:
    """Client side: the server must be exactly one of the expected identities.

    Args:
        peer: the server's Identity, or the handshaken ssl object.
        expected: the destination's identity plus any service SANs.
    Returns:
        The server's identity.
    Raises:
        PeerVerificationError: code "identity_mismatch", naming expected vs got.
    """
    got = peer if isinstance(peer, Identity) else peer_identity(peer)
    wanted = tuple(Identity.of(e) for e in expected)
    if got not in wanted:
        raise PeerVerificationError(
            "identity_mismatch",
            f"server identity {got.uri} is not one of the expected identities "
            f"[{', '.join(w.uri for w in wanted)}]")
    return got


def verify_client_trust_domain(peer: Identity | Any, local_trust_domain: str) -> Identity:
    """Server side: the client must be in our trust domain.

    Returns:
        The client's identity (for RBAC).
    Raises:
        PeerVerificationError: code "trust_domain_mismatch".
    """
    got = peer if isinstance(peer, Identity) else peer_identity(peer)
    if got.trust_domain != local_trust_domain:
        raise PeerVerificationError(
            "trust_domain_mismatch",
            f"client identity {got.uri} is in trust domain {got.trust_domain!r}, "
            f"expected {local_trust_domain!r}")
    return got
