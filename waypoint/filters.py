"""HTTPRoute filters, timeouts and retries as pure functions.

Gateway API v1 semantics (apis/v1/httproute_types.go):
- RequestHeaderModifier / ResponseHeaderModifier: `set` replaces every
  value of a header, `add` appends one, `remove` drops every value; names
  are case-insensitive. We apply set, then add, then remove (the order
  Envoy applies headers_to_add then headers_to_remove).
- RequestRedirect: scheme, hostname, path (ReplaceFullPath or
  ReplacePrefixMatch), port, statusCode (default 302). Without a port, the
  port is the scheme's well-known port when a scheme is given, else the
  listener port (here the service port the client called). Ports 80 for
  http and 443 for https are left out of Location. The query is kept.
- URLRewrite: hostname replaces Host; path as in RequestRedirect.
- RequestMirror: a copy to another backend for `percent` of requests; the
  response is discarded.
- Filters on a backendRef run only when that backend is chosen, after the
  rule's filters (`plan_backend`).
- Retry: `attempts` retries (so attempts + 1 tries), on the listed status
  codes or a connect failure/reset, with exponential backoff.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass

from shoal.core.addr import bracket, split_host_port
from shoal.core.records import (BackendRef, HeaderModifier, HTTPFilter, PathModifier, RequestMirror,
                             RequestRedirect, Retry, RouteMatch, RouteRule, URLRewrite)
from shoal.waypoint import message
from shoal.waypoint.message import Headers, RequestHead

WELL_KNOWN_PORTS = {"http": 80, "https": 443}

# Envoy's default max retry backoff is 10x the base interval; keeping the
# same cap makes retries behave as Istio users expect.
RETRY_BACKOFF_CAP_FACTOR = 10


def modify_headers(headers: Headers, mod: HeaderModifier | None) -> Headers:
    """Apply one HeaderModifier (set, then add, then remove)."""
    if mod is None:
        return headers
    out = headers
    for name, value in mod.set:
        out = message.set_(out, name, value)
    if mod.add:
        out = out + [(name, value) for name, value in mod.add]
    for name in mod.remove:
        out = message.remove(out, name)
    return out


def rewrite_path(path: str, mod: PathModifier, match: RouteMatch | None) -> str:
    """The new path (no query) for ReplaceFullPath / ReplacePrefixMatch.

    ReplacePrefixMatch replaces the matched PathPrefix element-wise, so
    prefix "/foo" with "/xyz" turns "/foo/bar" into "/xyz/bar" and "/foo"
    into "/xyz"; an empty or "/" replacement yields "/bar" and "/".
    """
    if mod.type == "ReplaceFullPath":
        return mod.value or "/"
    prefix = ""
    if match is not None and match.path.type == "PathPrefix":
        prefix = match.path.value.rstrip("/")
    elif match is not None and match.path.type == "Exact":
        prefix = match.path.value.rstrip("/")
    rest = path[len(prefix):] if path.startswith(prefix) else path
    out = mod.value.rstrip("/") + rest
    return out or "/"


def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


@dataclass(frozen=True, slots=True, kw_only=True)
class Redirect:
    status: int
    location: str


def redirect(req: RequestHead, spec: RequestRedirect, match: RouteMatch | None,
             listener_port: int) -> Redirect:
    """The redirect response for `req` (Location and status)."""
    scheme = spec.scheme or req.scheme
    host, _ = split_host_port(req.authority)
    host = spec.hostname or host
    if spec.port:
        port = spec.port
    elif spec.scheme:
        port = WELL_KNOWN_PORTS.get(spec.scheme, listener_port)
    else:
        port = listener_port
    path = req.path if spec.path is None else rewrite_path(req.path, spec.path, match)
    netloc = bracket(host)
    if port and WELL_KNOWN_PORTS.get(scheme) != port:
        netloc = f"{netloc}:{port}"
    return Redirect(status=spec.status_code or 302,
                    location=f"{scheme}://{netloc}{_with_query(path, req.query)}")


def url_rewrite(req: RequestHead, spec: URLRewrite, match: RouteMatch | None) -> RequestHead:
    """A copy of `req` with the Host and/or path rewritten."""
    out = req.copy()
    if spec.hostname:
        out.authority = spec.hostname
        out.headers = message.set_(out.headers, "host", spec.hostname)
    if spec.path is not None:
        out.target = _with_query(rewrite_path(req.path, spec.path, match), req.query)
    return out


def should_mirror(spec: RequestMirror, rng: _random.Random) -> bool:
    if spec.percent >= 100:
        return True
    if spec.percent <= 0:
        return False
    return rng.random() * 100.0 < spec.percent


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What a matched rule asks the proxy to do with a request."""
    request: RequestHead                   # after header modifier and rewrite
    redirect: Redirect | None = None       # answer directly, no upstream
    response_headers: HeaderModifier | None = None
    mirrors: tuple[RequestMirror, ...] = ()


def plan(req: RequestHead, rule: RouteRule, match: RouteMatch | None,
         listener_port: int, rng: _random.Random) -> Plan:
    """Apply every filter of `rule` in order and say what to do next."""
    return _apply(req, rule.filters, match, listener_port, rng)


def plan_backend(first: Plan, ref: BackendRef, match: RouteMatch | None,
                 listener_port: int, rng: _random.Random) -> Plan:
    """`first` (the rule's plan) with the filters of the chosen backendRef
    applied after the rule's: request changes on top of the rule's, response
    header changes after the rule's, mirrors added."""
    if not ref.filters:
        return first
    more = _apply(first.request, ref.filters, match, listener_port, rng)
    return Plan(request=more.request, redirect=more.redirect,
                response_headers=_merge(first.response_headers, more.response_headers),
                mirrors=first.mirrors + more.mirrors)


def _apply(req: RequestHead, rule_filters: tuple[HTTPFilter, ...], match: RouteMatch | None,
           listener_port: int, rng: _random.Random) -> Plan:
    cur = req
    response_mod: HeaderModifier | None = None
    mirrors: list[RequestMirror] = []
    for f in rule_filters:
        t = f.type
        if t == "RequestHeaderModifier":
            cur = _with_headers(cur, modify_headers(cur.headers, f.request_header_modifier))
        elif t == "ResponseHeaderModifier":
            response_mod = _merge(response_mod, f.response_header_modifier)
        elif t == "RequestRedirect" and f.request_redirect is not None:
            return Plan(request=cur, redirect=redirect(cur, f.request_redirect, match, listener_port),
                        response_headers=response_mod)
        elif t == "URLRewrite" and f.url_rewrite is not None:
            cur = url_rewrite(cur, f.url_rewrite, match)
        elif t == "RequestMirror" and f.request_mirror is not None:
            if should_mirror(f.request_mirror, rng):
                mirrors.append(f.request_mirror)
    return Plan(request=cur, response_headers=response_mod, mirrors=tuple(mirrors))


def _with_headers(req: RequestHead, headers: Headers) -> RequestHead:
    out = req.copy()
    out.headers = headers
    return out


def _merge(a: HeaderModifier | None, b: HeaderModifier | None) -> HeaderModifier | None:
    if a is None:
        return b
    if b is None:
        return a
    return HeaderModifier(set=a.set + b.set, add=a.add + b.add, remove=a.remove + b.remove)


# --------------------------------------------------------------------------
# retries

def retry_allowed(retry: Retry | None, tries_done: int, status: int | None) -> bool:
    """Whether to try again after `tries_done` tries ended with `status`
    (None: connect failure or reset before a response)."""
    if retry is None or tries_done > retry.attempts:
        return False
    return status is None or status in retry.codes


def retry_backoff(retry: Retry, tries_done: int) -> float:
    """Seconds to wait before the next try (exponential, capped)."""
    base = max(retry.backoff, 0.0)
    return min(base * (2 ** max(tries_done - 1, 0)), base * RETRY_BACKOFF_CAP_FACTOR)


def filter_types(rule: RouteRule) -> tuple[str, ...]:
    return tuple(f.type for f in rule.filters)


__all__ = ["HTTPFilter", "Plan", "Redirect", "filter_types", "modify_headers", "plan", "plan_backend",
           "redirect", "retry_allowed", "retry_backoff", "rewrite_path", "should_mirror",
           "url_rewrite"]
