"""In-process ztunnel rig: Proxy objects on one event loop, a real CA object.

ztunnel's `tests/direct.rs` idea: no supervisor, no shared memory — two
`ztunnel.proxy.netns.Proxy` instances ("node-a", "node-b") over a `StaticView`, with
certificates signed by an in-memory `core.ca.authority.CertificateAuthority`
through the real `CertManager`. Real sockets on unique loopback IPs.
"""

from __future__ import annotations

import random

from shoal.controlplane.authority import CertificateAuthority
from shoal.core.identity import CertManager
from shoal.core.identity.caclient import SignResponse
from shoal.core.identity.certs import load_pem_certs
from shoal.core.sockets import PROXY_SOCKET_OPTIONS, DefaultSocketFactory
from shoal.ztunnel.options import FixedTarget, ZtunnelOptions
from shoal.ztunnel.proxy.inputs import Scope, Shared
from shoal.ztunnel.proxy.netns import Proxy


class LocalCa:
    """The CA client interface over an in-memory CA (no network)."""

    def __init__(self) -> None:
        self.ca = CertificateAuthority.self_signed()

    async def sign(self, identity, csr_pem, ttl=None) -> SignResponse:
        signed = self.ca.sign_csr(csr_pem, identity.uri, ttl=ttl)
        chain = tuple(c for pem in signed.cert_chain for c in load_pem_certs(pem))
        roots = tuple(c for pem in signed.trust_bundle for c in load_pem_certs(pem))
        return SignResponse(cert_chain=chain, trust_bundle=roots)

    async def trust_bundle(self):
        return tuple(c for pem in self.ca.trust_bundle_pem for c in load_pem_certs(pem))


class ViewBox:
    """A mutable holder: tests swap the view to simulate a config change."""

    def __init__(self, view) -> None:
        self.view = view

    def __call__(self):
        return self.view


async def start_proxy(*, node: str, bind: str, view: ViewBox, ca: LocalCa, metrics,
                      hbone_port: int, outbound_port: int, inbound_port: int,
                      fixed: dict[tuple[str, int], int], seed: int = 1,
                      fixed_inbound: dict[tuple[str, int], int] | None = None) -> Proxy:
    targets = [FixedTarget(kind="outbound", port=p, target=t) for t, p in fixed.items()]
    targets += [FixedTarget(kind="inbound-plaintext", port=p, target=t)
                for t, p in (fixed_inbound or {}).items()]
    opts = ZtunnelOptions(node=node, bind=bind, hbone_port=hbone_port,
                          outbound_port=outbound_port, inbound_port=inbound_port,
                          fixed_targets=tuple(targets))
    shared = Shared(options=opts, view=view, certs=CertManager(ca, node_name=node),
                    metrics=metrics, rng=random.Random(seed))
    proxy = Proxy(shared, DefaultSocketFactory(PROXY_SOCKET_OPTIONS), Scope(node=node),
                  fixed_targets=opts.fixed_targets, bind=bind)
    await proxy.start()
    return proxy
