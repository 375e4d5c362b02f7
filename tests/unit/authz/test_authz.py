"""core.authz: Istio AuthorizationPolicy semantics.

Cases follow istio.io "Authorization Policy" reference examples and the
ambient L4 policy page (fail-closed handling of L7 attributes at ztunnel).
"""

from __future__ import annotations

import pytest

from shoal.core.authz import (L4, L7, Decision, Request, evaluate, host_match, ip_in_block,
                        path_match, rule_has_l7, spiffe_parts, string_match, strip_query)
from shoal.core.records import Authorization, Condition, Operation, Rule, Source

CURL = "spiffe://cluster.local/ns/default/sa/curl"
FOO_SA = "spiffe://cluster.local/ns/foo/sa/app"
DEV_SA = "spiffe://cluster.local/ns/dev/sa/bob"


def pol(name="p", action="ALLOW", rules=(), ns="default", dry_run=False):
    return Authorization(name=name, namespace=ns, scope="NAMESPACE", action=action,
                         rules=tuple(rules), dry_run=dry_run)


def req(principal=CURL, method="GET", path="/", host="httpbin.default.svc.cluster.local",
        port=8000, src="10.0.0.1", dst="10.0.1.1", headers=None, **kw):
    return Request(source_principal=principal, source_ip=src, destination_ip=dst,
                   destination_port=port, method=method, host=host, path=path,
                   headers=headers or {}, **kw)


# -- the order of evaluation ------------------------------------------------

def test_no_policies_allows():
    d = evaluate([], req())
    assert d.allowed and d.policy_key == "" and d.reason == "no ALLOW policy"


def test_allow_nothing_denies_everything():
    # istio.io: "allow-nothing" = ALLOW with no rules: matches nothing.
    d = evaluate([pol("allow-nothing")], req())
    assert not d.allowed and d.reason == "no ALLOW policy matched"


def test_deny_all_with_one_empty_rule():
    # istio.io: "deny-all" = DENY with `rules: [{}]`.
    d = evaluate([pol("deny-all", "DENY", [Rule()])], req())
    assert not d.allowed and d.policy_key == "default/deny-all"


def test_allow_all_with_one_empty_rule():
    d = evaluate([pol("allow-all", rules=[Rule()])], req(principal=None))
    assert d.allowed and d.policy_key == "default/allow-all"


def test_deny_policy_without_rules_is_inert():
    assert evaluate([pol("d", "DENY")], req()).allowed


def test_deny_wins_over_allow():
    d = evaluate([pol("allow-all", rules=[Rule()]), pol("deny-all", "DENY", [Rule()])], req())
    assert not d.allowed and d.policy_key == "default/deny-all"


def test_any_allow_match_allows():
    a = pol("a", rules=[Rule(from_=(Source(namespaces=("foo",)),))])
    b = pol("b", rules=[Rule(from_=(Source(namespaces=("default",)),))])
    d = evaluate([a, b], req())
    assert d.allowed and d.policy_key == "default/b"


def test_audit_is_flagged_but_never_decides():
    audit = pol("audit-get", "AUDIT", [Rule(to=(Operation(methods=("GET",)),))])
    d = evaluate([audit], req(method="GET"))
    assert d.allowed and d.audited == ("default/audit-get",)
    assert evaluate([audit], req(method="POST")).audited == ()


def test_dry_run_is_reported_not_enforced():
    dry = pol("dry-deny", "DENY", [Rule()], dry_run=True)
    d = evaluate([dry], req())
    assert d.allowed and d.shadow == ("default/dry-deny:DENY",)


def test_decision_policy_alias():
    assert Decision(allowed=True, policy_key="a/b").policy == "a/b"


def test_unknown_layer_refused():
    with pytest.raises(ValueError):
        evaluate([], req(), layer="L3")


# -- istio.io reference examples ----------------------------------------------

def httpbin_policy():
    # istio.io/latest/docs/reference/config/security/authorization-policy/
    # "allows two sources (curl SA and the dev namespace) to GET, when the
    # request has a valid JWT token issued by https://accounts.google.com"
    # (the JWT condition replaced by a header condition: no JWT support).
    return pol("httpbin", rules=[Rule(
        from_=(Source(principals=("cluster.local/ns/default/sa/curl",)),
               Source(namespaces=("dev",))),
        to=(Operation(methods=("GET",)),),
        when=(Condition(key="request.headers[x-issuer]", values=("https://accounts.google.com",)),),
    )])


@pytest.mark.parametrize("principal,method,issuer,allowed", [
    (CURL, "GET", "https://accounts.google.com", True),
    (DEV_SA, "GET", "https://accounts.google.com", True),
    (FOO_SA, "GET", "https://accounts.google.com", False),   # from: no source matches
    (CURL, "POST", "https://accounts.google.com", False),     # to: method
    (CURL, "GET", "https://evil.example", False),             # when
    (None, "GET", "https://accounts.google.com", False),      # plaintext: no principal
])
def test_reference_httpbin_example(principal, method, issuer, allowed):
    r = req(principal=principal, method=method, headers={"x-issuer": issuer})
    assert evaluate([httpbin_policy()], r).allowed is allowed


def test_allow_from_namespace():
    p = pol("ns-only", rules=[Rule(from_=(Source(namespaces=("foo",)),))])
    assert evaluate([p], req(principal=FOO_SA)).allowed
    assert not evaluate([p], req(principal=CURL)).allowed
    assert not evaluate([p], req(principal=None)).allowed


def test_deny_by_path_unless_namespace():
    # istio.io: deny requests to /admin/* from any namespace but "admin".
    p = pol("deny-admin", "DENY", [Rule(from_=(Source(not_namespaces=("admin",)),),
                                        to=(Operation(paths=("/admin/*",)),))])
    assert not evaluate([p], req(path="/admin/users")).allowed
    assert not evaluate([p], req(path="/admin/users?x=1")).allowed
    assert evaluate([p], req(path="/admin")).allowed            # "/admin/*" needs the slash
    assert evaluate([p], req(path="/public")).allowed
    assert evaluate([p], req(path="/admin/x", principal="cluster.local/ns/admin/sa/a")).allowed


def test_not_forms():
    # istio.io: ALLOW everything except POST to /private (notMethods + notPaths style).
    p = pol("not", rules=[Rule(to=(Operation(not_methods=("POST",), not_paths=("/private",)),))])
    assert evaluate([p], req(method="GET", path="/x")).allowed
    assert not evaluate([p], req(method="POST", path="/x")).allowed
    assert not evaluate([p], req(method="GET", path="/private")).allowed


def test_not_principals_presence_denies_plaintext():
    # PeerAuthentication STRICT as ztunnel sees it: DENY notPrincipals ["*"].
    strict = pol("strict", "DENY", [Rule(from_=(Source(not_principals=("*",)),))])
    assert not evaluate([strict], req(principal=None), L4).allowed
    assert evaluate([strict], req(), L4).allowed


@pytest.mark.parametrize("pattern,allowed", [
    ("cluster.local/ns/default/sa/curl", True),
    ("spiffe://cluster.local/ns/default/sa/curl", False),  # Istio writes principals without the scheme
    ("cluster.local/ns/default/*", True),
    ("*/sa/curl", True),
    ("*", True),
    ("cluster.local/ns/other/*", False),
])
def test_wildcard_principals(pattern, allowed):
    p = pol("w", rules=[Rule(from_=(Source(principals=(pattern,)),))])
    assert evaluate([p], req(principal=CURL)).allowed is allowed


def test_star_principal_needs_an_identity():
    p = pol("any-authn", rules=[Rule(from_=(Source(principals=("*",)),))])
    assert not evaluate([p], req(principal=None)).allowed


def test_fields_and_values_semantics():
    # fields AND-ed, values OR-ed
    p = pol("f", rules=[Rule(to=(Operation(methods=("GET", "HEAD"), paths=("/a", "/b")),))])
    assert evaluate([p], req(method="HEAD", path="/b")).allowed
    assert not evaluate([p], req(method="PUT", path="/b")).allowed
    assert not evaluate([p], req(method="GET", path="/c")).allowed


def test_rules_or_and_groups_and():
    r1 = Rule(from_=(Source(namespaces=("foo",)),), to=(Operation(methods=("GET",)),))
    r2 = Rule(to=(Operation(paths=("/public/*",)),))
    p = pol("r", rules=[r1, r2])
    assert evaluate([p], req(principal=FOO_SA, method="GET")).allowed        # r1
    assert not evaluate([p], req(principal=FOO_SA, method="POST")).allowed   # r1 fails on to
    assert evaluate([p], req(principal=None, method="POST", path="/public/x")).allowed  # r2


def test_when_conditions_are_and_ed():
    p = pol("w", rules=[Rule(when=(
        Condition(key="request.headers[version]", values=("v1", "v2")),
        Condition(key="source.namespace", not_values=("dev",)),
    ))])
    assert evaluate([p], req(headers={"version": "v2"})).allowed
    assert not evaluate([p], req(headers={"version": "v3"})).allowed
    assert not evaluate([p], req(headers={"version": "v1"}, principal=DEV_SA)).allowed
    assert not evaluate([p], req()).allowed   # header absent


def test_when_ip_and_port_keys():
    p = pol("w", rules=[Rule(when=(
        Condition(key="source.ip", values=("10.0.0.0/24",)),
        Condition(key="destination.port", values=("8000",)),
        Condition(key="destination.ip", not_values=("10.0.1.2",)),
    ))])
    assert evaluate([p], req()).allowed
    assert not evaluate([p], req(src="10.0.9.1")).allowed
    assert not evaluate([p], req(port=9000)).allowed
    assert not evaluate([p], req(dst="10.0.1.2")).allowed


def test_when_source_principal_and_sni():
    p = pol("w", rules=[Rule(when=(Condition(key="source.principal", values=("*/sa/curl",)),
                                   Condition(key="connection.sni", values=("*.example.com",))))])
    assert evaluate([p], req(sni="a.example.com")).allowed
    assert not evaluate([p], req(sni=None)).allowed


def test_when_jwt_claims_never_present():
    p = pol("jwt", rules=[Rule(when=(Condition(key="request.auth.claims[iss]", values=("*",)),))])
    assert not evaluate([p], req()).allowed


def test_ip_blocks_and_remote_ip_blocks():
    p = pol("ip", rules=[Rule(from_=(Source(ip_blocks=("10.0.0.0/16", "192.168.1.7")),))])
    assert evaluate([p], req(src="10.0.200.3")).allowed
    assert evaluate([p], req(src="192.168.1.7")).allowed
    assert not evaluate([p], req(src="192.168.1.8")).allowed
    r = pol("rip", rules=[Rule(from_=(Source(remote_ip_blocks=("203.0.113.0/24",)),))])
    assert evaluate([r], req(src="10.0.0.1", remote_ip="203.0.113.9")).allowed
    assert not evaluate([r], req(src="203.0.113.9", remote_ip="10.0.0.1")).allowed


def test_ports():
    p = pol("ports", rules=[Rule(to=(Operation(ports=("8000", "9000")),))])
    assert evaluate([p], req(port=9000)).allowed
    assert not evaluate([p], req(port=80)).allowed
    n = pol("notports", rules=[Rule(to=(Operation(not_ports=("15021",)),))])
    assert not evaluate([n], req(port=15021)).allowed


def test_hosts_case_insensitive_wildcard_and_port():
    p = pol("h", rules=[Rule(to=(Operation(hosts=("*.Example.COM", "httpbin")),))])
    assert evaluate([p], req(host="API.example.com")).allowed
    assert evaluate([p], req(host="api.example.com:8080")).allowed
    assert evaluate([p], req(host="httpbin:8000")).allowed
    assert not evaluate([p], req(host="example.org")).allowed


def test_service_accounts():
    p = pol("sa", ns="default", rules=[Rule(from_=(Source(service_accounts=("curl", "foo/app")),))])
    assert evaluate([p], req(principal=CURL)).allowed
    assert evaluate([p], req(principal=FOO_SA)).allowed
    assert not evaluate([p], req(principal=DEV_SA)).allowed


def test_request_principals_without_jwt_never_match():
    p = pol("rp", rules=[Rule(from_=(Source(request_principals=("*",)),))])
    assert not evaluate([p], req()).allowed
    assert evaluate([p], req(request_principal="iss/sub")).allowed


# -- L4 (ztunnel): fail closed on L7 attributes ---------------------------------

def test_l4_allow_with_l7_fields_never_matches():
    p = pol("get-only", rules=[Rule(from_=(Source(namespaces=("default",)),),
                                    to=(Operation(methods=("GET",)),))])
    assert evaluate([p], req(), L7).allowed
    d = evaluate([p], req(method=None, path=None, host=None), L4)
    assert not d.allowed and d.reason == "no ALLOW policy matched"


def test_l4_allow_other_rules_still_match():
    p = pol("mixed", rules=[Rule(to=(Operation(paths=("/x",)),)),
                            Rule(from_=(Source(namespaces=("default",)),))])
    assert evaluate([p], req(), L4).allowed


def test_l4_deny_with_only_l7_fields_has_no_effect():
    # istiod sends an empty match, which ztunnel skips (authorization.go
    # "DENY policy with L4 From and L7-only To methods is a no-op").
    p = pol("deny-post", "DENY", [Rule(to=(Operation(methods=("POST",)),))])
    assert evaluate([p], req(method=None), L4).allowed
    assert not evaluate([p], req(method="POST"), L7).allowed
    assert evaluate([p], req(method="GET"), L7).allowed


def test_l4_deny_keeps_its_l4_parts():
    p = pol("deny-9000-post", "DENY", [Rule(to=(Operation(ports=("9000",), methods=("POST",)),))])
    assert not evaluate([p], req(port=9000), L4).allowed
    assert evaluate([p], req(port=8000), L4).allowed


def test_l4_deny_with_unsupported_when_key_never_matches():
    # The HTTP `when` is an AND-ed clause holding one empty match: the rule
    # can never match at ztunnel.
    p = pol("d", "DENY", [Rule(from_=(Source(namespaces=("dev",)),),
                               when=(Condition(key="request.headers[x]", values=("y",)),))])
    assert evaluate([p], req(principal=DEV_SA), L4).allowed
    assert evaluate([p], req(principal=CURL), L4).allowed


def test_l4_allow_with_unsupported_when_key_never_matches():
    p = pol("a", rules=[Rule(when=(Condition(key="request.headers[x]", values=("y",)),))])
    assert not evaluate([p], req(headers={"x": "y"}), L4).allowed


def test_l4_audit_is_not_applied():
    p = pol("a", "AUDIT", [Rule()])
    assert evaluate([p], req(), L4).audited == ()


def test_rule_has_l7():
    assert rule_has_l7(Rule(from_=(Source(remote_ip_blocks=("1.2.3.4",)),)))
    assert rule_has_l7(Rule(to=(Operation(not_hosts=("a",)),)))
    assert rule_has_l7(Rule(when=(Condition(key="request.auth.claims[x]"),)))
    assert not rule_has_l7(Rule(from_=(Source(principals=("a",), ip_blocks=("1.2.3.4",)),),
                                to=(Operation(ports=("80",)),),
                                when=(Condition(key="destination.port", values=("80",)),)))


# -- value matchers ------------------------------------------------------------

@pytest.mark.parametrize("pattern,value,ok", [
    ("*", "", True), ("*", None, False), ("abc", "abc", True), ("abc", "abcd", False),
    ("ab*", "abcd", True), ("*cd", "abcd", True), ("*cd", "abc", False),
])
def test_string_match(pattern, value, ok):
    assert string_match(pattern, value) is ok


@pytest.mark.parametrize("pattern,path,ok", [
    ("/foo/*", "/foo/bar", True), ("/foo/*", "/foo/", True), ("/foo/*", "/foo", False),
    ("*.html", "/a/b.html", True), ("/exact", "/exact", True), ("/exact", "/exact/", False),
])
def test_path_match(pattern, path, ok):
    assert path_match(pattern, path) is ok


def test_helpers():
    assert strip_query("/a?b#c") == "/a" and strip_query("/a#c?d") == "/a"
    assert spiffe_parts("cluster.local/ns/foo/sa/bar") == ("foo", "bar")
    assert spiffe_parts("garbage") == (None, None)
    assert host_match("a.com", "A.COM:80") and not host_match("a.com", None)
    assert ip_in_block("::1", "::/0") and not ip_in_block("10.0.0.1", "::/0")
    assert not ip_in_block("10.0.0.1", "not-a-cidr") and not ip_in_block("", "0.0.0.0/0")
