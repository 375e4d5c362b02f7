"""Watcher processes + reader processes: hot reload, refusal, restart, cleanup."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from shoal.routing.runtime import TableHandle, attach_view
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[3]
MESH = ROOT / "tests" / "fixtures" / "config" / "mesh"
DEADLINE = 15.0

pytestmark = [pytest.mark.integration]

NEW_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: added, namespace: shop}
spec:
  clusterIP: 10.96.7.7
  ports: [{port: 80}]
"""
BAD_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: added, namespace: shop}
spec:
  clusterIP: 10.96.7.8
  ports: [{port: 80, targetPort: 99999}]
"""


@pytest.fixture
def mesh(tmp_path):
    cfg = tmp_path / "cfg"
    shutil.copytree(MESH, cfg)
    h = TableHandle.create(size=16 << 20, clean_stale=False)
    procs = []

    def start_watcher():
        p = subprocess.Popen([sys.executable, "-m", "shoal.routing.watcher", "--table", h.name, str(cfg)],
                             cwd=ROOT, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    def start_follower(kind, arg, seconds):
        p = subprocess.Popen([sys.executable, "-m", "tests.helpers.routing_procs", "follow",
                              h.name, kind, arg, str(seconds)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        assert orjson.loads(p.stdout.readline()) == {"ready": True}
        return p

    yield cfg, h, start_watcher, start_follower
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
    h.unlink()


def read_lines(proc, timeout=30):
    out, _ = proc.communicate(timeout=timeout)
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.timeout(60)
def test_hot_reload_reaches_reader_process(mesh):
    cfg, h, start_watcher, start_follower = mesh
    start_watcher()
    view = attach_view(h.name)
    try:
        wait_for(lambda: view.generation >= 1, DEADLINE, "first generation")
        follower = start_follower("vip", "10.96.7.7", 3.0)
        t0 = time.time()
        (cfg / "50-added.yaml").write_text(NEW_SERVICE)
        lines = read_lines(follower)
        seen = [line for line in lines if line.get("found") == "added"]
        assert seen, lines
        assert seen[0]["t"] - t0 < 2.0
        assert view.service_by_vip("10.96.7.7").name == "added"
    finally:
        view.close()


@pytest.mark.timeout(60)
def test_bad_change_refused_old_table_stays_and_status_names_field(mesh):
    cfg, h, start_watcher, _ = mesh
    watcher = start_watcher()
    view = attach_view(h.name)
    try:
        wait_for(lambda: view.generation >= 1, DEADLINE, "first generation")
        (cfg / "50-added.yaml").write_text(NEW_SERVICE)
        wait_for(lambda: view.service_by_vip("10.96.7.7"), DEADLINE, "good change")
        gen = view.generation
        (cfg / "50-added.yaml").write_text(BAD_SERVICE)
        status = wait_for(lambda: (s := view.status()).get("error") and s, DEADLINE, "refusal in status")
        err = status["error"]["errors"][0]
        assert err["file"].endswith("50-added.yaml")
        assert err["resource"] == "Service/shop/added"
        assert err["field"] == "spec.ports[0].targetPort"
        assert view.generation == gen
        assert view.service_by_vip("10.96.7.7").name == "added"       # last good table
        assert view.service_by_vip("10.96.7.8") is None
        (cfg / "50-added.yaml").unlink()                               # fix it
        wait_for(lambda: view.status().get("error") is None and view.service_by_vip("10.96.7.7") is None,
                 DEADLINE, "recovery")
    finally:
        view.close()
        watcher.send_signal(signal.SIGTERM)
        _, stderr = watcher.communicate(timeout=10)
    logged = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    refused = [line for line in logged if line["message"] == "config refused"]
    assert refused and refused[0]["field"] == "spec.ports[0].targetPort", stderr[-3000:]
    assert refused[0]["file"].endswith("50-added.yaml")


@pytest.mark.timeout(60)
def test_watcher_killed_and_restarted_while_readers_read(mesh):
    cfg, h, start_watcher, start_follower = mesh
    first = start_watcher()
    view = attach_view(h.name)
    try:
        wait_for(lambda: view.generation >= 1, DEADLINE, "first generation")
        gen = view.generation
        follower = start_follower("ip", "10.0.1.20", 4.0)      # the db pod, never changed
        first.kill()
        first.wait(timeout=10)
        time.sleep(0.2)          # readers keep reading with no writer at all
        assert view.workload_by_ip("10.0.1.20").name == "db"
        start_watcher()
        # same config: the restarted writer publishes nothing new
        wait_for(lambda: view.status().get("writer_pid") not in (None, first.pid), DEADLINE, "new writer")
        assert view.generation == gen
        (cfg / "50-added.yaml").write_text(NEW_SERVICE)
        wait_for(lambda: view.service_by_vip("10.96.7.7"), DEADLINE, "change after restart")
        lines = read_lines(follower)
        done = lines[-1]
        assert done["done"] and done["lookups"] > 100 and done["misses"] == 0, done
    finally:
        view.close()


@pytest.mark.timeout(60)
def test_dev_shm_clean_after_stop(tmp_path):
    shutil.copytree(MESH, tmp_path / "cfg")
    h = TableHandle.create(size=8 << 20, clean_stale=False)
    path = "/dev/shm" + h.name
    watcher = subprocess.Popen([sys.executable, "-m", "shoal.routing.watcher", "--table", h.name,
                                str(tmp_path / "cfg")], cwd=ROOT, stderr=subprocess.DEVNULL)
    view = attach_view(h.name)
    wait_for(lambda: view.generation >= 1, DEADLINE, "first generation")
    assert os.path.exists(path)
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(timeout=10) == 0
    h.unlink()
    assert not os.path.exists(path)
    assert view.workload_by_ip("10.0.1.20").name == "db"      # mapping outlives the unlink
    view.close()
    assert not any(n.startswith(h.name.lstrip("/")) for n in os.listdir("/dev/shm"))


@pytest.mark.timeout(60)
def test_sighup_rereads_without_republishing_unchanged_config(mesh):
    cfg, h, start_watcher, _ = mesh
    watcher = start_watcher()
    view = attach_view(h.name)
    try:
        # The writer publishes the table, then its status: wait for both.
        wait_for(lambda: view.generation >= 1 and "applied_at" in view.status(),
                 DEADLINE, "first generation and its status")
        gen = view.generation
        applied = view.status()["applied_at"]
        watcher.send_signal(signal.SIGHUP)
        (cfg / "50-added.yaml").write_text(NEW_SERVICE)
        wait_for(lambda: view.service_by_vip("10.96.7.7"), DEADLINE, "change after SIGHUP")
        assert view.generation == gen + 1        # the HUP itself published nothing
        assert view.status()["applied_at"] >= applied
    finally:
        view.close()
        watcher.send_signal(signal.SIGTERM)
        _, stderr = watcher.communicate(timeout=10)
    assert any("SIGHUP" in line for line in stderr.splitlines())
