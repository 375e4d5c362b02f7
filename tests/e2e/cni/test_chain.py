"""shoal-cni chained after the real bridge + host-local plugins, invoked as a
runtime does, with the real node agent and a ZDS client standing in for
ztunnel: capture on ADD, CHECK, idempotent DEL, agent restart, live
enrollment and release."""

import os
import random
import socket
import subprocess

import pytest

from shoal.cni import chain, redirect
from shoal.core.netns import in_netns, open_netns
from tests.helpers.cni_agent import CNI_PATH, agent_state, events, start_agent, start_fake_ztunnel
from tests.helpers.wait import wait_for
from tests.helpers.cni_netns import sh, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

NS_YAML = """apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels: {labels}
"""


def write_ns(config_dir, name, ambient):
    labels = '{"istio.io/dataplane-mode": "ambient"}' if ambient else "{}"
    with open(os.path.join(config_dir, f"ns-{name}.yaml"), "w") as f:
        f.write(NS_YAML.format(name=name, labels=labels))


@pytest.fixture
def env(tmp_path):
    run_dir = str(tmp_path / "run")
    cfg = str(tmp_path / "config")
    os.makedirs(run_dir)
    os.makedirs(cfg)
    write_ns(cfg, "amb", True)
    write_ns(cfg, "plain", False)
    octet = random.randint(16, 250)
    br = unique("shb")
    conf = chain.conflist("shoal-test", bridge=br, subnet=f"10.{octet}.7.0/24",
                          gateway=f"10.{octet}.7.1", ipam_dir=str(tmp_path / "ipam"),
                          agent_run_dir=run_dir)
    netns = []
    procs = []
    ctx = dict(run_dir=run_dir, cfg=cfg, conf=conf, netns=netns, procs=procs, gw=f"10.{octet}.7.1")
    try:
        yield ctx
    finally:
        for p in procs:
            p.stop()
        for n in netns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)


def new_pod(ctx, namespace, name):
    ns = unique("scp")
    sh("ip", "netns", "add", ns)
    ctx["netns"].append(ns)
    return chain.Attachment(container_id=unique("cid"), netns=f"/run/netns/{ns}",
                            args={"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": namespace,
                                  "K8S_POD_NAME": name})


def connect_from(att, host, port):
    fd = open_netns(att.netns)
    try:
        with in_netns(fd):
            s = socket.socket()
    finally:
        os.close(fd)
    s.settimeout(5)
    s.connect((host, port))
    data = s.makefile("rb").readline()
    s.close()
    return data.decode().strip()


def test_ambient_pod_captured_through_real_chain(env):
    agent = start_agent(env["run_dir"], env["cfg"])
    env["procs"].append(agent)
    zt, zevents = start_fake_ztunnel(env["run_dir"])
    env["procs"].append(zt)
    wait_for(lambda: any(e["type"] == "snapshot" for e in events(zevents)), what="ztunnel snapshot")

    att = new_pod(env, "amb", "web-0")
    result = chain.add(env["conf"], att, CNI_PATH)
    # shoal-cni passed bridge/host-local's result through unchanged.
    assert result["ips"][0]["address"].startswith(env["gw"].rsplit(".", 1)[0])
    assert any(i.get("sandbox") == att.netns for i in result["interfaces"])
    assert {"type": "add", "uid": "Kubernetes//Pod/amb/web-0", "sa": "default"} in events(zevents)
    st = agent_state(env["run_dir"])["pods"]
    assert st[0]["enrolled"] and st[0]["ips"] == [result["ips"][0]["address"].split("/")[0]]
    # Any outbound connection lands on the in-pod 15001 listener.
    assert connect_from(att, "198.51.100.9", 8080) == "orig=198.51.100.9:8080"
    chain.check(env["conf"], att, CNI_PATH, result)
    # Someone flushed the rules: CHECK says so with our code.
    sh("nsenter", f"--net={att.netns}", "nft", "delete", "table", "inet", "shoal-ambient")
    with pytest.raises(chain.ChainError) as e:
        chain.check(env["conf"], att, CNI_PATH, result)
    assert e.value.code == 101 and "nft table" in e.value.details
    redirect.install(att.netns)

    assert chain.delete(env["conf"], att, CNI_PATH, result) == []
    assert redirect.check(att.netns)            # rules gone
    assert {"type": "del", "uid": "Kubernetes//Pod/amb/web-0"} in events(zevents)
    assert chain.delete(env["conf"], att, CNI_PATH, result) == []   # idempotent
    sh("ip", "netns", "del", att.netns.rsplit("/", 1)[1])
    # netns gone: still fine (bridge/host-local too).
    assert chain.delete(env["conf"], att, CNI_PATH, result) == []


def test_plain_pod_not_captured_and_add_fails_without_agent(env):
    agent = start_agent(env["run_dir"], env["cfg"])
    env["procs"].append(agent)
    chain.status({**env["conf"], "cniVersion": "1.1.0"}, CNI_PATH)   # agent up: ready
    att = new_pod(env, "plain", "db-0")
    result = chain.add(env["conf"], att, CNI_PATH)       # no ztunnel needed: not ambient
    assert redirect.check(att.netns)                      # nothing installed
    assert agent_state(env["run_dir"])["pods"][0]["enrolled"] is False
    chain.delete(env["conf"], att, CNI_PATH, result)

    # Ambient pod but no ztunnel: the ADD fails and the chain is rolled back.
    amb = new_pod(env, "amb", "web-1")
    with pytest.raises(chain.ChainError) as e:
        chain.add(env["conf"], amb, CNI_PATH)
    assert e.value.plugin == "shoal-cni" and e.value.code == 11
    assert "no ztunnel connected" in e.value.details
    assert redirect.check(amb.netns)

    agent.stop()
    with pytest.raises(chain.ChainError) as e:
        chain.add(env["conf"], amb, CNI_PATH)
    assert e.value.code == 11 and "node agent unreachable" in e.value.msg
    # STATUS is CNI 1.1 (Debian's bridge stops at 1.0.0, so ask ours alone).
    conf11 = {**env["conf"], "cniVersion": "1.1.0"}
    with pytest.raises(chain.ChainError) as e:
        chain.status(conf11, CNI_PATH)
    assert e.value.code == 50


def test_agent_restart_reconciles_and_live_enrollment(env):
    agent = start_agent(env["run_dir"], env["cfg"])
    env["procs"].append(agent)
    zt, zevents = start_fake_ztunnel(env["run_dir"])
    env["procs"].append(zt)
    wait_for(lambda: any(e["type"] == "snapshot" for e in events(zevents)), what="snapshot")
    amb = new_pod(env, "amb", "web-0")
    plain = new_pod(env, "plain", "app-0")
    r_amb = chain.add(env["conf"], amb, CNI_PATH)
    chain.add(env["conf"], plain, CNI_PATH)

    # Agent restart: the captured pod stays captured, ztunnel gets a new snapshot.
    agent.stop()
    assert redirect.check(amb.netns) == []
    agent2 = start_agent(env["run_dir"], env["cfg"])
    env["procs"].append(agent2)
    wait_for(lambda: [e["type"] for e in events(zevents)].count("snapshot") == 2, what="resync")
    evs = events(zevents)
    last = len(evs) - 1 - [e["type"] for e in reversed(evs)].index("snapshot")
    assert {"type": "add", "uid": "Kubernetes//Pod/amb/web-0", "sa": "default"} in evs[:last]
    assert connect_from(amb, "203.0.113.5", 443) == "orig=203.0.113.5:443"
    chain.check(env["conf"], amb, CNI_PATH, r_amb)

    # A pod deleted while the agent was away is forgotten on reconcile.
    # Label the plain namespace ambient: its running pod gets captured live.
    write_ns(env["cfg"], "plain", True)
    wait_for(lambda: redirect.check(plain.netns) == [], what="live enrollment")
    wait_for(lambda: {"type": "add", "uid": "Kubernetes//Pod/plain/app-0", "sa": "default"}
             in events(zevents), what="zds add")
    # Remove the label: released, ztunnel told.
    write_ns(env["cfg"], "plain", False)
    wait_for(lambda: redirect.check(plain.netns) != [], what="release")
    wait_for(lambda: {"type": "del", "uid": "Kubernetes//Pod/plain/app-0"} in events(zevents),
             what="zds del")

    # Pod whose netns vanished without a DEL: dropped on reconcile.
    sh("ip", "netns", "del", amb.netns.rsplit("/", 1)[1])
    wait_for(lambda: all(p["name"] != "web-0" for p in agent_state(env["run_dir"])["pods"]),
             what="vanished pod dropped")
