"""cni.mesh.plan: placement, VIPs, generated config and hosts files."""

import pytest
import yaml

from cni import chain
from cni.enroll import MeshView, PodFacts, view_of, workload_uid
from cni.mesh import plan
from core.model import load_text

DOCS = list(yaml.safe_load_all("""
apiVersion: v1
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
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: amb}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""))


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


def test_place_least_loaded_keeps_existing_and_honours_node_name():
    bound = {}
    docs = plan.bind_deployments(DOCS, 2, bound, {})
    assert bound == {"amb/web": "node-1"}
    assert docs[1]["spec"]["template"]["spec"]["nodeName"] == "node-1"
    assert "nodeName" not in DOCS[1]["spec"]["template"]["spec"]      # input not mutated
    pods = plan.place(plan.pods_of(docs), 2, {})
    # Both web replicas on the Deployment's node; solo asked for node-2.
    assert [p.node for p in pods] == ["node-1", "node-1", "node-2", "node-2"]
    again = plan.place(plan.pods_of(plan.bind_deployments(DOCS, 2, bound, {})), 2,
                       {p.key: p.node for p in pods})
    assert [p.key for p in again] == [p.key for p in pods]
    assert [p.node for p in again] == [p.node for p in pods]
    bad = [{**DOCS[3], "spec": {**DOCS[3]["spec"], "nodeName": "node-9"}}]
    with pytest.raises(plan.PlanError, match="node-9"):
        plan.place(plan.pods_of(bad), 2, {})


def test_vips_stable_and_distinct():
    a = plan.VipAllocator(244)
    assert a.get("amb/web") == "10.244.128.1" and a.get("amb/x") == "10.244.128.2"
    assert a.get("amb/web") == "10.244.128.1"
    b = plan.VipAllocator(244, a.by_key)
    assert b.get("amb/y") == "10.244.128.3"


def test_config_docs_fill_addresses_and_validate():
    docs = plan.bind_deployments(DOCS, 2, {}, {})
    pods = plan.place(plan.pods_of(docs), 2, {})
    vips = {"amb/web": "10.244.128.1", "amb/waypoint": "10.244.128.2"}
    ips = {pods[0].key: "10.244.1.2", pods[1].key: "10.244.1.3", "amb/solo": "10.244.2.2",
           "amb/waypoint-0": "10.244.2.3"}
    out = plan.config_docs(docs, pods, vips, ips)
    cfg = load_text(yaml.safe_dump_all(out))           # the model accepts it
    svc = [d for d in out if d["kind"] == "Service"][0]
    assert svc["spec"]["clusterIP"] == "10.244.128.1"
    gw = [d for d in out if d["kind"] == "Gateway"][0]
    assert gw["spec"]["addresses"] == [{"type": "IPAddress", "value": "10.244.128.2"}]
    solo = [d for d in out if d["kind"] == "Pod" and d["metadata"]["name"] == "solo"][0]
    assert solo["status"]["podIP"] == "10.244.2.2" and solo["spec"]["nodeName"] == "node-2"
    dep = [d for d in out if d["kind"] == "Deployment"][0]
    assert dep["metadata"]["annotations"]["shoal.io/pod-ips"] == "10.244.1.2,10.244.1.3"
    assert "shoal.io/source-dir" not in dep["metadata"]["annotations"]
    assert not [d for d in out if d["kind"] == "Pod" and d["metadata"]["name"] == pods[0].name]
    wp = [d for d in out if d["kind"] == "Pod" and d["metadata"]["name"] == "waypoint-0"][0]
    assert wp["spec"]["nodeName"] == "node-2" and wp["status"]["podIP"] == "10.244.2.3"
    assert wp["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    # The model sees the replicas with their node and IPs, under the planned names.
    from core.model import Deployment, replica_pods
    reps = replica_pods(cfg.of(Deployment)[0])
    assert [(r.meta.name, r.node, r.ips) for r in reps] == [
        (pods[0].name, "node-1", ("10.244.1.2",)), (pods[1].name, "node-1", ("10.244.1.3",))]
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
