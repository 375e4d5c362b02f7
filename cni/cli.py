"""`shoal node-agent ...`: the CNI node agent's command line."""

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
