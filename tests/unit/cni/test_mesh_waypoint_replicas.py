"""cni.mesh: waypoint replicas (`shoal mesh scale waypoint`) and pod /etc updates."""

import copy
import os

import pytest
import yaml

from shoal.cni.mesh import net, plan
from shoal.core.model import load_text
from shoal.routing.compile import compile_config
from shoal.core.records import Service, Workload
from tests.helpers.manifests import waypoint_gateway

GATEWAY = yaml.safe_load(waypoint_gateway("amb"))


def with_replicas(value):
    d = copy.deepcopy(GATEWAY)
    d["metadata"]["annotations"] = {plan.ANNOTATION_WAYPOINT_REPLICAS: value}
    return d


def test_a_waypoint_has_one_replica_by_default():
    assert [p.key for p in plan.pods_of([GATEWAY])] == ["amb/waypoint-0"]


def test_replicas_are_numbered_like_a_statefulset_and_share_identity():
    pods = plan.pods_of([with_replicas("3")], shoal="/x/shoal")
    assert [p.key for p in pods] == ["amb/waypoint-0", "amb/waypoint-1", "amb/waypoint-2"]
    assert {p.service_account for p in pods} == {"waypoint"}
    assert {p.owner for p in pods} == {"Gateway/waypoint"}
    assert all(p.labels == {"gateway.networking.k8s.io/gateway-name": "waypoint",
                            "istio.io/dataplane-mode": "none"} for p in pods)
    assert plan.pods_of([with_replicas("0")]) == []


@pytest.mark.parametrize("bad", ["-1", "many", str(plan.MAX_WAYPOINT_REPLICAS + 1)])
def test_a_bad_replica_count_names_the_gateway_and_the_range(bad):
    with pytest.raises(plan.PlanError, match=r"Gateway/amb/waypoint: annotation "
                       r"shoal.io/waypoint-replicas=.* must be an integer 0\.\.20"):
        plan.pods_of([with_replicas(bad)])


def test_every_replica_is_an_endpoint_of_the_waypoint_service():
    docs = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "amb", "labels": {"istio.io/dataplane-mode": "ambient"}}},
            with_replicas("2")]
    pods = plan.place(plan.pods_of(docs), 2, {})
    ips = {"amb/waypoint-0": "10.244.1.2", "amb/waypoint-1": "10.244.2.2"}
    out = plan.config_docs(docs, pods, {"amb/waypoint": "10.244.128.1"}, ips)
    cfg = load_text(yaml.safe_dump_all(out, sort_keys=False))
    records = compile_config(cfg)
    (svc,) = [r for r in records if isinstance(r, Service) and r.name == "waypoint"]
    workloads = {r.uid: r for r in records if isinstance(r, Workload)}
    assert sorted(workloads[uid].name for uid in svc.endpoints) == ["waypoint-0", "waypoint-1"]
    assert svc.vips == ("10.244.128.1",)


def test_pod_etc_is_updated_in_place_and_left_alone_when_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(net, "ETC_NETNS", str(tmp_path))
    net.write_pod_etc("ns1", "a long first version of hosts\n", "search x\n")
    path = tmp_path / "ns1" / "hosts"
    inode, mtime = os.stat(path).st_ino, os.stat(path).st_mtime_ns
    net.write_pod_etc("ns1", "a long first version of hosts\n", "search x\n")
    assert os.stat(path).st_mtime_ns == mtime                 # unchanged: not rewritten
    net.write_pod_etc("ns1", "short\n", "search x\n")
    assert path.read_text() == "short\n" and os.stat(path).st_ino == inode   # the bind mount's inode
