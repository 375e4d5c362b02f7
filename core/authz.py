"""Authorization: Istio's AuthorizationPolicy semantics as one pure function.

Shared by ztunnel (layer "L4", one decision per connection) and the waypoint
(layer "L7", one decision per HTTP request). No I/O, no process state: the
caller passes the policies that apply (routing.view gives them) and a
`Request` describing what is being authorized.

Semantics (istio/api security/v1beta1/authorization.proto, istiod
pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go, ztunnel
src/rbac.rs):

- A policy matches when ANY of its rules matches. A policy with no rules
  matches nothing (an ALLOW without rules therefore denies everything it
  applies to); `rules: [{}]` is one empty Rule and matches everything.
- Within a rule, the `from`, `to` and `when` groups are AND-ed. The entries
  of `from` are OR-ed, the entries of `to` are OR-ed, the `when` conditions
  are AND-ed. An empty group matches.
- Within one Source / Operation, the fields are AND-ed and the values of one
  field are OR-ed; a `not*` field matches when NONE of its values match.
- Order: AUDIT matches are only reported; any DENY match denies; with no
  ALLOW policy the request is allowed; any ALLOW match allows; else deny.
  Dry-run policies (`istio.io/dry-run`) are evaluated and reported in
  `Decision.shadow` but never enforced.

Layer L4 (ztunnel) cannot see HTTP. It evaluates what istiod sends it
(pilot/pkg/serviceregistry/ambient/authorization.go `handleRule`, matched by
ztunnel src/rbac.rs), and so does shoal:
- ALLOW: a rule that uses any HTTP attribute (hosts, methods, paths,
  requestPrincipals, remoteIpBlocks, trustDomains, their not* twins, or a
  `when` key outside `L4_WHEN_KEYS`) is dropped: it never matches.
- DENY: each `from` / `to` entry keeps only its L4 fields. An entry left with
  none is an *empty match*, which ztunnel skips: it matches nothing. Entries
  are OR-ed, so `to: [{methods: [GET]}, {ports: ["80"]}]` denies port 80
  only; a rule whose `to` (or `from`) entries are all HTTP-only, or that has
  an HTTP `when` key, never matches.
- AUDIT and CUSTOM are not sent to ztunnel: ignored at L4. At L7 a CUSTOM
  policy names an ext-authz provider; shoal configures none, so it denies
  what its rules match, as Istio does for a provider it cannot find.
`l4_status` gives the status message istiod writes for such policies.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from shoal.core.records import Authorization, Condition, Operation, Rule, Source

L4 = "L4"
L7 = "L7"

ALLOW = "ALLOW"
DENY = "DENY"
AUDIT = "AUDIT"
CUSTOM = "CUSTOM"

SPIFFE_PREFIX = "spiffe://"

# `when` keys ztunnel can evaluate (istiod's l4WhenAttributes); any other key
# makes the rule an L7 rule.
L4_WHEN_KEYS = frozenset({
    "source.ip", "source.namespace", "source.principal",
    "destination.ip", "destination.port",
})

# Reasons, stable strings for access logs and tests.
REASON_DENIED = "denied by policy"
REASON_NO_ALLOW = "no ALLOW policy"
REASON_ALLOWED = "allowed by policy"
REASON_NOT_ALLOWED = "no ALLOW policy matched"


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What is authorized: a connection (L4) or an HTTP request (L7).

    `source_principal` is the peer's SPIFFE id (with or without the
    `spiffe://` prefix), None when the connection is plaintext. `headers`
    has lower-case names. `remote_ip` is the original client address
    (from `Forwarded`/X-Forwarded-For), used by remoteIpBlocks; it defaults
    to `source_ip`.
    """
    source_principal: str | None = None
    source_ip: str = ""
    destination_ip: str = ""
    destination_port: int = 0
    method: str | None = None
    host: str | None = None
    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    remote_ip: str | None = None
    sni: str | None = None
    request_principal: str | None = None   # JWT iss/sub; None without RequestAuthentication


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The outcome. `policy_key` is "<ns>/<name>" of the deciding policy
    (the matching DENY or ALLOW), "" when no policy decided."""
    allowed: bool
    policy_key: str = ""
    reason: str = ""
    audited: tuple[str, ...] = ()   # keys of AUDIT policies that matched
    shadow: tuple[str, ...] = ()    # "<key>:<ALLOW|DENY>" of matching dry-run policies

    @property
    def policy(self) -> str:
        """Alias of `policy_key` (docs/internals.md names it `policy`)."""
        return self.policy_key


def evaluate(policies: Iterable[Authorization], request: Request, layer: str = L7) -> Decision:
    """Decide whether `request` is allowed by `policies` with Istio's order.

    Args:
        policies: every policy that applies to the destination (scope
            filtering is the caller's job).
        request: the connection or HTTP request.
        layer: "L4" (ztunnel, fail-closed on L7 attributes) or "L7" (waypoint).

    Returns:
        A Decision; never raises on odd policy content (bad CIDRs and
        ports are skipped, as istiod does).
    """
    if layer not in (L4, L7):
        raise ValueError(f"layer must be {L4!r} or {L7!r}, not {layer!r}")
    audited: list[str] = []
    shadow: list[str] = []
    allows: list[Authorization] = []
    deny_hit: Authorization | None = None
    for pol in policies:
        if pol.action == CUSTOM:
            if layer == L4:
                continue    # istiod does not send CUSTOM to ztunnel
            # No extension provider exists in shoal: Istio's builder then
            # "will generate deny configs for the specified rules".
            pol = _as_deny(pol)
        if pol.action == AUDIT:
            if layer == L7 and policy_matches(pol, request, layer):
                audited.append(pol.key)
            continue
        if pol.dry_run:
            if policy_matches(pol, request, layer):
                shadow.append(f"{pol.key}:{pol.action}")
            continue
        if pol.action == DENY:
            if deny_hit is None and policy_matches(pol, request, layer):
                deny_hit = pol
        elif pol.action == ALLOW:
            allows.append(pol)
    au, sh = tuple(audited), tuple(shadow)
    if deny_hit is not None:
        return Decision(allowed=False, policy_key=deny_hit.key, reason=REASON_DENIED,
                        audited=au, shadow=sh)
    if not allows:
        return Decision(allowed=True, reason=REASON_NO_ALLOW, audited=au, shadow=sh)
    for pol in allows:
        if policy_matches(pol, request, layer):
            return Decision(allowed=True, policy_key=pol.key, reason=REASON_ALLOWED,
                            audited=au, shadow=sh)
    return Decision(allowed=False, reason=REASON_NOT_ALLOWED, audited=au, shadow=sh)


def policy_matches(policy: Authorization, request: Request, layer: str = L7) -> bool:
    """True when any rule of `policy` matches (no rules: never)."""
    deny = policy.action != ALLOW
    for r in policy.rules:
        if rule_matches(r, request, layer, deny=deny, namespace=policy.namespace):
            return True
    return False


def rule_matches(rule: Rule, request: Request, layer: str = L7, *,
                 deny: bool = False, namespace: str = "") -> bool:
    """One rule: from (any) AND to (any) AND when (all).

    At L4 the rule is matched as ztunnel matches istiod's translation of it
    (module docstring); `deny` says whether it belongs to a DENY policy.
    `namespace` is the policy's own namespace, the default for bare
    serviceAccounts names.
    """
    if layer == L4:
        return _l4_rule_matches(rule, request, deny, namespace)
    if rule.from_:
        for s in rule.from_:
            if _source_matches(s, request, namespace):
                break
        else:
            return False
    if rule.to:
        for o in rule.to:
            if _operation_matches(o, request):
                break
        else:
            return False
    for c in rule.when:
        if not _condition_matches(c, request):
            return False
    return True


def _l4_rule_matches(rule: Rule, req: Request, deny: bool, namespace: str) -> bool:
    # handleRule: an ALLOW rule with any HTTP attribute is dropped.
    if not deny and rule_has_l7(rule):
        return False
    # Each group is one clause of matches; an empty match (an entry with no
    # L4 field) is skipped, so a clause of only empty matches fails.
    if rule.to:
        for o in rule.to:
            if (o.ports or o.not_ports) and _l4_operation_matches(o, req):
                break
        else:
            return False
    if rule.from_:
        for s in rule.from_:
            if _has_l4_source_field(s) and _l4_source_matches(s, req, namespace):
                break
        else:
            return False
    for c in rule.when:
        # A non-L4 key becomes an empty match: its clause never matches.
        if c.key not in L4_WHEN_KEYS or not _condition_matches(c, req):
            return False
    return True


def rule_has_l7(rule: Rule) -> bool:
    """Whether the rule uses an attribute only an L7 proxy can evaluate."""
    for s in rule.from_:
        if _source_http_fields(s):
            return True
    for o in rule.to:
        if _operation_http_fields(o):
            return True
    return any(c.key not in L4_WHEN_KEYS for c in rule.when)


# Istio's YAML names of the fields ztunnel cannot evaluate (istiod's
# httpSources / httpOperations), in istiod's order.
_SOURCE_HTTP_FIELDS = (("remote_ip_blocks", "remoteIpBlocks"),
                       ("not_remote_ip_blocks", "notRemoteIpBlocks"),
                       ("request_principals", "requestPrincipals"),
                       ("not_request_principals", "notRequestPrincipals"),
                       ("trust_domains", "trustDomains"),
                       ("not_trust_domains", "notTrustDomains"))
_OPERATION_HTTP_FIELDS = (("hosts", "hosts"), ("not_hosts", "notHosts"),
                          ("methods", "methods"), ("not_methods", "notMethods"),
                          ("paths", "paths"), ("not_paths", "notPaths"))


def _source_http_fields(s: Source) -> list[str]:
    return [name for attr, name in _SOURCE_HTTP_FIELDS if getattr(s, attr)]


def _operation_http_fields(o: Operation) -> list[str]:
    return [name for attr, name in _OPERATION_HTTP_FIELDS if getattr(o, attr)]


def _has_l4_source_field(s: Source) -> bool:
    return bool(s.principals or s.not_principals or s.namespaces or s.not_namespaces
                or s.service_accounts or s.not_service_accounts or s.ip_blocks
                or s.not_ip_blocks)


def _as_deny(pol: Authorization) -> Authorization:
    return dataclasses.replace(pol, action=DENY)


# --------------------------------------------------------------------------
# status: what istiod reports for a policy it sends (or not) to ztunnel

STATUS_REASON = "UnsupportedValue"
_HTTP_RULE_FMT = ("ztunnel does not support HTTP attributes (found: {found}). "
                  "In ambient mode you must use a waypoint proxy to enforce HTTP rules. {tail}")
_HTTP_DENY_NO_EFFECT = ("After omitting unsupported HTTP attributes, this DENY policy has no "
                        "enforceable rules at ztunnel and will have no effect. Deploy a waypoint "
                        "proxy and use a targetRef to enforce this policy.")
_HTTP_DENY_MIXED = ("DENY policy with HTTP attributes is enforced without the HTTP rules. "
                    "This will be more restrictive than requested.")
_HTTP_ALLOW = ("Within an ALLOW policy, rules matching HTTP attributes are omitted. "
               "This will be more restrictive than requested.")


def l4_status(policy: Authorization) -> tuple[str, str] | None:
    """istiod's status for `policy` at ztunnel: (reason, message), or None.

    Mirrors convertAuthorizationPolicy: targetRef policies are not for
    ztunnel (None); AUDIT and CUSTOM are not supported; HTTP attributes are
    listed (sorted) with the consequence for this action.
    """
    if policy.target_refs:
        return None
    if policy.action in (AUDIT, CUSTOM):
        return STATUS_REASON, f"ztunnel does not support the {policy.action} action"
    found = sorted({name for r in policy.rules for name in _rule_http_attributes(r)})
    if not found:
        return None
    if policy.action == DENY:
        tail = _HTTP_DENY_MIXED if l4_has_effective_rules(policy) else _HTTP_DENY_NO_EFFECT
    else:
        tail = _HTTP_ALLOW
    return STATUS_REASON, _HTTP_RULE_FMT.format(found=", ".join(found), tail=tail)


def l4_has_effective_rules(policy: Authorization) -> bool:
    """Whether some rule can still match at ztunnel (istiod's hasEffectiveRules)."""
    for r in policy.rules:
        if policy.action == ALLOW and rule_has_l7(r):
            continue
        if r.to and not any(o.ports or o.not_ports for o in r.to):
            continue
        if r.from_ and not any(_has_l4_source_field(s) for s in r.from_):
            continue
        if any(c.key not in L4_WHEN_KEYS for c in r.when):
            continue
        return True
    return False


def _rule_http_attributes(rule: Rule) -> list[str]:
    out = [n for s in rule.from_ for n in _source_http_fields(s)]
    out += [n for o in rule.to for n in _operation_http_fields(o)]
    out += [c.key for c in rule.when if c.key not in L4_WHEN_KEYS]
    return out


# --------------------------------------------------------------------------
# clauses

def _field(values: Sequence[str], not_values: Sequence[str], one) -> bool:
    """A positive field (any value matches) AND its not- twin (none matches).

    `one(v)` tells whether one configured value matches the request.
    (Plain loops: this is the innermost call of every evaluation.)
    """
    if values:
        for v in values:
            if one(v):
                break
        else:
            return False
    for v in not_values:
        if one(v):
            return False
    return True


def _l4_source_matches(s: Source, req: Request, namespace: str) -> bool:
    # Each field is checked only when set: most sources use one or two.
    principal = strip_spiffe(req.source_principal)
    if (s.principals or s.not_principals) and not _field(
            s.principals, s.not_principals, lambda v: string_match(v, principal)):
        return False
    if s.namespaces or s.not_namespaces or s.service_accounts or s.not_service_accounts:
        ns, sa = spiffe_parts(principal)
        if not _field(s.namespaces, s.not_namespaces, lambda v: string_match(v, ns)):
            return False
        if not _field(s.service_accounts, s.not_service_accounts,
                      lambda v: _service_account_match(v, namespace, ns, sa)):
            return False
    if (s.ip_blocks or s.not_ip_blocks) and not _field(
            s.ip_blocks, s.not_ip_blocks, lambda v: ip_in_block(req.source_ip, v)):
        return False
    return True


def _source_matches(s: Source, req: Request, namespace: str) -> bool:
    if not _l4_source_matches(s, req, namespace):
        return False
    if s.trust_domains or s.not_trust_domains:
        td = trust_domain_of(strip_spiffe(req.source_principal))
        if not _field(s.trust_domains, s.not_trust_domains, lambda v: string_match(v, td)):
            return False
    if s.remote_ip_blocks or s.not_remote_ip_blocks:
        remote = req.remote_ip or req.source_ip
        if not _field(s.remote_ip_blocks, s.not_remote_ip_blocks,
                      lambda v: ip_in_block(remote, v)):
            return False
    return not (s.request_principals or s.not_request_principals) or _field(
        s.request_principals, s.not_request_principals,
        lambda v: string_match(v, req.request_principal))


def _l4_operation_matches(o: Operation, req: Request) -> bool:
    return _field(o.ports, o.not_ports, lambda v: _port_match(v, req.destination_port))


def _operation_matches(o: Operation, req: Request) -> bool:
    if (o.ports or o.not_ports) and not _l4_operation_matches(o, req):
        return False
    if (o.methods or o.not_methods) and not _field(
            o.methods, o.not_methods, lambda v: req.method is not None and v == req.method):
        return False
    if (o.hosts or o.not_hosts) and not _field(
            o.hosts, o.not_hosts, lambda v: host_match(v, req.host)):
        return False
    if o.paths or o.not_paths:
        path = strip_query(req.path)
        return _field(o.paths, o.not_paths, lambda v: path_match(v, path))
    return True


def _condition_matches(c: Condition, req: Request) -> bool:
    key = c.key
    if key in ("destination.port",):
        one = lambda v: _port_match(v, req.destination_port)  # noqa: E731
    elif key in ("source.ip", "destination.ip", "remote.ip"):
        ip = {"source.ip": req.source_ip, "destination.ip": req.destination_ip,
              "remote.ip": req.remote_ip or req.source_ip}[key]
        one = lambda v: ip_in_block(ip, v)  # noqa: E731
    else:
        actual = _attribute(key, req)
        one = lambda v: string_match(v, actual)  # noqa: E731
    return _field(c.values, c.not_values, one)


def _attribute(key: str, req: Request) -> str | None:
    """The string value of a `when` key, None when the request has none."""
    principal = strip_spiffe(req.source_principal)
    if key == "source.principal":
        return principal
    if key == "source.namespace":
        return spiffe_parts(principal)[0]
    if key == "connection.sni":
        return req.sni
    if key == "request.auth.principal":
        return req.request_principal
    if key.startswith("request.headers[") and key.endswith("]"):
        return req.headers.get(key[len("request.headers["):-1].lower())
    return None   # request.auth.claims[...] etc.: no JWT support, never present


# --------------------------------------------------------------------------
# value matchers (public: the waypoint and ztunnel tests use them)

@overload
def strip_spiffe(principal: str) -> str: ...
@overload
def strip_spiffe(principal: None) -> None: ...
def strip_spiffe(principal: str | None) -> str | None:
    if principal is not None and principal.startswith(SPIFFE_PREFIX):
        return principal[len(SPIFFE_PREFIX):]
    return principal


def trust_domain_of(principal: str | None) -> str | None:
    """The trust domain of "td/ns/NS/sa/SA", None without a principal."""
    if not principal:
        return None
    return principal.split("/", 1)[0]


@functools.lru_cache(maxsize=4096)
def spiffe_parts(principal: str | None) -> tuple[str | None, str | None]:
    """(namespace, service account) of "td/ns/NS/sa/SA", (None, None) otherwise."""
    if not principal:
        return None, None
    parts = principal.split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        return parts[2], parts[4]
    return None, None


def string_match(pattern: str, value: str | None) -> bool:
    """Istio's string match: "*" (present), "prefix*", "*suffix" or exact.

    A missing value (None) matches nothing, not even "*".
    """
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def path_match(pattern: str, path: str | None) -> bool:
    """Istio `paths`: exact, "/prefix/*", "*suffix" or "*" (query excluded)."""
    return string_match(pattern, path)


def host_match(pattern: str, host: str | None) -> bool:
    """Istio `hosts`: case-insensitive, wildcards; a bare host also matches
    the same host with any port (Envoy sees `:authority` = "host:port")."""
    if host is None:
        return False
    p, h = pattern.lower(), host.lower()
    if string_match(p, h):
        return True
    bare = strip_port(h)
    return bare != h and string_match(p, bare)


def strip_port(host: str) -> str:
    if host.startswith("["):                      # [v6]:port
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host


def strip_query(path: str | None) -> str | None:
    if path is None:
        return None
    cut = len(path)
    for ch in "?#":
        i = path.find(ch)
        if 0 <= i < cut:
            cut = i
    return path[:cut]


@functools.lru_cache(maxsize=4096)
def _network(block: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(block.strip(), strict=False)
    except ValueError:
        return None   # istiod skips entries it cannot parse


@functools.lru_cache(maxsize=16384)
def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def ip_in_block(ip: str | None, block: str) -> bool:
    """CIDR containment; a plain address is a /32 (/128)."""
    if not ip:
        return False
    net, addr = _network(block), _address(ip)
    if net is None or addr is None or net.version != addr.version:
        return False
    return addr in net


def _port_match(value: str, port: int) -> bool:
    try:
        return int(value) == port
    except ValueError:
        return False   # istiod drops ports it cannot parse


def _service_account_match(value: str, policy_ns: str, ns: str | None, sa: str | None) -> bool:
    """serviceAccounts: "ns/sa", or a bare "sa" in the policy's namespace."""
    want_ns, _, want_sa = value.rpartition("/")
    return sa is not None and sa == want_sa and ns == (want_ns or policy_ns)
