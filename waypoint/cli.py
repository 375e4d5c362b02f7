"""`shoal waypoint ...`: run the L7 waypoint proxy under the shards supervisor."""

from __future__ import annotations

import sys

import click

from shoal.core.constants import DEFAULT_TRUST_DOMAIN, HBONE_PORT
from shoal.core.identity.options import ca_options
from shoal.shards.options import supervisor_options
from shoal.waypoint.lb import MODES, ROUND_ROBIN


@click.group()
def waypoint() -> None:
    """The L7 waypoint proxy (HTTPRoute, L7 AuthorizationPolicy, HTTP telemetry)."""


@waypoint.command()
@supervisor_options
@click.option("--name", required=True, help="Name of the waypoint Gateway (gatewayClassName istio-waypoint).")
@click.option("--namespace", required=True, help="Namespace of the waypoint Gateway.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address of the data-plane listeners.")
@click.option("--hbone-port", type=int, default=HBONE_PORT, show_default=True,
              help="HBONE (mTLS HTTP/2 CONNECT) listener; 0 disables.")
@click.option("--plaintext-port", type=int, default=0, show_default=True,
              help="TEST/bench only: plain HTTP listener, destination from the Host header (0 disables).")
@click.option("--upstream-plaintext", is_flag=True,
              help="TEST/bench only: plain TCP to endpoints instead of HBONE.")
@click.option("--cert-dir", type=click.Path(file_okay=False), default=None,
              help="The waypoint's credential (key.pem, cert-chain.pem, root-cert.pem).")
@ca_options
@click.option("--ca-credential", "ca_credential_dir",
              type=click.Path(file_okay=False), default=None, envvar="CA_CREDENTIAL",
              help="Credential used to authenticate to the CA (from `shoal controlplane "
              "issue-node-cert --waypoint NS/NAME`).")
@click.option("--ca-token", type=click.Path(dir_okay=False), default=None,
              help="On a cluster: the projected ServiceAccount token (audience istio-ca) "
              "the CA checks with TokenReview, instead of --ca-credential.")
@click.option("--ca-root-cert", type=click.Path(dir_okay=False), default=None,
              help="With --ca-token: the CA's trust bundle (its root ConfigMap, mounted).")
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
@click.option("--service-account", default="", help="Identity of the replicas (default: --name).")
@click.option("--lb-mode", type=click.Choice(MODES), default=ROUND_ROBIN, show_default=True,
              help="Endpoint load balancing.")
@click.option("--trace-sampling", type=float, default=1.0, show_default=True,
              help="Percent of new traces (requests without a traceparent) marked sampled, "
              "Istio's meshConfig tracing.sampling; an incoming traceparent's flag is kept.")
@click.option("--otlp-endpoint", default=None,
              help="Export sampled spans to this OTLP collector, e.g. http://collector:4317 "
              "(default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT; "
              "none: no export).")
@click.option("--otlp-protocol", type=click.Choice(["grpc", "http/protobuf"]), default=None,
              help="OTLP transport (default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc as "
              "Istio's OpenTelemetry provider).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One JSON line per request on the shoal.access logger.")
def run(supervisor, **flags) -> None:
    """Run a waypoint: N workers sharing :15008 (SO_REUSEPORT)."""
    from shoal.shards.runner import run_app
    from shoal.waypoint.app import WaypointApp, WaypointOptions
    try:
        options = WaypointOptions(**flags)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    sys.exit(run_app(lambda: WaypointApp(options), supervisor))
