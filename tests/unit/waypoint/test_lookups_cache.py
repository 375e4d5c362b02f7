"""Facts cached per routing generation (lookups.py, destination.py) are
dropped when the generation moves."""

from __future__ import annotations

import random

from shoal.core.records import Service, ServicePort, Workload
from shoal.routing.view import StaticView
from shoal.waypoint.destination import Endpoint, Target
from shoal.waypoint.forward import Forwarder
from shoal.waypoint.lookups import Lookups
from tests.unit.waypoint.fakes import FakeUpstream


def service(app_protocol: str | None, endpoints: tuple = (), vip: str = "10.96.0.10") -> Service:
    return Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
                   vips=(vip,), ports=(ServicePort(port=80, target_port=8080,
                                                            app_protocol=app_protocol),),
                   endpoints=endpoints)


def pod_view(svc: Service, target_port: int, generation: int) -> StaticView:
    """`svc` with one pod behind it listening on `target_port`."""
    w = Workload(uid="u1", name="p", namespace="default", ips=("10.0.0.1",),
                 services={"default/echo.default.svc.cluster.local": {80: target_port}})
    return StaticView(services=(svc,), workloads=(w,), generation=generation)


def test_speaks_h2_is_cached_within_a_generation_and_recomputed_on_a_new_one():
    h1_svc, grpc_svc = service(None), service("grpc")
    lookups = Lookups(StaticView(services=(h1_svc,), generation=1), rng=random.Random(1))
    lookups.refresh()
    assert lookups.speaks_h2(h1_svc, 80) is False
    # Same service key, same generation: the answer of that generation stands.
    assert lookups.speaks_h2(grpc_svc, 80) is False
    lookups.view = StaticView(services=(grpc_svc,), generation=2)
    lookups.refresh()
    assert lookups.speaks_h2(grpc_svc, 80) is True
    assert lookups.speaks_h2(grpc_svc, 81) is False         # no such port: HTTP/1.1


def test_forwarder_picks_the_upstream_of_the_current_generation():
    h1, h2 = FakeUpstream(), FakeUpstream()
    h1_svc, grpc_svc = service(None), service("grpc")
    lookups = Lookups(StaticView(services=(h1_svc,), generation=1), rng=random.Random(1))
    fwd = Forwarder(lookups, h1=h1, h2=h2, rng=random.Random(1), clock=lambda: 0.0)
    lookups.refresh()
    assert fwd.upstream_for(h1_svc, 80) is h1
    lookups.view = StaticView(services=(grpc_svc,), generation=2)
    lookups.refresh()
    assert fwd.upstream_for(grpc_svc, 80) is h2
    lookups.view = StaticView(services=(h1_svc,), generation=3)
    lookups.refresh()
    assert fwd.upstream_for(h1_svc, 80) is h1


def test_endpoint_key_is_made_once_and_ignored_by_equality():
    e = Endpoint(ip="10.0.0.1", port=8080)
    assert e.key == "10.0.0.1:8080"
    assert e == Endpoint(ip="10.0.0.1", port=8080) and "key" not in repr(e)


def test_endpoints_are_rebuilt_on_a_new_generation():
    # Endpoint keys live on the Endpoint objects, which the per-generation
    # endpoint cache rebuilds: a pod's new port shows up in its key.
    svc = service(None, endpoints=("u1",))
    lookups = Lookups(pod_view(svc, 8080, generation=1))
    lookups.refresh()
    assert [e.key for e in lookups.endpoints(svc, 80)] == ["10.0.0.1:8080"]
    lookups.view = pod_view(svc, 9090, generation=2)
    lookups.refresh()
    assert [e.key for e in lookups.endpoints(svc, 80)] == ["10.0.0.1:9090"]


def test_endpoint_index_is_shared_within_a_generation_and_dropped_on_a_new_one():
    svc = service(None, endpoints=("u1",))
    lookups = Lookups(pod_view(svc, 8080, generation=1))
    lookups.refresh()
    eps = lookups.endpoints(svc, 80)
    keys, by_key = lookups.endpoint_index(eps)
    assert keys == ("10.0.0.1:8080",) and by_key == {"10.0.0.1:8080": eps[0]}
    assert lookups.endpoint_index(eps)[1] is by_key            # made once
    lookups.view = pod_view(svc, 8080, generation=2)
    lookups.refresh()
    again = lookups.endpoint_index(eps)
    assert again[1] is not by_key and again == (keys, by_key)  # the old list: made anew
    fresh = lookups.endpoints(svc, 80)
    assert fresh is not eps and lookups.endpoint_index(fresh)[1] is lookups.endpoint_index(fresh)[1]


def test_endpoint_index_of_a_list_it_did_not_make_is_computed_each_time():
    lookups = Lookups(StaticView())
    eps = [Endpoint(ip="10.0.0.9", port=80)]
    a, b = lookups.endpoint_index(eps), lookups.endpoint_index(eps)
    assert a == b == (("10.0.0.9:80",), {"10.0.0.9:80": eps[0]}) and a[1] is not b[1]


def test_target_local_address_is_made_once_and_ignored_by_equality():
    t = Target(address="fd00::10", port=80)
    assert t.local_address == "[fd00::10]:80"
    assert t == Target(address="fd00::10", port=80) and "local_address" not in repr(t)


def test_the_target_of_a_host_follows_the_generation():
    lookups = Lookups(StaticView(services=(service(None),), generation=1))
    lookups.refresh()
    assert lookups.target_from_host("echo").local_address == "10.96.0.10:80"
    lookups.view = StaticView(services=(service(None, vip="10.96.0.11"),), generation=2)
    assert lookups.target_from_host("echo").local_address == "10.96.0.10:80"   # same generation
    lookups.refresh()
    assert lookups.target_from_host("echo").local_address == "10.96.0.11:80"
