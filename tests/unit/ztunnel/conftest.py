"""A small mesh of records shared by ztunnel's unit tests."""

from __future__ import annotations

import random

import pytest

from shoal.core.records import (Authorization, LoadBalancing, Rule, Service, ServicePort,
                             Source, Waypoint, WaypointRef, Workload)
from shoal.routing.view import StaticView

WP = WaypointRef(namespace="default", name="waypoint")
WP_HOST = "waypoint.default.svc.cluster.local"


def pod(name, ip, *, ns="default", protocol="HBONE", sa=None, **kw):
    return Workload(uid=f"Kubernetes//Pod/{ns}/{name}", name=name, namespace=ns, ips=(ip,),
                    protocol=protocol, service_account=sa or name, node=kw.pop("node", "n1"),
                    **kw)


def svc(name, vip, *, ns="default", ports=((80, 8080),), endpoints=(), **kw):
    return Service(name=name, namespace=ns, hostname=f"{name}.{ns}.svc.cluster.local",
                   vips=(vip,), ports=tuple(ServicePort(port=p, target_port=t) for p, t in ports),
                   endpoints=tuple(sorted(e.uid for e in endpoints)), **kw)


NAMED_KEY = "default/named.default.svc.cluster.local"

CLIENT = pod("client", "10.0.0.1", sa="sleep")
SERVER_A = pod("server-a", "10.0.1.1", sa="httpbin", capacity=1)
SERVER_B = pod("server-b", "10.0.1.2", sa="httpbin", capacity=3)
SERVER_SICK = pod("server-sick", "10.0.1.3", sa="httpbin", status="UNHEALTHY")
NAMED_OK = pod("named-ok", "10.0.1.5", services={NAMED_KEY: {80: 9090}})
NAMED_NOPORT = pod("named-noport", "10.0.1.6")
LEGACY = pod("legacy", "10.0.2.1", protocol="TCP")
WP_POD = pod("waypoint-0", "10.0.3.1", sa="waypoint")
BEHIND_WP = pod("behind", "10.0.4.1", waypoint=WP)
OTHER_NS_CLIENT = pod("client", "10.0.0.9", ns="other")

WAYPOINT = Waypoint(name="waypoint", namespace="default", waypoint_for="all",
                    service=f"default/{WP_HOST}")

ECHO = svc("echo", "10.96.0.10", endpoints=(SERVER_A, SERVER_B, SERVER_SICK))
NAMED = svc("named", "10.96.0.11", ports=((80, 0),), endpoints=(NAMED_OK, NAMED_NOPORT))
WITH_WP = svc("reviews", "10.96.0.12", endpoints=(SERVER_A,), waypoint=WP)
EMPTY = svc("empty", "10.96.0.13", endpoints=(SERVER_SICK,))
PASS = svc("pass", "10.96.0.14", endpoints=(SERVER_A,),
           load_balancing=LoadBalancing(mode="PASSTHROUGH"))
DUP_OTHER = svc("dup", "10.96.0.15", ns="other", endpoints=(LEGACY,))
DUP_DEFAULT = svc("dup", "10.96.0.15", endpoints=(SERVER_A,))
WP_SVC = svc("waypoint", "10.96.0.20", ports=((15008, 15008),), endpoints=(WP_POD,))
SANS = svc("sans", "10.96.0.16", endpoints=(SERVER_A,), subject_alt_names=("spiffe://x/y",))

WORKLOADS = (CLIENT, SERVER_A, SERVER_B, SERVER_SICK, NAMED_OK, NAMED_NOPORT, LEGACY, WP_POD,
             BEHIND_WP, OTHER_NS_CLIENT)
SERVICES = (DUP_OTHER, ECHO, NAMED, WITH_WP, EMPTY, PASS, DUP_DEFAULT, WP_SVC, SANS)


def make_view(policies=()):
    return StaticView(workloads=WORKLOADS, services=SERVICES, waypoints=(WAYPOINT,),
                    policies=tuple(policies))


@pytest.fixture
def view():
    return make_view()


@pytest.fixture
def rng():
    return random.Random(4)


def allow_from(ns, name, principals=(), action="ALLOW", namespaces=(), scope="NAMESPACE",
               rules=None, selector=None):
    if rules is None:
        rules = (Rule(from_=(Source(principals=tuple(principals),
                                    namespaces=tuple(namespaces)),)),)
    return Authorization(name=name, namespace=ns, scope=scope, action=action, rules=rules,
                         selector=selector or {})
