"""The CA flags every proxy that fetches certificates takes, and the client they select."""

from __future__ import annotations

import click

from shoal.core.addr import parse_authority
from shoal.core.constants import CA_PORT, DEFAULT_TRUST_DOMAIN
from shoal.core.identity.caclient import CA_PROTOCOLS, GRPC, CaClient, TokenCaClient
from shoal.core.identity.grpcca import GrpcCaClient


def ca_options(fn):
    """--ca-address and --ca-protocol: the same spelling (and ztunnel's env
    vars) for every proxy that fetches certificates (ztunnel, waypoint)."""
    fn = click.option("--ca-protocol", type=click.Choice(CA_PROTOCOLS), default=GRPC,
                      show_default=True, envvar="CA_PROTOCOL",
                      help="grpc: Istio's IstioCertificateService (istiod or shoal's CA); "
                      "json: shoal's JSON API.")(fn)
    return click.option("--ca-address", default=f"127.0.0.1:{CA_PORT}", show_default=True,
                        envvar="CA_ADDRESS", help="host:port of the CA (env CA_ADDRESS, as "
                        "ztunnel).")(fn)


def make_ca_client(address: str, protocol: str = GRPC, *, credential_dir: str | None = None,
                   token_file: str | None = None, root_cert: str | None = None,
                   trust_domain: str = DEFAULT_TRUST_DOMAIN):
    """The CA client the flags select: a node credential (the local mesh) or a
    ServiceAccount token with the CA's root bundle (a cluster), over Istio's
    gRPC or shoal's JSON API."""
    target = parse_authority(address)
    if protocol not in CA_PROTOCOLS:
        raise ValueError(f"--ca-protocol must be one of {', '.join(CA_PROTOCOLS)}; got {protocol!r}")
    if protocol == GRPC:
        if credential_dir:
            return GrpcCaClient.from_dir(target, credential_dir, token_file=token_file)
        return GrpcCaClient.with_token(target, token_file, root_cert)
    if token_file and root_cert:
        return TokenCaClient(target, token_file, root_cert, trust_domain=trust_domain)
    if not credential_dir:
        raise ValueError("the CA client needs --ca-credential (a node credential directory) "
                         "or, on a cluster, --ca-token with --ca-root-cert")
    return CaClient.from_dir(target, credential_dir)
