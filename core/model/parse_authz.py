"""security.istio.io AuthorizationPolicy (v1 and v1beta1) -> typed resource.

Follows istio/api security/v1beta1/authorization_policy.proto and Istio's
validation webhook: CUSTOM needs a `provider` (it is accepted; ztunnel
ignores it and core.authz explains what the waypoint does); `selector` and
`targetRef(s)` are mutually exclusive; at most 16 targetRefs; ports are
numeric strings; IP blocks parse as CIDRs; the `istio.io/dry-run`
annotation is a Go `strconv.ParseBool` value.
"""

from __future__ import annotations

from shoal.core.model.errors import quote
from shoal.core.model.fields import MAX_PORT, Ctx, join
from shoal.core.model.resources import AuthorizationPolicy, Meta
from shoal.core.records import Condition, Operation, Rule, Source, TargetRef

ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
MAX_TARGET_REFS = 16        # Istio's CRD limit
ANNOTATION_DRY_RUN = "istio.io/dry-run"
# Go's strconv.ParseBool, which istiod uses for the dry-run annotation.
PARSE_BOOL_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
PARSE_BOOL_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

# YAML field -> records.Source attribute
_SOURCE_FIELDS = {
    "principals": "principals", "notPrincipals": "not_principals",
    "requestPrincipals": "request_principals", "notRequestPrincipals": "not_request_principals",
    "namespaces": "namespaces", "notNamespaces": "not_namespaces",
    "serviceAccounts": "service_accounts", "notServiceAccounts": "not_service_accounts",
    "ipBlocks": "ip_blocks", "notIpBlocks": "not_ip_blocks",
    "remoteIpBlocks": "remote_ip_blocks", "notRemoteIpBlocks": "not_remote_ip_blocks",
    "trustDomains": "trust_domains", "notTrustDomains": "not_trust_domains",
}
_OPERATION_FIELDS = {
    "hosts": "hosts", "notHosts": "not_hosts", "ports": "ports", "notPorts": "not_ports",
    "methods": "methods", "notMethods": "not_methods", "paths": "paths", "notPaths": "not_paths",
}
_TARGET_KINDS = ("Gateway", "GatewayClass", "Service", "ServiceEntry")


def parse_authorization_policy(ctx: Ctx, meta: Meta, doc: dict) -> AuthorizationPolicy:
    spec = ctx.map(doc, "spec", "")
    ctx.known_keys(spec, "spec", frozenset({"selector", "targetRef", "targetRefs", "action",
                                            "provider", "rules"}))
    action = spec.get("action", "ALLOW")
    if action not in ACTIONS:
        ctx.err("spec.action", f"must be one of {', '.join(ACTIONS)}; got {quote(action)}")
    if "provider" in spec and action != "CUSTOM":
        ctx.err("spec.provider", "is only valid with action CUSTOM")
    if action == "CUSTOM":
        # Istio's webhook: CUSTOM needs the extension provider it delegates to.
        provider = ctx.map(spec, "provider", "spec", required=True)
        if provider:
            ctx.known_keys(provider, "spec.provider", frozenset({"name"}))
            ctx.str(provider, "name", "spec.provider", required=True)
    selector = None
    if "selector" in spec:
        sel = ctx.map(spec, "selector", "spec")
        ctx.known_keys(sel, "spec.selector", frozenset({"matchLabels"}))
        selector = ctx.str_map(sel, "matchLabels", "spec.selector")
    refs = _target_refs(ctx, spec, meta)
    if selector is not None and refs:
        ctx.err("spec.targetRefs", "cannot be combined with spec.selector")
    rules = tuple(_rule(ctx, r, p) for p, r in ctx.maps(spec, "rules", "spec"))
    dry_run = parse_dry_run(ctx, meta.annotations.get(ANNOTATION_DRY_RUN, ""))
    return AuthorizationPolicy(meta=meta, action=action if action in ACTIONS else "ALLOW",
                               selector=selector, target_refs=refs, rules=rules, dry_run=dry_run)


def parse_dry_run(ctx: Ctx, value: str) -> bool:
    """The annotation as istiod reads it: empty is unset (false), else ParseBool."""
    if value == "" or value in PARSE_BOOL_FALSE:
        return False
    if value in PARSE_BOOL_TRUE:
        return True
    ctx.err(f"metadata.annotations[{ANNOTATION_DRY_RUN}]",
            f"must be a boolean as Go's strconv.ParseBool reads it (1, t, T, TRUE, true, True, "
            f"0, f, F, FALSE, false, False); got {quote(value)}")
    return False


def _target_refs(ctx: Ctx, spec: dict, meta: Meta) -> tuple[TargetRef, ...]:
    items = ctx.maps(spec, "targetRefs", "spec", max_items=MAX_TARGET_REFS)
    if "targetRef" in spec:
        if items:
            ctx.err("spec.targetRef", "use either targetRef or targetRefs, not both")
        single = ctx.map(spec, "targetRef", "spec")
        items = [("spec.targetRef", single)] if single else []
    refs = []
    for path, ref in items:
        ctx.known_keys(ref, path, frozenset({"group", "kind", "name", "namespace"}))
        kind = ctx.str(ref, "kind", path, required=True, choices=_TARGET_KINDS)
        name = ctx.str(ref, "name", path, required=True)
        ns = ctx.str(ref, "namespace", path)
        if ns and ns != meta.namespace:
            ctx.err(join(path, "namespace"), "must be the policy's own namespace (Istio refuses "
                    "cross-namespace targetRefs)")
        refs.append(TargetRef(kind=kind, name=name, group=ctx.str(ref, "group", path),
                              namespace=meta.namespace))
    return tuple(refs)


def _rule(ctx: Ctx, rule: dict, path: str) -> Rule:
    ctx.known_keys(rule, path, frozenset({"from", "to", "when"}))
    sources = []
    for fpath, item in ctx.maps(rule, "from", path):
        ctx.known_keys(item, fpath, frozenset({"source"}))
        sources.append(_source(ctx, ctx.map(item, "source", fpath, required=True), join(fpath, "source")))
    ops = []
    for tpath, item in ctx.maps(rule, "to", path):
        ctx.known_keys(item, tpath, frozenset({"operation"}))
        ops.append(_operation(ctx, ctx.map(item, "operation", tpath, required=True),
                              join(tpath, "operation")))
    conds = [_condition(ctx, c, cpath) for cpath, c in ctx.maps(rule, "when", path)]
    return Rule(from_=tuple(sources), to=tuple(ops), when=tuple(conds))


def _source(ctx: Ctx, src: dict, path: str) -> Source:
    ctx.known_keys(src, path, frozenset(_SOURCE_FIELDS))
    values = {attr: ctx.strs(src, key, path) for key, attr in _SOURCE_FIELDS.items()}
    for key in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
        for i, block in enumerate(values[_SOURCE_FIELDS[key]]):
            ctx.cidr(block, join(join(path, key), i))
    if not any(values.values()):
        ctx.err(path, "must set at least one field (Istio refuses an empty source)")
    return Source(**values)


def _operation(ctx: Ctx, op: dict, path: str) -> Operation:
    ctx.known_keys(op, path, frozenset(_OPERATION_FIELDS))
    values = {attr: ctx.strs(op, key, path) for key, attr in _OPERATION_FIELDS.items()}
    for key in ("ports", "notPorts"):
        for i, port in enumerate(values[_OPERATION_FIELDS[key]]):
            if not port.isdigit() or not 0 < int(port) <= MAX_PORT:
                ctx.err(join(join(path, key), i), f"must be a port number as a string; got {quote(port)}")
    if not any(values.values()):
        ctx.err(path, "must set at least one field (Istio refuses an empty operation)")
    return Operation(**values)


def _condition(ctx: Ctx, cond: dict, path: str) -> Condition:
    ctx.known_keys(cond, path, frozenset({"key", "values", "notValues"}))
    key = ctx.str(cond, "key", path, required=True)
    values = ctx.strs(cond, "values", path)
    not_values = ctx.strs(cond, "notValues", path)
    if not values and not not_values:
        ctx.err(path, "must set values or notValues")
    return Condition(key=key, values=values, not_values=not_values)
