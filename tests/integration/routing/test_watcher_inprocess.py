"""Watcher driven in-process (no signals): refusal details and table-full handling."""

import shutil
from pathlib import Path

import pytest

from shoal.routing.runtime import TableHandle, attach_view
from shoal.routing.source import DirectorySource
from shoal.routing.watcher import MAX_STATUS_ERRORS, Watcher

MESH = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "config" / "mesh"

pytestmark = [pytest.mark.integration]


@pytest.fixture
def setup(tmp_path):
    cfg = tmp_path / "cfg"
    shutil.copytree(MESH, cfg)
    handles = []

    def make(size=8 << 20):
        h = TableHandle.create(size=size, clean_stale=False)
        handles.append(h)
        w = Watcher(DirectorySource(cfg, use_inotify=False), h.name)
        return h, w
    yield cfg, make
    for h in handles:
        h.unlink()


def test_many_errors_all_logged_status_bounded(setup):
    cfg, make = setup
    h, w = make()
    view = attach_view(h.name)
    try:
        assert w.reload()
        bad = "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n"
                      f"spec: {{ports: [{{port: 0}}]}}\n" for i in range(200))
        (cfg / "bad.yaml").write_text(bad)
        assert not w.reload()
        err = view.status()["error"]
        assert err["total"] == 200 and 0 < len(err["errors"]) <= MAX_STATUS_ERRORS
        assert err["errors"][0]["field"] == "spec.ports[0].port"
        assert view.workload_by_ip("10.0.1.20").name == "db"
        (cfg / "bad.yaml").unlink()
        assert w.reload() and view.status()["error"] is None
    finally:
        view.close()
        w.close()


def test_table_full_refused_and_recovered(setup):
    cfg, make = setup
    h, w = make(size=1 << 20)
    view = attach_view(h.name)
    try:
        assert w.reload()
        gen = view.generation
        pods = "".join(f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, "
                       f"labels: {{app: web, big: '{'x' * 60}'}}}}\nstatus: {{podIP: 10.5.{i // 250}.{i % 250}}}\n"
                       for i in range(3000))
        (cfg / "many.yaml").write_text(pods)
        assert not w.reload()
        assert view.status()["error"]["code"] == "TABLE_FULL"
        assert view.generation == gen and view.workload_by_ip("10.0.1.20").name == "db"
        (cfg / "many.yaml").unlink()
        assert w.reload()                       # rebuilt against the table: consistent again
        assert view.status()["error"] is None and view.workload_by_ip("10.5.0.1") is None
    finally:
        view.close()
        w.close()


def test_on_publish_is_told_of_each_new_generation_only(setup):
    """What the shards supervisor pushes to its workers: one call per
    published generation, none for a refused or an unchanged config."""
    cfg, make = setup
    h, _ = make()
    told = []
    w = Watcher(DirectorySource(cfg, use_inotify=False), h.name, on_publish=lambda: told.append(1))
    view = attach_view(h.name)
    try:
        w._announcing(w.reload)                 # the step Watcher.run takes
        assert view.generation >= 1 and told == [1]
        w._announcing(w.reload)                 # nothing changed: no new generation
        assert len(told) == 1
        (cfg / "bad.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
                                      "spec: {ports: [{port: 0}]}\n")
        w._announcing(w.reload)                 # refused: the old table stays
        assert len(told) == 1
        (cfg / "bad.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n")
        gen = view.generation
        w._announcing(w.reload)
        assert view.generation > gen and len(told) == 2
    finally:
        view.close()
        w.close()
