"""Update cost against table size: one pod's change in 1k / 10k / 100k workloads.

`test_publish_one_pod`: the shared-memory publish of one changed record
(path copy + one ROOT store). `test_compile_and_publish_one_pod`: the
incremental compiler's change set for one pod, then the publish. Both should
stay flat as the table grows (O(change)).
"""

from __future__ import annotations

import itertools

import pytest

from shoal.benchmarks.bench_routing_synth import synth_config, synth_pod
from shoal.routing.incremental import IncrementalCompiler
from shoal.routing.shm import TableWriter, unlink


@pytest.fixture(scope="module", params=[1_000, 10_000, 100_000], ids=lambda n: f"{n}wl")
def built(request):
    comp = IncrementalCompiler()
    writer = TableWriter.create(size=256 << 20)
    writer.apply(comp.update(synth_config(request.param)).changes)
    yield comp, writer
    writer.close()
    unlink(writer.name)


def test_publish_one_pod(benchmark, built):
    _, writer = built
    counter = itertools.count()
    benchmark(lambda: writer.apply({"w/Kubernetes//Pod/ns-0/pod-1": b'{"n":%d}' % next(counter)}))


def test_compile_and_publish_one_pod(benchmark, built):
    comp, writer = built
    counter = itertools.count(1)

    def one():
        pod = synth_pod(7, generation=next(counter))
        writer.apply(comp.update_resources(upserts=[pod]).changes)
    benchmark(one)
