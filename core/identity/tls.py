"""TLS contexts for HBONE: TLS 1.3 only, AES-GCM, mutual, ALPN h2, no SNI.

What is enforced, and how (reference/istio-ztunnel.md §2):
- Versions: `minimum_version = maximum_version = TLSv1_3`.
- Cipher suites: TLS_AES_256_GCM_SHA384 and TLS_AES_128_GCM_SHA256 only.
  Python 3.11's `ssl` cannot restrict TLS 1.3 suites (`set_ciphers` only
  covers TLS <= 1.2, and there is no `set_ciphersuites`), so we call OpenSSL's
  `SSL_CTX_set_ciphersuites` on the context's own `SSL_CTX` through ctypes, in
  the very libssl that `_ssl` is linked against. The `SSL_CTX*` is read from
  the CPython object (first field after the object header) and checked before
  use: `SSL_CTX_get_options` on it must equal `context.options`. After the
  call, `context.get_ciphers()` must list exactly the two suites; any mismatch
  raises `TlsConfigError`, so a context that would allow ChaCha20 never
  exists. tests/integration/identity checks it with `openssl s_client
  -ciphersuites TLS_CHACHA20_POLY1305_SHA256`, which must fail.
- ALPN: `h2` on both sides.
- SNI: not sent. The HBONE client must wrap with `server_hostname=None`;
  `check_hostname` is off, the server identity is checked after the
  handshake by `spiffe.verify_server_identity`.
- Mutual: both sides `CERT_REQUIRED` against the trust bundle.
- Session resumption: off (no tickets), as ztunnel.
- Private keys never touch the disk: the PEM (key + chain) is written into an
  anonymous `memfd` that `load_cert_chain` reads through `/proc/self/fd/N`,
  then closed. Trust bundles load from memory (`cadata`).
"""

from __future__ import annotations

import ctypes
import os
import ssl
from typing import Callable

from shoal.core.identity.certs import WorkloadCert

ALPN_H2 = "h2"

# ztunnel's suites for every crypto provider; the ChaCha20 suite is off.
TLS13_CIPHERSUITES = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")


class TlsConfigError(RuntimeError):
    """This Python/OpenSSL cannot build a context with HBONE's settings."""


def _libssl() -> ctypes.CDLL:
    """The libssl mapped by `_ssl` (so we never mix two OpenSSL copies).

    `import ssl` at the top of this module has loaded `_ssl` and its libssl.
    """
    path = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            name = line.rstrip().rsplit(" ", 1)[-1]
            if "/libssl.so" in name:
                path = name
                break
    if path is None:
        raise TlsConfigError("cannot find the libssl used by Python's ssl module")
    lib = ctypes.CDLL(path)
    lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    return lib


_LIB: ctypes.CDLL | None = None


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    # CPython's PySSLContext starts with PyObject_HEAD then `SSL_CTX *ctx`.
    return ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value or 0


def restrict_tls13_ciphersuites(ctx: ssl.SSLContext, suites=TLS13_CIPHERSUITES) -> None:
    """Limit the TLS 1.3 suites of `ctx` (see module docstring).

    Raises:
        TlsConfigError: the suites could not be set and verified.
    """
    global _LIB
    if _LIB is None:
        _LIB = _libssl()
    ptr = _ssl_ctx_pointer(ctx)
    if not ptr or _LIB.SSL_CTX_get_options(ptr) != ctx.options:
        raise TlsConfigError("cannot locate the OpenSSL SSL_CTX of an ssl.SSLContext "
                             "(unsupported Python build)")
    if _LIB.SSL_CTX_set_ciphersuites(ptr, ":".join(suites).encode()) != 1:
        raise TlsConfigError(f"OpenSSL refused TLS 1.3 cipher suites {suites}")
    got = tuple(c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3")
    if set(got) != set(suites):
        raise TlsConfigError(f"TLS 1.3 suites are {got}, expected {suites}")


def _base_context(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    restrict_tls13_ciphersuites(ctx)
    ctx.set_alpn_protocols([ALPN_H2])
    return ctx


def load_key_and_chain(ctx: ssl.SSLContext, cert: WorkloadCert) -> None:
    """Load key + leaf + intermediates without writing the key to disk."""
    blob = cert.key_pem() + cert.chain_pem().encode()
    fd = os.memfd_create("shoal-workload-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, blob)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def load_trust_bundle(ctx: ssl.SSLContext, cert: WorkloadCert) -> None:
    """Trust exactly the roots of `cert` (all of them, for a rotation overlap)."""
    ctx.load_verify_locations(cadata=cert.roots_pem())


def client_context(cert: WorkloadCert) -> ssl.SSLContext:
    """The HBONE client context presenting `cert`.

    Wrap with `server_hostname=None` (no SNI), then call
    `spiffe.verify_server_identity(ssl_object, expected)` before sending data.
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False   # SPIFFE identity is checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    load_trust_bundle(ctx, cert)
    load_key_and_chain(ctx, cert)
    return ctx


def server_context(cert: WorkloadCert) -> ssl.SSLContext:
    """The HBONE server context presenting `cert`; clients must present a cert.

    After the handshake call `spiffe.verify_client_trust_domain(ssl_object,
    cert.trust_domain)`; the client identity it returns goes to RBAC.
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.num_tickets = 0          # no TLS 1.3 session tickets: no resumption
    load_trust_bundle(ctx, cert)
    load_key_and_chain(ctx, cert)
    return ctx


def rotating_server_context(current: Callable[[], ssl.SSLContext | None]) -> ssl.SSLContext:
    """A listener context whose certificate is chosen afresh at each handshake.

    asyncio binds one SSLContext to a listening socket. OpenSSL calls the
    servername callback on every ClientHello (also without SNI, with
    server_name None); switching `ssl_object.context` there swaps the
    certificate *and* the trust store for that handshake. So a renewed
    certificate or a new trust bundle applies to the next connection while
    established sessions keep theirs. `current()` returns the context to use
    (e.g. `lambda: certs.server_context(identity)`), or None to refuse the
    handshake (no valid certificate).

    Raises:
        TlsConfigError: `current()` gives no context at creation.
    """
    base = current()
    if base is None:
        raise TlsConfigError("no server certificate available yet")

    def pick(ssl_object, server_name, _ctx):
        ctx = current()
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        if ssl_object.context is not ctx:
            ssl_object.context = ctx
        return None

    # A fresh context that shares nothing with `base`, so later swaps of
    # `base` elsewhere never recurse into this callback.
    listener = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    listener.minimum_version = listener.maximum_version = ssl.TLSVersion.TLSv1_3
    listener.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    listener.num_tickets = 0
    listener.verify_mode = ssl.CERT_REQUIRED
    restrict_tls13_ciphersuites(listener)
    listener.set_alpn_protocols([ALPN_H2])
    listener.sni_callback = pick
    return listener
