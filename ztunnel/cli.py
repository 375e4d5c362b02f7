"""`shoal ztunnel run` and `shoal ztunnel-config all|workloads|services|policies|certificates|
connections|log`."""

from __future__ import annotations

import sys
from urllib.parse import quote

import click
import orjson

from shoal.core import log as core_log
from shoal.core.constants import ADMIN_PORT
from shoal.ztunnel import tables
from shoal.core.identity.options import ca_options
from shoal.ztunnel.options import BYTES_REPORT_INTERVAL, DEDICATED, DEFAULT_ZDS_SOCKET, INPOD

# The admin endpoint answers from a local worker; a second is plenty.
ADMIN_TIMEOUT = 5.0


@click.group()
def ztunnel() -> None:
    """The L4 node proxy (Istio's ztunnel)."""


def _run_command():
    from shoal.shards.options import supervisor_options

    @ztunnel.command("run")
    @click.option("--node", required=True, envvar="NODE_NAME",
                  help="Name of the node this ztunnel serves (env NODE_NAME, as ztunnel).")
    @click.option("--mode", type=click.Choice([DEDICATED, INPOD]), default=DEDICATED,
                  show_default=True, help="dedicated: listeners in this netns; "
                  "inpod: listeners in every enrolled pod's netns (from the node agent).")
    @ca_options
    @click.option("--ca-credential", type=click.Path(file_okay=False), default=None,
                  envvar="CA_CREDENTIAL",
                  help="Directory with the node credential from "
                  "`shoal controlplane issue-node-cert --node NODE` (the local mesh).")
    @click.option("--ca-token", type=click.Path(dir_okay=False), default=None,
                  help="On a cluster: the projected ServiceAccount token (audience istio-ca) "
                  "the CA checks with TokenReview, instead of --ca-credential.")
    @click.option("--ca-root-cert", type=click.Path(dir_okay=False), default=None,
                  help="With --ca-token: the CA's trust bundle (its root ConfigMap, mounted).")
    @click.option("--zds-socket", default=DEFAULT_ZDS_SOCKET, show_default=True,
                  help="The node agent's ZDS socket (inpod mode).")
    @click.option("--bind", default="0.0.0.0", show_default=True,
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
    def run(supervisor, node, mode, ca_address, ca_protocol, ca_credential, ca_token,
            ca_root_cert, zds_socket, bind, hbone_port, outbound_port, inbound_port, fixed,
            bytes_report_interval) -> None:
        """Run the ztunnel under the shards supervisor."""
        from shoal.shards.runner import run_app
        from shoal.ztunnel.app import ZtunnelApp
        from shoal.ztunnel.options import SNAPSHOT_WAIT, FixedTarget, ZtunnelOptions
        if not ca_credential and not ca_token:
            raise click.UsageError("give --ca-credential (the local mesh's node credential) or, "
                                   "on a cluster, --ca-token and --ca-root-cert")
        try:
            opts = ZtunnelOptions(node=node, mode=mode, ca_address=ca_address,
                                  ca_protocol=ca_protocol,
                                  ca_credential_dir=ca_credential, ca_token_file=ca_token,
                                  ca_root_cert=ca_root_cert, zds_socket=zds_socket,
                                  bind=bind, hbone_port=hbone_port, outbound_port=outbound_port,
                                  inbound_port=inbound_port,
                                  fixed_targets=tuple(FixedTarget.parse(f) for f in fixed),
                                  snapshot_wait=min(SNAPSHOT_WAIT,
                                                    supervisor.worker_timeout / 2),
                                  bytes_report_interval=bytes_report_interval,
                                  service_ports=frozenset({supervisor.admin_port,
                                                           supervisor.metrics_port,
                                                           supervisor.readiness_port}))
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


OUTPUTS = ("short", "table", "json", "yaml")   # short and table are the same summary


def _admin_request(address: str, path: str, method: str = "GET") -> bytes:
    # Here, not at the top: `ztunnel run` (whose boot time is a restart's
    # outage) never loads the HTTP client.
    import urllib.error
    import urllib.request
    url = f"http://{address}{path}"
    try:
        req = urllib.request.Request(url, method=method)
        with urllib.request.urlopen(req, timeout=ADMIN_TIMEOUT) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raise click.ClickException(f"{url}: {e.code} {e.read().decode(errors='replace').strip()}"
                                   ) from None
    except (urllib.error.URLError, OSError) as e:
        raise click.ClickException(f"cannot read {url}: {e} (is `shoal ztunnel run` running "
                                   "on this host, with its admin port?)") from None


def fetch_dump(address: str) -> dict:
    try:
        return orjson.loads(_admin_request(address, "/config_dump"))
    except orjson.JSONDecodeError as e:
        raise click.ClickException(f"http://{address}/config_dump did not return JSON: {e}"
                                   ) from None


def emit(data: object, output: str) -> None:
    """JSON or YAML of `data` (istioctl prints the section it summarises)."""
    if output == "yaml":
        import yaml
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
    else:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def common_options(fn):
    """The flags every ztunnel-config command takes (one spelling everywhere)."""
    fn = click.option("-o", "--output", type=click.Choice(OUTPUTS), default="short",
                      show_default=True, help="short/table: a summary; json/yaml: the data.")(fn)
    return click.option("--admin", default=f"127.0.0.1:{ADMIN_PORT}", show_default=True,
                        envvar="SHOAL_ADMIN", help="Admin address (host:port) of the ztunnel.")(fn)


def _data(dump: dict, name: str, namespace: str | None) -> object:
    if name == "all":
        return dump
    if name == "connections":
        states = (dump.get("workloadState") or {}).values()
        return [s for s in states if not namespace or s["info"]["namespace"] == namespace]
    items = dump.get(name, [])
    if namespace and name != "certificates":
        items = [i for i in items if i.get("namespace") == namespace]
    return items


def _table_command(name: str, with_namespace: bool = True):
    @common_options
    def cmd(admin: str, output: str, namespace: str | None = None) -> None:
        dump = fetch_dump(admin)
        if output in ("json", "yaml"):
            emit(_data(dump, name, namespace), output)
            return
        fn = tables.TABLES[name]
        click.echo(fn(dump, namespace) if with_namespace else fn(dump), nl=False)

    cmd.__doc__ = (f"List the {name} this ztunnel knows." if name != "all"
                   else "Every summary: workloads, services, policies, certificates, connections.")
    if with_namespace:
        cmd = click.option("-n", "--namespace", default=None, help="Only this namespace.")(cmd)
    return ztunnel_config.command(name)(cmd)


for _name in ("workloads", "services", "policies", "connections", "all"):
    _table_command(_name)
_table_command("certificates", with_namespace=False)


@ztunnel_config.command("log")
@click.option("--level", default=None, help="Set levels, ztunnel's syntax: `info`, or per scope "
              "`access:debug,info` (scopes: " + ", ".join(core_log.SCOPES) + ").")
@click.option("--reset", is_flag=True, help="Back to level info with no scope overrides.")
@common_options
def log(admin: str, output: str, level: str | None, reset: bool) -> None:
    """Show or set the ztunnel's log levels (POST /logging?level=...)."""
    if reset:
        level = "info"
    if level is not None:
        try:
            core_log.parse_spec(level)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--level") from None
        body = _admin_request(admin, f"/logging?level={quote(level)}", "POST")
    else:
        body = _admin_request(admin, "/logging")
    data = orjson.loads(body)
    if output in ("json", "yaml"):
        emit(data, output)
    else:
        click.echo(f"current log level is {data['level']}")
