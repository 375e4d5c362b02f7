"""waypoint.filters: Gateway API filters (conformance-style cases)."""

from __future__ import annotations

import random

import pytest

from shoal.core.records import (BackendRef, HeaderModifier, HTTPFilter, PathMatch, PathModifier,
                             RequestMirror, RequestRedirect, Retry, RouteMatch, RouteRule,
                             URLRewrite)
from shoal.waypoint import message
from shoal.waypoint.filters import (modify_headers, plan, redirect, retry_allowed, retry_backoff,
                              rewrite_path, should_mirror, url_rewrite)
from shoal.waypoint.message import RequestHead


def head(target="/", host="echo.default:8080", headers=()):
    return RequestHead(method="GET", target=target, authority=host,
                       headers=[("Host", host), *headers])


PREFIX = RouteMatch(path=PathMatch(type="PathPrefix", value="/foo"))


def test_request_header_modifier_conformance():
    # httproute-request-header-modifier: set replaces, add appends, remove drops.
    h = [("Host", "x"), ("Some-Header", "a"), ("X-Header-Set", "old"), ("x-header-set", "old2"),
         ("X-Header-Add", "existing"), ("X-Header-Remove", "gone")]
    mod = HeaderModifier(set=(("X-Header-Set", "set-overwrites-values"),),
                         add=(("X-Header-Add", "add-appends-values"),),
                         remove=("x-header-remove",))
    out = modify_headers(h, mod)
    assert message.get_all(out, "x-header-set") == ["set-overwrites-values"]
    assert message.get_all(out, "x-header-add") == ["existing", "add-appends-values"]
    assert message.get(out, "x-header-remove") is None
    assert message.get(out, "some-header") == "a"
    assert modify_headers(h, None) is h


@pytest.mark.parametrize("p,prefix,repl,want", [
    # Gateway API HTTPPathModifier ReplacePrefixMatch table
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
])
def test_replace_prefix_match_table(p, prefix, repl, want):
    m = RouteMatch(path=PathMatch(type="PathPrefix", value=prefix))
    assert rewrite_path(p, PathModifier(type="ReplacePrefixMatch", value=repl), m) == want


def test_replace_full_path():
    assert rewrite_path("/a/b", PathModifier(type="ReplaceFullPath", value="/one"), PREFIX) == "/one"


@pytest.mark.parametrize("spec,target,want_status,want_loc", [
    # httproute-request-redirect / -port-redirect / -scheme-redirect / -path-redirect
    (RequestRedirect(hostname="example.org"), "/hostname-redirect", 302,
     "http://example.org:8080/hostname-redirect"),
    (RequestRedirect(hostname="example.org", status_code=301), "/x?a=b", 301,
     "http://example.org:8080/x?a=b"),
    (RequestRedirect(scheme="https"), "/scheme", 302, "https://echo.default/scheme"),
    (RequestRedirect(scheme="https", port=8443), "/s", 302, "https://echo.default:8443/s"),
    (RequestRedirect(port=80), "/p", 302, "http://echo.default/p"),
    (RequestRedirect(path=PathModifier(type="ReplaceFullPath", value="/one")), "/foo/x", 302,
     "http://echo.default:8080/one"),
    (RequestRedirect(path=PathModifier(type="ReplacePrefixMatch", value="/one")), "/foo/x?q=1", 302,
     "http://echo.default:8080/one/x?q=1"),
])
def test_redirect(spec, target, want_status, want_loc):
    r = redirect(head(target), spec, PREFIX, listener_port=8080)
    assert (r.status, r.location) == (want_status, want_loc)


def test_url_rewrite_hostname_and_prefix():
    # httproute-rewrite-path: /prefix/one/two with prefix /prefix/one -> /one/two
    m = RouteMatch(path=PathMatch(type="PathPrefix", value="/prefix/one"))
    spec = URLRewrite(hostname="one.example.org",
                      path=PathModifier(type="ReplacePrefixMatch", value="/one"))
    out = url_rewrite(head("/prefix/one/two?x=1"), spec, m)
    assert out.target == "/one/two?x=1"
    assert out.authority == "one.example.org"
    assert message.get(out.headers, "host") == "one.example.org"


def test_plan_applies_filters_in_order():
    mirror = RequestMirror(backend=BackendRef(name="m", namespace="default", port=80), percent=100)
    r = RouteRule(filters=(
        HTTPFilter(type="RequestHeaderModifier",
                   request_header_modifier=HeaderModifier(set=(("x-a", "1"),))),
        HTTPFilter(type="ResponseHeaderModifier",
                   response_header_modifier=HeaderModifier(add=(("x-r", "2"),))),
        HTTPFilter(type="URLRewrite", url_rewrite=URLRewrite(
            path=PathModifier(type="ReplaceFullPath", value="/new"))),
        HTTPFilter(type="RequestMirror", request_mirror=mirror),
    ))
    p = plan(head("/foo/x"), r, PREFIX, 8080, random.Random(1))
    assert p.redirect is None
    assert p.request.target == "/new"
    assert message.get(p.request.headers, "x-a") == "1"
    assert p.response_headers.add == (("x-r", "2"),)
    assert p.mirrors == (mirror,)


def test_plan_redirect_short_circuits():
    r = RouteRule(filters=(HTTPFilter(type="RequestRedirect",
                                      request_redirect=RequestRedirect(hostname="a.b")),))
    p = plan(head("/x"), r, None, 8080, random.Random(1))
    assert p.redirect.location == "http://a.b:8080/x"


def test_mirror_percent():
    rng = random.Random(3)
    spec = RequestMirror(backend=BackendRef(name="m", namespace="d"), percent=25)
    hits = sum(should_mirror(spec, rng) for _ in range(4000))
    assert 800 < hits < 1200
    assert not should_mirror(RequestMirror(backend=spec.backend, percent=0), rng)


def test_retry_policy():
    r = Retry(attempts=2, codes=(503,), backoff=0.01)
    assert retry_allowed(r, 1, 503) and retry_allowed(r, 2, None)
    assert not retry_allowed(r, 3, 503)          # attempts=2: three tries in all
    assert not retry_allowed(r, 1, 500)
    assert not retry_allowed(None, 1, 503)
    assert retry_backoff(r, 1) == pytest.approx(0.01)
    assert retry_backoff(r, 2) == pytest.approx(0.02)
    assert retry_backoff(r, 20) == pytest.approx(0.1)
