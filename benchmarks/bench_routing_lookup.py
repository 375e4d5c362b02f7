"""Routing lookups per call: warm RoutingView vs in-process peers, and via shm.

Each benchmarked call does LOOP lookups; divide the mean by LOOP for one lookup.
Peer: a plain `dict.get` on the same keys, in the same run.
"""

from __future__ import annotations

import pytest

from shoal.benchmarks.bench_routing_synth import synth_config
from shoal.routing.incremental import IncrementalCompiler
from shoal.routing.runtime import TableHandle, attach_view
from shoal.routing.shm import TableWriter, lookup, split_root
from shoal.routing.view import StaticView

N_WORKLOADS = 10_000
LOOP = 100


@pytest.fixture(scope="module")
def tables():
    comp = IncrementalCompiler()
    changes = comp.update(synth_config(N_WORKLOADS)).changes
    h = TableHandle.create(size=64 << 20, clean_stale=False)
    writer = TableWriter.attach(h.name)
    writer.apply(changes)
    view = attach_view(h.name)
    static = StaticView.from_records(comp.records())
    ips = [f"10.0.{(i >> 8) & 255}.{i & 255}" for i in range(0, N_WORKLOADS, N_WORKLOADS // LOOP)]
    yield view, static, ips
    view.close()
    writer.close()
    h.unlink()


def _loop(fn, ips):
    for ip in ips:
        fn(ip)


def test_lookup_dict_peer(benchmark, tables):
    _, _, ips = tables
    peer = {ip: object() for ip in ips}
    benchmark(_loop, peer.get, ips)


def test_lookup_warm_routingview(benchmark, tables):
    view, _, ips = tables
    _loop(view.workload_by_ip, ips)
    benchmark(_loop, view.workload_by_ip, ips)
    assert view.workload_by_ip(ips[0]) is not None


def test_lookup_staticview(benchmark, tables):
    _, static, ips = tables
    benchmark(_loop, static.workload_by_ip, ips)


def test_lookup_shm_raw_bytes(benchmark, tables):
    view, _, ips = tables
    _, root = split_root(view._reader.root_word())
    keys = [f"i/ip//{ip}".encode() for ip in ips]
    mm = view._mm

    def run():
        for k in keys:
            lookup(mm, root, k)
    benchmark(run)


def test_lookup_shm_cold_decode(benchmark, tables):
    view, _, ips = tables

    def run():
        for ip in ips:
            view._cache.clear()
            view._by_ip.clear()
            view.workload_by_ip(ip)
    benchmark(run)
