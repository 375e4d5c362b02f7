"""The Kubernetes API source end to end: the test API server (real wire
protocol), lightkube, the KubeSource, the Watcher and the shared table."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
import yaml

from shoal.routing.kube.kinds import WATCHED
from shoal.routing.kube.source import KubeSource
from shoal.routing.runtime import TableHandle, attach_view
from shoal.routing.watcher import Watcher
from tests.helpers import shards_proc
from tests.helpers.kube_apiserver import ISTIO, KubeApiServer

ROOT = Path(__file__).resolve().parents[3]
MESH = ROOT / "tests" / "fixtures" / "config" / "mesh"
DEADLINE = 15.0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def wait_for(cond, what, timeout=DEADLINE):
    return shards_proc.wait_for(cond, timeout, what, interval=0.01)


def ns(name):
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": "ambient"}}}


def pod(name, ip, *, ready=True, namespace="demo", app="web"):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
            "spec": {"nodeName": "node-a", "serviceAccountName": name,
                     "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def service(name, port, *, namespace="demo", vip="10.96.0.10"):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": vip, "clusterIPs": [vip], "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": port, "targetPort": "http"}]}}


def policy(name, action="DENY", namespace="demo"):
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"action": action, "rules": [{"from": [{"source": {"namespaces": ["evil"]}}]}]}}


class Rig:
    """API server + in-process Watcher thread + a reader view of the table."""

    def __init__(self, tmp: Path, crds=None) -> None:
        self.api = KubeApiServer(bookmark_interval=0.2,
                                 **({"crds": crds} if crds is not None else {})).start()
        self.kubeconfig = self.api.write_kubeconfig(str(tmp / "kubeconfig"))
        self.handle = TableHandle.create(size=16 << 20, clean_stale=False)
        self.published: list[dict] = []
        self.watcher: Watcher | None = None
        self.view = None
        self.thread: threading.Thread | None = None

    def start(self) -> "Rig":
        source = KubeSource(self.kubeconfig, informer_options={"crd_recheck": 0.5})
        self.watcher = w = Watcher(source, self.handle.name)
        apply = w.writer.apply

        def spy(changes):
            self.published.append(dict(changes))
            return apply(changes)
        w.writer.apply = spy
        self.thread = threading.Thread(target=w.run, daemon=True)
        self.thread.start()
        self.view = attach_view(self.handle.name)
        wait_for(lambda: self.view.generation > 0 and self.view.status().get("kubernetes"),
                 "the first publish")
        served = len([k for k in source.kinds if not k.crd or k.group in self.api.groups()])
        wait_for(lambda: self.api.open_watches() == served, "a watch per served kind")
        return self

    def status(self) -> dict:
        return self.view.status()

    def lists(self, path: str) -> int:
        return sum(1 for m, p, q in list(self.api.requests) if p == path and "watch" not in q)

    def watches(self, path: str) -> list[dict]:
        return [q for m, p, q in list(self.api.requests) if p == path and "watch" in q]

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop = True
            self.thread.join(10)
            self.watcher.close()
        if self.view is not None:
            self.view.close()
        self.handle.unlink()
        self.api.stop()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    r.api.create(ns("demo"))
    r.api.create(pod("web-1", "10.1.0.1"))
    r.api.create(service("web", 80))
    yield r
    r.close()


def test_initial_sync_then_pod_add_ip_change_ready_flip_delete(rig):
    rig.start()
    v = rig.view
    assert v.workload_by_ip("10.1.0.1").name == "web-1"
    health = {h["kind"]: h for h in rig.status()["kubernetes"]["resources"]}
    assert all(h["synced"] for h in health.values()) and health["Pod"]["objects"] == 1
    assert rig.status()["counts"] == {"Namespace": 1, "Pod": 1, "Service": 1}
    assert rig.published[0], "the first publish"

    rig.api.create(pod("web-2", "10.1.0.2"))
    wait_for(lambda: v.workload_by_ip("10.1.0.2"), "the new pod")
    rig.api.update(pod("web-2", "10.1.0.3"))
    wait_for(lambda: v.workload_by_ip("10.1.0.3") and not v.workload_by_ip("10.1.0.2"), "the new IP")
    rig.api.update(pod("web-2", "10.1.0.3", ready=False))
    wait_for(lambda: v.workload_by_ip("10.1.0.3").status == "UNHEALTHY", "the Ready flip")
    rig.api.delete("pods", "demo", "web-2")
    wait_for(lambda: not v.workload_by_ip("10.1.0.3"), "the delete")
    # One pod event publishes O(change): the pod's own records, not the namespace.
    last = rig.published[-1]
    assert 0 < len(last) <= 4, sorted(last)


def test_service_port_change(rig):
    rig.start()
    v = rig.view
    assert [p.port for p in v.service_by_vip("10.96.0.10").ports] == [80]
    rig.api.update(service("web", 8000))
    wait_for(lambda: [p.port for p in v.service_by_vip("10.96.0.10").ports] == [8000], "port 8000")
    # The named targetPort resolves through the pod's container port.
    wait_for(lambda: list(v.workload_by_ip("10.1.0.1").services.values()) == [{8000: 8080}],
             "the pod's port map")


def test_dropped_watch_resumes_without_relist(rig):
    rig.start()
    lists = rig.lists("/api/v1/pods")
    before = len(rig.watches("/api/v1/pods"))
    rv = rig.status()["kubernetes"]["resources"][1]["resource_version"]
    assert rig.api.drop_watches() == len(WATCHED)          # one watch per kind
    rig.api.create(pod("web-2", "10.1.0.2"))
    wait_for(lambda: rig.view.workload_by_ip("10.1.0.2"), "the pod created while cut off")
    resumed = rig.watches("/api/v1/pods")[before:]
    assert resumed and int(resumed[0]["resourceVersion"]) >= int(rv)
    assert rig.lists("/api/v1/pods") == lists            # no re-list
    def pods():
        return {h["kind"]: h for h in rig.status()["kubernetes"]["resources"]}["Pod"]
    wait_for(lambda: pods()["errors"] >= 1, "the dropped stream in the health")
    assert pods()["relists"] == 0 and "watch" in pods()["last_error"]
    # ztunnel's istio_xds_connection_terminations_total{reason}: a cut stream
    # is a ConnectionError; the list page and events are messages with bytes.
    assert pods()["terminations"].get("ConnectionError", 0) >= 1, pods()["terminations"]
    wait_for(lambda: pods()["messages"] >= 2 and pods()["message_bytes"] > 0,
             "the list page and the event as messages")


def test_410_gone_relists_and_publishes_only_the_difference(rig):
    for i in range(2, 30):
        rig.api.create(pod(f"web-{i}", f"10.1.0.{i}"))
    rig.start()
    lists = rig.lists("/api/v1/pods")
    published = len(rig.published)
    rig.api.partition()                             # the API is out of reach a while
    rig.api.update(pod("web-5", "10.1.1.5"))
    rig.api.delete("pods", "demo", "web-6")
    rig.api.compact()                               # ... long enough for a compaction
    rig.api.heal()
    wait_for(lambda: rig.view.workload_by_ip("10.1.1.5") and not rig.view.workload_by_ip("10.1.0.6"),
             "the difference")
    assert rig.lists("/api/v1/pods") == lists + 1
    changed = {k for c in rig.published[published:] for k in c}
    workloads = {k for k in changed if k.startswith("w/")}
    assert len(workloads) == 2 and all(k.endswith(("/web-5", "/web-6")) for k in workloads), \
        sorted(changed)
    wait_for(lambda: {h["kind"]: h for h in rig.status()["kubernetes"]["resources"]}
             ["Pod"]["relists"] == 1, "one re-list in the health")
    health = {h["kind"]: h for h in rig.status()["kubernetes"]["resources"]}["Pod"]
    assert health["terminations"].get("Reconnect") == 1, health["terminations"]   # the 410


def test_invalid_authorization_policy_is_refused_alone(rig):
    rig.start()
    bad = policy("bad")
    bad["spec"]["action"] = "MAYBE"
    rig.api.create(bad)
    rig.api.create(policy("good"))
    rig.api.create(pod("web-2", "10.1.0.2"))
    def policy_names():
        return {p.name for p in rig.view.items_many(["authorization"])["authorization"]}
    # Pods and policies arrive on separate watches: wait for each change.
    wait_for(lambda: rig.view.workload_by_ip("10.1.0.2") and rig.status()["refused"]["total"]
             and "good" in policy_names(), "the good changes and the refusal")
    names = policy_names()
    assert "good" in names and "bad" not in names
    [err] = rig.status()["refused"]["errors"]
    assert (err["kind"], err["namespace"], err["name"], err["field"]) == (
        "AuthorizationPolicy", "demo", "bad", "spec.action")
    assert rig.status()["error"] is None
    fixed = policy("bad", action="ALLOW")
    rig.api.update(fixed)
    wait_for(lambda: rig.status()["refused"]["total"] == 0, "the refusal to clear")


def test_two_pods_claiming_one_ip_refuse_only_the_second(rig):
    rig.start()
    rig.api.create(pod("web-2", "10.1.0.1"))          # web-1's IP
    rig.api.create(pod("web-3", "10.1.0.3"))
    wait_for(lambda: rig.view.workload_by_ip("10.1.0.3") and rig.status()["refused"]["total"],
             "web-3 applied and web-2 refused")
    assert rig.view.workload_by_ip("10.1.0.1").name == "web-1"
    [err] = rig.status()["refused"]["errors"]
    assert (err["kind"], err["name"]) == ("Pod", "web-2") and "10.1.0.1" in err["message"]


def test_missing_crd_is_reported_and_skipped_then_found(tmp_path):
    r = Rig(tmp_path, crds=ISTIO)           # no Gateway API in this cluster
    try:
        r.api.create(ns("demo"))
        r.api.create(pod("web-1", "10.1.0.1"))
        r.start()
        assert r.view.workload_by_ip("10.1.0.1")
        health = {h["kind"]: h for h in r.status()["kubernetes"]["resources"]}
        assert health["Gateway"]["missing"] and health["HTTPRoute"]["missing"]
        assert "not served" in health["Gateway"]["last_error"]
        assert r.status()["kubernetes"]["synced"]
        # Gateway API installed later: found on the next recheck.
        from tests.helpers.kube_apiserver import GATEWAY_API
        r.api.serve_crds(GATEWAY_API)
        wait_for(lambda: not {h["kind"]: h for h in r.status()["kubernetes"]["resources"]}
                 ["Gateway"]["missing"], "the Gateway kind found")
    finally:
        r.close()


def test_config_dump_from_the_api_equals_the_directory_dump(tmp_path):
    docs = [d for f in sorted(MESH.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d and d["kind"] not in ("Deployment", "ConfigMap")]
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "all.yaml").write_text(yaml.safe_dump_all(docs))
    api = KubeApiServer().start()
    try:
        for d in docs:
            api.create(d)
        kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))

        def dump(*flags):
            out = subprocess.run([sys.executable, "-m", "shoal.cli", "config", "dump", *flags,
                                  "-o", "json"], cwd=ROOT, capture_output=True, timeout=60)
            assert out.returncode == 0, out.stderr.decode()
            return orjson.loads(out.stdout)
        from_api, from_dir = dump("--kubeconfig", kubeconfig), dump("--config", str(cfg))
    finally:
        api.stop()
    assert from_api["workloads"] and from_api["policies"] and from_api["waypoints"]
    assert from_api["routes"] == from_dir["routes"]
    assert from_api == from_dir


def test_endpoint_slices_of_a_service_without_selector(rig):
    rig.api.create({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "legacy", "namespace": "demo"},
                    "spec": {"clusterIP": "10.96.0.99", "ports": [{"name": "http", "port": 80}]}})

    def slice_of(name, pod, managed_by):
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": "demo",
                             "labels": {"kubernetes.io/service-name": "legacy",
                                        "endpointslice.kubernetes.io/managed-by": managed_by}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": True},
                               "targetRef": {"kind": "Pod", "name": pod, "namespace": "demo"}}]}
    # The EndpointSlice controller's slices (for Services with a selector) are not watched.
    rig.api.create(slice_of("web-abcde", "web-1", "endpointslice-controller.k8s.io"))
    rig.start()
    assert rig.view.service_by_vip("10.96.0.99").endpoints == ()
    rig.api.create(slice_of("legacy-1", "web-1", "my-controller"))
    wait_for(lambda: rig.view.service_by_vip("10.96.0.99").endpoints ==
             ("Kubernetes//Pod/demo/web-1",), "the slice's pod as endpoint")
    health = {h["kind"]: h for h in rig.status()["kubernetes"]["resources"]}["EndpointSlice"]
    assert health["synced"]
    wait_for(lambda: {h["kind"]: h for h in rig.status()["kubernetes"]["resources"]}
             ["EndpointSlice"]["objects"] == 1, "one slice held (the controller's is not watched)")


async def test_an_informer_closed_while_a_relist_is_pending_ends(tmp_path):
    # request_relist() cancels the watch and run() lists again; a cancel of
    # run() itself in the same turn (its source closing) must still end it.
    import asyncio
    import threading

    from shoal.routing.kube.informer import Informer
    from shoal.routing.kube.kinds import POD
    from shoal.routing.kube.source import make_client
    from shoal.routing.kube.store import ObjectStore
    from tests.helpers.wait import until

    api = KubeApiServer().start()
    try:
        client = make_client(api.write_kubeconfig(str(tmp_path / "kubeconfig")))
        informer = Informer(client, POD, ObjectStore((POD,)), threading.Condition())
        task = asyncio.create_task(informer.run())
        await until(lambda: informer._watching is not None, what="the informer watching")
        informer.request_relist()
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        assert task.cancelled()
        await client.close()
    finally:
        api.stop()
