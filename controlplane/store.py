"""The CA's state on disk: a self-created root, or an operator's `cacerts`.

Self-signed mode, in `--state-dir` (created on first start):

    root-cert.pem  root-key.pem (0600)   the root that signs
    next-root-cert.pem next-root-key.pem  a staged root (rotation phase "add")
    trust-bundle.pem                      every root workloads trust

Root rotation keeps traffic flowing by overlapping trust before signing:
  1. `add`: a new root is created and added to the bundle; the old root still
     signs. Proxies pick up the bundle (they poll it and get it with every
     certificate), so they trust both.
  2. `activate`: the new root signs; the old root stays in the bundle, so
     peers still holding old leaves are accepted.
  3. `retire` (after the longest leaf lifetime): the old root leaves the bundle.

Plug-in CA mode (Istio's `cacerts` secret), from `--cacerts DIR` or
`<state-dir>/cacerts/`: ca-cert.pem + ca-key.pem sign, cert-chain.pem is the
chain from ca-cert.pem up to the root, root-cert.pem is the trust bundle (it
may hold several roots during a rotation). The operator rotates by replacing
the files and sending SIGHUP.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.controlplane.authority import CertificateAuthority, SigningError, make_root
from shoal.core.constants import DEFAULT_TRUST_DOMAIN
from shoal.core.identity.certs import CertError, load_pem_certs

CACERTS_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")
ROTATION_PHASES = ("add", "activate", "retire")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_atomic(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if private:
        _write_private(tmp, data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_key(path: Path):
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SigningError("bad_ca_key", f"cannot load CA key {path}: {e}", 500) from e


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        return load_pem_certs(path.read_bytes())
    except (OSError, CertError) as e:
        raise SigningError("bad_ca_cert", f"cannot load {path}: {e}", 500) from e


def cacerts_dir(state_dir: Path, cacerts: Path | None) -> Path | None:
    """The plug-in CA directory in use, if any."""
    if cacerts is not None:
        return cacerts
    candidate = state_dir / "cacerts"
    return candidate if (candidate / "ca-cert.pem").exists() else None


def load_cacerts(directory: Path, trust_domain: str, clock: Callable[[], float]) -> CertificateAuthority:
    """Load an Istio-style plug-in CA.

    Raises:
        SigningError: a file is missing or does not parse, or the key does not
            match ca-cert.pem.
    """
    missing = [f for f in CACERTS_FILES if not (directory / f).exists()]
    if missing:
        raise SigningError("cacerts_incomplete",
                           f"plug-in CA directory {directory} lacks {', '.join(missing)} "
                           f"(needs {', '.join(CACERTS_FILES)})", 500)
    key = _load_key(directory / "ca-key.pem")
    signing = _load_certs(directory / "ca-cert.pem")[0]
    if _spki(signing.public_key()) != _spki(key.public_key()):
        raise SigningError("cacerts_key_mismatch",
                           f"{directory}/ca-key.pem does not match ca-cert.pem", 500)
    chain = [c for c in _load_certs(directory / "cert-chain.pem") if c.issuer != c.subject]
    if not chain or chain[0] != signing:
        chain = [signing, *[c for c in chain if c != signing]]
    roots = _load_certs(directory / "root-cert.pem")
    return CertificateAuthority(signing_key=key, signing_cert=signing, intermediates=tuple(chain),
                                roots=tuple(roots), trust_domain=trust_domain, clock=clock)


def load_or_create(state_dir: str | os.PathLike, *, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                   cacerts: str | os.PathLike | None = None,
                   clock: Callable[[], float] = time.time) -> CertificateAuthority:
    """The CA from `state_dir` (plug-in certs first), creating a root on first start."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    plug = cacerts_dir(state, Path(cacerts) if cacerts else None)
    if plug is not None:
        return load_cacerts(plug, trust_domain, clock)
    if not (state / "root-cert.pem").exists():
        import datetime as dt
        key, root = make_root(trust_domain, now=dt.datetime.fromtimestamp(clock(), dt.timezone.utc))
        _write_atomic(state / "root-key.pem", _key_pem(key), private=True)
        _write_atomic(state / "root-cert.pem", _cert_pem(root))
        _write_atomic(state / "trust-bundle.pem", _cert_pem(root))
    key = _load_key(state / "root-key.pem")
    root = _load_certs(state / "root-cert.pem")[0]
    bundle_path = state / "trust-bundle.pem"
    roots = _load_certs(bundle_path) if bundle_path.exists() else [root]
    if root not in roots:
        roots = [root, *roots]
    return CertificateAuthority(signing_key=key, signing_cert=root, intermediates=(),
                                roots=tuple(roots), trust_domain=trust_domain, clock=clock)


def rotate_root(state_dir: str | os.PathLike, phase: str, *,
                trust_domain: str = DEFAULT_TRUST_DOMAIN,
                clock: Callable[[], float] = time.time) -> str:
    """Advance a self-signed root rotation by one phase (see module docstring).

    Returns:
        A one-line description of what changed, for the operator.
    Raises:
        SigningError: unknown phase, or a phase run out of order.
    """
    import datetime as dt
    state = Path(state_dir)
    if phase not in ROTATION_PHASES:
        raise SigningError("bad_phase", f"rotation phase must be one of {ROTATION_PHASES}", 400)
    ca = load_or_create(state, trust_domain=trust_domain, clock=clock)
    nxt_cert, nxt_key = state / "next-root-cert.pem", state / "next-root-key.pem"
    if phase == "add":
        if nxt_cert.exists():
            raise SigningError("rotation_in_progress", "a staged root exists; run `activate` first", 400)
        key, root = make_root(trust_domain, now=dt.datetime.fromtimestamp(clock(), dt.timezone.utc),
                              generation=len(ca.roots))
        _write_atomic(nxt_key, _key_pem(key), private=True)
        _write_atomic(nxt_cert, _cert_pem(root))
        _write_atomic(state / "trust-bundle.pem", _cert_pem(*ca.roots, root))
        return f"staged new root serial {root.serial_number:x}; trust bundle now has {len(ca.roots) + 1} roots"
    if phase == "activate":
        if not nxt_cert.exists():
            raise SigningError("no_staged_root", "no staged root; run `add` first", 400)
        root = _load_certs(nxt_cert)[0]
        _write_atomic(state / "root-key.pem", nxt_key.read_bytes(), private=True)
        _write_atomic(state / "root-cert.pem", _cert_pem(root))
        roots = [root, *[r for r in ca.roots if r != root]]
        _write_atomic(state / "trust-bundle.pem", _cert_pem(*roots))
        nxt_key.unlink()
        nxt_cert.unlink()
        return f"root serial {root.serial_number:x} now signs; old roots stay trusted"
    _write_atomic(state / "trust-bundle.pem", _cert_pem(ca.signing_cert))
    return f"trust bundle reduced to the signing root serial {ca.signing_cert.serial_number:x}"


def state_stamp(state_dir: str | os.PathLike, cacerts: str | os.PathLike | None = None) -> tuple:
    """A cheap fingerprint of the CA files, to notice a change and reload."""
    state = Path(state_dir)
    plug = cacerts_dir(state, Path(cacerts) if cacerts else None)
    files = [plug / f for f in CACERTS_FILES] if plug else [
        state / "root-cert.pem", state / "trust-bundle.pem"]
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(f), 0, 0))
    return tuple(out)
