"""`shoal node-agent ...` and `shoal cni ...`: the CNI side's command line."""

from __future__ import annotations

import asyncio
import sys

import click

from shoal.cni import protocol
from shoal.core import log


@click.group(name="node-agent")
def node_agent() -> None:
    """The CNI node agent: enrolls pods and hands their netns to ztunnel."""


@node_agent.command()
@click.option("--node", required=True, help="This node's name (pods' spec.nodeName).")
@click.option("--config", "config_dir", default="", type=click.Path(),
              help="Mesh config directory (Kubernetes YAML) deciding which pods are ambient.")
@click.option("--socket", "socket_path", default="/var/run/shoal-cni/" + protocol.SOCKET_NAME,
              show_default=True, help="Unix socket the shoal-cni plugin calls "
              "(the plugin config's cni_agent_run_dir + /pluginevent.sock).")
@click.option("--zds-socket", "zds_path", default="/var/run/ztunnel/ztunnel.sock",
              show_default=True, help="SOCK_SEQPACKET socket ztunnels connect to (ZDS).")
@click.option("--state-file", "state_path", default="",
              help="Where the agent remembers its pods [default: next to --socket].")
@click.option("--require-ztunnel/--no-require-ztunnel", default=True, show_default=True,
              help="Fail a pod's CNI ADD while no ztunnel is connected (Istio's behaviour).")
@click.option("--exclude-namespace", "exclude_namespaces", multiple=True,
              default=("kube-system", "istio-system"), show_default=True,
              help="Never capture pods here (repeatable; kube-system always is). "
                   "Put shoal's own namespace here.")
@click.option("--log-level", default=None, help="trace|debug|info|warning|error")
def run(node, config_dir, socket_path, zds_path, state_path, require_ztunnel, exclude_namespaces,
        log_level) -> None:
    """Run the node agent until SIGTERM."""
    import os

    from shoal.cni.agent import AgentOptions, NodeAgent
    log.setup(log_level)
    opts = AgentOptions(node=node, config_dir=config_dir, socket_path=socket_path,
                        zds_path=zds_path, require_ztunnel=require_ztunnel,
                        exclude_namespaces=tuple(exclude_namespaces),
                        state_path=state_path or os.path.join(os.path.dirname(socket_path),
                                                              "state.json"))
    try:
        asyncio.run(NodeAgent(opts).run_forever())
    except OSError as e:
        click.echo(f"node agent failed: {e}", err=True)
        sys.exit(1)


def _dirs(f):
    """Options shared by install and uninstall; env names as Istio's install-cni."""
    for opt in reversed([
        click.option("--cni-bin-dir", default="/opt/cni/bin", show_default=True, envvar="CNI_BIN_DIR",
                     help="The node's CNI plugin directory (as mounted here)."),
        click.option("--cni-conf-dir", default="/etc/cni/net.d", show_default=True,
                     envvar="CNI_NET_DIR", help="The node's CNI config directory (as mounted here)."),
        click.option("--agent-run-dir", default="/var/run/shoal-cni", show_default=True,
                     envvar="SHOAL_CNI_RUN_DIR",
                     help="The node agent's directory (socket, snapshot); a host path, "
                          "the plugin reads it on the node."),
    ]):
        f = opt(f)
    return f


@click.group()
def cni() -> None:
    """shoal-cni on a node: install and keep it chained, uninstall, locate it."""


@cni.command()
@_dirs
@click.option("--exclude-namespace", "exclude_namespaces", multiple=True,
              default=("kube-system", "istio-system"), show_default=True,
              envvar="SHOAL_CNI_EXCLUDE_NAMESPACES",
              help="Namespaces the plugin never sends to the agent (kube-system always).")
@click.option("--wait-for-agent/--no-wait-for-agent", default=True, show_default=True,
              help="Chain only once the node agent wrote its enrollment snapshot.")
@click.option("--keep-on-exit", is_flag=True, envvar="SHOAL_CNI_KEEP_ON_EXIT",
              help="On SIGTERM leave the binary and chain in place (an upgrade by hand).")
@click.option("--daemonset", default="", envvar="SHOAL_CNI_DAEMONSET",
              help="In Kubernetes, our DaemonSet: on SIGTERM, uninstall only if it is gone "
                   "or being deleted (else it is an upgrade).")
@click.option("--namespace", default="", envvar="POD_NAMESPACE", help="The DaemonSet's namespace.")
@click.option("--log-level", default=None, help="trace|debug|info|warning|error")
def install(cni_bin_dir, cni_conf_dir, agent_run_dir, exclude_namespaces, wait_for_agent,
            keep_on_exit, daemonset, namespace, log_level) -> None:
    """Install shoal-cni, keep it chained until SIGTERM, then remove it (not on upgrade)."""
    from shoal.cni.binary import PluginMissing
    from shoal.cni.installer import Installer, InstallOptions
    log.setup(log_level)
    opts = InstallOptions(cni_bin_dir=cni_bin_dir, cni_conf_dir=cni_conf_dir,
                          agent_run_dir=agent_run_dir, exclude_namespaces=tuple(exclude_namespaces),
                          wait_for_agent=wait_for_agent, keep_on_exit=keep_on_exit,
                          daemonset=daemonset, namespace=namespace)
    try:
        Installer(opts).run()
    except (PluginMissing, OSError) as e:
        click.echo(f"shoal cni install failed: {e}", err=True)
        sys.exit(1)


@cni.command()
@_dirs
def uninstall(cni_bin_dir, cni_conf_dir, agent_run_dir) -> None:
    """Remove shoal-cni from the chain and the bin dir now (cleaning a node by hand)."""
    from shoal.cni.installer import Installer, InstallOptions
    log.setup(None)
    Installer(InstallOptions(cni_bin_dir=cni_bin_dir, cni_conf_dir=cni_conf_dir,
                             agent_run_dir=agent_run_dir, plugin_source="/dev/null")).uninstall()


@cni.command("plugin-path")
def plugin_path_cmd() -> None:
    """Print the path of the built shoal-cni binary (package data)."""
    from shoal.cni.binary import plugin_path
    click.echo(plugin_path())
