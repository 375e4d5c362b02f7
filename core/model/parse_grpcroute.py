"""gateway.networking.k8s.io/v1 GRPCRoute, compiled to HTTPRoute rules.

A gRPC call is an HTTP/2 POST to `/<service>/<method>`, so a GRPCRoute
rule is an HTTPRoute rule whose method match is a path match:

| GRPCMethodMatch                    | path match                          |
|------------------------------------|-------------------------------------|
| Exact, service and method          | Exact `/<service>/<method>`         |
| Exact, service only                | PathPrefix `/<service>` (element-wise) |
| Exact, method only                 | RegularExpression `/[^/]+/<method>` |
| RegularExpression                  | RegularExpression `/<svc re>/<method re>` (`[^/]+` for a missing part) |

GRPCRoute's precedence differs from HTTPRoute's: the most characters of a
matching service, then of a matching method, then the most header matches
(apis/v1/grpcroute_types.go, "GRPCRouteRule"); `method_specificity` reads
those counts back from the path match for the waypoint's route table.

Validation follows the CRD (reference A.4): a method match names a service
or a method or both; Exact values follow the CRD patterns; regexes compile;
only RequestHeaderModifier, ResponseHeaderModifier and RequestMirror
filters exist on a GRPCRoute (rule or backendRef), the first two at most
once per list.
"""

from __future__ import annotations

import re

from shoal.core.model.fields import Ctx, join
from shoal.core.model.parse_gateway import (MAX_BACKENDS, MAX_FILTERS, MAX_MATCHES,
                                            _backend, _check_repeats, _filter, _name_value,
                                            parse_route)
from shoal.core.model.resources import HTTPRoute, Meta
from shoal.core.records import HeaderMatch, PathMatch, RouteMatch, RouteRule

GRPC_FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")
# The CRD's patterns for Exact values (GRPCMethodMatch).
_SERVICE_RE = re.compile(r"(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*")
_METHOD_RE = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
MAX_GRPC_NAME = 1024      # CRD maxLength of service and method
_ANY_PART = "[^/]+"       # one path element: a service or a method of any name
_RULE_KEYS = frozenset({"name", "matches", "filters", "backendRefs"})


def parse_grpcroute(ctx: Ctx, meta: Meta, doc: dict) -> HTTPRoute:
    return parse_route(ctx, meta, doc, _rule)


def _rule(ctx: Ctx, rule: dict, path: str, meta: Meta) -> RouteRule:
    ctx.known_keys(rule, path, _RULE_KEYS)
    matches = tuple(_match(ctx, m, mpath) for mpath, m in
                    ctx.maps(rule, "matches", path, max_items=MAX_MATCHES)) or (RouteMatch(),)
    parsed = (_filter(ctx, item, fpath, meta, GRPC_FILTER_TYPES) for fpath, item in
              ctx.maps(rule, "filters", path, max_items=MAX_FILTERS))
    filters = tuple(f for f in parsed if f is not None)
    _check_repeats(ctx, filters, path)
    backends = tuple(_backend(ctx, b, bpath, meta, GRPC_FILTER_TYPES) for bpath, b in
                     ctx.maps(rule, "backendRefs", path, max_items=MAX_BACKENDS))
    return RouteRule(name=ctx.str(rule, "name", path), matches=matches, filters=filters,
                     backend_refs=backends)


def _match(ctx: Ctx, m: dict, path: str) -> RouteMatch:
    ctx.known_keys(m, path, frozenset({"method", "headers"}))
    headers = tuple(HeaderMatch(**_name_value(ctx, h, hpath, regex=True))
                    for hpath, h in ctx.maps(m, "headers", path))
    if "method" not in m:
        return RouteMatch(headers=headers)
    return RouteMatch(path=_method_path(ctx, ctx.map(m, "method", path), join(path, "method")),
                      headers=headers)


def _method_path(ctx: Ctx, mm: dict, path: str) -> PathMatch:
    ctx.known_keys(mm, path, frozenset({"type", "service", "method"}))
    mtype = ctx.str(mm, "type", path, default="Exact", choices=("Exact", "RegularExpression"))
    service = ctx.str(mm, "service", path)
    method = ctx.str(mm, "method", path)
    if not service and not method:
        ctx.err(path, "one or both of service and method must be specified")
        return PathMatch()
    for field, value in (("service", service), ("method", method)):
        if len(value) > MAX_GRPC_NAME:
            ctx.err(join(path, field), f"must be at most {MAX_GRPC_NAME} characters")
    if mtype == "RegularExpression":
        for field, value in (("service", service), ("method", method)):
            if value:
                ctx.regex(value, join(path, field))
        return PathMatch(type="RegularExpression",
                         value=f"/{service or _ANY_PART}/{method or _ANY_PART}")
    if service and not _SERVICE_RE.fullmatch(service):
        ctx.err(join(path, "service"), f"must be a fully qualified gRPC service name; got {service!r}")
    if method and not _METHOD_RE.fullmatch(method):
        ctx.err(join(path, "method"), f"must be a gRPC method name; got {method!r}")
    if service and method:
        return PathMatch(type="Exact", value=f"/{service}/{method}")
    if service:
        return PathMatch(type="PathPrefix", value=f"/{service}")
    return PathMatch(type="RegularExpression", value=f"/{_ANY_PART}/{re.escape(method)}")


def method_specificity(pm: PathMatch) -> tuple[int, int]:
    """(service characters, method characters) of a compiled method match;
    (0, 0) for a rule without one (it matches every method)."""
    if pm.type == "PathPrefix":
        return (len(pm.value.strip("/")), 0)
    service, _, method = pm.value[1:].partition("/")
    return (0 if service == _ANY_PART else len(service), 0 if method == _ANY_PART else len(method))
