"""/config_dump in ztunnel's layout: the field names and values istioctl reads
(istioctl/pkg/writer/ztunnel/configdump/api.go; ztunnel src/state/*.rs,
src/rbac.rs, src/admin.rs)."""

from __future__ import annotations

from shoal.core.records import Authorization, Condition, Operation, Rule, Source, TargetRef
from shoal.ztunnel.configdump import policy_json, ztunnel_dump
from tests.unit.ztunnel.conftest import make_view

# Every key of api.go's ZtunnelWorkload that ztunnel always sets.
WORKLOAD_KEYS = {"uid", "workloadIps", "protocol", "name", "namespace", "serviceAccount",
                 "workloadName", "workloadType", "canonicalName", "canonicalRevision",
                 "clusterId", "trustDomain", "node", "status"}
SERVICE_KEYS = {"name", "namespace", "hostname", "vips", "ports", "endpoints", "ipFamilies"}


def test_workloads_and_services_have_ztunnel_fields():
    d = ztunnel_dump(make_view(), "Kubernetes")
    by_name = {w["name"]: w for w in d["workloads"]}
    a = by_name["server-a"]
    assert WORKLOAD_KEYS <= set(a)
    assert a["workloadIps"] == ["10.0.1.1"] and a["status"] == "Healthy"
    assert a["protocol"] == "HBONE" and a["clusterId"] == "Kubernetes"
    assert by_name["server-sick"]["status"] == "Unhealthy"
    # A waypoint is a GatewayAddress naming its Service's VIP as "network/ip".
    assert by_name["behind"]["waypoint"] == {"destination": "/10.96.0.20", "hboneMtlsPort": 15008}
    echo = next(s for s in d["services"] if s["name"] == "echo")
    assert SERVICE_KEYS <= set(echo)
    assert echo["vips"] == ["/10.96.0.10"] and echo["ports"] == {"80": 8080}
    assert echo["ipFamilies"] == "IPv4"
    ep = echo["endpoints"]["Kubernetes//Pod/default/server-a:/10.0.1.1"]
    assert ep["workloadUid"] == "Kubernetes//Pod/default/server-a"
    assert ep["service"] == "default/echo.default.svc.cluster.local"


def pol(rules, action="DENY", **kw):
    return Authorization(name="p", namespace="ns", scope="NAMESPACE", action=action,
                         rules=tuple(rules), **kw)


def test_policy_is_istiods_translation():
    # to-clause, from-clause, then one clause per `when` (authorization.go handleRule).
    p = pol([Rule(from_=(Source(principals=("cluster.local/ns/a/sa/b",), namespaces=("x*",)),
                         Source(service_accounts=("sa1",))),
                  to=(Operation(ports=("80",)), Operation(methods=("GET",))),
                  when=(Condition(key="source.ip", values=("10.0.0.0/8",)),
                        Condition(key="request.headers[x]", values=("y",))))])
    j = policy_json(p)
    assert (j["name"], j["namespace"], j["scope"], j["action"], j["dryRun"]) == \
        ("p", "ns", "Namespace", "Deny", False)
    [rule] = j["rules"]
    assert rule[0] == [{"destinationPorts": [80]}, {}]                 # HTTP-only entry: empty
    assert rule[1] == [{"namespaces": [{"Prefix": "x"}],
                        "principals": [{"Exact": "cluster.local/ns/a/sa/b"}]},
                       {"serviceAccounts": [{"namespace": "ns", "serviceAccount": "sa1"}]}]
    assert rule[2] == [{"sourceIps": ["10.0.0.0/8"]}]
    assert rule[3] == [{}]                                            # HTTP `when`: empty


def test_policies_istiod_does_not_send():
    assert policy_json(pol([Rule()], action="AUDIT")) is None
    assert policy_json(pol([Rule()], action="CUSTOM")) is None
    ref = TargetRef(kind="Service", name="s", namespace="ns")
    assert policy_json(Authorization(name="p", namespace="ns", scope="TARGET_REF",
                                     action="ALLOW", target_refs=(ref,))) is None
    # ALLOW rules with HTTP attributes are dropped, presence is "*".
    j = policy_json(pol([Rule(to=(Operation(methods=("GET",)),)),
                         Rule(from_=(Source(principals=("*",)),))], action="ALLOW"))
    assert j["action"] == "Allow" and j["rules"] == [[[{"principals": [{"Presence": []}]}]]]
