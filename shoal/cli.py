"""The `shoal` command line.

Each package owns its commands in its own `cli.py`; this module only wires
them under one group and imports a package when its command is used, so
`shoal version` does not pay for loading the data plane.
"""

from __future__ import annotations

import importlib

import click

from shoal.core import __version__

# command name -> "module:attribute" of a click command or group, and its help.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("shoal.routing.cli:config", "Validate mesh config or dump a node's live routing table."),
    "controlplane": ("shoal.controlplane.cli:controlplane", "Run the control plane (the CA on 15012)."),
    "ztunnel": ("shoal.ztunnel.cli:ztunnel", "Run the L4 node proxy."),
    "ztunnel-config": ("shoal.ztunnel.cli:ztunnel_config", "Inspect a running ztunnel (workloads, services, policies, certificates)."),
    "waypoint": ("shoal.waypoint.cli:waypoint", "Run the L7 waypoint proxy."),
    "node-agent": ("shoal.cni.cli:node_agent", "Run the CNI node agent (pod enrollment and redirection)."),
    "cni": ("shoal.cni.cli:cni", "Install shoal-cni on a node (long-running), uninstall it, find the plugin."),
    "mesh": ("shoal.cni.mesh_cli:mesh", "A local multi-node mesh on network namespaces."),
    "bench": ("shoal.benchmarks.cli:bench", "Run the CPU studies (pytest-benchmark) on this machine."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            target, _ = COMMANDS[name]
            module, attr = target.split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table, so `shoal --help` imports nothing heavy.
        rows = [(name, cmd.get_short_help_str()) for name, cmd in self.commands.items()]
        rows += [(name, text) for name, (_, text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """shoal: an ambient service mesh (ztunnel, waypoints, CNI) in Python."""


@cli.command()
def version() -> None:
    """Print shoal's version."""
    click.echo(f"shoal {__version__}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
