"""cni.conflist: chaining shoal-cni into the CNI configs real clusters have,
byte for byte; which file the runtime uses; malformed files left alone."""

import json

import pytest

from shoal.cni import conflist
from shoal.cni.conflist import ConfError, Rewrite

OURS = conflist.entry(agent_run_dir="/var/run/shoal-cni", exclude_namespaces=("kube-system", "istio-system"))
OURS_BYTES = (b'    {\n      "name": "shoal-cni",\n      "type": "shoal-cni",\n'
              b'      "cni_agent_run_dir": "/var/run/shoal-cni",\n'
              b'      "exclude_namespaces": [\n        "kube-system",\n        "istio-system"\n      ]\n    }')

# As the CNI installers of these projects write them (trimmed of nothing that matters).
CALICO = b'''{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "datastore_type": "kubernetes", "mtu": 0,
     "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"},
     "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
'''
FLANNEL = b'''{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
'''
FLANNEL_CONF = b'{"name":"cbr0","cniVersion":"0.3.1","type":"flannel","delegate":{"isDefaultGateway":true}}\n'
CILIUM = b'''{
  "cniVersion": "0.3.1",
  "name": "cilium",
  "plugins": [
    {"type": "cilium-cni", "enable-debug": false, "log-file": "/var/run/cilium/cilium-cni.log"}
  ]
}
'''
CILIUM_CHAINED = b'''{
  "cniVersion": "0.3.1",
  "name": "generic-veth",
  "plugins": [
    {"type": "ptp", "ipMasq": true, "ipam": {"type": "host-local", "subnet": "10.10.0.0/16"}},
    {"type": "cilium-cni"}
  ]
}
'''
KINDNET = b'''{
	"cniVersion": "0.3.1",
	"name": "kindnet",
	"plugins": [
	{
		"type": "ptp",
		"ipMasq": false,
		"ipam": {
			"type": "host-local",
			"dataDir": "/run/cni-ipam-state",
			"routes": [{"dst": "0.0.0.0/0"}],
			"ranges": [[{"subnet": "10.244.0.0/24"}]]
		},
		"mtu": 1500
	},
	{
		"type": "portmap",
		"capabilities": {"portMappings": true}
	}
	]
}
'''


def chained(original: bytes) -> bytes:
    obj = json.loads(original)
    return json.dumps({**obj, "plugins": [*obj["plugins"], OURS]}, indent=2).encode() + b"\n"


@pytest.mark.parametrize("name,data", [("10-calico.conflist", CALICO), ("10-flannel.conflist", FLANNEL),
                                       ("05-cilium.conflist", CILIUM),
                                       ("05-cilium-chained.conflist", CILIUM_CHAINED),
                                       ("10-kindnet.conflist", KINDNET)])
def test_conflists_get_shoal_appended_last(name, data):
    rw = conflist.insert(name, data, OURS)
    assert rw == Rewrite(name=name, data=chained(data))
    assert rw.data.endswith(OURS_BYTES + b"\n  ]\n}\n")
    assert json.loads(rw.data)["plugins"][:-1] == json.loads(data)["plugins"]   # the rest untouched
    assert conflist.insert(name, rw.data, OURS) is None                         # already present
    assert conflist.has_entry(name, rw.data) and not conflist.has_entry(name, data)
    back = conflist.remove(name, rw.data)
    assert json.loads(back.data) == json.loads(data) and back.name == name
    assert conflist.remove(name, data) is None


def test_single_conf_becomes_a_conflist():
    rw = conflist.insert("10-flannel.conf", FLANNEL_CONF, OURS)
    assert rw.name == "10-flannel.conflist" and rw.remove == "10-flannel.conf"
    assert rw.data == (b'{\n  "cniVersion": "0.3.1",\n  "name": "cbr0",\n  "plugins": [\n    {\n'
                       b'      "name": "cbr0",\n      "cniVersion": "0.3.1",\n      "type": "flannel",\n'
                       b'      "delegate": {\n        "isDefaultGateway": true\n      }\n    },\n'
                       + OURS_BYTES + b"\n  ]\n}\n")
    assert conflist.insert(rw.name, rw.data, OURS) is None


def test_json_extension_is_a_single_conf_too():
    rw = conflist.insert("99-loopback.json", b'{"cniVersion":"1.0.0","name":"lo","type":"loopback"}', OURS)
    assert rw.name == "99-loopback.conflist" and rw.remove == "99-loopback.json"


def test_stale_or_misplaced_entry_is_replaced_by_one_last_entry():
    obj = json.loads(CALICO)
    old = {**OURS, "cni_agent_run_dir": "/old"}
    misplaced = json.dumps({**obj, "plugins": [old, *obj["plugins"], OURS]}).encode()
    rw = conflist.insert("10-calico.conflist", misplaced, OURS)
    assert rw.data == chained(CALICO)


def test_primary_is_the_lexically_first_usable_file():
    files = {"20-other.conflist": CALICO, "10-flannel.conf": FLANNEL_CONF, "05-cilium.conflist": CILIUM,
             "00-notes.txt": b"not a config", ".05-hidden.conflist": CILIUM,
             "01-broken.conflist": b'{"name": "x", "plugins": [',
             "02-empty.conflist": b'{"cniVersion":"0.3.1","name":"e","plugins":[]}',
             "03-notype.conf": b'{"cniVersion":"0.3.1","name":"e"}'}
    name, errors = conflist.primary(files)
    assert name == "05-cilium.conflist"
    assert [e.split(":")[0] for e in errors] == ["01-broken.conflist", "02-empty.conflist", "03-notype.conf"]
    assert conflist.primary({"a.conflist": b"[]"}) == (None, ["a.conflist: not a JSON object"])
    assert conflist.candidates(["b.conf", "a.json", "c.conflist", "d.yaml", ".e.conf"]) == \
        ["a.json", "b.conf", "c.conflist"]


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"\xff\xfe", b'{"plugins": "x"}',
                                  b'{"plugins": [{"name": "no type"}]}', b'{"plugins": [1]}',
                                  b" " * (conflist.MAX_CONF_BYTES + 1)])
def test_malformed_is_an_error_never_a_rewrite(data):
    with pytest.raises(ConfError):
        conflist.insert("10-x.conflist", data, OURS)
    with pytest.raises(ConfError):
        conflist.remove("10-x.conflist", data)
    assert not conflist.has_entry("10-x.conflist", data)


def test_a_list_of_only_us_is_not_a_network_to_restore():
    with pytest.raises(ConfError):
        conflist.remove("x.conflist", b'{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"shoal-cni"}]}')
