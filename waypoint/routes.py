"""HTTPRoute matching and selection with Gateway API precedence (pure).

Gateway API v1 (apis/v1/httproute_types.go, "HTTPRouteRule" and
"HTTPRouteMatch" docs), across every rule of every route attached to the
destination:

1. hostname: the most characters in a matching non-wildcard hostname, then
   the most characters in a matching hostname (a route without hostnames
   matches every host and is the least specific);
2. an Exact path match, then the longest PathPrefix match, then
   RegularExpression (implementation-specific; we rank it last, as Envoy
   does for Istio);
3. a method match; 4. the most header matches; 5. the most query-param
   matches;
(a GRPCRoute ranks its rules by the characters of a matching service,
then of a matching method, then header matches: see
core/model/parse_grpcroute.py)
6. the oldest route (`creation_index`), then "{namespace}/{name}" in
   alphabetical order; 7. within a route, the first matching rule (and the
   first matching match of that rule).

`RouteTable.select` returns the winning (route, rule, match) or None, in
which case the waypoint forwards to the original service.

Which routes a request sees (GEP-1294, "producer and consumer routes"):
a route in the Service's own namespace (a producer route) applies to every
client; a route in another namespace (a consumer route) applies only to
clients of its own namespace, and for them replaces the producer routes.
`routes_for_client` picks that set.

Matching details:
- PathPrefix is element-wise: "/foo" matches "/foo", "/foo/" and "/foo/bar"
  but not "/foobar"; a trailing "/" in the prefix is ignored.
- RegularExpression (path, header, query) must match the whole value, with
  RE2 (core.regex: linear time, Envoy's safe_regex engine and semantics).
- Header names are case-insensitive; several values are joined with ",".
- Query parameter names are case-sensitive; only the first value counts.
- Hostnames: "*.example.com" matches any host with that suffix and at least
  one more label, not "example.com"; a port in the Host is ignored.
"""

from __future__ import annotations

import functools
import random as _random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from shoal.core import regex
from shoal.core.model.parse_grpcroute import method_specificity
from shoal.core.records import BackendRef, HTTPRoute, RouteMatch, RouteRule

# Sort key ranks (smaller first).
_EXACT, _PREFIX, _REGEX = 0, 1, 2
_RANKS = {"Exact": _EXACT, "PathPrefix": _PREFIX, "RegularExpression": _REGEX}


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteInput:
    """The parts of a request routes look at."""
    method: str
    path: str                      # without query
    query: str = ""                # raw query string, no "?"
    host: str = ""                 # Host / :authority, port allowed
    headers: Mapping[str, str] | None = None  # lower-case name -> joined value

    def header(self, name: str) -> str | None:
        return (self.headers or {}).get(name.lower())


@dataclass(frozen=True, slots=True, kw_only=True)
class Selected:
    route: HTTPRoute
    rule: RouteRule
    rule_index: int
    match: RouteMatch


@dataclass(frozen=True, slots=True)
class _Entry:
    key: tuple
    route: HTTPRoute
    route_index: int
    rule: RouteRule
    rule_index: int
    match: RouteMatch


class RouteTable:
    """The routes of one destination, pre-sorted by precedence.

    Build once per routing generation (cheap) and call `select` per request.
    """

    __slots__ = ("_entries", "_routes", "_any_hostnames", "reads_headers")

    def __init__(self, routes: Sequence[HTTPRoute]):
        entries: list[_Entry] = []
        for i, route in enumerate(routes):
            for ri, rule in enumerate(route.rules):
                for mi, m in enumerate(rule.matches or (RouteMatch(),)):
                    entries.append(_Entry(_match_key(m, route, ri, mi), route, i, rule, ri, m))
        entries.sort(key=lambda e: e.key)
        self._entries = tuple(entries)
        self._routes = tuple(routes)
        self._any_hostnames = any(r.hostnames for r in routes)
        # Does `select` look at headers or the query (else its answer is a
        # function of host, method and path: planpath.py caches it)?
        self.reads_headers = any(e.match.headers or e.match.query_params for e in entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def select(self, req: RouteInput) -> Selected | None:
        """The highest-precedence matching rule, None when nothing matches."""
        if self._any_hostnames:
            host = _strip_port(req.host).lower()
            scores = [hostname_score(r.hostnames, host) for r in self._routes]
            top = max((s for s in scores if s is not None), default=None)
            if top is None:
                return None
        else:
            scores, top = None, (0, 0)
        best: tuple[tuple[int, int], _Entry] | None = None
        for e in self._entries:
            score = scores[e.route_index] if scores is not None else top
            if score is None or (best is not None and score <= best[0]):
                continue   # entries are sorted: an equal score seen earlier wins
            if match_matches(e.match, req):
                if score == top:
                    best = (score, e)
                    break      # nothing can beat the most specific hostname
                best = (score, e)
        if best is None:
            return None
        e = best[1]
        return Selected(route=e.route, rule=e.rule, rule_index=e.rule_index, match=e.match)


def _match_key(m: RouteMatch, route: HTTPRoute, rule_index: int, match_index: int) -> tuple:
    p = m.path
    path_rank: tuple[int, ...]
    if route.kind == "GRPCRoute":
        service, method = method_specificity(p)
        path_rank = (-service, -method, _RANKS[p.type])
    elif p.type == "Exact":
        path_rank = (_EXACT, 0)
    elif p.type == "PathPrefix":
        path_rank = (_PREFIX, -len(p.value.rstrip("/") or "/"))
    else:
        path_rank = (_REGEX, -len(p.value))
    return (path_rank, 0 if m.method else 1, -len(m.headers), -len(m.query_params),
            route.creation_index, route.key, rule_index, match_index)


def routes_for_client(routes: Sequence[HTTPRoute], service_namespace: str,
                      client_namespace: str | None) -> list[HTTPRoute]:
    """The routes of a Service that apply to a client of `client_namespace`
    (None: unknown, e.g. plaintext): its consumer routes when it has any,
    else the producer routes; routes of third namespaces never apply."""
    if client_namespace and client_namespace != service_namespace:
        consumer = [r for r in routes if r.namespace == client_namespace]
        if consumer:
            return consumer
    return [r for r in routes if r.namespace == service_namespace]


# --------------------------------------------------------------------------
# matching

def hostname_score(hostnames: Sequence[str], host: str) -> tuple[int, int] | None:
    """Specificity of the best route hostname matching `host` (lower-case,
    no port): (non-wildcard chars, chars); (0, 0) for a route without
    hostnames; None when none matches."""
    if not hostnames:
        return (0, 0)
    best = None
    for h in hostnames:
        h = h.lower()
        if h.startswith("*."):
            ok = host.endswith(h[1:]) and len(host) > len(h) - 1
            score = (0, len(h))
        else:
            ok = host == h
            score = (len(h), len(h))
        if ok and (best is None or score > best):
            best = score
    return best


def match_matches(m: RouteMatch, req: RouteInput) -> bool:
    """All conditions of one HTTPRouteMatch (AND)."""
    if m.method and m.method != req.method:
        return False
    if not path_matches(m.path.type, m.path.value, req.path):
        return False
    for h in m.headers:
        actual = req.header(h.name)
        if actual is None or not _value_matches(h.type, h.value, actual):
            return False
    if m.query_params:
        params = _first_params(req.query)
        for q in m.query_params:
            actual = params.get(q.name)
            if actual is None or not _value_matches(q.type, q.value, actual):
                return False
    return True


def path_matches(kind: str, value: str, path: str) -> bool:
    if kind == "Exact":
        return path == value
    if kind == "PathPrefix":
        prefix = value.rstrip("/")
        if not prefix:
            return True
        return path == prefix or path.startswith(prefix + "/")
    if kind == "RegularExpression":
        return regex.fullmatch(value, path)
    return False


def _value_matches(kind: str, want: str, actual: str) -> bool:
    if kind == "RegularExpression":
        return regex.fullmatch(want, actual)
    return actual == want


@functools.lru_cache(maxsize=1024)
def _first_params(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        out.setdefault(k, v)
    return out


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


# --------------------------------------------------------------------------
# backends

class NoBackend(Exception):
    """Every backendRef has weight 0 (Gateway API: respond 500)."""
    status_hint = 500


def pick_backend(refs: Sequence[BackendRef], rng: _random.Random) -> BackendRef:
    """Weighted choice among `refs` (weight 0 never chosen).

    Raises:
        NoBackend: when no ref has a positive weight.
    """
    if len(refs) == 1 and refs[0].weight > 0:
        return refs[0]
    total = sum(max(r.weight, 0) for r in refs)
    if total <= 0:
        raise NoBackend("all backendRefs have weight 0")
    point = rng.random() * total
    for r in refs:
        w = max(r.weight, 0)
        if point < w:
            return r
        point -= w
    return next(r for r in reversed(refs) if r.weight > 0)   # float rounding
