"""`shoal ztunnel run` and `shoal ztunnel-config workloads|services|policies|certificates`."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

import click
import orjson

from shoal.core.constants import ADMIN_PORT, CA_PORT
from shoal.ztunnel import tables
from shoal.ztunnel.options import BYTES_REPORT_INTERVAL, DEDICATED, DEFAULT_ZDS_SOCKET, INPOD

# The admin endpoint answers from a local worker; a second is plenty.
ADMIN_TIMEOUT = 5.0


@click.group()
def ztunnel() -> None:
    """The L4 node proxy (Istio's ztunnel)."""


def _run_command():
    from shoal.shards.options import supervisor_options

    @ztunnel.command("run")
    @click.option("--node", required=True, help="Name of the node this ztunnel serves.")
    @click.option("--mode", type=click.Choice([DEDICATED, INPOD]), default=DEDICATED,
                  show_default=True, help="dedicated: listeners in this netns; "
                  "inpod: listeners in every enrolled pod's netns (from the node agent).")
    @click.option("--ca-address", default=f"127.0.0.1:{CA_PORT}", show_default=True,
                  help="host:port of the control plane CA.")
    @click.option("--ca-credential", type=click.Path(file_okay=False), required=True,
                  help="Directory with the node credential from "
                  "`shoal controlplane issue-node-cert --node NODE`.")
    @click.option("--zds-socket", default=DEFAULT_ZDS_SOCKET, show_default=True,
                  help="The node agent's ZDS socket (inpod mode).")
    @click.option("--listen", "bind", default="0.0.0.0", show_default=True,
                  help="Address of the capture listeners (dedicated mode).")
    @click.option("--hbone-port", type=int, default=15008, show_default=True)
    @click.option("--outbound-port", type=int, default=15001, show_default=True)
    @click.option("--inbound-port", type=int, default=15006, show_default=True)
    @click.option("--test-fixed-target", "fixed", multiple=True, hidden=True,
                  help="TEST ONLY: outbound:LISTENPORT=IP:PORT, a listener whose original "
                  "destination is fixed (loopback tests cannot REDIRECT).")
    @click.option("--bytes-report-interval", type=float, default=BYTES_REPORT_INTERVAL,
                  show_default=True,
                  help="Seconds between byte-count metric updates of open connections.")
    @supervisor_options
    def run(supervisor, node, mode, ca_address, ca_credential, zds_socket, bind, hbone_port,
            outbound_port, inbound_port, fixed, bytes_report_interval) -> None:
        """Run the ztunnel under the shards supervisor."""
        from shoal.shards.runner import run_app
        from shoal.ztunnel.app import ZtunnelApp
        from shoal.ztunnel.options import SNAPSHOT_WAIT, FixedTarget, ZtunnelOptions
        try:
            opts = ZtunnelOptions(node=node, mode=mode, ca_address=ca_address,
                                  ca_credential_dir=ca_credential, zds_socket=zds_socket,
                                  bind=bind, hbone_port=hbone_port, outbound_port=outbound_port,
                                  inbound_port=inbound_port,
                                  fixed_targets=tuple(FixedTarget.parse(f) for f in fixed),
                                  snapshot_wait=min(SNAPSHOT_WAIT,
                                                    supervisor.worker_timeout / 2),
                                  bytes_report_interval=bytes_report_interval)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        sys.exit(run_app(lambda: ZtunnelApp(opts), supervisor))

    return run


try:
    _run_command()
except ImportError:   # shards not importable: `ztunnel-config` still works
    pass


@click.group("ztunnel-config")
def ztunnel_config() -> None:
    """Inspect a running ztunnel, like `istioctl ztunnel-config`."""


def fetch_dump(address: str) -> dict:
    url = f"http://{address}/config_dump"
    try:
        with urllib.request.urlopen(url, timeout=ADMIN_TIMEOUT) as resp:
            return orjson.loads(resp.read())
    except (urllib.error.URLError, OSError) as e:
        raise click.ClickException(f"cannot read {url}: {e} (is `shoal ztunnel run` running "
                                   "on this host, with its admin port?)") from None
    except orjson.JSONDecodeError as e:
        raise click.ClickException(f"{url} did not return JSON: {e}") from None


def _table_command(name: str, with_namespace: bool = True):
    @click.option("--admin", default=f"127.0.0.1:{ADMIN_PORT}", show_default=True,
                  help="Admin address of the ztunnel.")
    @click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                  show_default=True)
    def cmd(admin: str, output: str, namespace: str | None = None) -> None:
        dump = fetch_dump(admin)
        section = tables.flatten(dump)
        if output == "json":
            click.echo(orjson.dumps(section.get(name, []), option=orjson.OPT_INDENT_2).decode())
            return
        fn = tables.TABLES[name]
        click.echo(fn(section, namespace) if with_namespace else fn(section), nl=False)

    cmd.__doc__ = f"List the {name} this ztunnel knows."
    if with_namespace:
        cmd = click.option("-n", "--namespace", default=None, help="Only this namespace.")(cmd)
    return ztunnel_config.command(name)(cmd)


for _name in ("workloads", "services", "policies"):
    _table_command(_name)
_table_command("certificates", with_namespace=False)
