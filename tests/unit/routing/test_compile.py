"""routing.compile: Istio ambient semantics, and the incremental compiler."""

import dataclasses
from pathlib import Path

import pytest

from shoal.core.model import ConfigError, Pod, load_dir, load_text
from shoal.core.model.resources import Meta
from shoal.routing.compile import compile_config
from shoal.routing.incremental import IncrementalCompiler, full_keyspace
from shoal.core.records import WaypointRef
from shoal.routing.view import StaticView

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "config"


@pytest.fixture(scope="module")
def cfg():
    return load_dir(FIXTURES / "mesh")


@pytest.fixture(scope="module")
def view(cfg):
    return StaticView.from_records(compile_config(cfg))


def wl(view, ns, name):
    return view.workload_by_uid(f"Kubernetes//Pod/{ns}/{name}")


def test_ambient_capture_from_namespace_and_pod_opt_out(view):
    assert view.workload_by_ip("10.0.1.20").protocol == "HBONE"       # ns label
    assert view.workload_by_ip("10.0.1.30").protocol == "TCP"         # pod label none
    assert view.workload_by_ip("10.0.2.10").protocol == "TCP"         # ns not ambient


def test_use_waypoint_inherited_and_opted_out(view):
    web = view.workload_by_ip("10.0.1.10")
    assert web.waypoint == WaypointRef(namespace="shop", name="shop-waypoint")
    assert view.workload_by_ip("10.0.1.20").waypoint is None          # pod says none
    assert view.service_by_host("shop", "web").waypoint.name == "shop-waypoint"
    assert view.service_by_host("shop", "db").waypoint is None        # service says none
    assert wl(view, "shop", "shop-waypoint-0").waypoint is None       # waypoints skip themselves


def test_waypoint_for_service_only(view):
    web_svc = view.service_by_vip("10.96.0.10")
    assert view.waypoint_for_service(web_svc).name == "shop-waypoint"
    assert view.waypoint_for_workload(view.workload_by_ip("10.0.1.10")) is None


def test_deployment_replicas_and_canonical_names(view):
    web = view.workload_by_ip("10.0.1.11")
    assert web.name.startswith("web-") and web.workload_name == "web"
    assert web.workload_type == "deployment"
    assert (web.canonical_name, web.canonical_revision) == ("web", "v2")
    db = view.workload_by_ip("10.0.1.20")
    assert (db.canonical_name, db.canonical_revision) == ("database", "latest")
    assert db.uid == "Kubernetes//Pod/shop/db"
    assert db.identity == "spiffe://cluster.local/ns/shop/sa/db"


def test_named_target_port_resolved_per_endpoint(view):
    web = view.workload_by_ip("10.0.1.10")
    assert web.services["shop/web.shop.svc.cluster.local"] == {80: 8080, 9090: 9090}
    svc = view.service_by_host("shop", "web.shop.svc.cluster.local")
    assert svc.ports[0].target_port == 0 and svc.ports[0].target_port_name == "http-web"
    assert sorted(w.ips[0] for w in view.endpoints(svc)) == ["10.0.1.10", "10.0.1.11"]


def test_service_lookup_forms(view):
    for ns, host in [("shop", "web"), ("x", "web.shop"), ("x", "web.shop.svc"),
                     ("x", "web.shop.svc.cluster.local")]:
        assert view.service_by_host(ns, host).name == "web", host


def test_policy_scopes(view):
    pols = {p.name: p.scope for p in view.items("policy")}
    assert pols == {"deny-blocked": "GLOBAL", "ns-allow": "NAMESPACE",
                    "db-allow-web": "WORKLOAD_SELECTOR", "web-get-only": "TARGET_REF"}
    db = view.workload_by_ip("10.0.1.20")
    assert db.authorization_policies == ("shop/db-allow-web",)
    assert [p.name for p in view.policies_for_workload(db)] == ["deny-blocked", "ns-allow",
                                                                "db-allow-web"]
    old = view.workload_by_ip("10.0.2.10")
    assert [p.name for p in view.policies_for_workload(old)] == ["deny-blocked"]
    assert [p.name for p in view.policies_for_target("Service", "shop", "web")] == ["web-get-only"]


def test_gateway_becomes_waypoint_and_service(view):
    wp = view.waypoint(WaypointRef(namespace="shop", name="shop-waypoint"))
    assert wp.service == "shop/shop-waypoint.shop.svc.cluster.local"
    assert wp.identity == "spiffe://cluster.local/ns/shop/sa/shop-waypoint"
    svc = view.service_by_vip("10.96.0.99")
    assert svc.ports[0].port == 15008
    assert [w.name for w in view.endpoints(svc)] == ["shop-waypoint-0"]


def test_routes_for_service_and_waypoint(view):
    assert [r.name for r in view.routes_for_service("shop", "web")] == ["web-split"]
    wp = view.waypoint(WaypointRef(namespace="shop", name="shop-waypoint"))
    assert [r.name for r in view.routes_for_waypoint(wp)] == ["web-split"]


def test_workloads_on_node(view):
    assert sorted(w.name for w in view.workloads_on_node("node-b")) == ["db", "outsider"]


def test_root_namespace_selector_policy_selects_all_namespaces():
    cfg = load_text("""
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {tier: db}}
status: {podIP: 10.1.0.1}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-db, namespace: istio-system}
spec: {selector: {matchLabels: {tier: db}}, action: DENY}
""")
    v = StaticView.from_records(compile_config(cfg))
    assert v.workload_by_ip("10.1.0.1").authorization_policies == ("istio-system/mesh-db",)


def test_duplicate_pod_ip_refused():
    cfg = load_text("""
apiVersion: v1
kind: Pod
metadata: {name: a}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
status: {podIP: 10.1.0.1}
""")
    with pytest.raises(ConfigError) as info:
        compile_config(cfg)
    assert "10.1.0.1" in str(info.value)
    with pytest.raises(ConfigError):
        IncrementalCompiler().update(cfg)


def test_extra_pods_give_replicas_their_ips(cfg):
    from shoal.core.model import Deployment, replica_pods
    (d,) = cfg.of(Deployment)
    pods = replica_pods(d)
    extra = [dataclasses.replace(pods[0], ips=("10.0.1.77",))]
    v = StaticView.from_records(compile_config(cfg, extra_pods=extra))
    assert v.workload_by_ip("10.0.1.77").name == pods[0].meta.name
    assert v.workload_by_ip("10.0.1.10") is None


def _pod(name, ns, ip, labels):
    return Pod(meta=Meta(kind="Pod", name=name, namespace=ns, labels=labels), ips=(ip,))


def test_incremental_equals_full_and_is_scoped(cfg):
    comp = IncrementalCompiler()
    comp.update(cfg)
    assert comp.keyspace == full_keyspace(compile_config(cfg))
    noop = comp.update(cfg)
    assert noop.empty
    extra = _pod("new", "legacy", "10.0.2.11", {"app": "old"})
    resources = [*cfg.resources, extra]
    delta = comp.update(resources)
    assert delta.namespaces == ("legacy",)
    assert comp.keyspace == full_keyspace(compile_config(resources))
    assert set(delta.changes) == {"w/Kubernetes//Pod/legacy/new", "s/legacy/old.legacy.svc.cluster.local",
                                  "i/ip//10.0.2.11"}
    delta = comp.update(cfg)                    # removal
    assert delta.changes["w/Kubernetes//Pod/legacy/new"] is None
    assert comp.keyspace == full_keyspace(compile_config(cfg))


def test_incremental_failure_keeps_state(cfg):
    comp = IncrementalCompiler()
    comp.update(cfg)
    before = dict(comp.keyspace)
    clash = _pod("clash", "legacy", "10.0.2.10", {})
    with pytest.raises(ConfigError):
        comp.update([*cfg.resources, clash])
    assert comp.keyspace == before
    assert comp.update(cfg).empty


def test_incremental_route_follows_service_waypoint(cfg):
    comp = IncrementalCompiler()
    comp.update(cfg)
    changed = []
    for r in cfg.resources:
        if r.meta.kind == "Service" and r.meta.name == "web":
            meta = dataclasses.replace(r.meta, labels={"istio.io/use-waypoint": "none"})
            r = dataclasses.replace(r, meta=meta)
        changed.append(r)
    delta = comp.update(changed)
    assert delta.changes["i/rwp/shop/shop-waypoint"] is None
    assert comp.keyspace == full_keyspace(compile_config(changed))


def test_update_resources_matches_full_compile_over_random_changes(cfg):
    import random
    from shoal.routing.incremental import resource_key
    rng = random.Random(7)
    comp = IncrementalCompiler()
    comp.update(cfg)
    current = {resource_key(r): r for r in cfg.resources}
    for step in range(40):
        choice = rng.random()
        if choice < 0.4:                          # add or relabel a pod
            i = rng.randrange(20)
            pod = _pod(f"p{i}", rng.choice(["shop", "legacy", "new-ns"]), f"10.9.0.{i}",
                       {"app": rng.choice(["web", "old", "x"]), "v": str(step)})
            for k in [k for k in current if k[0] == "Pod" and k[2] == f"p{i}"]:
                del current[k]
                comp.update_resources(deletes=[k])
            current[resource_key(pod)] = pod
            delta = comp.update_resources(upserts=[pod])
        elif choice < 0.7 and current:            # delete something
            key = rng.choice(sorted(current))
            del current[key]
            delta = comp.update_resources(deletes=[key])
        else:                                     # restore a fixture resource
            r = rng.choice(cfg.resources)
            current[resource_key(r)] = r
            delta = comp.update_resources(upserts=[r])
        expected = full_keyspace(compile_config(list(current.values())))
        assert comp.keyspace == expected, (step, set(comp.keyspace) ^ set(expected))
        assert all(v is None or comp.keyspace[k] == v for k, v in delta.changes.items())


def test_one_pod_change_touches_only_its_records(cfg):
    comp = IncrementalCompiler()
    comp.update(cfg)
    db = next(r for r in cfg.resources if r.meta.kind == "Pod" and r.meta.name == "db")
    moved = dataclasses.replace(db, ips=("10.0.1.21",))
    delta = comp.update_resources(upserts=[moved])
    assert set(delta.changes) == {"w/Kubernetes//Pod/shop/db", "i/ip//10.0.1.20", "i/ip//10.0.1.21"}
    assert delta.changes["i/ip//10.0.1.20"] is None


def test_explicit_pod_stands_for_replica_whatever_the_order(cfg):
    from shoal.core.model import Deployment, replica_pods
    from shoal.routing.incremental import resource_key
    (d,) = cfg.of(Deployment)
    replica = replica_pods(d)[0]
    pod = dataclasses.replace(replica, ips=("10.0.1.55",), owner_deployment="")
    for resources in ([pod, *cfg.resources], [*cfg.resources, pod]):
        v = StaticView.from_records(compile_config(resources))
        assert v.workload_by_ip("10.0.1.55").name == replica.meta.name
        assert v.workload_by_ip("10.0.1.10") is None
        assert v.workload_by_ip("10.0.1.55").workload_name == "web"
    comp = IncrementalCompiler()
    comp.update([*cfg.resources, pod])
    comp.update_resources(deletes=[resource_key(pod)])        # the replica comes back
    assert comp.keyspace == full_keyspace(compile_config(cfg))


def test_update_resources_overlay_pods(cfg):
    from shoal.core.model import Deployment, replica_pods
    (d,) = cfg.of(Deployment)
    replica = replica_pods(d)[1]
    overlay = dataclasses.replace(replica, ips=("10.0.1.66",), node="node-z")
    comp = IncrementalCompiler()
    comp.update(cfg)
    comp.update_resources(extra_upserts=[overlay])
    assert comp.keyspace == full_keyspace(compile_config(cfg, extra_pods=[overlay]))
    moved = dataclasses.replace(overlay, ips=("10.0.1.67",))
    comp.update_resources(extra_upserts=[moved])
    assert comp.keyspace == full_keyspace(compile_config(cfg, extra_pods=[moved]))
    comp.update_resources(extra_deletes=[("shop", replica.meta.name)])
    assert comp.keyspace == full_keyspace(compile_config(cfg))


def test_implicit_allow_from_waypoint_policy_is_opt_in(cfg):
    # istiod's PILOT_AUTO_ALLOW_WAYPOINT_POLICY (policies.go
    # implicitWaypointPolicy): an ALLOW for the waypoint's identity, listed by
    # every workload the waypoint serves. Off by default.
    from shoal.core.records import Authorization
    from shoal.routing.compile import CompileOptions
    key = "shop/istio_allow_waypoint_shop_shop-waypoint"
    off = StaticView.from_records(compile_config(cfg))
    assert all(key not in w.authorization_policies for w in off.items("workload"))
    on_records = compile_config(cfg, options=CompileOptions.from_env(
        {"PILOT_AUTO_ALLOW_WAYPOINT_POLICY": "true"}))
    [pol] = [r for r in on_records if isinstance(r, Authorization) and r.key == key]
    assert pol.action == "ALLOW" and pol.scope == "WORKLOAD_SELECTOR"
    assert pol.rules[0].from_[0].principals == ("cluster.local/ns/shop/sa/shop-waypoint",)
    on = StaticView.from_records(on_records)
    served = [w for w in on.items("workload") if key in w.authorization_policies]
    assert served and all(w.namespace == "shop" for w in served)
    assert CompileOptions.from_env({}).auto_allow_waypoint is False


def test_config_dump_status_carries_istiod_policy_status():
    from shoal.routing.dump import dump_view
    text = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: fine, namespace: shop}
spec: {rules: [{to: [{operation: {ports: ["80"]}}]}]}
"""
    status = dump_view(StaticView.from_records(compile_config(load_text(text))))["status"]
    assert status["policies"] == [{"policy": "shop/ext", "ancestor": "ztunnel",
                                   "reason": "UnsupportedValue",
                                   "message": "ztunnel does not support the CUSTOM action"}]


SLICED = """
apiVersion: v1
kind: Namespace
metadata: {name: ext, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: ext, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: db, ports: [{name: pg, containerPort: 5432}]}]}
status: {podIP: 10.9.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: ext, labels: {app: db}}
spec: {nodeName: n1}
status: {podIP: 10.9.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: ext}
spec:
  clusterIP: 10.96.9.9
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-1, namespace: ext, labels: {kubernetes.io/service-name: legacy}}
addressType: IPv4
endpoints:
- addresses: [10.9.0.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: db-0, namespace: ext}
- addresses: [10.9.0.2]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: db-1, namespace: ext}
"""


def test_a_service_without_selector_takes_endpoints_from_its_endpoint_slices():
    from shoal.core.model import load_text
    from shoal.routing.compile import compile_config, records_by_kind
    by = records_by_kind(compile_config(load_text(SLICED)))
    [svc] = by["services"]
    assert svc.endpoints == ("Kubernetes//Pod/ext/db-0",)       # the unready one is left out
    db0 = next(w for w in by["workloads"] if w.name == "db-0")
    assert db0.services == {"ext/legacy.ext.svc.cluster.local": {5432: 5432}}


def test_endpoint_slice_changes_compile_incrementally_like_a_full_compile():
    import yaml
    from shoal.core.model import load_text
    from shoal.routing.compile import compile_config
    from shoal.routing.incremental import IncrementalCompiler, full_keyspace
    docs = list(yaml.safe_load_all(SLICED))
    comp = IncrementalCompiler()
    comp.update(load_text(SLICED))
    docs[-1]["endpoints"][1]["conditions"]["ready"] = True        # db-1 becomes ready
    cfg = load_text(yaml.safe_dump_all(docs))
    comp.update(cfg)
    assert comp.keyspace == full_keyspace(compile_config(cfg))
    # and a change of a pod the slice names (the pod path must not drop it)
    docs[1]["metadata"]["labels"]["v"] = "2"
    cfg = load_text(yaml.safe_dump_all(docs))
    slices_pod = [r for r in cfg.resources if r.meta.name == "db-0"]
    comp.update_resources(upserts=slices_pod)
    assert comp.keyspace == full_keyspace(compile_config(cfg))
