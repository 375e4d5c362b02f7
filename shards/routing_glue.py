"""The supervisor's use of routing/ (DESIGN.md, docs/internals.md).

routing.runtime gives: TableHandle.create() / .name / .unlink(),
run_watcher(source, name) (blocks; SIGHUP re-reads) and attach_view(name).
Without `--config` there is no table and workers get an empty StaticView.
"""

from __future__ import annotations

from typing import Any, Callable

from shoal.routing import runtime
from shoal.routing.dump import dump_view
from shoal.routing.view import StaticView, View
from shoal.shards.exitcodes import CONFIG_ERROR, SupervisorExit

# Without --config: an empty table that counts as loaded. Generation 1, not 0:
# there is no config to wait for, so the proxy is ready with no routes
# (ztunnel without xDS behaves the same way).
EMPTY_STATUS = {"generation": 1, "source": "none (no --config)", "error": None}


def create_table(config: str | None) -> runtime.TableHandle | None:
    """Supervisor, pre-fork: the table handle, or None without --config."""
    if config is None:
        return None
    try:
        return runtime.TableHandle.create()
    except Exception as e:
        raise SupervisorExit(CONFIG_ERROR, f"cannot create the routing table: {e}") from e


def attach(name: str | None) -> View:
    """Worker, post-fork: a read-only RoutingView, or an empty StaticView."""
    if name is None:
        return StaticView(generation=1, status=dict(EMPTY_STATUS))
    return runtime.attach_view(name)


def run_watcher(config: str, name: str, on_publish: Callable[[], None] | None = None) -> None:
    runtime.run_watcher(config, name, on_publish)


def dump(view: View) -> Any:
    """`/config_dump` routing section."""
    try:
        return dump_view(view)
    except Exception as e:   # a dump bug must not hide the rest of /config_dump
        return {"error": f"routing dump failed: {e}", "status": view.status()}
