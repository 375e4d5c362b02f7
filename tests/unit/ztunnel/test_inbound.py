"""Inbound decisions: authority validation, waypoint-only, L4 authorization."""

from __future__ import annotations

import pytest

from shoal.core.records import Authorization, Operation, Rule, Source
from tests.unit.ztunnel.conftest import (BEHIND_WP, CLIENT, NAMED, NAMED_NOPORT, NAMED_OK, SERVER_A,
                                         WAYPOINT, allow_from,
                                         make_view)
from shoal.ztunnel import inbound
from shoal.ztunnel.inbound import Accepted, ConnInfo, Rejected, decide_hbone, decide_plaintext

SLEEP = CLIENT.identity
SRC = ("10.0.0.1", 40000)


def hb(view, authority="10.0.1.1:8080", local_ip="10.0.1.1", src=SLEEP):
    return decide_hbone(view, authority=authority, local_ip=local_ip, src_identity=src,
                        src_addr=SRC)


def test_accepts_authority_naming_this_workload():
    d = hb(make_view())
    assert isinstance(d, Accepted)
    assert d.upstream == ("10.0.1.1", 8080) and d.workload == SERVER_A
    assert d.conn == ConnInfo(src_identity=SLEEP, src_ip="10.0.0.1", src_port=40000,
                              dst_ip="10.0.1.1", dst_port=8080)


@pytest.mark.parametrize("authority", ["", "10.0.1.1", "foo:80", "10.0.1.1:0", "10.0.1.1:x",
                                       "10.0.1.1:70000"])
def test_malformed_authority_is_400(authority):
    d = hb(make_view(), authority=authority)
    assert isinstance(d, Rejected) and d.status == 400


def test_authority_for_another_workload_is_400():
    d = hb(make_view(), authority="10.0.1.2:8080")
    assert isinstance(d, Rejected) and d.status == 400 and "does not name" in d.reason


def test_self_call_port_is_refused():
    assert hb(make_view(), authority="10.0.1.1:15008").status == 400


def test_unknown_local_workload_is_503():
    d = hb(make_view(), authority="10.9.9.9:80", local_ip="10.9.9.9")
    assert isinstance(d, Rejected) and d.status == 503


def test_workload_behind_waypoint_is_governed_by_its_policies():
    # ztunnel has no waypoint-bypass check of its own (proxy/inbound.rs):
    # without policies a direct client is accepted, like the waypoint.
    v = make_view()
    d = hb(v, authority="10.0.4.1:8080", local_ip="10.0.4.1")
    assert isinstance(d, Accepted) and d.workload == BEHIND_WP
    d = hb(v, authority="10.0.4.1:8080", local_ip="10.0.4.1", src=WAYPOINT.identity)
    assert isinstance(d, Accepted) and d.workload == BEHIND_WP


def test_allow_naming_the_client_lets_it_bypass_the_waypoint():
    # An ALLOW that names the client admits it even though the workload has
    # a waypoint; a client it does not name is denied by the same policy.
    allow = Authorization(name="sleep-only", namespace="default", scope="NAMESPACE",
                          action="ALLOW", rules=(Rule(from_=(Source(principals=(
                              SLEEP.removeprefix("spiffe://"),)),)),))
    v = make_view([allow])
    assert isinstance(hb(v, authority="10.0.4.1:8080", local_ip="10.0.4.1"), Accepted)
    d = hb(v, authority="10.0.4.1:8080", local_ip="10.0.4.1", src=WAYPOINT.identity)
    assert isinstance(d, Rejected) and d.status == 401 and d.response_flag == "DENY"


def test_waypoint_pod_may_receive_for_its_targets():
    v = make_view()
    d = hb(v, authority="10.96.0.12:80", local_ip="10.0.3.1")
    assert isinstance(d, Accepted) and d.via_waypoint_exception
    assert hb(v, authority="10.96.0.10:80", local_ip="10.0.3.1").status == 400


# Cases from Istio's AuthorizationPolicy documentation.

def test_allow_nothing_denies_everything():
    # `spec: {}`: an ALLOW policy without rules matches nothing -> deny all.
    v = make_view([Authorization(name="allow-nothing", namespace="default", scope="NAMESPACE",
                                 action="ALLOW")])
    d = hb(v)
    assert isinstance(d, Rejected) and d.status == 401 and d.response_flag == "DENY"


def test_allow_all_rule():
    v = make_view([Authorization(name="allow-all", namespace="default", scope="NAMESPACE",
                                 action="ALLOW", rules=(Rule(),))])
    assert isinstance(hb(v), Accepted)


def test_allow_by_principal():
    pol = allow_from("default", "allow-sleep", principals=("cluster.local/ns/default/sa/sleep",))
    v = make_view([pol])
    assert isinstance(hb(v), Accepted)
    d = hb(v, src="spiffe://cluster.local/ns/default/sa/other")
    assert d.status == 401 and "no ALLOW policy matched" in d.reason


def test_deny_from_other_namespaces_with_not_namespaces():
    pol = Authorization(name="deny-others", namespace="default", scope="NAMESPACE",
                        action="DENY",
                        rules=(Rule(from_=(Source(not_namespaces=("default",)),)),))
    v = make_view([pol])
    assert isinstance(hb(v), Accepted)
    d = hb(v, src="spiffe://cluster.local/ns/foo/sa/x")
    assert d.status == 401 and d.policy == "default/deny-others"


def test_allow_port_and_l7_rule_never_matches_at_l4():
    ports = Authorization(name="ports", namespace="default", scope="NAMESPACE", action="ALLOW",
                          rules=(Rule(to=(Operation(ports=("8080",)),)),))
    assert isinstance(hb(make_view([ports])), Accepted)
    assert hb(make_view([ports]), authority="10.0.1.1:9000").status == 401
    l7 = Authorization(name="get", namespace="default", scope="NAMESPACE", action="ALLOW",
                       rules=(Rule(to=(Operation(methods=("GET",)),)),))
    assert hb(make_view([l7])).status == 401


def test_deny_with_only_l7_fields_has_no_effect_at_l4():
    # istiod: "this DENY policy has no enforceable rules at ztunnel".
    l7 = Authorization(name="deny-get", namespace="default", scope="NAMESPACE", action="DENY",
                       rules=(Rule(to=(Operation(methods=("GET",)),)),))
    assert isinstance(hb(make_view([l7])), Accepted)
    l4_and_l7 = Authorization(name="deny-get-8080", namespace="default", scope="NAMESPACE",
                              action="DENY", rules=(Rule(to=(Operation(methods=("GET",)),
                                                             Operation(ports=("8080",)))),))
    assert hb(make_view([l4_and_l7])).status == 401
    assert isinstance(hb(make_view([l4_and_l7]), authority="10.0.1.1:9000"), Accepted)


def test_policies_of_other_namespace_do_not_apply():
    assert isinstance(hb(make_view([allow_from("foo", "x", principals=("nobody",))])), Accepted)


def test_plaintext_has_no_identity():
    pol = allow_from("default", "ns-only", namespaces=("default",))
    v = make_view([pol])
    d = decide_plaintext(v, dst=("10.0.1.1", 8080), src_addr=("192.0.2.1", 5))
    assert isinstance(d, Rejected) and d.status == 401
    d = decide_plaintext(make_view(), dst=("10.0.1.1", 8080), src_addr=("192.0.2.1", 5))
    assert isinstance(d, Accepted) and d.conn.src_identity == ""


def test_plaintext_ip_blocks():
    pol = Authorization(name="ips", namespace="default", scope="NAMESPACE", action="ALLOW",
                        rules=(Rule(from_=(Source(ip_blocks=("192.0.2.0/24",)),)),))
    v = make_view([pol])
    assert isinstance(decide_plaintext(v, dst=("10.0.1.1", 8080), src_addr=("192.0.2.1", 5)),
                      Accepted)
    assert decide_plaintext(v, dst=("10.0.1.1", 8080), src_addr=("198.51.100.1", 5)).status == 401


def test_plaintext_unknown_workload():
    assert decide_plaintext(make_view(), dst=("10.9.9.9", 80), src_addr=SRC).status == 503


def test_recheck_after_policy_change():
    d = hb(make_view())
    assert inbound.recheck(make_view(), "10.0.1.1", d.conn) is None
    deny = Authorization(name="deny-sleep", namespace="default", scope="NAMESPACE",
                         action="DENY", rules=(Rule(from_=(Source(principals=(SLEEP.removeprefix("spiffe://"),)),)),))
    r = inbound.recheck(make_view([deny]), "10.0.1.1", d.conn)
    assert isinstance(r, Rejected) and r.policy == "default/deny-sleep"


def test_guess_service_by_target_port_as_ztunnel():
    """ztunnel's guess_inbound_service (src/proxy.rs): the destination
    service of an inbound connection is the workload's service whose target
    port is the connection's port, so reporter="destination" names it."""
    view = make_view()
    assert inbound.guess_service(view, NAMED_OK, 9090) == NAMED     # named targetPort resolved
    assert inbound.guess_service(view, NAMED_OK, 9091) is None
    assert inbound.guess_service(view, NAMED_NOPORT, 9090) is None
    assert inbound.guess_service(view, None, 9090) is None
