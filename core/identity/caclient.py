"""The node proxy's client for the control plane CA (asyncio, mutual TLS).

It authenticates with the node credential written by `shoal controlplane
issue-node-cert` (cert-chain.pem, key.pem, root-cert.pem; Istio's node proxy
uses a service-account token instead) and checks that the server is the
control plane (`spiffe://<td>/ns/istio-system/sa/istiod`) before sending the
CSR. The API is described in controlplane/server.py and docs/security.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.core.identity import tls as shoal_tls
from shoal.core.identity.certs import CertError, WorkloadCert, load_pem_certs
from shoal.core.identity.spiffe import Identity, PeerVerificationError, verify_server_identity

# Istio's istiod serves the CA; its SPIFFE identity is what we expect to reach.
CONTROL_PLANE_NAMESPACE = "istio-system"
CONTROL_PLANE_SERVICE_ACCOUNT = "istiod"
# The protocols a proxy can speak to its CA: Istio's gRPC, or shoal's JSON API.
GRPC = "grpc"
JSON = "json"
CA_PROTOCOLS = (GRPC, JSON)
# A CA that does not answer in this time is treated as down (the manager backs off).
CA_REQUEST_TIMEOUT = 10.0
# The CA's answers are a few KiB; anything much larger is not the CA.
MAX_RESPONSE_BYTES = 256 * 1024


class CaError(Exception):
    """The CA refused or could not be reached. `status` 0 means no HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True, slots=True, kw_only=True)
class SignResponse:
    cert_chain: tuple[x509.Certificate, ...]   # leaf first
    trust_bundle: tuple[x509.Certificate, ...]


def load_credential(directory: str | Path) -> WorkloadCert:
    """A node/waypoint credential from `issue-node-cert`'s output directory."""
    d = Path(directory)
    try:
        key = serialization.load_pem_private_key((d / "key.pem").read_bytes(), password=None)
        chain = load_pem_certs((d / "cert-chain.pem").read_bytes())
        roots = load_pem_certs((d / "root-cert.pem").read_bytes())
    except (OSError, ValueError) as e:
        raise CertError("bad_credential", f"cannot load the node credential from {d}: {e} "
                                          "(create it with `shoal controlplane issue-node-cert`)") from e
    return WorkloadCert.build(key, chain[0], chain[1:], roots)


class CaClient:
    """Talks to `shoal controlplane run` with a node credential.

    Args:
        address: (host, port) of the CA (port 15012 in a deployment).
        credential: the node's own credential (its roots are the CA's roots).
    """

    def __init__(self, address: tuple[str, int], credential: WorkloadCert, *,
                 timeout: float = CA_REQUEST_TIMEOUT) -> None:
        self.address = address
        self.credential = credential
        self.timeout = timeout
        self.server_identity = Identity(trust_domain=credential.trust_domain,
                                        namespace=CONTROL_PLANE_NAMESPACE,
                                        service_account=CONTROL_PLANE_SERVICE_ACCOUNT)
        self._ctx: ssl.SSLContext | None = None
        self._cred_dir: Path | None = None
        self._cred_stamp: tuple = ()

    @classmethod
    def from_dir(cls, address: tuple[str, int], directory: str | Path, **kw) -> "CaClient":
        """A client whose credential is re-read when `issue-node-cert` rewrites the files."""
        client = cls(address, load_credential(directory), **kw)
        client._cred_dir = Path(directory)
        client._cred_stamp = _dir_stamp(client._cred_dir)
        return client

    def set_credential(self, credential: WorkloadCert) -> None:
        """Use a new node credential (re-issued by the operator) from the next request."""
        self.credential = credential
        self._ctx = None

    def _maybe_reload_credential(self) -> None:
        maybe_reload_credential(self)

    def update_roots(self, roots) -> None:
        """Trust a new bundle for the CA connection (root rotation)."""
        self.credential = self.credential.with_roots(roots)
        self._ctx = None

    def _context(self) -> ssl.SSLContext:
        self._maybe_reload_credential()
        if self._ctx is None:
            ctx = _client_context()
            shoal_tls.load_trust_bundle(ctx, self.credential)
            shoal_tls.load_key_and_chain(ctx, self.credential)
            self._ctx = ctx
        return self._ctx

    async def sign(self, identity: Identity, csr_pem: str,
                   ttl: dt.timedelta | None = None) -> SignResponse:
        """POST /v1/certificates.

        Raises:
            CaError: the CA refused (status 400/403 with its reason) or is unreachable.
        """
        body: dict = {"csr": csr_pem, "identity": identity.uri}
        if ttl is not None:
            body["ttl_seconds"] = int(ttl.total_seconds())
        out = await self._request("POST", "/v1/certificates", body)
        try:
            chain = tuple(c for pem in out["cert_chain"] for c in load_pem_certs(pem))
            bundle = tuple(c for pem in out["trust_bundle"] for c in load_pem_certs(pem))
        except (KeyError, TypeError, CertError) as e:
            raise CaError(502, "bad_ca_response", f"CA answer lacks a usable chain: {e}") from e
        if not chain or not bundle:
            raise CaError(502, "bad_ca_response", "CA answered with an empty chain or trust bundle")
        return SignResponse(cert_chain=chain, trust_bundle=bundle)

    async def trust_bundle(self) -> tuple[x509.Certificate, ...]:
        """GET /v1/trust-bundle."""
        out = await self._request("GET", "/v1/trust-bundle", None)
        try:
            return tuple(c for pem in out["trust_bundle"] for c in load_pem_certs(pem))
        except (KeyError, TypeError, CertError) as e:
            raise CaError(502, "bad_ca_response", f"CA trust bundle unusable: {e}") from e

    async def _request(self, method: str, path: str, body: dict | None) -> dict:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(method, path, body)
        except TimeoutError:
            raise CaError(0, "ca_timeout", f"CA at {self.address[0]}:{self.address[1]} did not answer "
                                           f"within {self.timeout}s") from None
        except (OSError, ssl.SSLError) as e:
            raise CaError(0, "ca_unreachable",
                          f"cannot reach the CA at {self.address[0]}:{self.address[1]}: {e} "
                          "(is `shoal controlplane run` up, and is the node credential valid?)") from e

    async def _exchange(self, method: str, path: str, body: dict | None) -> dict:
        reader, writer = await asyncio.open_connection(
            self.address[0], self.address[1], ssl=self._context(), server_hostname=None)
        try:
            try:
                verify_server_identity(writer.get_extra_info("ssl_object"), (self.server_identity,))
            except PeerVerificationError as e:
                raise CaError(0, "ca_identity_mismatch", f"refusing to talk to the CA: {e}") from e
            data = orjson.dumps(body) if body is not None else b""
            head = (f"{method} {path} HTTP/1.1\r\nhost: istiod\r\ncontent-type: application/json\r\n"
                    f"{self._auth_header()}"
                    f"content-length: {len(data)}\r\nconnection: close\r\n\r\n")
            writer.write(head.encode() + data)
            await writer.drain()
            raw = await reader.read(MAX_RESPONSE_BYTES + 1)
            while len(raw) <= MAX_RESPONSE_BYTES:
                more = await reader.read(MAX_RESPONSE_BYTES + 1 - len(raw))
                if not more:
                    break
                raw += more
        finally:
            writer.close()
        return _parse_response(raw)


    def _auth_header(self) -> str:
        return ""           # the client certificate is the credential


class TokenCaClient(CaClient):
    """On a cluster: authenticates with the pod's projected ServiceAccount token
    (audience istio-ca) instead of a node credential, as Istio's ztunnel does.

    The token file is read for every request (the kubelet rotates it), and the
    CA is verified against the trust bundle the CA publishes (its ConfigMap,
    mounted at `root_cert_file`; re-read when it changes, for a root rotation).
    """

    def __init__(self, address: tuple[str, int], token_file: str | Path,
                 root_cert_file: str | Path, *, trust_domain: str,
                 timeout: float = CA_REQUEST_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self.token_file = Path(token_file)
        self.root_cert_file = Path(root_cert_file)
        self.server_identity = Identity(trust_domain=trust_domain,
                                        namespace=CONTROL_PLANE_NAMESPACE,
                                        service_account=CONTROL_PLANE_SERVICE_ACCOUNT)
        self._roots_pem = ""
        self._roots_stamp: tuple = ()
        self._ctx = None
        self._cred_dir = None

    def update_roots(self, roots) -> None:
        self._roots_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in roots)
        self._ctx = None

    def _context(self) -> ssl.SSLContext:
        try:
            st = self.root_cert_file.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as e:
            raise CaError(0, "no_ca_roots", f"cannot read the CA trust bundle "
                          f"{self.root_cert_file}: {e}") from e
        if stamp != self._roots_stamp:
            self._roots_pem = self.root_cert_file.read_text()
            self._roots_stamp = stamp
            self._ctx = None
        if self._ctx is None:
            ctx = _client_context()
            ctx.load_verify_locations(cadata=self._roots_pem)
            self._ctx = ctx
        return self._ctx

    def _auth_header(self) -> str:
        try:
            token = self.token_file.read_text().strip()
        except OSError as e:
            raise CaError(0, "no_token", f"cannot read the ServiceAccount token "
                          f"{self.token_file}: {e} (is the projected token mounted?)") from e
        return f"authorization: Bearer {token}\r\n"


def _client_context() -> ssl.SSLContext:
    """TLS 1.3 to the CA, verifying its chain; its SPIFFE identity is checked
    after the handshake (verify_server_identity), so no hostname check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def maybe_reload_credential(client) -> None:
    """Reload a CA client's node credential when its files changed (both CA
    clients, JSON and gRPC, take a re-issued credential this way): the client
    has `_cred_dir`, `_cred_stamp` and `set_credential`."""
    if client._cred_dir is None:
        return
    stamp = _dir_stamp(client._cred_dir)
    if stamp != client._cred_stamp:
        try:
            client.set_credential(load_credential(client._cred_dir))
            client._cred_stamp = stamp
        except CertError:
            pass  # half-written files: keep the last good credential, retry next time


def _dir_stamp(directory: Path) -> tuple:
    out = []
    for name in ("cert-chain.pem", "key.pem", "root-cert.pem"):
        try:
            st = (directory / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0))
    return tuple(out)


def _parse_response(raw: bytes) -> dict:
    if len(raw) > MAX_RESPONSE_BYTES:
        raise CaError(502, "bad_ca_response", "CA response too large")
    head, sep, payload = raw.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise CaError(502, "bad_ca_response", "CA answered with something that is not HTTP")
    status = int(parts[1])
    try:
        out = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise CaError(status, "bad_ca_response", f"CA answered {status} without JSON") from None
    if status != 200:
        raise CaError(status, str(out.get("code", "error")), str(out.get("error", f"CA answered {status}")))
    return out

