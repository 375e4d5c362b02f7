"""cni.spec: the CNI 1.1 contract, byte for byte."""

import orjson
import pytest

import asyncio

from shoal.cni import plugin, spec
from shoal.cni.plugin import OpResult
from shoal.cni.spec import CniError, Command, ErrorCode


class Agent:
    """The handler plugin.serve calls: records ops, answers as told."""

    def __init__(self, result=OpResult(ok=True)):
        self.result, self.ops = result, []

    async def __call__(self, op):
        self.ops.append(op)
        return self.result


def run(env, stdin, agent=None):
    return asyncio.run(plugin.serve(agent or Agent(), env, stdin))

PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 0}]}


def conf(version="1.0.0", **extra):
    return orjson.dumps({"cniVersion": version, "name": "mesh", "type": "shoal-cni",
                         "cni_agent_run_dir": "/nonexistent-shoal", **extra})


def env(cmd, **extra):
    e = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
         "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni:/opt/cni/bin",
         "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bookinfo;K8S_POD_NAME=ratings-0"}
    e.update(extra)
    return e


def test_version_output_bytes():
    status, out = run({"CNI_COMMAND": "VERSION"}, b"")
    assert status == 0
    assert out == (b'{"cniVersion":"1.1.0","supportedVersions":'
                   b'["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n')


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_negotiated_versions_accepted(version):
    inv = spec.parse_invocation(env("ADD"), conf(version))
    assert inv.version == version and inv.command is Command.ADD


def test_incompatible_version_is_code_1_on_stdout():
    status, out = run(env("ADD"), conf("0.2.0"))
    assert status == 1
    obj = orjson.loads(out)
    assert obj["code"] == 1 and obj["msg"] == "incompatible CNI versions"
    assert "0.2.0" in obj["details"]


def test_status_needs_1_1_0():
    with pytest.raises(CniError) as e:
        spec.parse_invocation({"CNI_COMMAND": "STATUS"}, conf("1.0.0"))
    assert e.value.code == ErrorCode.INCOMPATIBLE_VERSION


def test_check_needs_0_4_0():
    with pytest.raises(CniError) as e:
        spec.parse_invocation(env("CHECK"), conf("0.3.1"))
    assert e.value.code == 1


def test_error_bytes_exact():
    err = CniError(ErrorCode.INVALID_ENV, "bad", "why")
    assert spec.encode_error(err, "1.0.0") == b'{"cniVersion":"1.0.0","code":4,"msg":"bad","details":"why"}\n'
    assert spec.encode_error(CniError(7, "x")) == b'{"cniVersion":"1.1.0","code":7,"msg":"x"}\n'


def test_unknown_command_is_code_4():
    status, out = run({"CNI_COMMAND": "FROB"}, conf())
    assert status == 1 and orjson.loads(out)["code"] == 4


@pytest.mark.parametrize("cmd,missing", [("ADD", "CNI_NETNS"), ("ADD", "CNI_IFNAME"),
                                         ("CHECK", "CNI_CONTAINERID"), ("DEL", "CNI_IFNAME")])
def test_missing_env_is_code_4(cmd, missing):
    e = env(cmd)
    del e[missing]
    with pytest.raises(CniError) as ei:
        spec.parse_invocation(e, conf())
    assert ei.value.code == 4 and missing in ei.value.msg


def test_del_without_netns_is_valid():
    e = env("DEL")
    del e["CNI_NETNS"]
    inv = spec.parse_invocation(e, conf())
    assert inv.command is Command.DEL and inv.netns == ""


def test_decode_failure_is_code_6():
    for bad in (b"{", b"[]", b"\xff"):
        with pytest.raises(CniError) as e:
            spec.parse_invocation(env("ADD"), bad)
        assert e.value.code == 6


def test_invalid_config_is_code_7():
    for bad in (b'{"cniVersion":"1.0.0","type":"x"}', b'{"name":"n","type":"x"}',
                conf(prevResult=[1]), conf(exclude_namespaces="kube-system")):
        with pytest.raises(CniError) as e:
            spec.parse_invocation(env("ADD"), bad)
        assert e.value.code == 7


def test_oversized_config_refused():
    with pytest.raises(CniError) as e:
        spec.parse_config(b" " * (spec.MAX_CONFIG_BYTES + 1))
    assert e.value.code == 6


def test_cni_args_parsing():
    assert spec.parse_cni_args("A=1;B=;K8S_POD_NAME=p=q") == {"A": "1", "B": "", "K8S_POD_NAME": "p=q"}
    assert spec.parse_cni_args("") == {}
    assert spec.parse_cni_args("A=1;;B=2") == {"A": "1", "B": "2"}
    with pytest.raises(CniError) as e:
        spec.parse_cni_args("A=1;oops")
    assert e.value.code == 4


def test_pod_identity_from_args():
    inv = spec.parse_invocation(env("ADD"), conf())
    assert (inv.pod_namespace, inv.pod_name) == ("bookinfo", "ratings-0")


def test_add_excluded_namespace_echoes_prev_result_unchanged():
    raw = conf(prevResult=PREV, exclude_namespaces=["bookinfo"])
    status, out = run(env("ADD"), raw)
    assert status == 0
    assert orjson.loads(out) == PREV
    assert out == orjson.dumps(PREV) + b"\n"


def test_add_refused_by_agent_is_its_code():
    agent = Agent(OpResult(ok=False, code=11, error="no ztunnel connected"))
    status, out = run(env("ADD"), conf(prevResult=PREV), agent)
    assert status == 1
    obj = orjson.loads(out)
    assert obj == {"cniVersion": "1.0.0", "code": 11, "msg": "node agent did not enroll the pod",
                   "details": "no ztunnel connected"}
    op = agent.ops[0]
    assert (op.cmd, op.pod_namespace, op.pod_name, op.ips) == ("add", "bookinfo", "ratings-0",
                                                               ("10.88.0.5",))


def test_add_accepted_echoes_prev_result():
    status, out = run(env("ADD"), conf(prevResult=PREV))
    assert (status, out) == (0, orjson.dumps(PREV) + b"\n")


def test_kube_system_never_reaches_the_agent():
    agent = Agent(OpResult(ok=False, code=11))
    e = env("ADD", CNI_ARGS="K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns")
    assert run(e, conf(prevResult=PREV), agent) == (0, orjson.dumps(PREV) + b"\n")
    assert agent.ops == []


def test_del_always_succeeds():
    agent = Agent(OpResult(ok=False, code=999))
    assert run(env("DEL"), conf(prevResult=PREV), agent) == (0, b"")
    assert run(env("DEL"), b"not json", agent) == (0, b"")       # even a bad config


def test_status_not_ready_is_50():
    status, out = run({"CNI_COMMAND": "STATUS"}, conf("1.1.0"), Agent(OpResult(ok=False)))
    assert status == 1 and orjson.loads(out)["code"] == 50


def test_gc_forwards_valid_attachments():
    raw = conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    inv = spec.parse_invocation({"CNI_COMMAND": "GC"}, raw)
    assert spec.gc_valid_attachments(inv.config) == [("c1", "eth0")]
    agent = Agent()
    assert run({"CNI_COMMAND": "GC"}, raw, agent) == (0, b"")
    assert agent.ops[0].valid == (("c1", "eth0"),)


def test_gc_spec_key_fallback():
    raw = conf("1.1.0", **{"cni.dev/attachments": [{"containerID": "c2", "ifname": "eth1"}]})
    assert spec.gc_valid_attachments(spec.parse_config(raw)) == [("c2", "eth1")]


def test_pod_ips_from_prev_result():
    assert spec.pod_ips(PREV) == ["10.88.0.5"]
    assert spec.pod_ips(None) == []
    assert spec.pod_ips({"ips": [{"address": "fd00::5/64"}, {"bogus": 1}]}) == ["fd00::5"]


def test_add_first_in_chain_prints_empty_result():
    status, out = run(env("ADD"), conf())
    assert status == 0
    assert orjson.loads(out) == {"cniVersion": "1.0.0", "interfaces": [], "ips": [], "routes": [],
                                 "dns": {}}


def test_spec_is_pure():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(spec))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                  if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"socket", "asyncio", "os", "signal", "mmap", "subprocess"}


def test_version_ignores_libcni_probe_stdin():
    status, out = run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert status == 0 and b"supportedVersions" in out
