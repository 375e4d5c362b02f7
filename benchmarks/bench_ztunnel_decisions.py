"""CPU cost of ztunnel's per-connection decisions (pure code, no I/O).

    pytest benchmarks/bench_ztunnel_decisions.py -o python_files='bench_*.py' --benchmark-enable

The per-connection work before any byte moves: outbound destination lookup
(service VIP -> weighted endpoint) and the inbound decision (authority check
+ L4 authorization), against the in-memory StaticView; the peer figure is a
bare dict lookup, the floor any table lookup pays.
"""

from __future__ import annotations

import random

from shoal.core.records import Authorization, Rule, Service, ServicePort, Source, Workload
from shoal.routing.view import StaticView
from shoal.ztunnel import inbound, outbound

N_ENDPOINTS = 50


def _mesh():
    pods = [Workload(uid=f"Kubernetes//Pod/default/p{i}", name=f"p{i}", namespace="default",
                     ips=(f"10.0.{i // 250}.{i % 250 + 1}",), protocol="HBONE",
                     service_account="app", capacity=1 + i % 3)
            for i in range(N_ENDPOINTS)]
    client = Workload(uid="Kubernetes//Pod/default/client", name="client", namespace="default",
                      ips=("10.1.0.1",), protocol="HBONE", service_account="sleep")
    svc = Service(name="app", namespace="default", hostname="app.default.svc.cluster.local",
                  vips=("10.96.0.1",), ports=(ServicePort(port=80, target_port=8080),),
                  endpoints=tuple(sorted(p.uid for p in pods)))
    pols = [Authorization(name="allow-sleep", namespace="default", scope="NAMESPACE",
                          action="ALLOW", rules=(Rule(from_=(Source(
                              principals=("cluster.local/ns/default/sa/sleep",)),)),)),
            Authorization(name="deny-bad", namespace="default", scope="NAMESPACE",
                          action="DENY", rules=(Rule(from_=(Source(
                              namespaces=("bad",)),)),))]
    return StaticView(workloads=(*pods, client), services=(svc,), policies=pols), client


def test_outbound_resolve_service_vip(benchmark):
    view, client = _mesh()
    rng = random.Random(1)
    route = benchmark(lambda: outbound.resolve(view, source=client, dst=("10.96.0.1", 80),
                                               rng=rng))
    assert route.kind == outbound.HBONE


def test_inbound_decide_hbone_with_policies(benchmark):
    view, client = _mesh()
    d = benchmark(lambda: inbound.decide_hbone(view, authority="10.0.0.1:8080",
                                               local_ip="10.0.0.1", src_identity=client.identity,
                                               src_addr=("10.1.0.1", 5000)))
    assert isinstance(d, inbound.Accepted)


def test_peer_dict_lookup(benchmark):
    table = {f"10.0.0.{i}": i for i in range(N_ENDPOINTS)}
    assert benchmark(lambda: table.get("10.0.0.7")) == 7
