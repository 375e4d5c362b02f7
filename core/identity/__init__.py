"""Workload identity: SPIFFE IDs, certificates, TLS contexts, the cert manager.

    from shoal.core.identity import Identity, WorkloadCert, CertManager
    from shoal.core.identity.tls import client_context, server_context
"""

from shoal.core.identity.certs import CertError, WorkloadCert, make_csr
from shoal.core.identity.spiffe import (Identity, IdentityError, PeerVerificationError, peer_identity,
                                  verify_client_trust_domain, verify_server_identity)

__all__ = ["CertError", "CertManager", "Identity", "IdentityError", "PeerVerificationError",
           "WorkloadCert", "make_csr", "peer_identity", "verify_client_trust_domain",
           "verify_server_identity"]


def __getattr__(name: str):
    # The manager pulls in asyncio and the CA client; load it only when used.
    if name == "CertManager":
        from shoal.core.identity import manager
        return manager.CertManager
    if name == "CaClient":
        from shoal.core.identity import caclient
        return caclient.CaClient
    raise AttributeError(name)
