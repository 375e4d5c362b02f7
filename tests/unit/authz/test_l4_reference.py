"""L4 authorization checked against the reference implementations' own cases.

Sources (read for the facts, cases restated here):
- istio/ztunnel src/rbac.rs, `mod tests` (rbac_test! cases, rbac_empty_policy,
  rbac_nesting, rbac_multi_rule, string_match).
- istio/istio pilot/pkg/serviceregistry/ambient/authorization_test.go,
  TestConvertAuthorizationPolicyStatus (status messages, hasEffectiveRules).
- istio/istio pilot/pkg/serviceregistry/ambient/testdata/deny-groups-in.yaml
  (a DENY policy mixing L4 and L7 rules).
"""

from __future__ import annotations

import pytest

from shoal.core.authz import (L4, L7, Request, evaluate, l4_has_effective_rules, l4_status,
                              policy_matches)
from shoal.core.model import ConfigError, load_text
from shoal.core.records import Authorization, Condition, Operation, Rule, Source
from shoal.routing.compile import compile_config

# rbac.rs fixtures: plaintext_conn, tls_conn, tls_conn_alt.
PLAINTEXT = Request(source_principal=None, source_ip="127.0.0.1", destination_ip="127.0.0.2",
                    destination_port=8080)
TLS = Request(source_principal="spiffe://td/ns/namespace/sa/account", source_ip="127.0.0.1",
              destination_ip="127.0.0.2", destination_port=8080)
TLS_ALT = Request(source_principal="spiffe://td-alt/ns/ns-alt/sa/sa=alt", source_ip="127.0.0.3",
                  destination_ip="127.0.0.4", destination_port=9090)


def policy(rules, action="ALLOW", name="p", namespace="namespace"):
    return Authorization(name=name, namespace=namespace, scope="GLOBAL", action=action,
                         rules=tuple(rules))


def from_(**fields):
    return Rule(from_=(Source(**fields),))


def when(key, values=(), not_values=()):
    return Rule(when=(Condition(key=key, values=tuple(values), not_values=tuple(not_values)),))


# --- rbac.rs rbac_test! cases: one match, three connections -----------------

RBAC_CASES = [
    # (name, rule, plaintext, tls, tls_alt)
    ("namespaces", from_(namespaces=("namespace",)), False, True, False),
    ("not_namespaces", from_(not_namespaces=("namespace",)), True, False, True),
    ("service_accounts", from_(service_accounts=("namespace/account",)), False, True, False),
    ("not_service_accounts", from_(not_service_accounts=("namespace/account",)), True, False, True),
    ("principals", from_(principals=("td/ns/namespace/sa/account",)), False, True, False),
    ("not_principals", from_(not_principals=("td/ns/namespace/sa/account",)), True, False, True),
    ("source_ips", from_(ip_blocks=("127.0.0.1/32",)), True, True, False),
    ("not_source_ips", from_(not_ip_blocks=("127.0.0.1/32",)), False, False, True),
    ("destination_ips", when("destination.ip", ["127.0.0.2/32"]), True, True, False),
    ("not_destination_ips", when("destination.ip", not_values=["127.0.0.2/32"]), False, False, True),
    ("cidr_range", when("destination.ip", ["127.0.0.1/24"]), True, True, True),
    ("destination_ports", Rule(to=(Operation(ports=("8080",)),)), True, True, False),
    ("not_destination_ports", Rule(to=(Operation(not_ports=("8080",)),)), False, False, True),
]


@pytest.mark.parametrize("name,rule,plain,tls,alt", RBAC_CASES, ids=[c[0] for c in RBAC_CASES])
def test_rbac_rs_single_match(name, rule, plain, tls, alt):
    pol = policy([rule])
    assert policy_matches(pol, PLAINTEXT, L4) is plain
    assert policy_matches(pol, TLS, L4) is tls
    assert policy_matches(pol, TLS_ALT, L4) is alt


def test_rbac_rs_empty_policy():
    # vec![] (no rules): no match; vec![vec![]] (one rule, no clauses): match.
    assert not policy_matches(policy([]), PLAINTEXT, L4)
    assert policy_matches(policy([Rule()]), PLAINTEXT, L4)
    # vec![vec![vec![RbacMatch::default()]]]: one empty match, skipped: no
    # match. istiod emits it for a source with only HTTP fields.
    assert not policy_matches(policy([from_(request_principals=("*",))], "DENY"),
                              PLAINTEXT, L4)


def tls_from(namespace, port=80):
    return Request(source_principal=f"spiffe://td/ns/{namespace}/sa/account",
                   source_ip="127.0.0.1", destination_ip="127.0.0.2", destination_port=port)


def test_rbac_rs_nesting():
    pol = policy([Rule(from_=(Source(namespaces=("a",)), Source(namespaces=("b",))),
                       to=(Operation(ports=("80",)),))])
    assert policy_matches(pol, tls_from("a"), L4)
    assert policy_matches(pol, tls_from("b"), L4)
    assert not policy_matches(pol, tls_from("bad"), L4)
    assert not policy_matches(pol, tls_from("b", port=12345), L4)


def test_rbac_rs_multi_rule():
    pol = policy([from_(namespaces=("a",)), from_(namespaces=("b",))])
    assert policy_matches(pol, tls_from("a"), L4)
    assert policy_matches(pol, tls_from("b"), L4)
    assert not policy_matches(pol, tls_from("bad"), L4)


@pytest.mark.parametrize("pattern,value,ok", [
    ("foo", "foo", True), ("foo", "not", False), ("foo", "", False),
    ("foo*", "foobar", True), ("foo*", "notfoo", False), ("foo*", "", False),
    ("*foo", "barfoo", True), ("*foo", "foonot", False), ("*foo", "", False),
    ("*", "foo", True),
])
def test_rbac_rs_string_match_on_namespaces(pattern, value, ok):
    # rbac.rs string_match cases, through the namespaces field (Presence is "*").
    pol = policy([from_(namespaces=(pattern,))])
    req = tls_from(value) if value else PLAINTEXT
    assert policy_matches(pol, req, L4) is ok


# --- the example: entries are OR-ed, HTTP-only ones skipped -----------

def test_deny_to_entries_or_ed_http_only_entry_never_matches():
    pol = policy([Rule(to=(Operation(methods=("GET",)), Operation(ports=("80",))))], "DENY")
    assert not evaluate([pol], tls_from("a", port=80), L4).allowed
    assert evaluate([pol], tls_from("a", port=8080), L4).allowed


def test_remote_ip_blocks_count_as_http():
    pol = policy([from_(remote_ip_blocks=("127.0.0.0/8",))], "DENY")
    assert evaluate([pol], TLS, L4).allowed           # empty match at ztunnel
    assert not evaluate([pol], TLS, L7).allowed       # the waypoint enforces it
    assert "remoteIpBlocks" in l4_status(pol)[1]


def test_deny_source_mixing_l4_and_http_keeps_l4_part():
    pol = policy([from_(namespaces=("namespace",), request_principals=("iss/sub",))], "DENY")
    assert not evaluate([pol], TLS, L4).allowed
    assert evaluate([pol], TLS_ALT, L4).allowed


def test_allow_rule_with_http_attribute_is_dropped():
    pol = policy([from_(namespaces=("namespace",), request_principals=("iss/sub",))])
    assert not evaluate([pol], TLS, L4).allowed


# --- authorization_test.go TestConvertAuthorizationPolicyStatus -------------

HTTP_FMT = ("ztunnel does not support HTTP attributes (found: {}). In ambient mode you must use "
            "a waypoint proxy to enforce HTTP rules. ")
NO_EFFECT = ("After omitting unsupported HTTP attributes, this DENY policy has no enforceable "
             "rules at ztunnel and will have no effect. Deploy a waypoint proxy and use a "
             "targetRef to enforce this policy.")
MIXED = ("DENY policy with HTTP attributes is enforced without the HTTP rules. "
         "This will be more restrictive than requested.")
ALLOW_OMITTED = ("Within an ALLOW policy, rules matching HTTP attributes are omitted. "
                 "This will be more restrictive than requested.")
PRINCIPAL = "cluster.local/ns/foo/sa/bar"

STATUS_CASES = [
    ("no status - policy is fine",
     policy([Rule(from_=(Source(principals=("trust/ns/echo-1234/",)),),
                  to=(Operation(ports=("80",)),))]), None, None),
    ("unsupported AUDIT action", policy([Rule()], "AUDIT"),
     "ztunnel does not support the AUDIT action", None),
    ("unsupported CUSTOM action", policy([Rule()], "CUSTOM"),
     "ztunnel does not support the CUSTOM action", None),
    ("unsupported HTTP methods",
     policy([Rule(from_=(Source(request_principals=("example.com/sub-1",)),),
                  to=(Operation(methods=("GET",)),),
                  when=(Condition(key="request.auth.presenter",
                                  values=("presenter.example.com",)),))]),
     HTTP_FMT.format("methods, request.auth.presenter, requestPrincipals") + ALLOW_OMITTED, None),
    ("DENY policy with only L4 attributes - no status warning",
     policy([from_(principals=(PRINCIPAL,))], "DENY"), None, True),
    ("DENY policy with only L7 attributes results in no effect at ztunnel",
     policy([from_(not_request_principals=("example.com/sub-1",))], "DENY"),
     HTTP_FMT.format("notRequestPrincipals") + NO_EFFECT, False),
    ("DENY policy with mixed L4 and L7 attributes is enforced without HTTP rules",
     policy([from_(principals=(PRINCIPAL,), not_request_principals=("example.com/sub-1",))],
            "DENY"), HTTP_FMT.format("notRequestPrincipals") + MIXED, True),
    ("DENY policy with L7-only and separate L4 rule is still enforced",
     policy([from_(not_request_principals=("example.com/sub-1",)), from_(principals=(PRINCIPAL,))],
            "DENY"), HTTP_FMT.format("notRequestPrincipals") + MIXED, True),
    ("DENY policy with empty catch-all rule and L7-only rule is still enforced",
     policy([Rule(), from_(not_request_principals=("example.com/sub-1",))], "DENY"),
     HTTP_FMT.format("notRequestPrincipals") + MIXED, True),
    ("DENY policy with L4 From and L7 When is a no-op due to AND empty clause",
     policy([Rule(from_=(Source(principals=(PRINCIPAL,)),),
                  when=(Condition(key="request.headers[x-token]", values=("secret",)),))], "DENY"),
     HTTP_FMT.format("request.headers[x-token]") + NO_EFFECT, False),
    ("DENY policy with L4 From and L7-only To methods is a no-op due to AND empty clause",
     policy([Rule(from_=(Source(principals=(PRINCIPAL,)),), to=(Operation(methods=("GET",)),))],
            "DENY"), HTTP_FMT.format("methods") + NO_EFFECT, False),
    ("ALLOW policy mixing namespaces with trustDomains drops the rule",
     policy([from_(namespaces=("allowed-ns",), trust_domains=("cluster.local",))]),
     HTTP_FMT.format("trustDomains") + ALLOW_OMITTED, False),
    ("DENY policy with only notTrustDomains results in no effect at ztunnel",
     policy([from_(not_trust_domains=("cluster.local",))], "DENY"),
     HTTP_FMT.format("notTrustDomains") + NO_EFFECT, False),
]


@pytest.mark.parametrize("name,pol,message,effective", STATUS_CASES,
                         ids=[c[0] for c in STATUS_CASES])
def test_istiod_status(name, pol, message, effective):
    status = l4_status(pol)
    if message is None:
        assert status is None
    else:
        assert status == ("UnsupportedValue", message)
    if effective is not None:
        assert l4_has_effective_rules(pol) is effective


def test_istiod_status_target_ref_is_not_for_ztunnel():
    [pol] = [r for r in compile_config(load_text(TARGET_REF_POLICY)) if isinstance(r, Authorization)]
    assert l4_status(pol) is None


TARGET_REF_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: test-svc}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


@pytest.mark.parametrize("name,pol,message,effective",
                         [c for c in STATUS_CASES if c[3] is False and c[1].action == "DENY"],
                         ids=[c[0] for c in STATUS_CASES if c[3] is False and c[1].action == "DENY"])
def test_no_effect_deny_never_denies_at_l4(name, pol, message, effective):
    for req in (PLAINTEXT, TLS, TLS_ALT, tls_from("foo")):
        bar = Request(source_principal="spiffe://" + PRINCIPAL, source_ip="10.0.0.1",
                      destination_ip="10.0.0.2", destination_port=80)
        assert evaluate([pol], req, L4).allowed and evaluate([pol], bar, L4).allowed


# --- testdata/deny-groups-in.yaml ------------------------------------------------

DENY_GROUPS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: groups-deny, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [from-mix-principal], requestPrincipals: [from-mix-requestPrincipals],
                     namespaces: [from-mix-ns]}}]
    to: [{operation: {ports: ["80"]}}]
  - from: [{source: {principals: [to-mix-principal], namespaces: [to-mix-ns]}}]
    to: [{operation: {ports: ["80"], methods: [to-mix-method]}}]
  - from: [{source: {principals: [only-l4-principals], namespaces: [only-l4-ns]}}]
    to: [{operation: {ports: ["80"]}}]
  - from: [{source: {requestPrincipals: [l7-principal]}}]
    to: [{operation: {paths: [/l7-foo], methods: [l7-method]}}]
  - when: [{key: source.namespace, values: [when-l4-l7-ns]},
           {key: connection.sni, values: [when-l4-l7-sni]}]
  - when: [{key: source.namespace, values: [when-l4-ns]},
           {key: source.ip, values: [10.10.10.10], notValues: [20.20.20.20]}]
  - when: [{key: connection.sni, values: [when-l7-sni]},
           {key: "request.headers[X-header]", values: [when-l7-header]}]
"""


@pytest.fixture(scope="module")
def deny_groups():
    [pol] = [r for r in compile_config(load_text(DENY_GROUPS)) if isinstance(r, Authorization)]
    return pol


def test_deny_groups_status(deny_groups):
    assert l4_status(deny_groups) == ("UnsupportedValue", HTTP_FMT.format(
        "connection.sni, methods, paths, request.headers[X-header], requestPrincipals") + MIXED)


@pytest.mark.parametrize("ns,src,port,denied", [
    ("when-l4-ns", "10.10.10.10", 9, True),      # L4-only `when` rule: enforced
    ("when-l4-ns", "10.10.10.11", 9, False),
    ("when-l4-l7-ns", "10.0.0.1", 9, False),     # sni `when` empties the rule
    ("anything", "10.0.0.1", 80, False),         # L7-only rules never match
])
def test_deny_groups_when_rules(deny_groups, ns, src, port, denied):
    req = Request(source_principal=f"spiffe://td/ns/{ns}/sa/x", source_ip=src,
                  destination_ip="10.0.0.2", destination_port=port)
    assert evaluate([deny_groups], req, L4).allowed is not denied


def test_deny_groups_mixed_rules_keep_their_l4_parts():
    # The golden file's rules 1 and 2 with SPIFFE-shaped principals: with
    # requestPrincipals / methods dropped they still deny on principal AND
    # namespace AND port.
    for ns in ("from-mix-ns", "to-mix-ns"):
        principal = f"td/ns/{ns}/sa/x"
        pol = policy([Rule(from_=(Source(principals=(principal,), namespaces=(ns,),
                                         request_principals=("r",)),),
                           to=(Operation(ports=("80",), methods=("m",)),))], "DENY")
        hit = Request(source_principal="spiffe://" + principal, destination_port=80)
        assert not evaluate([pol], hit, L4).allowed
        assert evaluate([pol], Request(source_principal="spiffe://" + principal,
                                       destination_port=81), L4).allowed


# --- dry-run annotation: Go's strconv.ParseBool ------------------------------

def dry_run_policy(value):
    text = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: default
  annotations: {{"istio.io/dry-run": "{value}"}}
spec: {{action: DENY, rules: [{{}}]}}
"""
    [pol] = [r for r in compile_config(load_text(text)) if isinstance(r, Authorization)]
    return pol


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_dry_run_true_values(value):
    assert dry_run_policy(value).dry_run is True


@pytest.mark.parametrize("value", ["", "0", "f", "F", "FALSE", "false", "False"])
def test_dry_run_false_values(value):
    assert dry_run_policy(value).dry_run is False


@pytest.mark.parametrize("value", ["yes", "on", "tRuE", " true", "2", "y"])
def test_dry_run_other_values_are_a_validation_error(value):
    with pytest.raises(ConfigError) as exc:
        dry_run_policy(value)
    assert "istio.io/dry-run" in str(exc.value) and "ParseBool" in str(exc.value)


# --- CUSTOM: accepted, ignored at L4, deny-on-match at the waypoint ---------------

CUSTOM = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: my-ext-authz}
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"""


def test_custom_is_accepted_and_ignored_at_l4():
    [pol] = [r for r in compile_config(load_text(CUSTOM)) if isinstance(r, Authorization)]
    assert pol.action == "CUSTOM"
    assert evaluate([pol], TLS, L4).allowed
    assert l4_status(pol) == ("UnsupportedValue", "ztunnel does not support the CUSTOM action")


def test_custom_without_provider_is_refused():
    with pytest.raises(ConfigError) as exc:
        load_text(CUSTOM.replace("  provider: {name: my-ext-authz}\n", ""))
    assert "spec.provider" in str(exc.value)


def test_custom_at_the_waypoint_denies_what_it_matches():
    # Istio's builder, when the provider cannot be used: "failed to process
    # CUSTOM action, will generate deny configs for the specified rules".
    [pol] = [r for r in compile_config(load_text(CUSTOM)) if isinstance(r, Authorization)]
    admin = Request(source_principal=TLS.source_principal, method="GET", path="/admin")
    other = Request(source_principal=TLS.source_principal, method="GET", path="/")
    assert not evaluate([pol], admin, L7).allowed
    assert evaluate([pol], other, L7).allowed
