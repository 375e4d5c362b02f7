"""codec round trips, the shared-memory store, and RoutingView == StaticView."""

import dataclasses
import os

import pytest

from shoal.core.model import load_dir
from shoal.routing import shm
from shoal.routing.codec import decode_value, encode_value
from shoal.routing.compile import compile_config
from shoal.routing.incremental import IncrementalCompiler
from shoal.routing.index import build_keyspace
from shoal.core.records import Namespace
from shoal.routing.runtime import TableHandle, attach_view
from shoal.routing.view import StaticView
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "config"


@pytest.fixture(scope="module")
def cfg():
    return load_dir(FIXTURES / "mesh")


@pytest.fixture(scope="module")
def records(cfg):
    return compile_config(cfg)


def test_codec_roundtrip_every_record_and_index(records):
    space = build_keyspace(records)
    for key, value in space.items():
        assert decode_value(key, encode_value(value)) == value, key


def test_encoding_is_deterministic(records):
    a = {k: encode_value(v) for k, v in build_keyspace(records).items()}
    b = {k: encode_value(v) for k, v in build_keyspace(list(reversed(records))).items()}
    assert a == b


@pytest.fixture
def table():
    h = TableHandle.create(size=4 << 20, clean_stale=False)
    writer = shm.TableWriter.attach(h.name)
    yield h, writer
    writer.close()
    h.unlink()


def test_store_set_get_delete_and_generations(table):
    h, w = table
    r = shm.TableReader(h.name)
    try:
        assert shm.split_root(r.root_word())[0] == 0
        g1 = w.apply({"a": b"1", "b": b"2"})
        gen, root1 = shm.split_root(r.root_word())
        assert gen == g1 == 1 and r.get(root1, b"a") == b"1"
        r.announce(gen)
        w.apply({"a": None, "b": b"22"})
        gen2, root2 = shm.split_root(r.root_word())
        assert r.get(root2, b"a") is None and r.get(root2, b"b") == b"22"
        # the old root is still intact: our slot holds generation 1
        assert r.get(root1, b"a") == b"1" and r.get(root1, b"b") == b"2"
    finally:
        r.close()


def test_reclaim_waits_for_readers(table):
    h, w = table
    r = shm.TableReader(h.name)
    try:
        w.apply({f"k{i}": b"x" * 100 for i in range(200)})
        r.announce(w.generation)
        w.apply({f"k{i}": b"y" * 100 for i in range(200)})
        assert w.stats()["pending_blocks"] > 0         # reader still at the old generation
        r.announce(w.generation)
        w.reclaim()
        assert w.stats()["pending_blocks"] == 0
        high = w.stats()["arena_high_water"]
        for _ in range(20):                            # steady churn reuses freed space
            r.announce(w.generation)
            w.apply({f"k{i}": os.urandom(50) * 2 for i in range(200)})
        assert w.stats()["arena_high_water"] <= high * 3
    finally:
        r.close()


def test_table_full_rolls_back(table):
    h, w = table
    w.apply({"keep": b"v"})
    gen = w.generation
    with pytest.raises(shm.TableFullError):
        w.apply({f"big{i}": b"z" * 100_000 for i in range(100)})
    assert w.generation == gen and w.get("keep") == b"v" and w.get("big0") is None
    w.apply({"after": b"ok"})
    assert w.get("after") == b"ok"


def test_writer_restart_recovers(table):
    h, w = table
    w.apply({f"k{i}": b"v" for i in range(100)})
    w.apply({f"k{i}": b"w" for i in range(50)})
    w2 = shm.TableWriter.attach(h.name)
    try:
        assert w2.read_all() == w.read_all()
        w2.apply({"k1": b"new"})
        assert w2.get("k1") == b"new" and w2.get("k99") == b"v"
    finally:
        w2.close()


def test_status_area(table):
    h, w = table
    w.set_status({"error": {"field": "spec.x"}})
    v = attach_view(h.name)
    try:
        assert v.status()["error"] == {"field": "spec.x"}
    finally:
        v.close()


def test_writer_killed_inside_a_status_write_leaves_it_readable(table):
    h, w = table
    w.set_status({"writer_pid": 1})
    # What a writer killed between its two seqlock stores leaves: an odd
    # sequence (writing) and a half-written JSON.
    seq = shm._Q.unpack_from(w._mm, shm.STATUS_OFF)[0]
    shm._Q.pack_into(w._mm, shm.STATUS_OFF, seq + 1)
    w._mm[shm.STATUS_OFF + 16:shm.STATUS_OFF + 20] = b'{"wr'
    w2 = shm.TableWriter.attach(h.name)
    v = attach_view(h.name)
    try:
        assert w2.status() == {}                # torn status dropped, not "busy"
        w2.set_status({"writer_pid": 2})
        assert v.status()["writer_pid"] == 2    # the restarted writer's status is seen
    finally:
        v.close()
        w2.close()


def test_shm_view_answers_like_static_view(table, cfg, records):
    h, w = table
    comp = IncrementalCompiler()
    w.apply(comp.update(cfg).changes)
    shared = attach_view(h.name)
    static = StaticView.from_records(records)
    try:
        for kind in ("workload", "service", "policy", "waypoint", "route", "namespace"):
            assert shared.items(kind) == static.items(kind)
        for w_ in static.items("workload"):
            for ip in w_.ips:
                assert shared.workload_by_ip(ip) == w_
            assert shared.policies_for_workload(w_) == static.policies_for_workload(w_)
            assert shared.waypoint_for_workload(w_) == static.waypoint_for_workload(w_)
        for s in static.items("service"):
            assert shared.endpoints(s) == static.endpoints(s)
            assert shared.service_by_host(s.namespace, s.name) == s
            assert shared.routes_for_service(s.namespace, s.name) == \
                static.routes_for_service(s.namespace, s.name)
        gen = shared.generation
        w.apply({"w/Kubernetes//Pod/shop/db": None, "i/ip//10.0.1.20": None})
        assert shared.generation == gen + 1
        assert shared.workload_by_ip("10.0.1.20") is None          # cache dropped
        web = shared.workload_by_ip("10.0.1.10")
        moved = dataclasses.replace(web, node="node-z")
        w.apply({"w/" + web.uid: encode_value(moved)})
        assert shared.workload_by_ip("10.0.1.10").node == "node-z"  # revalidated by bytes
        other = shared.workload_by_ip("10.0.2.10")
        w.apply({"n/unrelated": encode_value(Namespace(name="unrelated"))})
        assert shared.workload_by_ip("10.0.2.10") is other         # unchanged: same object
    finally:
        shared.close()


def test_cleanup_stale_removes_dead_owner_segments():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c",
                           "from routing.shm import TableWriter; print(TableWriter.create(size=1<<20).name)"],
                          capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[3])
    name = proc.stdout.strip()
    assert os.path.exists("/dev/shm" + name)
    assert name in shm.cleanup_stale()
    assert not os.path.exists("/dev/shm" + name)
