"""cni.mesh.plan: placement, VIPs, generated config and hosts files."""

import pytest
import yaml

from shoal.cni import chain
from shoal.cni.enroll import MeshView, PodFacts, view_of, workload_uid
from shoal.cni.mesh import plan
from shoal.core.model import load_text
from tests.helpers.manifests import documents, waypoint_gateway

DOCS = list(yaml.safe_load_all(documents("""apiVersion: v1
kind: Namespace
metadata: {name: amb, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: amb}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers:
      - {name: web, command: [python3, -m, http.server], args: ["8080"], env: [{name: A, value: "1"}],
         ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: amb}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: amb, labels: {istio.io/dataplane-mode: none}}
spec:
  nodeName: node-2
  containers: [{name: c, command: [sleep, infinity]}]
""", waypoint_gateway("amb"))))


def test_pods_of_expands_replicas_and_waypoints():
    pods = plan.pods_of(DOCS, shoal="/x/shoal")
    names = [p.key for p in pods]
    assert names[0].startswith("amb/web-") and names[0].endswith("-0") and names[1].endswith("-1")
    assert names[2:] == ["amb/solo", "amb/waypoint-0"]
    web = pods[0]
    assert web.containers[0].argv == ("python3", "-m", "http.server", "8080")
    assert web.containers[0].env == {"A": "1"} and web.owner == "Deployment/web"
    wp = pods[3]
    assert wp.labels["istio.io/dataplane-mode"] == "none"
    assert wp.containers[0].argv[:3] == ("/x/shoal", "waypoint", "run")


def test_container_without_command_refused():
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    with pytest.raises(plan.PlanError, match="has no command"):
        plan.pods_of([doc])


def test_place_keeps_existing_and_honours_node_name():
    pods = plan.place(plan.pods_of(DOCS), 2, {})
    # web's two replicas spread; solo asked for node-2; the waypoint goes to
    # the least-loaded node (both have 2, tie -> node-1).
    assert [p.node for p in pods] == ["node-1", "node-2", "node-2", "node-1"]
    assert "nodeName" not in DOCS[1]["spec"]["template"]["spec"]      # input not mutated
    again = plan.place(plan.pods_of(DOCS), 2, {p.key: p.node for p in pods})
    assert [p.key for p in again] == [p.key for p in pods]
    assert [p.node for p in again] == [p.node for p in pods]
    bad = [{**DOCS[3], "spec": {**DOCS[3]["spec"], "nodeName": "node-9"}}]
    with pytest.raises(plan.PlanError, match="node-9"):
        plan.place(plan.pods_of(bad), 2, {})


def deployment(name, replicas, node=""):
    tspec = {"containers": [{"name": "c", "command": ["sleep", "infinity"]}]}
    if node:
        tspec["nodeName"] = node
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "amb"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": tspec}}}


def nodes_of(pods, owner):
    return [p.node for p in pods if p.owner == owner]


def test_replicas_spread_round_robin_across_nodes():
    pods = plan.place(plan.pods_of([deployment("a", 5)]), 3, {})
    assert nodes_of(pods, "Deployment/a") == ["node-1", "node-2", "node-3", "node-1", "node-2"]


def test_replicas_spread_even_onto_busier_nodes_least_loaded_first():
    # node-1 already runs 3 pods: a's first replica goes to the empty node-2,
    # the second still to node-1 (spreading beats load, as topology spread).
    busy = plan.place(plan.pods_of([deployment("busy", 3, node="node-1")]), 2, {})
    pods = plan.place(plan.pods_of([deployment("busy", 3, node="node-1"), deployment("a", 2)]), 2,
                      {p.key: p.node for p in busy})
    assert nodes_of(pods, "Deployment/busy") == ["node-1"] * 3
    assert nodes_of(pods, "Deployment/a") == ["node-2", "node-1"]
    # Two Deployments of one replica each: least loaded, ties by node index.
    pods = plan.place(plan.pods_of([deployment("x", 1), deployment("y", 1), deployment("z", 1)]), 2, {})
    assert [p.node for p in pods] == ["node-1", "node-2", "node-1"]


def test_template_node_name_pins_every_replica():
    pods = plan.place(plan.pods_of([deployment("a", 3, node="node-2")]), 2, {})
    assert nodes_of(pods, "Deployment/a") == ["node-2"] * 3
    with pytest.raises(plan.PlanError, match="node-7"):
        plan.place(plan.pods_of([deployment("a", 1, node="node-7")]), 2, {})


def test_scaling_keeps_replicas_and_spreads_the_new_ones():
    one = plan.place(plan.pods_of([deployment("a", 1)]), 3, {})
    assert nodes_of(one, "Deployment/a") == ["node-1"]
    up = plan.place(plan.pods_of([deployment("a", 4)]), 3, {p.key: p.node for p in one})
    assert up[0].key == one[0].key                                   # names stable
    assert nodes_of(up, "Deployment/a") == ["node-1", "node-2", "node-3", "node-1"]
    # Scale down: the highest indices go; the rest stay where they were.
    down = plan.place(plan.pods_of([deployment("a", 2)]), 3, {p.key: p.node for p in up})
    assert [(p.key, p.node) for p in down] == [(p.key, p.node) for p in up[:2]]
    # Back up: the departed replicas' nodes no longer count as load.
    again = plan.place(plan.pods_of([deployment("a", 3)]), 3, {p.key: p.node for p in down})
    assert nodes_of(again, "Deployment/a") == ["node-1", "node-2", "node-3"]


def test_waypoint_replicas_spread_when_scaled():
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "wp", "namespace": "amb",
                       "annotations": {plan.ANNOTATION_WAYPOINT_REPLICAS: "1"}},
          "spec": {"gatewayClassName": "istio-waypoint"}}
    one = plan.place(plan.pods_of([gw]), 2, {})
    gw["metadata"]["annotations"][plan.ANNOTATION_WAYPOINT_REPLICAS] = "3"
    three = plan.place(plan.pods_of([gw]), 2, {p.key: p.node for p in one})
    assert [(p.name, p.node) for p in three] == [("wp-0", "node-1"), ("wp-1", "node-2"),
                                                 ("wp-2", "node-1")]


def test_vips_stable_and_distinct():
    a = plan.VipAllocator(244)
    assert a.get("amb/web") == "10.244.128.1" and a.get("amb/x") == "10.244.128.2"
    assert a.get("amb/web") == "10.244.128.1"
    b = plan.VipAllocator(244, a.by_key)
    assert b.get("amb/y") == "10.244.128.3"


def test_config_docs_fill_addresses_and_validate():
    pods = plan.place(plan.pods_of(DOCS), 2, {})
    assert [p.node for p in pods[:2]] == ["node-1", "node-2"]
    vips = {"amb/web": "10.244.128.1", "amb/waypoint": "10.244.128.2"}
    ips = {pods[0].key: "10.244.1.2", pods[1].key: "10.244.2.3", "amb/solo": "10.244.2.2",
           "amb/waypoint-0": "10.244.1.3"}
    out = plan.config_docs(DOCS, pods, vips, ips)
    cfg = load_text(yaml.safe_dump_all(out))           # the model accepts it
    svc = [d for d in out if d["kind"] == "Service"][0]
    assert svc["spec"]["clusterIP"] == "10.244.128.1"
    gw = [d for d in out if d["kind"] == "Gateway"][0]
    assert gw["spec"]["addresses"] == [{"type": "IPAddress", "value": "10.244.128.2"}]
    solo = [d for d in out if d["kind"] == "Pod" and d["metadata"]["name"] == "solo"][0]
    assert solo["status"]["podIP"] == "10.244.2.2" and solo["spec"]["nodeName"] == "node-2"
    dep = [d for d in out if d["kind"] == "Deployment"][0]
    assert dep["metadata"]["annotations"]["shoal.io/pod-ips"] == "10.244.1.2,10.244.2.3"
    assert "shoal.io/source-dir" not in dep["metadata"]["annotations"]
    assert "nodeName" not in dep["spec"]["template"]["spec"]       # nodes are per replica
    # One Pod per replica, with its own node and IP.
    reps = {d["metadata"]["name"]: d for d in out if d["kind"] == "Pod"
            and (d["metadata"].get("annotations") or {}).get("shoal.io/owner") == "Deployment/web"}
    assert {n: (d["spec"]["nodeName"], d["status"]["podIP"]) for n, d in reps.items()} == {
        pods[0].name: ("node-1", "10.244.1.2"), pods[1].name: ("node-2", "10.244.2.3")}
    assert all(d["spec"]["serviceAccountName"] == "web" and d["metadata"]["labels"] == {"app": "web"}
               for d in reps.values())
    wp = [d for d in out if d["kind"] == "Pod" and d["metadata"]["name"] == "waypoint-0"][0]
    assert wp["spec"]["nodeName"] == "node-1" and wp["status"]["podIP"] == "10.244.1.3"
    assert wp["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    # The compiled workloads (what each node's ztunnel serves, what the CA
    # checks) carry each replica's own node and IP, under the Deployment's name.
    from shoal.routing.compile import compile_config
    from shoal.core.records import Service, Workload
    records = compile_config(cfg)
    wl = {r.name: r for r in records if isinstance(r, Workload)}
    assert [(wl[p.name].node, wl[p.name].ips, wl[p.name].workload_name) for p in pods[:2]] == [
        ("node-1", ("10.244.1.2",), "web"), ("node-2", ("10.244.2.3",), "web")]
    (web_svc,) = [r for r in records if isinstance(r, Service) and r.name == "web"]
    assert sorted(web_svc.endpoints) == sorted(wl[p.name].uid for p in pods[:2])
    # The enrollment view the agent derives: namespace ambient, solo opted out.
    view = view_of(cfg)
    assert view.ambient("amb", pods[0].name) and not view.ambient("amb", "solo")
    assert not view.ambient("amb", "waypoint-0")
    assert view.facts("amb", pods[0].name).service_account == "web"


def test_hosts_file_short_name_only_in_own_namespace():
    pod = [p for p in plan.place(plan.pods_of(DOCS), 2, {}) if p.name == "solo"][0]
    text = plan.hosts_file(pod, "10.244.2.2", [("amb", "web"), ("other", "db")],
                           {"amb/web": "10.244.128.1", "other/db": "10.244.128.9"})
    assert "10.244.2.2\tsolo" in text
    assert "10.244.128.1\tweb.amb.svc.cluster.local web.amb.svc web.amb web\n" in text
    assert "10.244.128.9\tdb.other.svc.cluster.local db.other.svc db.other\n" in text


def test_doc_key():
    assert plan.doc_key(DOCS[0]) == ("", "Namespace", "", "amb")
    assert plan.doc_key(DOCS[1]) == ("apps", "Deployment", "amb", "web")
    assert plan.doc_key({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}) == ("", "Pod", "default", "p")


def test_enroll_rules():
    view = MeshView(namespaces={"a": {"istio.io/dataplane-mode": "ambient"}, "b": {}},
                    pods={("b", "x"): PodFacts(namespace="b", name="x",
                                               labels={"istio.io/dataplane-mode": "ambient"})})
    assert view.ambient("a", "unknown") and view.ambient("b", "x") and not view.ambient("b", "y")
    assert workload_uid("ns", "p") == "Kubernetes//Pod/ns/p"


def test_chain_plugin_config_like_libcni():
    conf = chain.conflist("n", bridge="cni0", subnet="10.1.0.0/24", gateway="10.1.0.1",
                          ipam_dir="/x", agent_run_dir="/r")
    first = chain.plugin_config(conf, conf["plugins"][0], None)
    assert first["name"] == "n" and first["cniVersion"] == "1.0.0" and "prevResult" not in first
    second = chain.plugin_config(conf, conf["plugins"][1], {"ips": []})
    assert second["prevResult"] == {"ips": []} and second["type"] == "shoal-cni"
    env = chain.plugin_env("ADD", chain.Attachment(container_id="c", netns="/n",
                                                   args={"K8S_POD_NAME": "p", "K8S_POD_NAMESPACE": "q"}),
                           "/usr/lib/cni")
    assert env["CNI_ARGS"] == "K8S_POD_NAME=p;K8S_POD_NAMESPACE=q" and env["CNI_IFNAME"] == "eth0"
