"""A throwaway PKI for tests: roots, intermediates, SPIFFE leaves, bad leaves.

    pki = TestPKI()                                   # root for cluster.local
    cert = pki.issue("spiffe://cluster.local/ns/a/sa/b")   # -> WorkloadCert
    bad = pki.issue(ident, expired=True)              # or not_yet_valid, no_san,
                                                      # wrong_key_usage, extra_uris
    other = TestPKI(trust_domain="other.td")          # an unrelated root
    files = write_pem(cert, tmp_path, "server")       # for nghttpx / stunnel / openssl
    files.key, files.cert (leaf+chain), files.ca (trust bundle)

`TestPKI(intermediate=True)` signs leaves with an intermediate, so chains have
two certificates. `pki.rotate_root()` makes a new root (and intermediate) and
keeps the old root in `pki.roots` for an overlap bundle.
Leaves mirror what the CA issues: ECDSA P-256, only the SPIFFE URI SAN,
digitalSignature + keyEncipherment, serverAuth + clientAuth.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.core.identity.certs import WorkloadCert
from shoal.core.identity.spiffe import Identity

_DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ca_cert(subject: str, key, issuer_cert=None, issuer_key=None, *, path_len=None,
             days=3650) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal-test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer = issuer_cert.subject if issuer_cert is not None else name
    now = _now()
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + days * _DAY)
         .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                      content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_cert is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


class TestPKI:
    """A root CA (optionally with an intermediate) issuing SPIFFE leaves."""

    __test__ = False  # not a pytest test class

    def __init__(self, trust_domain: str = "cluster.local", *, intermediate: bool = False,
                 name: str = "shoal test root") -> None:
        self.trust_domain = trust_domain
        self.name = name
        self.intermediate = intermediate
        self.old_roots: list[x509.Certificate] = []
        self._make_ca()

    def _make_ca(self) -> None:
        suffix = f" {len(self.old_roots)}" if self.old_roots else ""
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root_cert = _ca_cert(self.name + suffix, self.root_key)
        if self.intermediate:
            self.signing_key = ec.generate_private_key(ec.SECP256R1())
            self.signing_cert = _ca_cert(self.name + suffix + " intermediate", self.signing_key,
                                         self.root_cert, self.root_key, path_len=0)
            self.chain: tuple[x509.Certificate, ...] = (self.signing_cert,)
        else:
            self.signing_key, self.signing_cert, self.chain = self.root_key, self.root_cert, ()

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The trust bundle: the current root first, then old roots still trusted."""
        return (self.root_cert, *self.old_roots)

    def rotate_root(self, *, keep_old: bool = True) -> None:
        """New root (and intermediate); the old roots stay in `roots` if keep_old."""
        self.old_roots = [self.root_cert, *self.old_roots] if keep_old else []
        self._make_ca()

    def identity(self, namespace: str = "default", sa: str = "default") -> Identity:
        return Identity(trust_domain=self.trust_domain, namespace=namespace, service_account=sa)

    def issue(self, identity: Identity | str, *, ttl: dt.timedelta = _DAY,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              expired: bool = False, not_yet_valid: bool = False, no_san: bool = False,
              wrong_key_usage: bool = False, extra_uris: tuple[str, ...] = (),
              dns_names: tuple[str, ...] = (), key: ec.EllipticCurvePrivateKey | None = None,
              roots: tuple[x509.Certificate, ...] | None = None) -> WorkloadCert:
        """Issue a leaf for `identity` (a SPIFFE URI; any trust domain).

        Args:
            expired: valid from 2 days ago until 1 day ago.
            not_yet_valid: valid from tomorrow.
            no_san: no subjectAltName at all.
            wrong_key_usage: EKU codeSigning only (TLS peers must refuse it).
            extra_uris / dns_names: more SANs (e.g. to test "exactly one URI").
            roots: the trust bundle to put in the WorkloadCert (default `self.roots`).
        """
        ident = Identity.of(identity)
        now = _now()
        if expired:
            not_before, not_after = now - 2 * _DAY, now - _DAY
        elif not_yet_valid:
            not_before, not_after = now + _DAY, now + 2 * _DAY
        not_before = not_before or now - dt.timedelta(minutes=1)
        not_after = not_after or not_before + ttl
        key = key or ec.generate_private_key(ec.SECP256R1())
        eku = ([ExtendedKeyUsageOID.CODE_SIGNING] if wrong_key_usage
               else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
        b = (x509.CertificateBuilder().subject_name(x509.Name([]))
             .issuer_name(self.signing_cert.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(not_before).not_valid_after(not_after)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                          content_commitment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                                          encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 self.signing_key.public_key()), critical=False))
        if not no_san:
            sans = [x509.UniformResourceIdentifier(ident.uri)]
            sans += [x509.UniformResourceIdentifier(u) for u in extra_uris]
            sans += [x509.DNSName(d) for d in dns_names]
            # Istio marks the SAN critical because the subject is empty (RFC 5280 4.2.1.6).
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=True)
        leaf = b.sign(self.signing_key, hashes.SHA256())
        return WorkloadCert(identity=ident, key=key, leaf=leaf, chain=self.chain,
                            roots=tuple(roots) if roots is not None else self.roots)

    def write_ca(self, directory: str | os.PathLike, name: str = "ca") -> Path:
        """Write the trust bundle PEM; returns its path."""
        path = Path(directory) / f"{name}.pem"
        path.write_bytes(b"".join(r.public_bytes(serialization.Encoding.PEM) for r in self.roots))
        return path

    def write_cacerts(self, directory: str | os.PathLike) -> Path:
        """Write an Istio `cacerts` directory (plug-in CA) signed by this root.

        ca-cert.pem/ca-key.pem: an intermediate the control plane signs with;
        root-cert.pem: the root; cert-chain.pem: intermediate then root.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        ikey = ec.generate_private_key(ec.SECP256R1())
        icert = _ca_cert(self.name + " plug-in intermediate", ikey, self.root_cert, self.root_key,
                         path_len=0)
        pem = serialization.Encoding.PEM
        (d / "ca-cert.pem").write_bytes(icert.public_bytes(pem))
        (d / "ca-key.pem").write_bytes(ikey.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        (d / "root-cert.pem").write_bytes(self.root_cert.public_bytes(pem))
        (d / "cert-chain.pem").write_bytes(icert.public_bytes(pem) + self.root_cert.public_bytes(pem))
        os.chmod(d / "ca-key.pem", 0o600)
        return d


@dataclass(frozen=True, slots=True)
class PemFiles:
    key: Path     # private key (PKCS#8). Test peers only: shoal never writes keys.
    cert: Path    # leaf + intermediates
    ca: Path      # trust bundle


def write_pem(cert: WorkloadCert, directory: str | os.PathLike, name: str) -> PemFiles:
    """Write `cert` as PEM files `<name>-key.pem`, `<name>-cert.pem`, `<name>-ca.pem`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = PemFiles(key=d / f"{name}-key.pem", cert=d / f"{name}-cert.pem", ca=d / f"{name}-ca.pem")
    files.key.write_bytes(cert.key_pem())
    os.chmod(files.key, 0o600)
    files.cert.write_text(cert.chain_pem())
    files.ca.write_text(cert.roots_pem())
    return files


def write_credential_dir(cert: WorkloadCert, directory: str | os.PathLike) -> Path:
    """Write `cert` as a shoal credential directory (what `--cert-dir` and the
    CA client's files read: key.pem, cert-chain.pem, root-cert.pem)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "key.pem").write_bytes(cert.key_pem())
    (d / "cert-chain.pem").write_text(cert.chain_pem())
    (d / "root-cert.pem").write_text(cert.roots_pem())
    return d
