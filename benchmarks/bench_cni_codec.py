"""CPU cost of the CNI plugin's and node agent's pure codecs (per call)."""

import orjson

from shoal.cni import protocol, redirect, spec
from shoal.core import zds

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "0123456789abcdef", "CNI_NETNS": "/run/netns/pod",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bookinfo;K8S_POD_NAME=reviews-v1-0"}
CONF = orjson.dumps({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "shoal-cni",
                     "cni_agent_run_dir": "/var/run/shoal-cni",
                     "prevResult": {"cniVersion": "1.0.0",
                                    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
                                    "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1",
                                             "interface": 0}]}})
ADD = zds.encode(zds.Add(uid="Kubernetes//Pod/bookinfo/reviews-v1-0",
                         info=zds.WorkloadInfo(name="reviews-v1-0", namespace="bookinfo",
                                               service_account="bookinfo-reviews")))


def test_cni_parse_add_invocation(benchmark):
    inv = benchmark(spec.parse_invocation, ENV, CONF)
    assert inv.pod_name == "reviews-v1-0"


def test_cni_agent_request_roundtrip(benchmark):
    call = protocol.Call(env=ENV, stdin=CONF)
    out = benchmark(lambda: protocol.decode_call(protocol.encode_call(call)))
    assert out == call


def test_cni_zds_add_decode(benchmark):
    msg = benchmark(zds.decode, ADD, 1)
    assert isinstance(msg, zds.Add)


def test_cni_redirect_ruleset(benchmark):
    text = benchmark(redirect.ruleset)
    assert "redirect to :15001" in text
