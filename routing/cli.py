"""`shoal config`: validate a config directory, dump a node's live table."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from typing import Any

import click
import orjson

from shoal.core.constants import ADMIN_PORT

DUMP_TIMEOUT = 5.0      # seconds; the admin endpoint answers from memory
KUBE_SYNC_TIMEOUT = 60.0    # the initial list of every kind; large clusters list in pages


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def config() -> None:
    """Validate mesh config or dump a node's live routing table."""


@config.command()
@click.argument("directory", type=click.Path(exists=True))
@click.option("--overlay", type=click.Path(exists=True), default=None,
              help="Directory of Pods with IPs for Deployment replicas.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def validate(directory: str, overlay: str | None, output: str) -> None:
    """Validate DIRECTORY (Kubernetes YAML): exit 0 with a summary, or 1 listing every error."""
    from shoal.core.model import ConfigError
    from shoal.routing.compile import compile_config, records_by_kind
    from shoal.routing.source import DirectorySource

    source = DirectorySource(directory, overlay=overlay, use_inotify=False)
    try:
        cfg, extra = source.load()
        compiled = records_by_kind(compile_config(cfg, extra_pods=extra))
    except ConfigError as exc:
        if output == "json":
            click.echo(orjson.dumps({"valid": False, "errors": [e.to_dict() for e in exc.errors]}))
        else:
            click.echo(f"{directory}: {len(exc.errors)} error(s)", err=True)
            for e in exc.errors:
                click.echo(f"  {e}", err=True)
        sys.exit(1)
    counts = {k: len(v) for k, v in sorted(compiled.items())}
    warnings = policy_warnings(compiled.get("policies", []))
    if output == "json":
        click.echo(orjson.dumps({"valid": True, "resources": cfg.counts(), "records": counts,
                                 "notes": [str(n) for n in cfg.notes], "warnings": warnings}))
        return
    click.echo(f"{directory}: valid")
    for kind, n in cfg.counts().items():
        click.echo(f"  {kind:<20} {n}")
    click.echo("compiled: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for note in cfg.notes:
        click.echo(f"  note: {note}")
    for w in warnings:
        click.echo(f"  warning: AuthorizationPolicy/{w['policy']} ({w['ancestor']}): "
                   f"{w['reason']}: {w['message']}")


def policy_warnings(policies: list[Any]) -> list[dict[str, str]]:
    """istiod's per-policy ztunnel status, for the policies that have one."""
    from shoal.routing.dump import policy_status
    return [st for st in (policy_status(p) for p in policies) if st is not None]


@config.command()
@click.option("--admin", default=f"127.0.0.1:{ADMIN_PORT}", show_default=True,
              help="Admin address (host:port) of a running ztunnel or waypoint.")
@click.option("--config", "directory", type=click.Path(exists=True), default=None,
              help="Compile this directory of YAML instead (no running node needed).")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Compile what this cluster's API serves instead (no running node needed).")
@click.option("--kubernetes-api", is_flag=True, default=False,
              help="As --kubeconfig, with the in-cluster account or $KUBECONFIG.")
@click.option("-o", "--output", type=click.Choice(["json", "table"]), default="table")
def dump(admin: str, directory: str | None, kubeconfig: str | None, kubernetes_api: bool,
         output: str) -> None:
    """Print a routing table: a running node's (GET /config_dump), or one compiled
    here from --config DIR or from the Kubernetes API (equal for the same objects)."""
    if directory or kubeconfig or kubernetes_api:
        data = _compile_offline(directory, kubeconfig)
        if output == "json":
            click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(render_tables(data))
        return
    url = f"http://{admin}/config_dump"
    try:
        with urllib.request.urlopen(url, timeout=DUMP_TIMEOUT) as resp:
            body = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"cannot fetch {url}: {exc}; is a shoal proxy running with its admin "
                   f"port on {admin}?", err=True)
        sys.exit(2)
    # The admin server puts the table under "routing", next to the app's own
    # sections (certificates, connections, ...): print just the table.
    data = orjson.loads(body).get("routing", {})
    if output == "json":
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(render_tables(data))


def _compile_offline(directory: str | None, kubeconfig: str | None) -> dict[str, Any]:
    """The table's sections compiled from a directory or the API. No status or
    generation: those belong to a running writer, and leaving them out makes
    the two sources' dumps of the same objects byte for byte equal."""
    from shoal.core.model import ConfigError
    from shoal.routing.compile import compile_config, records_by_kind
    from shoal.routing.dump import dump_view
    from shoal.routing.view import StaticView

    if directory:
        from shoal.routing.source import DirectorySource
        source: Any = DirectorySource(directory, use_inotify=False)
    else:
        from shoal.routing.kube.source import KubeSource
        source = KubeSource(kubeconfig)
        if not source.wait_synced(KUBE_SYNC_TIMEOUT):
            bad = [h for h in source.health()["resources"] if not (h["synced"] or h["missing"])]
            source.close()
            click.echo(f"{source.describe()}: not synced after {KUBE_SYNC_TIMEOUT:.0f} s: "
                       + "; ".join(f"{h['resource']}: {h['last_error'] or 'no answer'}" for h in bad),
                       err=True)
            sys.exit(2)
    try:
        cfg, extra = source.load()
        records = compile_config(cfg, extra_pods=extra)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    finally:
        source.close()
    refused = source.refused() if hasattr(source, "refused") else []
    for e in refused:
        click.echo(f"refused: {e}", err=True)
    data = dump_view(StaticView(**records_by_kind(records)))
    data.pop("generation", None)
    data.pop("status", None)
    # creation_index is each source's own clock (file order, or creationTimestamp
    # and arrival); the precedence it decides only needs the rank.
    for rank, route in enumerate(sorted(data["routes"], key=lambda r: r["creation_index"])):
        route["creation_index"] = rank
    return data


# section -> (column title, function of the record dict)
_COLUMNS: dict[str, list[tuple[str, Any]]] = {
    "workloads": [("NAMESPACE", lambda r: r["namespace"]), ("NAME", lambda r: r["name"]),
                  ("IP", lambda r: ",".join(r["ips"]) or "-"), ("NODE", lambda r: r["node"] or "-"),
                  ("PROTOCOL", lambda r: r["protocol"]),
                  ("WAYPOINT", lambda r: _ref(r.get("waypoint"))),
                  ("IDENTITY", lambda r: f"{r['namespace']}/{r['service_account']}")],
    "services": [("NAMESPACE", lambda r: r["namespace"]), ("NAME", lambda r: r["name"]),
                 ("VIP", lambda r: ",".join(r["vips"]) or "None"),
                 ("PORTS", lambda r: ",".join(f"{p['port']}>{p['target_port'] or p['target_port_name']}"
                                              for p in r["ports"])),
                 ("ENDPOINTS", lambda r: str(len(r["endpoints"]))),
                 ("WAYPOINT", lambda r: _ref(r.get("waypoint")))],
    "policies": [("NAMESPACE", lambda r: r["namespace"]), ("NAME", lambda r: r["name"]),
                 ("SCOPE", lambda r: r["scope"]), ("ACTION", lambda r: r["action"]),
                 ("RULES", lambda r: str(len(r["rules"])))],
    "waypoints": [("NAMESPACE", lambda r: r["namespace"]), ("NAME", lambda r: r["name"]),
                  ("FOR", lambda r: r["waypoint_for"]), ("SERVICE", lambda r: r["service"])],
    "routes": [("NAMESPACE", lambda r: r["namespace"]), ("NAME", lambda r: r["name"]),
               ("PARENTS", lambda r: ",".join(f"{p['kind']}/{p['name']}" for p in r["parent_refs"])),
               ("RULES", lambda r: str(len(r["rules"])))],
}


def _ref(ref: dict | None) -> str:
    return f"{ref['namespace']}/{ref['name']}" if ref else "-"


def render_tables(data: dict[str, Any]) -> str:
    """The dump as aligned text tables, one per section, then the status."""
    out = [f"generation {data.get('generation', '?')}"]
    for section, cols in _COLUMNS.items():
        rows = [[str(fn(r)) for _, fn in cols] for r in data.get(section, [])]
        out.append(f"\n{section.upper()} ({len(rows)})")
        table = [[c for c, _ in cols], *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        out += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    status = data.get("status") or {}
    err = status.get("error")
    out.append(f"\nSTATUS source={status.get('source', '?')} applied_at={status.get('applied_at', '?')}")
    if err:
        out.append(f"  last change REFUSED: {err.get('message')}")
        for e in err.get("errors", []):
            out.append(f"    {e.get('file')}: {e.get('resource')} {e.get('field')}: {e.get('message')}")
    return "\n".join(out)
