"""The supervisor's use of routing/ (DESIGN.md, docs/internals.md).

routing.runtime gives: TableHandle.create() / .name / .unlink(),
run_watcher(source, name) (blocks; SIGHUP re-reads) and attach_view(name).
Without `--config` there is no table and workers get `EmptyView`.
"""

from __future__ import annotations

import importlib

from shoal.shards.app import EmptyView
from shoal.shards.exitcodes import CONFIG_ERROR, SupervisorExit


def runtime():
    """The routing.runtime module. Raises SupervisorExit(CONFIG_ERROR) if absent."""
    try:
        return importlib.import_module("shoal.routing.runtime")
    except ImportError as e:
        raise SupervisorExit(CONFIG_ERROR, f"--config needs the routing table (routing.runtime): {e}")


def create_table(config: str | None):
    """Supervisor, pre-fork: the table handle, or None without --config."""
    if config is None:
        return None
    try:
        return runtime().TableHandle.create()
    except SupervisorExit:
        raise
    except Exception as e:
        raise SupervisorExit(CONFIG_ERROR, f"cannot create the routing table: {e}") from e


def attach(name: str | None):
    """Worker, post-fork: a read-only RoutingView, or EmptyView."""
    if name is None:
        try:
            from shoal.routing.view import StaticView
        except ImportError:
            return EmptyView()
        return StaticView(generation=1, status=dict(EMPTY_STATUS))
    return runtime().attach_view(name)


# Without --config: an empty table that counts as loaded (see EmptyView).
EMPTY_STATUS = {"generation": 1, "source": "none (no --config)", "error": None}


def run_watcher(config: str, name: str) -> None:
    runtime().run_watcher(config, name)


def dump(view) -> object:
    """`/config_dump` routing section: routing.dump.dump_view when present."""
    try:
        dump_view = importlib.import_module("shoal.routing.dump").dump_view
    except (ImportError, AttributeError):
        return view.status() if hasattr(view, "status") else {}
    try:
        return dump_view(view)
    except Exception as e:   # a dump bug must not hide the rest of /config_dump
        return {"error": f"routing dump failed: {e}", "status": view.status()}
