"""The control plane's CA endpoint on port 15012, TLS 1.3, two protocols by ALPN.

`h2`: Istio's gRPC `istio.v1.auth.IstioCertificateService/CreateCertificate`
(controlplane/grpcserver.py, messages in core/identity/istioca.py), so
Istio's ztunnel can use this CA: the caller authenticates with a client
certificate (node or waypoint credential) or, when a token authenticator is
configured, a `authorization: Bearer <token>`; a node asks for a pod's
identity with the `ImpersonatedIdentity` metadata, as ztunnel does. The
answer's `cert_chain` is leaf first, root last.

`http/1.1`: shoal's JSON API (docs/security.md), client certificate required:

    POST /v1/certificates   {"csr": PEM, "identity": "spiffe://…", "ttl_seconds": 86400?}
        200 {"cert_chain": [leaf PEM, intermediates…], "trust_bundle": [root PEM…],
             "serial": "hex", "not_after": "ISO-8601"}
        400 malformed request / CSR, 403 caller may not obtain that identity,
        each as {"error": reason, "code": stable-code}
    GET  /v1/trust-bundle   200 {"trust_bundle": [root PEM…]}
    GET  /healthz/ready     200 {"status": "ok"}

Every connection must present a node or waypoint credential (mutual TLS
against the CA's trust bundle) or, on a cluster (`token_auth`), a
ServiceAccount token as `authorization: Bearer` (controlplane/tokenauth.py);
one request per connection (`Connection:
close`), as certificate requests are rare. Each decision is logged as JSON.
The TLS context is rebuilt when the CA files change (root rotation), so new
connections see the new trust at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from typing import Awaitable, Callable

import orjson

from shoal.core import log
from shoal.controlplane.authority import (ISTIOD_SERVICE_ACCOUNT, SYSTEM_NAMESPACE, CertificateAuthority,
                               SigningError, node_of_cert)
from shoal.controlplane.nodeauth import Caller, IdentitiesOnNode, authorize
from shoal.core.identity import tls as shoal_tls
from shoal.core.identity.certs import WorkloadCert, load_pem_certs
from shoal.controlplane.grpcserver import GrpcConnection
from shoal.core.identity import istioca
from shoal.core.identity.spiffe import (Identity, IdentityError, PeerVerificationError,
                                        identity_of_cert, peer_certificate)



# Request head (request line + headers) larger than this is not our client.
MAX_HEAD_BYTES = 16 * 1024
# A CSR is < 1 KiB; 64 KiB leaves room for JSON overhead and refuses floods.
MAX_BODY_BYTES = 64 * 1024
# A client that has not finished the TLS handshake / sent its request by then
# is dropped (asyncio logs failed handshakes at debug level).
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
# The CA's own serving certificate lifetime; re-issued at half-life.
SERVING_CERT_TTL = dt.timedelta(hours=24)
ALPN_HTTP11 = "http/1.1"
ALPN_H2 = "h2"

_log = log.get("ca")

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Parse an HTTP/1.1 request head (without the final blank line).

    Returns:
        (method, path, headers with lowercase names)
    Raises:
        HttpError: 400 on anything malformed.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "bad_request", "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad_request", f"malformed request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "bad_request", f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], headers


def response_bytes(status: int, body: dict) -> bytes:
    data = orjson.dumps(body)
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"connection: close\r\n\r\n")
    return head.encode() + data


def server_identity(trust_domain: str) -> Identity:
    """The identity the control plane serves with (Istio's istiod)."""
    return Identity(trust_domain=trust_domain, namespace=SYSTEM_NAMESPACE,
                    service_account=ISTIOD_SERVICE_ACCOUNT)


def _context(cert: WorkloadCert, server_side: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # the SPIFFE identity is checked after the handshake
    ctx.set_alpn_protocols([ALPN_HTTP11])
    if server_side:
        ctx.num_tickets = 0     # one request per connection: resumption buys nothing
        ctx.set_alpn_protocols([ALPN_H2, ALPN_HTTP11])
    shoal_tls.load_trust_bundle(ctx, cert)
    shoal_tls.load_key_and_chain(ctx, cert)
    return ctx


def control_plane_context(cert: WorkloadCert, *, server_side: bool) -> ssl.SSLContext:
    """Mutual TLS 1.3 for the CA API (ALPN http/1.1), key loaded from memory."""
    return _context(cert, server_side)


class CaServer:
    """Serves the CA API. `reload_ca()` swaps in a new CA (root rotation)."""

    def __init__(self, ca: CertificateAuthority, identities_on_node: IdentitiesOnNode, *,
                 default_ttl: dt.timedelta | None = None,
                 token_auth: Callable[[str], Awaitable[Caller]] | None = None) -> None:
        self.ca = ca
        self.identities_on_node = identities_on_node
        self.default_ttl = default_ttl
        # On a cluster: callers without a client certificate authenticate with
        # `authorization: Bearer <ServiceAccount token>` (controlplane/tokenauth.py).
        self.token_auth = token_auth
        self._ctx: ssl.SSLContext | None = None
        self._serving_not_after = 0.0
        self._serving_issued = 0.0
        self._server: asyncio.Server | None = None

    # -- TLS ---------------------------------------------------------------
    def serving_cert(self) -> WorkloadCert:
        ident = server_identity(self.ca.trust_domain)
        key, signed = self.ca.issue_credential(ident, "istiod", ttl=SERVING_CERT_TTL,
                                               dns_names=("istiod.istio-system.svc", "localhost"))
        certs = [load_pem_certs(p)[0] for p in signed.cert_chain]
        roots = [load_pem_certs(p)[0] for p in signed.trust_bundle]
        return WorkloadCert.build(key, certs[0], certs[1:], roots)

    def context(self) -> ssl.SSLContext:
        now = self.ca.clock()
        if self._ctx is None or now >= (self._serving_issued + self._serving_not_after) / 2:
            cert = self.serving_cert()
            self._ctx = control_plane_context(cert, server_side=True)
            if self.token_auth is not None:
                self._ctx.verify_mode = ssl.CERT_OPTIONAL
            self._ctx.sni_callback = self._pick_context
            self._serving_issued = cert.not_before.timestamp()
            self._serving_not_after = cert.not_after.timestamp()
        return self._ctx

    def _pick_context(self, ssl_object, server_name, ctx) -> None:
        # OpenSSL calls this on every ClientHello (server_name is None without
        # SNI). Swapping the SSL_CTX here swaps the certificate and the trust
        # store, so a root rotation applies to the next handshake while the
        # listening socket (and its ssl= context) stays the same.
        current = self.context()
        if ssl_object.context is not current:
            ssl_object.context = current
        return None

    def reload_ca(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self._ctx = None

    # -- serving -----------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self.context(),
                                                  ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN_H2:
            try:
                await GrpcConnection(reader, writer, self._grpc_handler(ssl_object)).serve()
            finally:
                writer.close()
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, body = await self._serve_one(reader, writer)
        except TimeoutError:
            status, body = 400, {"error": "request not received in time", "code": "timeout"}
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            return
        try:
            writer.write(response_bytes(status, body))
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _serve_one(self, reader, writer) -> tuple[int, dict]:
        fields: dict = {"peer": str(writer.get_extra_info("peername"))}
        try:
            method, path, headers, body = await self._read_request(reader)
            fields.update(method=method, path=path)
            ssl_object = writer.get_extra_info("ssl_object")
            if self.token_auth is not None and ssl_object.getpeercert(binary_form=True) is None:
                caller = await self.token_auth(headers.get("authorization", ""))
                fields["auth"] = "token"
            else:
                caller = self._caller(ssl_object)
            fields["caller"] = f"{caller.kind}:{caller.name}"
            status, out = self._route(caller, method, path, body, fields)
        except (HttpError, SigningError) as e:
            status = e.status
            out = {"error": str(e), "code": e.code}
        fields.update(status=status, code=out.get("code", "ok"))
        level = 20 if status == 200 else 30
        _log.log(level, out.get("error", "certificate request served"), extra={"fields": fields})
        return status, out

    def _caller(self, ssl_object) -> Caller:
        try:
            cert = peer_certificate(ssl_object)
        except PeerVerificationError as e:
            raise SigningError("no_client_certificate", f"{e}: present a node or waypoint "
                               "credential", 403) from None
        kind, name = node_of_cert(cert)
        try:
            ident = identity_of_cert(cert)
        except IdentityError as e:
            raise SigningError("bad_credential", f"caller credential has no SPIFFE identity: {e}", 403)
        if ident.trust_domain != self.ca.trust_domain:
            raise SigningError("wrong_trust_domain",
                               f"caller {ident.uri} is not in trust domain {self.ca.trust_domain!r}", 403)
        return Caller(kind=kind, name=name, identity=ident)

    async def _read_request(self, reader: asyncio.StreamReader
                            ) -> tuple[str, str, dict[str, str], bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(413, "head_too_large", "request head too large") from None
        if len(head) > MAX_HEAD_BYTES:
            raise HttpError(413, "head_too_large", "request head too large")
        method, path, headers = parse_head(head[:-4])
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad_request", "bad content-length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise HttpError(413, "body_too_large", f"request body must be at most {MAX_BODY_BYTES} bytes")
        body = await reader.readexactly(length) if length else b""
        return method, path, headers, body

    def _route(self, caller: Caller, method: str, path: str, body: bytes, fields: dict) -> tuple[int, dict]:
        if path == "/v1/certificates":
            if method != "POST":
                raise HttpError(405, "method_not_allowed", "use POST /v1/certificates")
            return self._create_certificate(caller, body, fields)
        if path == "/v1/trust-bundle":
            return 200, {"trust_bundle": list(self.ca.trust_bundle_pem)}
        if path == "/healthz/ready":
            return 200, {"status": "ok"}
        raise HttpError(404, "not_found", f"no such endpoint {path}")

    def _create_certificate(self, caller: Caller, body: bytes, fields: dict) -> tuple[int, dict]:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise HttpError(400, "bad_json", f"request body is not JSON: {e}") from None
        if not isinstance(req, dict) or not isinstance(req.get("csr"), str) \
                or not isinstance(req.get("identity"), str):
            raise HttpError(400, "bad_request", 'body must be {"csr": PEM, "identity": SPIFFE ID}')
        fields["identity"] = req["identity"]
        ttl = self.default_ttl
        if "ttl_seconds" in req:
            if not isinstance(req["ttl_seconds"], int) or isinstance(req["ttl_seconds"], bool):
                raise HttpError(400, "bad_ttl", "ttl_seconds must be an integer")
            ttl = dt.timedelta(seconds=req["ttl_seconds"])
        try:
            wanted = Identity.parse(req["identity"])
        except IdentityError as e:
            raise SigningError("bad_identity", f"requested identity is invalid: {e}") from e
        authorize(caller, wanted, self.identities_on_node)
        signed = self.ca.sign_csr(req["csr"], req["identity"], ttl=ttl)
        fields["serial"] = signed.serial
        return 200, {"cert_chain": list(signed.cert_chain), "trust_bundle": list(signed.trust_bundle),
                     "serial": signed.serial, "not_after": signed.not_after.isoformat()}


    # -- gRPC (Istio's protocol) ---------------------------------------------
    async def authenticate_grpc(self, ssl_object, headers: dict[str, str]) -> Caller:
        """Who is calling: the client certificate, else (with `token_auth`,
        controlplane/tokenauth.py) the `authorization: Bearer` token.

        Raises:
            SigningError: 401 when neither authenticates the caller.
        """
        if ssl_object is not None and ssl_object.getpeercert(binary_form=True):
            return self._caller(ssl_object)
        if self.token_auth is not None:
            return await self.token_auth(headers.get("authorization", ""))
        raise SigningError("no_credential", "no client certificate (this CA takes no tokens: "
                           "present a node credential)", 401)

    def _grpc_handler(self, ssl_object):
        async def handle(headers: dict[str, str], message: bytes) -> tuple[int, str, bytes]:
            fields: dict = {"protocol": "grpc", "path": headers.get(":path", "")}
            try:
                caller = await self.authenticate_grpc(ssl_object, headers)
                fields["caller"] = f"{caller.kind}:{caller.name}"
                status, msg, out = self._grpc_create(caller, message, fields)
            except SigningError as e:
                status, msg, out = _GRPC_STATUS.get(e.status, istioca.INVALID_ARGUMENT), str(e), b""
                fields["code"] = e.code
            fields["grpc_status"] = status
            _log.log(20 if status == istioca.OK else 30, msg or "certificate request served",
                     extra={"fields": fields})
            return status, msg, out
        return handle

    def _grpc_create(self, caller: Caller, message: bytes, fields: dict) -> tuple[int, str, bytes]:
        try:
            req = istioca.IstioCertificateRequest.FromString(message)
        except Exception as e:     # protobuf's DecodeError and friends
            return istioca.INVALID_ARGUMENT, f"not an IstioCertificateRequest: {e}", b""
        wanted_uri = istioca.impersonated_identity(req) or caller.identity.uri
        fields["identity"] = wanted_uri
        try:
            wanted = Identity.parse(wanted_uri)
        except IdentityError as e:
            raise SigningError("bad_identity", f"requested identity is invalid: {e}") from e
        ttl = dt.timedelta(seconds=req.validity_duration) if req.validity_duration > 0 \
            else self.default_ttl
        authorize(caller, wanted, self.identities_on_node)
        signed = self.ca.sign_csr(req.csr, wanted.uri, ttl=ttl)
        fields["serial"] = signed.serial
        chain = list(signed.cert_chain) + [p for p in signed.trust_bundle
                                           if p not in signed.cert_chain]
        return istioca.OK, "", istioca.IstioCertificateResponse(cert_chain=chain).SerializeToString()


_GRPC_STATUS = {400: istioca.INVALID_ARGUMENT, 401: istioca.UNAUTHENTICATED,
                403: istioca.PERMISSION_DENIED, 500: istioca.INTERNAL, 503: istioca.UNAVAILABLE}
