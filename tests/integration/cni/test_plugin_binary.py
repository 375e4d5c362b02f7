"""The shoal-cni binary (C) against the real node agent process: forwarding,
the agent-down safety rules, and its own config scanner, byte for byte.

Pods here are not ambient-captured (that needs netns and nft: tests/e2e/cni);
what is checked is what the binary decides and relays."""

import os
import socket

import orjson
import pytest

from shoal.cni import protocol, spec
from tests.helpers.cni_agent import run_plugin, start_agent, wait_for
from tests.helpers.manifests import NAMESPACES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CONFIG = NAMESPACES + """---
apiVersion: v1
kind: Pod
metadata: {name: opted-in, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: amb, labels: {istio.io/dataplane-mode: none}}
spec: {containers: [{name: c}]}
"""
# Pretty-printed on purpose: a passed-through prevResult must come out byte
# for byte, and the wire framing must survive newlines in stdin.
PREV = (b'{\n  "cniVersion": "1.0.0",\n  "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],\n'
        b'  "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 0}]\n}')


def conf(run_dir, version="1.0.0", prev=PREV, **extra):
    body = orjson.dumps({"cniVersion": version, "name": "k8s-pod-network", "type": "shoal-cni",
                         "cni_agent_run_dir": run_dir, "exclude_namespaces": ["istio-system"],
                         **extra})
    return body[:-1] + b',\n "prevResult": ' + prev + b"}\n" if prev else body


def env(cmd, ns="plain", name="db", cid="c0ffee", **extra):
    e = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none",
         "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
         "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"}
    e.update(extra)
    return e


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    cfg = tmp_path / "cfg"
    d.mkdir()
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(CONFIG)
    return str(d), str(cfg)


def error_of(rc, out):
    assert rc == 1, out
    return orjson.loads(out)


def test_version_is_the_agents_list_even_without_it(run_dir):
    rc, out = run_plugin({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert (rc, out) == (0, spec.encode_version_info())


def test_forwards_to_the_agent_and_relays_its_answer(run_dir):
    d, cfg = run_dir
    agent = start_agent(d, cfg)
    try:
        rc, out = run_plugin(env("ADD"), conf(d))
        assert (rc, out) == (0, orjson.dumps(orjson.loads(PREV)) + b"\n")   # the agent's encoding
        state = orjson.loads(open(os.path.join(d, "state.json"), "rb").read())
        assert [(p["namespace"], p["name"], p["ips"]) for p in state["pods"]] == \
            [("plain", "db", ["10.88.0.5"])]
        # The agent's errors come back verbatim: version negotiation is its job.
        err = error_of(*run_plugin(env("ADD"), conf(d, version="0.2.0")))
        assert err["code"] == 1 and err["msg"] == "incompatible CNI versions"
        assert run_plugin({"CNI_COMMAND": "STATUS"}, conf(d, version="1.1.0", prev=None)) == (0, b"")
        assert run_plugin(env("DEL"), conf(d)) == (0, b"")
        assert orjson.loads(open(os.path.join(d, "state.json"), "rb").read())["pods"] == []
    finally:
        agent.stop()


def test_agent_down_passes_only_what_is_not_enrolled(run_dir):
    d, cfg = run_dir
    agent = start_agent(d, cfg)
    agent.stop()                   # it leaves its enrollment snapshot behind
    assert not os.path.exists(os.path.join(d, protocol.SOCKET_NAME))
    snap = open(os.path.join(d, protocol.SNAPSHOT_NAME), "rb").read()
    assert snap.startswith(b"shoal-enrollment 1\n") and b"ns amb\n" in snap

    # Not enrolled: prevResult exactly as received, and journalled for the agent.
    for ns, name in (("plain", "db"), ("amb", "opted-out")):
        rc, out = run_plugin(env("ADD", ns, name, cid=f"c-{name}"), conf(d))
        assert (rc, out) == (0, PREV + b"\n"), out
    assert sorted(os.listdir(os.path.join(d, protocol.PENDING_DIR))) == ["c-db", "c-opted-out"]
    # Enrolled (namespace label, or the pod's own label): a clear error 11.
    for ns, name in (("amb", "web"), ("plain", "opted-in")):
        err = error_of(*run_plugin(env("ADD", ns, name), conf(d)))
        assert err["code"] == 11 and err["cniVersion"] == "1.0.0"
        assert err["msg"] == "node agent unreachable; pod in the ambient mesh not started"
        assert f"pod {ns}/{name}" in err["details"] and "pluginevent.sock" in err["details"]
    # CHECK follows the same rule; DEL always succeeds and drops the journal entry.
    assert run_plugin(env("CHECK", cid="c-db"), conf(d)) == (0, b"")
    assert error_of(*run_plugin(env("CHECK", "amb", "web"), conf(d)))["code"] == 11
    assert run_plugin(env("DEL", cid="c-db"), conf(d)) == (0, b"")
    assert os.listdir(os.path.join(d, protocol.PENDING_DIR)) == ["c-opted-out"]
    assert run_plugin(env("DEL", "amb", "web"), conf(d)) == (0, b"")
    assert error_of(*run_plugin({"CNI_COMMAND": "STATUS"}, conf(d, "1.1.0", prev=None)))["code"] == 50
    assert run_plugin({"CNI_COMMAND": "GC"}, conf(d, "1.1.0", prev=None)) == (0, b"")


def test_no_snapshot_fails_closed_but_system_namespaces_pass(tmp_path):
    d = str(tmp_path)
    err = error_of(*run_plugin(env("ADD"), conf(d)))
    assert err["code"] == 11 and "enrollment unknown" in err["msg"]
    assert "no enrollment snapshot" in err["details"]
    for ns in ("kube-system", "istio-system"):     # built in; from exclude_namespaces
        assert run_plugin(env("ADD", ns, "coredns"), conf(d)) == (0, PREV + b"\n")
    rc, out = run_plugin(env("ADD", "kube-system", "x"), conf(d, prev=None))
    assert rc == 0 and orjson.loads(out) == spec.empty_result("1.0.0")


def test_stale_socket_counts_as_agent_down(run_dir):
    d, cfg = run_dir
    start_agent(d, cfg).stop()
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(d, protocol.SOCKET_NAME))       # bound, never listening: ECONNREFUSED
    try:
        assert run_plugin(env("ADD"), conf(d)) == (0, PREV + b"\n")
        err = error_of(*run_plugin(env("ADD", "amb", "web"), conf(d)))
        assert err["code"] == 11 and "Connection refused" in err["details"]
    finally:
        s.close()


def test_silent_agent_times_out(tmp_path):
    d = str(tmp_path)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(os.path.join(d, protocol.SOCKET_NAME))
    srv.listen(1)                  # accepts (backlog), never answers
    try:
        err = error_of(*run_plugin({"CNI_COMMAND": "STATUS"}, conf(d, "1.1.0", prev=None)))
        assert err["code"] == 50 and "no answer within" in err["details"]
    finally:
        srv.close()


def test_pending_add_reaches_the_agent_once_back(run_dir):
    d, cfg = run_dir
    start_agent(d, cfg).stop()
    netns = os.path.join(d, "netns-of-pod")
    open(netns, "w").close()       # stands for the sandbox's netns path
    assert run_plugin(env("ADD", CNI_NETNS=netns), conf(d))[0] == 0
    agent = start_agent(d, cfg)
    try:
        state = os.path.join(d, "state.json")
        # The agent takes the pending file before it serves the ADD and
        # writes its state after: an empty pending/ does not mean the state
        # file exists yet, so both are polled with the file's absence as "not yet".
        wait_for(lambda: not os.listdir(os.path.join(d, protocol.PENDING_DIR)), what="replay")
        wait_for(lambda: [p["name"] for p in orjson.loads(open(state, "rb").read())["pods"]] == ["db"],
                 what="pod recorded", retry_on=(FileNotFoundError,))
    finally:
        agent.stop()


@pytest.mark.parametrize("bad", [
    b"", b"[]", b"{", b'{"cniVersion":"1.0.0",}', b'{"a":tru}', b'{"a":"\x01"}', b'{"a":"\\x"}',
    b'{"a":01}', b'{"a":1.}', b'{"a":"\\ud800"} x', b'{"a":1} {}', b"\xff",
    b"[" * 70 + b"]" * 70, b'{"a":' + b"[" * 70 + b"]" * 70 + b"}"])
def test_malformed_config_is_code_6_and_del_still_succeeds(bad, tmp_path):
    err = error_of(*run_plugin(env("ADD", "kube-system"), bad))
    assert err["code"] == 6 and err["msg"] == "cannot decode network config"
    rc, out = run_plugin(env("DEL", "kube-system"), bad)
    assert (rc, out) == (0, b"")


@pytest.mark.parametrize("bad", [
    b'{"cniVersion":1}', b'{"cni_agent_run_dir":""}', b'{"exclude_namespaces":"kube-system"}',
    b'{"exclude_namespaces":[1]}', b'{"prevResult":[]}', b'{"cni_agent_run_dir":"\\u0000"}',
    b'{"exclude_namespaces":[' + b",".join([b'"n"'] * 65) + b"]}"])
def test_invalid_keys_are_code_7(bad, tmp_path):
    err = error_of(*run_plugin(env("ADD", "kube-system"), bad))
    assert err["code"] == 7 and err["msg"] == "invalid network config"


def test_config_scanner_accepts_what_json_allows(run_dir):
    """Escapes, nesting below the limit, numbers, unknown keys: read correctly
    (the escaped run dir must lead to the real agent)."""
    d, cfg = run_dir
    agent = start_agent(d, cfg)
    try:
        escaped = d.replace("/", "\\/").replace("run", "r\\u0075n").encode()
        body = (b'{"cniVersion":"1.0.0","name":"n","type":"shoal-cni","n":[-0.5e+3,0,1E2,true,false,null],'
                b'"deep":' + b"[" * 60 + b"]" * 60 + b',"s":"\\ud83d\\ude00\\"\\\\\\b\\f\\n\\r\\t",'
                b'"cni_agent_run_dir":"' + escaped + b'"}')
        assert run_plugin({"CNI_COMMAND": "STATUS"}, body.replace(b"1.0.0", b"1.1.0")) == (0, b"")
    finally:
        agent.stop()


@pytest.mark.parametrize("cmd,missing", [("ADD", "CNI_NETNS"), ("ADD", "CNI_IFNAME"),
                                         ("CHECK", "CNI_CONTAINERID")])
def test_missing_env_is_code_4(cmd, missing, tmp_path):
    e = env(cmd)
    del e[missing]
    err = error_of(*run_plugin(e, conf(str(tmp_path))))
    assert err["code"] == 4 and err["details"] == missing


def test_unknown_command_and_bad_args_are_code_4(tmp_path):
    assert error_of(*run_plugin({"CNI_COMMAND": "FROB"}, b"{}"))["code"] == 4
    assert error_of(*run_plugin(env("ADD", CNI_ARGS="A=1;oops"), conf(str(tmp_path))))["code"] == 4
