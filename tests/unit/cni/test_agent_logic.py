"""cni.agent decisions with the kernel and ztunnel faked out: which pods are
captured, what an ADD answers, idempotent DEL, GC, reconcile."""

import dataclasses
import os

import orjson
import pytest

from shoal.cni import agent as agent_mod
from shoal.cni.agent import AgentOptions, NodeAgent
from shoal.cni.plugin import PodOp as Request
from shoal.cni.zds_server import NoZtunnel
from tests.helpers.manifests import NAMESPACES

NS = NAMESPACES + """---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: amb, labels: {istio.io/dataplane-mode: none}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-in, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}
spec: {serviceAccountName: special, containers: [{name: c}]}
"""


class FakeZds:
    def __init__(self, connected=True):
        self.connected = connected
        self.calls = []
        self.ztunnels = 1 if connected else 0

    async def add(self, pod):
        if not self.connected:
            raise NoZtunnel("no ztunnel connected")
        self.calls.append(("add", pod.uid, pod.info.service_account))

    async def delete(self, uid):
        self.calls.append(("del", uid))


@pytest.fixture
def world(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "ns.yaml").write_text(NS)
    installed = set()
    monkeypatch.setattr(agent_mod.redirect, "install", lambda path, c: installed.add(path))
    monkeypatch.setattr(agent_mod.redirect, "remove", lambda path, c: installed.discard(path))
    monkeypatch.setattr(agent_mod.redirect, "check",
                        lambda path, c: [] if path in installed else ["nft table"])
    netns = tmp_path / "netns"
    netns.mkdir()
    (tmp_path / "run").mkdir()
    opts = AgentOptions(node="n1", config_dir=str(cfg), state_path=str(tmp_path / "state.json"),
                        socket_path=str(tmp_path / "run" / "pluginevent.sock"))
    a = NodeAgent(opts)
    a.zds = FakeZds()
    a.config.poll()
    return a, installed, netns, cfg


def add_req(netns, ns, name, cid=None):
    path = netns / f"{ns}-{name}"
    path.touch()
    return Request(cmd="add", container_id=cid or f"c-{ns}-{name}", netns=str(path),
                   pod_namespace=ns, pod_name=name, ips=("10.0.0.9",))


@pytest.mark.parametrize("ns,name,captured", [("amb", "web", True), ("amb", "opted-out", False),
                                              ("plain", "opted-in", True), ("plain", "db", False),
                                              ("unknown", "x", False)])
async def test_enrollment_rules(world, ns, name, captured):
    a, installed, netns, _ = world
    rep = await a.handle(add_req(netns, ns, name))
    assert rep.ok and rep.enrolled is captured
    assert (str(netns / f"{ns}-{name}") in installed) is captured
    assert bool(a.zds.calls) is captured


async def test_service_account_from_config(world):
    a, _, netns, _ = world
    await a.handle(add_req(netns, "plain", "opted-in"))
    assert a.zds.calls == [("add", "Kubernetes//Pod/plain/opted-in", "special")]


async def test_add_fails_without_ztunnel_and_installs_nothing(world):
    a, installed, netns, _ = world
    a.zds = FakeZds(connected=False)
    rep = await a.handle(add_req(netns, "amb", "web"))
    assert not rep.ok and rep.code == 11 and "no ztunnel" in rep.error
    assert not installed and not a.pods


async def test_add_without_ztunnel_allowed_when_not_required(world):
    a, installed, netns, _ = world
    a.opts = dataclasses.replace(a.opts, require_ztunnel=False)
    a.zds = FakeZds(connected=False)
    rep = await a.handle(add_req(netns, "amb", "web"))
    assert rep.ok and rep.enrolled and installed


async def test_del_idempotent_and_check(world):
    a, installed, netns, _ = world
    req = add_req(netns, "amb", "web")
    await a.handle(req)
    assert (await a.handle(Request(cmd="check", container_id=req.container_id))).ok
    installed.clear()
    rep = await a.handle(Request(cmd="check", container_id=req.container_id))
    assert not rep.ok and rep.code == 101
    for _ in range(2):
        assert (await a.handle(Request(cmd="del", container_id=req.container_id))).ok
    assert ("del", "Kubernetes//Pod/amb/web") in a.zds.calls and not a.pods
    state = orjson.loads(open(a.opts.state_path, "rb").read())
    assert state["pods"] == []


async def test_gc_releases_unlisted(world):
    a, installed, netns, _ = world
    keep, drop = add_req(netns, "amb", "a"), add_req(netns, "amb", "b")
    await a.handle(keep)
    await a.handle(drop)
    await a.handle(Request(cmd="gc", valid=((keep.container_id, "eth0"),)))
    assert set(a.pods) == {keep.container_id}
    assert keep.netns in installed and drop.netns not in installed


async def test_reconcile_follows_labels_and_vanished_netns(world):
    a, installed, netns, cfg = world
    req = add_req(netns, "plain", "db")
    await a.handle(req)
    assert not installed
    (cfg / "ns.yaml").write_text(NS.replace("metadata: {name: plain}",
                                            "metadata: {name: plain, labels: {istio.io/dataplane-mode: ambient}}"))
    os.utime(cfg / "ns.yaml", ns=(1, 1))          # a different mtime for sure
    assert a.config.poll()
    await a.reconcile()
    assert req.netns in installed and a.pods[req.container_id].enrolled
    os.unlink(req.netns)                          # the sandbox vanished without a DEL
    await a.reconcile()
    assert not a.pods and ("del", "Kubernetes//Pod/plain/db") in a.zds.calls


async def test_bad_config_keeps_last_good(world):
    a, _, netns, cfg = world
    (cfg / "bad.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n")
    assert not a.config.poll()
    assert a.config.error and a.config.view.ambient("amb", "web")


async def test_state_survives_restart(world):
    a, installed, netns, _ = world
    req = add_req(netns, "amb", "web")
    await a.handle(req)
    b = NodeAgent(a.opts)
    b._load_state()
    assert b.pods[req.container_id].enrolled and b._snapshot()[0].uid == "Kubernetes//Pod/amb/web"


async def test_excluded_namespaces_never_captured(world):
    a, installed, netns, cfg = world
    (cfg / "sys.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system, labels: {istio.io/dataplane-mode: ambient}}\n"
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system, labels: {istio.io/dataplane-mode: ambient}}\n")
    assert a.poll_config()
    for ns in ("kube-system", "istio-system"):
        rep = await a.handle(add_req(netns, ns, "x"))
        assert rep.ok and not rep.enrolled
    assert not installed and not a.zds.calls


def test_snapshot_lists_what_the_plugin_needs(world):
    a, _, _, _ = world
    a._write_snapshot()
    data = open(os.path.join(a.opts.run_dir, "enrollment"), "rb").read()
    assert data == (b"shoal-enrollment 1\nns amb\npod amb opted-out none\n"
                    b"pod plain opted-in ambient\n")


def test_snapshot_leaves_out_excluded_and_unsafe_names():
    from shoal.cni import enroll
    from shoal.cni.enroll import MeshView, PodFacts
    amb = {"istio.io/dataplane-mode": "ambient"}
    view = MeshView(namespaces={"kube-system": amb, "bad ns": amb, "ok": amb},
                    pods={("ok", "p q"): PodFacts(namespace="ok", name="p q", labels=amb)})
    assert enroll.snapshot(view, frozenset({"kube-system"})) == b"shoal-enrollment 1\nns ok\n"


async def test_pending_add_replayed_when_back(world):
    from shoal.cni import protocol
    a, installed, netns, _ = world
    pending = netns.parent / "run" / "pending"
    pending.mkdir()
    (netns / "pod").touch()
    stdin = orjson.dumps({"cniVersion": "1.0.0", "name": "n", "type": "shoal-cni",
                          "prevResult": {"ips": [{"address": "10.0.0.7/24"}]}})
    for cid, path in (("c-live", netns / "pod"), ("c-gone", netns / "gone")):
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": str(path), "CNI_IFNAME": "eth0",
               "CNI_ARGS": "K8S_POD_NAMESPACE=plain;K8S_POD_NAME=opted-in"}
        (pending / cid).write_bytes(protocol.encode_call(protocol.Call(env=env, stdin=stdin)))
    (pending / "junk").write_bytes(b"garbage")
    await a.replay_pending()
    assert list(pending.iterdir()) == []
    assert set(a.pods) == {"c-live"} and a.pods["c-live"].enrolled
    assert a.pods["c-live"].ips == ("10.0.0.7",) and str(netns / "pod") in installed


def test_unloaded_config_never_replaces_the_snapshot(tmp_path):
    """A restarting agent whose config does not load keeps the last snapshot:
    an empty view then means "unknown", not "nothing is ambient"."""
    cfg, run = tmp_path / "cfg", tmp_path / "run"
    cfg.mkdir()
    run.mkdir()
    (cfg / "bad.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n")
    (run / "enrollment").write_bytes(b"shoal-enrollment 1\nns amb\n")
    a = NodeAgent(AgentOptions(node="n1", config_dir=str(cfg), socket_path=str(run / "pluginevent.sock")))
    assert not a.poll_config() and not a.config.loaded
    assert (run / "enrollment").read_bytes() == b"shoal-enrollment 1\nns amb\n"
    (cfg / "bad.yaml").write_text(NS)
    a.poll_config()
    assert b"ns amb\n" in (run / "enrollment").read_bytes() and b"pod plain opted-in" in (run / "enrollment").read_bytes()


async def test_no_pod_passes_before_the_config_is_loaded(tmp_path, monkeypatch):
    """Not knowing the labels is not "not ambient": ADDs wait (code 11),
    except in excluded namespaces."""
    cfg, run, netns = tmp_path / "cfg", tmp_path / "run", tmp_path / "netns"
    for d in (cfg, run, netns):
        d.mkdir()
    (cfg / "bad.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n")
    a = NodeAgent(AgentOptions(node="n1", config_dir=str(cfg), socket_path=str(run / "pluginevent.sock"),
                               state_path=str(tmp_path / "state.json")))
    a.zds = FakeZds()
    rep = await a.handle(add_req(netns, "plain", "db"))
    assert not rep.ok and rep.code == 11 and "not loaded" in rep.error and not a.pods
    assert (await a.handle(add_req(netns, "kube-system", "coredns"))).ok
    (cfg / "bad.yaml").write_text(NS)
    assert (await a.handle(add_req(netns, "plain", "db"))).ok
