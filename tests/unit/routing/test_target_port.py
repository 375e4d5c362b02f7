"""routing.view.target_port / View.endpoints_for_port: Kubernetes' rule,
the one answer the ztunnel and the waypoint both use."""

from __future__ import annotations

import random

from shoal.core.records import Service, ServicePort, Workload
from shoal.routing.view import StaticView, target_port
from shoal.waypoint.destination import endpoints
from shoal.ztunnel.outbound import pick_endpoint

KEY = "default/web.default.svc.cluster.local"


def _pod(n: int, ports: dict[int, int] | None) -> Workload:
    return Workload(uid=f"c//Pod/default/web-{n}", name=f"web-{n}", namespace="default",
                    ips=(f"10.0.0.{n}",), services={} if ports is None else {KEY: ports})


def _service(*ports: ServicePort) -> Service:
    return Service(name="web", namespace="default", hostname="web.default.svc.cluster.local",
                   vips=("10.96.0.1",), ports=ports, endpoints=("c//Pod/default/web-1",
                                                               "c//Pod/default/web-2"))


NAMED = ServicePort(port=80, target_port_name="http")       # targetPort: http


def test_a_named_target_port_resolves_per_pod():
    svc = _service(NAMED)
    assert target_port(svc, _pod(1, {80: 8080}), 80) == 8080
    assert target_port(svc, _pod(2, {80: 9090}), 80) == 9090


def test_a_pod_without_the_named_port_is_not_an_endpoint_of_it():
    """Kubernetes leaves such a pod out of the EndpointSlice port: no fallback."""
    svc = _service(NAMED)
    assert target_port(svc, _pod(2, {}), 80) is None


def test_numeric_target_port_and_undeclared_ports():
    svc = _service(ServicePort(port=80, target_port=8080))
    assert target_port(svc, _pod(1, None), 80) == 8080
    assert target_port(svc, _pod(1, None), 81) is None            # the service has no port 81
    portless = Service(name="vip", namespace="default", hostname="vip.default.svc.cluster.local",
                       vips=("10.96.0.9",))
    assert target_port(portless, _pod(1, None), 5000) == 5000      # a VIP-only service


def test_ztunnel_and_waypoint_agree():
    svc = _service(NAMED)
    view = StaticView(workloads=[_pod(1, {80: 8080}), _pod(2, {})], services=[svc])
    assert [(w.name, p) for w, p in view.endpoints_for_port(svc, 80)] == [("web-1", 8080)]
    rng = random.Random(0)
    picks = {pick_endpoint(view, svc, 80, None, rng)[0].name for _ in range(20)}
    assert picks == {"web-1"}
    assert [(e.ip, e.port) for e in endpoints(view, svc, 80)] == [("10.0.0.1", 8080)]
