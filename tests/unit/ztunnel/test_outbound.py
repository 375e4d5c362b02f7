"""Outbound destination lookup (reference section 3, "Destination lookup")."""

from __future__ import annotations

import collections
import random

import pytest

from shoal.core.records import LoadBalancing
from tests.unit.ztunnel.conftest import (BEHIND_WP, CLIENT, ECHO, LEGACY, NAMED_OK,
                                         OTHER_NS_CLIENT, SERVER_A, SERVER_B, WAYPOINT, WP_POD,
                                         pod, svc)
from shoal.routing.view import StaticView
from shoal.ztunnel import outbound
from shoal.ztunnel.outbound import HBONE, PLAINTEXT, OutboundError, resolve


def test_pod_ip_goes_by_hbone_to_15008_with_pod_authority(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.0.1.1", 8080), rng=rng)
    assert r.kind == HBONE
    assert r.address == ("10.0.1.1", 15008)
    assert r.authority == "10.0.1.1:8080"
    assert r.expected_identities == (SERVER_A.identity,)
    assert r.workload == SERVER_A and r.service is None


def test_tcp_workload_gets_plaintext(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.0.2.1", 5432), rng=rng)
    assert (r.kind, r.address, r.authority) == (PLAINTEXT, ("10.0.2.1", 5432), "")
    assert r.workload == LEGACY


def test_unknown_ip_is_plaintext_passthrough(view, rng):
    r = resolve(view, source=CLIENT, dst=("93.184.216.34", 443), rng=rng)
    assert (r.kind, r.address, r.workload, r.service) == (PLAINTEXT, ("93.184.216.34", 443),
                                                          None, None)


def test_service_vip_maps_port_through_target_port(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.96.0.10", 80), rng=rng)
    assert r.kind == HBONE and r.service == ECHO
    assert r.workload in (SERVER_A, SERVER_B)
    ip = r.workload.ips[0]
    assert r.address == (ip, 15008) and r.authority == f"{ip}:8080"
    assert r.original == ("10.96.0.10", 80)


def test_lb_skips_unhealthy_and_weights_by_capacity(view):
    rng = random.Random(1)
    counts = collections.Counter(
        resolve(view, source=CLIENT, dst=("10.96.0.10", 80), rng=rng).workload.name
        for _ in range(4000))
    assert set(counts) == {"server-a", "server-b"}          # the unhealthy one never
    assert 2.5 < counts["server-b"] / counts["server-a"] < 3.6  # capacity 3 vs 1


def test_allow_all_health_policy_uses_unhealthy(rng):
    sick = pod("sick", "10.0.9.1", status="UNHEALTHY")
    s = svc("s", "10.96.9.1", endpoints=(sick,),
            load_balancing=LoadBalancing(health_policy="ALLOW_ALL"))
    v = StaticView(workloads=(CLIENT, sick), services=(s,))
    assert resolve(v, source=CLIENT, dst=("10.96.9.1", 80), rng=rng).workload == sick


def test_named_target_port_from_endpoint_services_map(view, rng):
    # named-noport has no resolution for the named port: never chosen.
    for _ in range(50):
        r = resolve(view, source=CLIENT, dst=("10.96.0.11", 80), rng=rng)
        assert r.workload == NAMED_OK and r.authority == "10.0.1.5:9090"


def test_endpoint_lacking_the_service_port_is_skipped(view, rng):
    with pytest.raises(OutboundError) as e:
        resolve(view, source=CLIENT, dst=("10.96.0.10", 443), rng=rng)
    assert e.value.code == outbound.NO_HEALTHY_UPSTREAM


def test_no_healthy_endpoint_says_so(view, rng):
    with pytest.raises(OutboundError) as e:
        resolve(view, source=CLIENT, dst=("10.96.0.13", 80), rng=rng)
    assert e.value.code == outbound.NO_HEALTHY_UPSTREAM
    assert "no healthy upstream" in str(e.value) and "empty.default" in str(e.value)


def test_service_with_waypoint_goes_to_waypoint_keeping_vip_authority(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.96.0.12", 80), rng=rng)
    assert r.kind == HBONE and r.waypoint == WAYPOINT
    assert r.address == ("10.0.3.1", 15008)
    assert r.authority == "10.96.0.12:80"
    assert r.expected_identities == (WAYPOINT.identity,)
    assert WAYPOINT.identity == WP_POD.identity


def test_waypoint_for_workload_only_does_not_capture_services(rng):
    wp = WAYPOINT.__class__(name="waypoint", namespace="default", waypoint_for="workload",
                            service=WAYPOINT.service)
    from tests.unit.ztunnel import conftest as c
    v = StaticView(workloads=c.WORKLOADS, services=c.SERVICES, waypoints=(wp,))
    r = resolve(v, source=CLIENT, dst=("10.96.0.12", 80), rng=rng)
    assert r.waypoint is None and r.workload == SERVER_A


def test_workload_with_waypoint_goes_through_it(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.0.4.1", 8080), rng=rng)
    assert r.waypoint == WAYPOINT and r.address == ("10.0.3.1", 15008)
    assert r.authority == "10.0.4.1:8080" and r.workload == BEHIND_WP


def test_waypoint_itself_goes_direct(view, rng):
    r = resolve(view, source=WP_POD, dst=("10.0.4.1", 8080), rng=rng)
    assert r.waypoint is None and r.address == ("10.0.4.1", 15008)


def test_passthrough_mode_goes_to_original_destination(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.96.0.14", 80), rng=rng)
    assert (r.kind, r.address) == (PLAINTEXT, ("10.96.0.14", 80))


def test_vip_collision_prefers_client_namespace(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.96.0.15", 80), rng=rng)
    assert r.service.namespace == "default" and r.workload == SERVER_A
    r = resolve(view, source=OTHER_NS_CLIENT, dst=("10.96.0.15", 80), rng=rng)
    assert r.service.namespace == "other" and r.workload == LEGACY


def test_subject_alt_names_are_expected_too(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.96.0.16", 80), rng=rng)
    assert r.expected_identities == (SERVER_A.identity, "spiffe://x/y")


@pytest.mark.parametrize("port", [15001, 15006, 15008])
def test_loop_to_own_ports_refused(view, rng, port):
    with pytest.raises(OutboundError) as e:
        resolve(view, source=CLIENT, dst=("127.0.0.1", port), rng=rng)
    assert e.value.code == outbound.SELF_CALL
    with pytest.raises(OutboundError):
        resolve(view, source=CLIENT, dst=("10.0.0.1", port), rng=rng,
                local_ips=frozenset({"10.0.0.1"}))


def test_waypoint_without_replicas_is_an_error(rng):
    from tests.unit.ztunnel import conftest as c
    services = tuple(s for s in c.SERVICES if s.name != "waypoint")
    v = StaticView(workloads=c.WORKLOADS, services=services, waypoints=(WAYPOINT,))
    with pytest.raises(OutboundError) as e:
        resolve(v, source=CLIENT, dst=("10.96.0.12", 80), rng=rng)
    assert e.value.code == outbound.UNKNOWN_WAYPOINT


def test_routing_preference_node_failover(rng):
    near = pod("near", "10.0.8.1", node="n1")
    far = pod("far", "10.0.8.2", node="n2")
    s = svc("loc", "10.96.8.1", endpoints=(near, far),
            load_balancing=LoadBalancing(mode="FAILOVER", routing_preference=("NODE",)))
    v = StaticView(workloads=(CLIENT, near, far), services=(s,))
    assert {resolve(v, source=CLIENT, dst=("10.96.8.1", 80), rng=rng).workload.name
            for _ in range(30)} == {"near"}
    s2 = svc("loc", "10.96.8.1", endpoints=(far,),
             load_balancing=LoadBalancing(mode="STRICT", routing_preference=("NODE",)))
    v2 = StaticView(workloads=(CLIENT, far), services=(s2,))
    with pytest.raises(OutboundError):
        resolve(v2, source=CLIENT, dst=("10.96.8.1", 80), rng=rng)


def test_route_is_frozen(view, rng):
    r = resolve(view, source=CLIENT, dst=("10.0.1.1", 8080), rng=rng)
    with pytest.raises(AttributeError):
        r.kind = "x"  # type: ignore[misc]
