"""gateway.networking.k8s.io/v1 Gateway (waypoints) and HTTPRoute.

Validation follows the Gateway API CRD rules shoal relies on (reference A.4):
a rule cannot combine RequestRedirect with URLRewrite, a filter type appears
at most once per rule (RequestMirror may repeat), ReplacePrefixMatch needs a
PathPrefix match, regexes compile, durations are Gateway API durations and
backendRequest <= request.
"""

from __future__ import annotations

from shoal.core.constants import LABEL_WAYPOINT_FOR, WAYPOINT_GATEWAY_CLASS
from shoal.core.model.errors import quote
from shoal.core.model.fields import Ctx, join, parse_duration
from shoal.core.model.resources import Gateway, HTTPRoute, Meta
from shoal.core.records import (BackendRef, HeaderMatch, HeaderModifier, HTTPFilter, ParentRef,
                             PathMatch, PathModifier, QueryParamMatch, RequestMirror,
                             RequestRedirect, Retry, RouteMatch, RouteRule, Timeouts, URLRewrite)

WAYPOINT_FOR = ("service", "workload", "all", "none")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
REDIRECT_CODES = (301, 302, 303, 307, 308)
MAX_RULES = 16              # Gateway API CRD maxItems for rules
MAX_MATCHES = 64            # ... for matches
MAX_BACKENDS = 16           # ... for backendRefs
MAX_PARENT_REFS = 32
MAX_WEIGHT = 1_000_000
MAX_FILTERS = 16            # ... for filters
REPEATABLE_FILTERS = frozenset({"RequestMirror"})
FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
                "URLRewrite", "RequestMirror")
# On a backendRef a filter runs once that backend is chosen: a redirect
# there would answer without the backend, which only the rule can decide,
# so (as Istio) it is refused; the others apply to the forwarded request.
BACKEND_FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite",
                        "RequestMirror")
_FILTER_FIELDS = {"RequestHeaderModifier": "requestHeaderModifier",
                  "ResponseHeaderModifier": "responseHeaderModifier",
                  "RequestRedirect": "requestRedirect", "URLRewrite": "urlRewrite",
                  "RequestMirror": "requestMirror"}
_RULE_KEYS = frozenset({"name", "matches", "filters", "backendRefs", "timeouts", "retry"})


def parse_gateway(ctx: Ctx, meta: Meta, doc: dict) -> Gateway:
    spec = ctx.map(doc, "spec", "", required=True)
    cls = ctx.str(spec, "gatewayClassName", "spec", required=True)
    wp_for = meta.labels.get(LABEL_WAYPOINT_FOR, "service")
    if wp_for not in WAYPOINT_FOR:
        ctx.err(f"metadata.labels[{LABEL_WAYPOINT_FOR}]",
                f"must be one of {', '.join(WAYPOINT_FOR)}; got {quote(wp_for)}")
    addrs = []
    for apath, a in ctx.maps(spec, "addresses", "spec"):
        value = ctx.str(a, "value", apath, required=True)
        if value and ctx.str(a, "type", apath, default="IPAddress") == "IPAddress":
            if ctx.ip(value, join(apath, "value")):
                addrs.append(value)
    for lpath, listener in ctx.maps(spec, "listeners", "spec"):
        ctx.port(listener, "port", lpath, required=True)
    return Gateway(meta=meta, class_name=cls or WAYPOINT_GATEWAY_CLASS, waypoint_for=wp_for,
                   addresses=tuple(addrs))


def parse_httproute(ctx: Ctx, meta: Meta, doc: dict) -> HTTPRoute:
    return parse_route(ctx, meta, doc, _rule)


def parse_route(ctx: Ctx, meta: Meta, doc: dict, rule_parser) -> HTTPRoute:
    """The spec common to HTTPRoute and GRPCRoute; `rule_parser` reads a rule."""
    spec = ctx.map(doc, "spec", "", required=True)
    ctx.known_keys(spec, "spec", frozenset({"parentRefs", "hostnames", "rules"}))
    parents = tuple(_parent(ctx, p, path) for path, p in
                    ctx.maps(spec, "parentRefs", "spec", max_items=MAX_PARENT_REFS))
    hostnames = ctx.strs(spec, "hostnames", "spec")
    rules = tuple(rule_parser(ctx, r, path, meta) for path, r in
                  ctx.maps(spec, "rules", "spec", max_items=MAX_RULES))
    return HTTPRoute(meta=meta, parent_refs=parents, hostnames=hostnames, rules=rules)


def _parent(ctx: Ctx, p: dict, path: str) -> ParentRef:
    ctx.known_keys(p, path, frozenset({"group", "kind", "name", "namespace", "sectionName", "port"}))
    kind = ctx.str(p, "kind", path, default="Gateway", choices=("Gateway", "Service"))
    default_group = "gateway.networking.k8s.io" if kind == "Gateway" else ""
    return ParentRef(kind=kind, name=ctx.str(p, "name", path, required=True),
                     namespace=ctx.str(p, "namespace", path),
                     group=ctx.str(p, "group", path, default=default_group),
                     port=ctx.port(p, "port", path), section_name=ctx.str(p, "sectionName", path))


def _rule(ctx: Ctx, rule: dict, path: str, meta: Meta) -> RouteRule:
    ctx.known_keys(rule, path, _RULE_KEYS)
    matches = tuple(_match(ctx, m, mpath) for mpath, m in
                    ctx.maps(rule, "matches", path, max_items=MAX_MATCHES)) or (RouteMatch(),)
    parsed = (_filter(ctx, item, fpath, meta) for fpath, item in
              ctx.maps(rule, "filters", path, max_items=MAX_FILTERS))
    filters = tuple(f for f in parsed if f is not None)
    _check_filters(ctx, filters, matches, path)
    backends = []
    for bpath, b in ctx.maps(rule, "backendRefs", path, max_items=MAX_BACKENDS):
        backends.append(_backend(ctx, b, bpath, meta, BACKEND_FILTER_TYPES))
        _check_filters(ctx, backends[-1].filters, matches, bpath)
    if backends and any(f.type == "RequestRedirect" for f in filters):
        ctx.err(join(path, "backendRefs"), "must be empty when the rule has a RequestRedirect filter")
    return RouteRule(name=ctx.str(rule, "name", path), matches=matches, filters=filters,
                     backend_refs=tuple(backends), timeouts=_timeouts(ctx, rule, path),
                     retry=_retry(ctx, rule, path))


def _match(ctx: Ctx, m: dict, path: str) -> RouteMatch:
    ctx.known_keys(m, path, frozenset({"path", "headers", "queryParams", "method"}))
    pm = ctx.map(m, "path", path)
    ppath = join(path, "path")
    ptype = ctx.str(pm, "type", ppath, default="PathPrefix",
                    choices=("Exact", "PathPrefix", "RegularExpression"))
    value = ctx.str(pm, "value", ppath, default="/")
    if ptype == "RegularExpression":
        ctx.regex(value, join(ppath, "value"))
    elif not value.startswith("/"):
        ctx.err(join(ppath, "value"), f"must start with \"/\"; got {quote(value)}")
    headers = tuple(HeaderMatch(**_name_value(ctx, h, hpath, regex=True))
                    for hpath, h in ctx.maps(m, "headers", path))
    params = tuple(QueryParamMatch(**_name_value(ctx, q, qpath, regex=True))
                   for qpath, q in ctx.maps(m, "queryParams", path))
    method = ctx.str(m, "method", path, choices=METHODS)
    return RouteMatch(path=PathMatch(type=ptype, value=value), headers=headers,
                      query_params=params, method=method)


def _name_value(ctx: Ctx, item: dict, path: str, *, regex: bool) -> dict:
    ctx.known_keys(item, path, frozenset({"type", "name", "value"}))
    mtype = ctx.str(item, "type", path, default="Exact", choices=("Exact", "RegularExpression"))
    value = ctx.str(item, "value", path, required=True)
    if regex and mtype == "RegularExpression":
        ctx.regex(value, join(path, "value"))
    return {"name": ctx.str(item, "name", path, required=True), "value": value, "type": mtype}


def _filter(ctx: Ctx, f: dict, path: str, meta: Meta,
            allowed: tuple[str, ...] = FILTER_TYPES) -> HTTPFilter | None:
    ftype = ctx.str(f, "type", path, required=True)
    if ftype not in allowed:
        if ftype:
            ctx.err(join(path, "type"), f"filter {quote(ftype)} is not supported here; use one of "
                    f"{', '.join(allowed)}")
        return None
    field = _FILTER_FIELDS[ftype]
    body = ctx.map(f, field, path, required=True)
    bpath = join(path, field)
    if ftype in ("RequestHeaderModifier", "ResponseHeaderModifier"):
        mod = _header_modifier(ctx, body, bpath)
        if ftype.startswith("Request"):
            return HTTPFilter(type=ftype, request_header_modifier=mod)
        return HTTPFilter(type=ftype, response_header_modifier=mod)
    if ftype == "RequestRedirect":
        return HTTPFilter(type=ftype, request_redirect=_redirect(ctx, body, bpath))
    if ftype == "URLRewrite":
        ctx.known_keys(body, bpath, frozenset({"hostname", "path"}))
        return HTTPFilter(type=ftype, url_rewrite=URLRewrite(
            hostname=ctx.str(body, "hostname", bpath), path=_path_modifier(ctx, body, bpath)))
    return HTTPFilter(type=ftype, request_mirror=_mirror(ctx, body, bpath, meta))


def _header_modifier(ctx: Ctx, body: dict, path: str) -> HeaderModifier:
    ctx.known_keys(body, path, frozenset({"set", "add", "remove"}))
    pairs = {}
    for op in ("set", "add"):
        items = [_name_value(ctx, h, hpath, regex=False) for hpath, h in ctx.maps(body, op, path)]
        pairs[op] = tuple((h["name"], h["value"]) for h in items if h["name"])
    return HeaderModifier(set=pairs["set"], add=pairs["add"], remove=ctx.strs(body, "remove", path))


def _path_modifier(ctx: Ctx, body: dict, path: str) -> PathModifier | None:
    if "path" not in body:
        return None
    pm = ctx.map(body, "path", path)
    ppath = join(path, "path")
    ptype = ctx.str(pm, "type", ppath, required=True,
                    choices=("ReplaceFullPath", "ReplacePrefixMatch"))
    field = "replaceFullPath" if ptype == "ReplaceFullPath" else "replacePrefixMatch"
    value = ctx.str(pm, field, ppath, required=bool(ptype))
    return PathModifier(type=ptype or "ReplaceFullPath", value=value)


def _redirect(ctx: Ctx, body: dict, path: str) -> RequestRedirect:
    ctx.known_keys(body, path, frozenset({"scheme", "hostname", "path", "port", "statusCode"}))
    return RequestRedirect(scheme=ctx.str(body, "scheme", path, choices=("http", "https")),
                           hostname=ctx.str(body, "hostname", path),
                           path=_path_modifier(ctx, body, path), port=ctx.port(body, "port", path),
                           status_code=_status(ctx, body, path))


def _status(ctx: Ctx, body: dict, path: str) -> int:
    code = ctx.int(body, "statusCode", path, default=302)
    if code not in REDIRECT_CODES:
        ctx.err(join(path, "statusCode"), f"must be one of {REDIRECT_CODES}; got {code}")
        return 302
    return code


def _mirror(ctx: Ctx, body: dict, path: str, meta: Meta) -> RequestMirror:
    ctx.known_keys(body, path, frozenset({"backendRef", "percent", "fraction"}))
    backend = _backend(ctx, ctx.map(body, "backendRef", path, required=True),
                       join(path, "backendRef"), meta)
    percent = 100.0
    if "percent" in body:
        percent = float(ctx.int(body, "percent", path, default=100, lo=0, hi=100))
    if "fraction" in body:
        frac = ctx.map(body, "fraction", path)
        num = ctx.int(frac, "numerator", join(path, "fraction"), required=True, lo=0)
        den = ctx.int(frac, "denominator", join(path, "fraction"), default=100, lo=1)
        if num > den:
            ctx.err(join(path, "fraction"), "numerator must not exceed denominator")
        percent = 100.0 * min(num, den) / den
    return RequestMirror(backend=backend, percent=percent)


def _backend(ctx: Ctx, b: dict, path: str, meta: Meta,
             filter_types: tuple[str, ...] = ()) -> BackendRef:
    """A backendRef; `filter_types` are the filters allowed on it (none for a
    mirror's backendRef, which has no `filters` field)."""
    keys = {"group", "kind", "name", "namespace", "port", "weight"}
    ctx.known_keys(b, path, frozenset(keys | ({"filters"} if filter_types else set())))
    kind = ctx.str(b, "kind", path, default="Service", choices=("Service",))
    port = ctx.port(b, "port", path, required=kind == "Service")
    filters: tuple[HTTPFilter, ...] = ()
    if filter_types:
        parsed = (_filter(ctx, item, fpath, meta, filter_types)
                  for fpath, item in ctx.maps(b, "filters", path, max_items=MAX_FILTERS))
        filters = tuple(f for f in parsed if f is not None)
        _check_repeats(ctx, filters, path)
    return BackendRef(name=ctx.str(b, "name", path, required=True),
                      namespace=ctx.str(b, "namespace", path) or meta.namespace, port=port,
                      weight=ctx.int(b, "weight", path, default=1, lo=0, hi=MAX_WEIGHT), kind=kind,
                      filters=filters)


def _check_repeats(ctx: Ctx, filters: tuple[HTTPFilter, ...], path: str) -> set[str]:
    seen: set[str] = set()
    for f in filters:
        if f.type in seen and f.type not in REPEATABLE_FILTERS:
            ctx.err(join(path, "filters"), f"filter type {f.type} may appear only once per rule")
        seen.add(f.type)
    return seen


def _check_filters(ctx: Ctx, filters: tuple[HTTPFilter, ...], matches: tuple[RouteMatch, ...],
                   path: str) -> None:
    seen = _check_repeats(ctx, filters, path)
    if {"RequestRedirect", "URLRewrite"} <= seen:
        ctx.err(join(path, "filters"), "RequestRedirect and URLRewrite cannot be used in the same rule")
    for f in filters:
        mod = (f.request_redirect or f.url_rewrite)
        if mod is not None and mod.path is not None and mod.path.type == "ReplacePrefixMatch":
            if any(m.path.type != "PathPrefix" for m in matches):
                ctx.err(join(path, "filters"), "ReplacePrefixMatch requires every match to use "
                        "a PathPrefix path match")


def _timeouts(ctx: Ctx, rule: dict, path: str) -> Timeouts:
    if "timeouts" not in rule:
        return Timeouts()
    t = ctx.map(rule, "timeouts", path)
    tpath = join(path, "timeouts")
    ctx.known_keys(t, tpath, frozenset({"request", "backendRequest"}))
    request = parse_duration(ctx, t["request"], join(tpath, "request")) if "request" in t else None
    backend = (parse_duration(ctx, t["backendRequest"], join(tpath, "backendRequest"))
               if "backendRequest" in t else None)
    if request is not None and backend is not None and backend > request:
        ctx.err(join(tpath, "backendRequest"), "must not be longer than timeouts.request")
    return Timeouts(request=request, backend_request=backend)


def _retry(ctx: Ctx, rule: dict, path: str) -> Retry | None:
    if "retry" not in rule:
        return None
    r = ctx.map(rule, "retry", path)
    rpath = join(path, "retry")
    ctx.known_keys(r, rpath, frozenset({"attempts", "codes", "backoff"}))
    codes = []
    for i, code in enumerate(ctx.list(r, "codes", rpath)):
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            ctx.err(join(join(rpath, "codes"), i), f"must be an HTTP status 400-599; got {quote(code)}")
        else:
            codes.append(code)
    backoff = parse_duration(ctx, r["backoff"], join(rpath, "backoff")) if "backoff" in r else None
    return Retry(attempts=ctx.int(r, "attempts", rpath, default=2, lo=0),
                 codes=tuple(codes) or (503,), backoff=0.025 if backoff is None else backoff)
