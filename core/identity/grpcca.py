"""A CA client speaking Istio's gRPC CA protocol (grpcio), as Istio's ztunnel does.

`CreateCertificate` over TLS to the CA (istiod, or `shoal controlplane run`)
on 15012. The server is checked as ztunnel checks istiod: its certificate
must chain to our roots and carry the DNS name `istiod.istio-system.svc`
(`CA_SERVER_NAME`). The caller authenticates with its node credential
(client certificate) and, when a token file is given, also with `authorization:
Bearer <token>` (Istio's ztunnel sends its service-account token). Pods'
identities are asked for with the `ImpersonatedIdentity` metadata.

Same interface as `caclient.CaClient` (`sign`, `trust_bundle`, `update_roots`,
`from_dir`), so the certificate manager takes either.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.core.identity import istioca
from shoal.core.identity.caclient import (CA_REQUEST_TIMEOUT, CaError, SignResponse,
                                          _dir_stamp, load_credential,
                                          maybe_reload_credential)
from shoal.core.identity.certs import CertError, WorkloadCert, load_pem_certs
from shoal.core.identity.spiffe import Identity

# The name istiod's serving certificate carries and ztunnel verifies.
CA_SERVER_NAME = "istiod.istio-system.svc"

_STATUS_HTTP = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
                grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNIMPLEMENTED: 501}


class GrpcCaClient:
    """Talks Istio's CA protocol with a node credential (and optional token).

    Args:
        address: (host, port) of the CA.
        credential: the node credential; its roots are trusted for the CA.
        token_file: a bearer token file, re-read for every request.
    """

    def __init__(self, address: tuple[str, int], credential: WorkloadCert | None, *,
                 token_file: str | None = None, root_cert_file: str | None = None,
                 timeout: float = CA_REQUEST_TIMEOUT,
                 server_name: str = CA_SERVER_NAME) -> None:
        self.address = address
        self.credential = credential
        self.root_cert_file = Path(root_cert_file) if root_cert_file else None
        self._roots_stamp: tuple = ()
        self.token_file = token_file
        self.timeout = timeout
        self.server_name = server_name
        self._channel: grpc.aio.Channel | None = None
        self._cred_dir: Path | None = None
        self._cred_stamp: tuple = ()
        self._roots: tuple[x509.Certificate, ...] = tuple(credential.roots) if credential else ()

    @classmethod
    def from_dir(cls, address: tuple[str, int], directory: str | Path, **kw) -> "GrpcCaClient":
        client = cls(address, load_credential(directory), **kw)
        client._cred_dir = Path(directory)
        client._cred_stamp = _dir_stamp(client._cred_dir)
        return client

    @classmethod
    def with_token(cls, address: tuple[str, int], token_file: str | None,
                   root_cert_file: str | None, **kw) -> "GrpcCaClient":
        """On a cluster, as Istio's ztunnel: no client certificate, the
        ServiceAccount token as bearer, the CA checked against its published
        root bundle (re-read when the file changes)."""
        if not token_file or not root_cert_file:
            raise ValueError("a token client needs --ca-token and --ca-root-cert")
        return cls(address, None, token_file=token_file, root_cert_file=root_cert_file, **kw)

    def set_credential(self, credential: WorkloadCert) -> None:
        self.credential = credential
        self._reset()

    def update_roots(self, roots) -> None:
        """Trust a new bundle for the CA connection (root rotation)."""
        if self.credential is not None:
            self.credential = self.credential.with_roots(roots)
        self._roots = tuple(roots)
        self._reset()

    def _maybe_reload_roots(self) -> None:
        if self.root_cert_file is None:
            return
        try:
            st = self.root_cert_file.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._roots_stamp:
                self._roots = tuple(load_pem_certs(self.root_cert_file.read_bytes()))
                self._roots_stamp = stamp
                self._reset()
        except (OSError, CertError) as e:
            raise CaError(0, "no_ca_roots", f"cannot read the CA trust bundle "
                          f"{self.root_cert_file}: {e}") from e

    def _reset(self) -> None:
        if self._channel is not None:
            old, self._channel = self._channel, None
            # Closing is async; in-flight calls on the old channel finish first.
            import asyncio
            asyncio.ensure_future(old.close(grace=self.timeout))

    def _maybe_reload_credential(self) -> None:
        maybe_reload_credential(self)

    def _get_channel(self) -> grpc.aio.Channel:
        self._maybe_reload_credential()
        self._maybe_reload_roots()
        if self._channel is None:
            c = self.credential
            pem = serialization.Encoding.PEM
            roots = c.roots if c is not None else self._roots
            key = chain = None
            if c is not None:
                key = c.key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
                chain = b"".join(x.public_bytes(pem) for x in (c.leaf, *c.chain))
            creds = grpc.ssl_channel_credentials(
                root_certificates=b"".join(r.public_bytes(pem) for r in roots),
                private_key=key, certificate_chain=chain)
            host = f"[{self.address[0]}]" if ":" in self.address[0] else self.address[0]
            self._channel = grpc.aio.secure_channel(
                f"{host}:{self.address[1]}", creds,
                options=[("grpc.ssl_target_name_override", self.server_name),
                         ("grpc.default_authority", self.server_name)])
        return self._channel

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.token_file:
            return ()
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as e:
            raise CaError(0, "token_unreadable", f"cannot read the CA token {self.token_file}: "
                                                 f"{e}") from e
        return (("authorization", f"Bearer {token}"),)

    async def sign(self, identity: Identity, csr_pem: str,
                   ttl: dt.timedelta | None = None) -> SignResponse:
        """CreateCertificate for `identity` (ImpersonatedIdentity).

        Raises:
            CaError: the CA refused (status mapped to 400/401/403) or is unreachable (0).
        """
        req = istioca.IstioCertificateRequest(csr=csr_pem)
        if ttl is not None:
            req.validity_duration = int(ttl.total_seconds())
        req.metadata.fields[istioca.IMPERSONATED_IDENTITY].string_value = identity.uri
        call = self._get_channel().unary_unary(
            istioca.METHOD_PATH, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=istioca.IstioCertificateResponse.FromString)
        try:
            resp = await call(req, timeout=self.timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as e:
            status = _STATUS_HTTP.get(e.code(), 0)
            raise CaError(status, e.code().name.lower(),
                          f"CA at {self.address[0]}:{self.address[1]} answered {e.code().name}: "
                          f"{e.details()}") from None
        return self._response(resp)

    def _response(self, resp) -> SignResponse:
        try:
            certs = [c for pem in resp.cert_chain for c in load_pem_certs(pem)]
        except CertError as e:
            raise CaError(502, "bad_ca_response", f"CA answer lacks a usable chain: {e}") from e
        if not certs:
            raise CaError(502, "bad_ca_response", "CA answered with an empty chain")
        # Istio: leaf first, root last; shoal's CA appends every root of its
        # bundle (two during a rotation). Self-signed = a root.
        roots = tuple(c for c in certs[1:] if c.issuer == c.subject)
        chain = tuple(c for c in certs if c not in roots)
        if roots:
            self._roots = roots
        roots = self._roots
        return SignResponse(cert_chain=chain, trust_bundle=roots)

    async def trust_bundle(self) -> tuple[x509.Certificate, ...]:
        """The roots: Istio's protocol has no separate call (istiod publishes
        them out of band); they come with every certificate, else the
        credential's. A root added by a rotation arrives with the next
        issuance rather than the next bundle poll."""
        return self._roots

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
