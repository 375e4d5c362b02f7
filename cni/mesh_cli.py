"""`shoal mesh ...`: a local multi-node mesh on network namespaces (root)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click
import orjson

from shoal.cni.mesh.mesh import DEFAULT_RUN_DIR


def _default_source() -> str:
    for cand in (Path("examples/bookinfo"), Path(__file__).resolve().parent.parent / "examples" / "bookinfo"):
        if cand.is_dir():
            return str(cand)
    return "examples/bookinfo"


run_dir_option = click.option("--run-dir", default=DEFAULT_RUN_DIR, show_default=True,
                              envvar="SHOAL_MESH_RUN_DIR", help="Where the mesh keeps its state.")


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the local mesh needs root (network namespaces, nftables)")


class _Bar:
    """A progress bar fed step labels (click's, on stderr)."""

    def __init__(self, total: int, label: str) -> None:
        self.current = ""
        self.bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr,
                                     item_show_func=self._label, show_eta=False)
        self.bar.__enter__()

    def _label(self, _item: int | None) -> str:
        return self.current

    def __call__(self, step: str) -> None:
        self.current = step
        self.bar.update(1)

    def close(self) -> None:
        self.current = "done"
        self.bar.__exit__(None, None, None)


def _fail(e: Exception | str) -> NoReturn:
    raise click.ClickException(str(e))


@click.group()
def mesh() -> None:
    """A local multi-node mesh: nodes and pods as network namespaces."""


@mesh.command()
@click.option("-f", "--filename", "sources", multiple=True, type=click.Path(exists=True),
              help="YAML file or directory (repeatable) [default: examples/bookinfo].")
@click.option("--nodes", default=2, show_default=True, type=int)
@click.option("--id", "mesh_id", default="shoal", show_default=True,
              help="Prefix of every netns and link this mesh creates.")
@click.option("--cidr-base", "base", default=244, show_default=True, type=int,
              help="The mesh uses 10.BASE.0.0/16 (nodes, pods, service VIPs).")
@click.option("--ztunnel/--no-ztunnel", default=True, show_default=True,
              help="Run a ztunnel per node (without: pods are enrolled but nothing proxies).")
@click.option("--ztunnel-workers", default=1, show_default=True, type=int)
@click.option("--kubeconfig", default="", type=click.Path(dir_okay=False),
              help="Publish pods, services and policies to this Kubernetes API server (as a "
              "kubelet would); the ztunnels then read only the API.")
@run_dir_option
def up(sources, nodes, mesh_id, base, ztunnel, ztunnel_workers, kubeconfig, run_dir) -> None:
    """Build the mesh: nodes, control plane, node agents, ztunnels, pods."""
    from shoal.cni.mesh import plan
    from shoal.cni.mesh.mesh import Mesh, MeshError, MeshOptions, load_docs
    _need_root()
    sources = list(sources) or [_default_source()]
    try:
        opts = MeshOptions(run_dir=run_dir, mesh_id=mesh_id, base=base, nodes=nodes,
                           ztunnel=ztunnel, ztunnel_workers=ztunnel_workers, kubeconfig=kubeconfig)
        npods = len(plan.pods_of(load_docs(sources)))
    except (MeshError, plan.PlanError) as e:
        _fail(e)
    bar = _Bar(2 + nodes + npods, "mesh up")
    m = Mesh(run_dir)
    try:
        m.up(sources, opts, bar)
    except (MeshError, plan.PlanError, OSError) as e:
        bar.close()
        _fail(f"{e}\n(state kept in {run_dir}; `shoal mesh down` removes what was built)")
    bar.close()
    _print_status(m.status())


@mesh.command()
@run_dir_option
def down(run_dir) -> None:
    """Remove the mesh: processes, pods, namespaces, links, sockets, state."""
    from shoal.cni.mesh.mesh import Mesh
    _need_root()
    m = Mesh(run_dir)
    if not m.load():
        click.echo(f"no mesh in {run_dir}")
        return
    bar = _Bar(len(m.state.get("pods", {})) + 2, "mesh down")
    errors = m.down(bar)
    bar.close()
    for e in errors:
        click.echo(f"warning: {e}", err=True)
    click.echo("mesh removed")


@mesh.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@run_dir_option
def status(output, run_dir) -> None:
    """Nodes, components, services and pods (IP, enrolled, identity)."""
    from shoal.cni.mesh.mesh import Mesh, MeshError
    try:
        st = Mesh(run_dir).status()
    except MeshError as e:
        _fail(e)
    if output == "json":
        click.echo(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_status(st)


@mesh.command(hidden=True)
@run_dir_option
def kubelet(run_dir) -> None:
    """The mesh's kubelet daemon (started by `mesh up`): restarts dead components."""
    from shoal.cni.mesh.kubelet import Kubelet
    from shoal.cni.mesh.mesh import Mesh
    sys.exit(Kubelet(Mesh(run_dir)).run())


@mesh.command(context_settings={"ignore_unknown_options": True})
@click.argument("pod")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@run_dir_option
def exec(pod, command, run_dir) -> None:   # noqa: A001 - the kubectl verb
    """Run COMMAND inside POD's netns (NAMESPACE/NAME, NAME in default, or a Deployment)."""
    from shoal.cni.mesh.mesh import Mesh, MeshError
    _need_root()
    try:
        code = Mesh(run_dir).exec(pod, list(command))
    except MeshError as e:
        _fail(e)
    sys.exit(code)


@mesh.command()
@click.option("-f", "--filename", "sources", multiple=True, required=True, type=click.Path(exists=True))
@run_dir_option
def apply(sources, run_dir) -> None:
    """Apply YAML to the running mesh (same kind/namespace/name replaces)."""
    from shoal.cni.mesh import plan
    from shoal.cni.mesh.mesh import Mesh, MeshError
    _need_root()
    try:
        Mesh(run_dir).apply(list(sources), lambda step: click.echo(step, err=True))
    except (MeshError, plan.PlanError) as e:
        _fail(e)
    click.echo("applied")


@mesh.command()
@click.option("-f", "--filename", "sources", multiple=True, required=True, type=click.Path(exists=True))
@run_dir_option
def delete(sources, run_dir) -> None:
    """Remove the resources named in YAML from the running mesh."""
    from shoal.cni.mesh import plan
    from shoal.cni.mesh.mesh import Mesh, MeshError
    _need_root()
    try:
        missing = Mesh(run_dir).delete(list(sources), lambda step: click.echo(step, err=True))
    except (MeshError, plan.PlanError) as e:
        _fail(e)
    for ref in missing:
        click.echo(f"not found: {ref}", err=True)
    click.echo("deleted")


@mesh.command()
@click.argument("target", nargs=-1, required=True)
@click.option("--replicas", type=int, help="The replica count (or give it after a waypoint's name).")
@run_dir_option
def scale(target, replicas, run_dir) -> None:
    """Set a Deployment's or a waypoint's replica count.

    \b
    shoal mesh scale NAMESPACE/DEPLOYMENT --replicas N
    shoal mesh scale waypoint NAMESPACE/NAME N     (Gateway of class istio-waypoint)
    """
    from shoal.cni.mesh import plan
    from shoal.cni.mesh.mesh import Mesh, MeshError
    _need_root()
    waypoint = target[0] == "waypoint" and len(target) > 1
    rest = list(target[1:] if waypoint else target)
    if len(rest) == 2 and replicas is None:
        try:
            replicas = int(rest.pop())
        except ValueError:
            raise click.UsageError(f"the replica count must be an integer, not {target[-1]!r}") from None
    if len(rest) != 1 or replicas is None:
        raise click.UsageError("usage: shoal mesh scale NAMESPACE/DEPLOYMENT --replicas N, or "
                               "shoal mesh scale waypoint NAMESPACE/NAME N")
    step = lambda s: click.echo(s, err=True)   # noqa: E731
    try:
        if waypoint:
            Mesh(run_dir).scale_waypoint(rest[0], replicas, step)
        else:
            Mesh(run_dir).scale(rest[0], replicas, step)
    except (MeshError, plan.PlanError) as e:
        _fail(e)
    click.echo(f"scaled {'waypoint ' if waypoint else ''}{rest[0]} to {replicas}")


@mesh.command()
@click.option("--nodes", default=2, show_default=True, type=int)
@run_dir_option
@click.pass_context
def demo(ctx, nodes, run_dir) -> None:
    """`make demo`: the example mesh and a guided tour (mesh stays up)."""
    from shoal.cni.mesh import demo as tour
    from shoal.cni.mesh.mesh import Mesh
    _need_root()
    m = Mesh(run_dir)
    if not m.load():
        ctx.invoke(up, sources=(), nodes=nodes, mesh_id="shoal", base=244, ztunnel=True,
                   ztunnel_workers=1, run_dir=run_dir)
        m.load()
    policies = str(Path(_default_source()).parent / "policies")
    ok = tour.run(m, click.echo, policies)
    click.echo("\nThe mesh is still up. Try:\n"
               "  shoal mesh status\n"
               "  shoal mesh exec bookinfo/sleep -- curl -s http://productpage:9080/\n"
               "  shoal mesh apply -f examples/waypoint/    # an L7 waypoint for reviews\n"
               "  shoal mesh down                          # removes everything")
    if not ok:
        sys.exit(1)


def _print_status(st: dict) -> None:
    click.echo(f"mesh {st['id']} ({st['run_dir']})")
    for n in st["nodes"]:
        click.echo(f"  {n['node']:<8} {n['ip']:<14} pods {n['pod_cidr']:<16} "
                   f"ztunnel connections {n['ztunnels']}")
    down = [k for k, ok in st["components"].items() if not ok]
    click.echo(f"  components: {len(st['components']) - len(down)}/{len(st['components'])} running"
               + (f" (down: {', '.join(down)})" if down else "")
               + ("" if st.get("kubelet") else "; kubelet NOT running: nothing restarts them"))
    for name, n in sorted(st.get("restarts", {}).items()):
        click.echo(f"    {name:<28} {'running' if st['components'][name] else 'DOWN':<8} restarts {n}"
                   + (" (standby ready)" if st.get("standby", {}).get(name) else ""))
    click.echo("services:")
    for k, vip in sorted(st["services"].items()):
        click.echo(f"  {k:<32} {vip}")
    click.echo("pods:")
    for p in st["pods"]:
        click.echo(f"  {p['pod']:<40} {p['node']:<8} {p['ip']:<14} "
                   f"{'ambient' if p['enrolled'] else 'plain':<8} "
                   f"{'running' if p['running'] else 'STOPPED':<8} restarts {p.get('restarts', 0):<3} "
                   f"{p['identity']}")
