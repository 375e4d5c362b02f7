"""waypoint.routes: HTTPRoute matching and precedence (Gateway API v1).

Cases follow the Gateway API conformance suite (httproute-matching,
httproute-matching-across-routes, httproute-hostname-intersection,
httproute-weight) and the precedence rules in HTTPRouteRule's docs.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shoal.core.records import (BackendRef, HeaderMatch, HTTPRoute, PathMatch, QueryParamMatch,
                             RouteMatch, RouteRule)
from shoal.waypoint.routes import (NoBackend, RouteInput, RouteTable, hostname_score, path_matches,
                             pick_backend)


def be(name, weight=1):
    return BackendRef(name=name, namespace="default", port=8080, weight=weight)


def rule(name, *matches):
    return RouteRule(name=name, matches=tuple(matches) or (RouteMatch(),), backend_refs=(be(name),))


def route(name, *rules, hostnames=(), idx=0, ns="default"):
    return HTTPRoute(name=name, namespace=ns, hostnames=tuple(hostnames), rules=tuple(rules),
                     creation_index=idx)


def path(t, v):
    return RouteMatch(path=PathMatch(type=t, value=v))


def inp(p="/", method="GET", host="echo.default.svc.cluster.local", headers=None, query=""):
    return RouteInput(method=method, path=p, query=query, host=host,
                      headers={k.lower(): v for k, v in (headers or {}).items()})


def sel(table, **kw):
    s = table.select(inp(**kw))
    return None if s is None else s.rule.name


# -- conformance: httproute-matching ---------------------------------------------

@pytest.fixture
def matching_table():
    return RouteTable([route("matching",
        rule("v1", path("PathPrefix", "/")),
        rule("v2", path("PathPrefix", "/v2")),
        rule("hdr-one", RouteMatch(path=PathMatch(value="/"),
                                   headers=(HeaderMatch(name="version", value="one"),))),
        rule("hdr-two", RouteMatch(path=PathMatch(value="/"),
                                   headers=(HeaderMatch(name="version", value="two"),))),
    )])


@pytest.mark.parametrize("p,headers,want", [
    ("/", {}, "v1"),
    ("/example", {}, "v1"),
    ("/v2", {}, "v2"),
    ("/v2/example", {}, "v2"),
    ("/v2example", {}, "v1"),                 # element-wise prefix
    ("/", {"Version": "one"}, "hdr-one"),     # header names are case-insensitive
    ("/", {"version": "two"}, "hdr-two"),
    ("/v2", {"version": "two"}, "v2"),        # longer prefix beats header count
    ("/", {"version": "three"}, "v1"),
])
def test_conformance_matching(matching_table, p, headers, want):
    assert sel(matching_table, p=p, headers=headers) == want


def test_no_match_returns_none():
    t = RouteTable([route("r", rule("exact", path("Exact", "/only")))])
    assert sel(t, p="/only") == "exact"
    assert sel(t, p="/only/") is None
    assert not RouteTable([])


# -- precedence ---------------------------------------------------------------

def test_exact_beats_prefix_beats_regex():
    t = RouteTable([route("r",
        rule("regex", path("RegularExpression", "/foo.*")),
        rule("prefix", path("PathPrefix", "/foo")),
        rule("exact", path("Exact", "/foo")),
    )])
    assert sel(t, p="/foo") == "exact"
    assert sel(t, p="/foo/x") == "prefix"
    assert sel(t, p="/foobar") == "regex"


def test_longest_prefix_wins_regardless_of_order():
    t = RouteTable([route("r", rule("short", path("PathPrefix", "/a")),
                          rule("long", path("PathPrefix", "/a/b/")))])
    assert sel(t, p="/a/b/c") == "long"
    assert sel(t, p="/a/b") == "long"       # trailing "/" in the prefix ignored
    assert sel(t, p="/a/c") == "short"


def test_method_then_headers_then_query():
    t = RouteTable([route("r",
        rule("plain", path("PathPrefix", "/")),
        rule("query2", RouteMatch(query_params=(QueryParamMatch(name="a", value="1"),
                                                QueryParamMatch(name="b", value="2")))),
        rule("header1", RouteMatch(headers=(HeaderMatch(name="x", value="y"),))),
        rule("method", RouteMatch(method="POST")),
    )])
    assert sel(t, method="POST", headers={"x": "y"}, query="a=1&b=2") == "method"
    assert sel(t, headers={"x": "y"}, query="a=1&b=2") == "header1"
    assert sel(t, query="a=1&b=2") == "query2"
    assert sel(t, query="a=1&b=3") == "plain"


def test_query_param_first_value_and_case_sensitive_name():
    t = RouteTable([route("r", rule("q", RouteMatch(query_params=(
        QueryParamMatch(name="animal", value="whale"),))))])
    assert sel(t, query="animal=whale&animal=dolphin") == "q"
    assert sel(t, query="animal=dolphin&animal=whale") is None
    assert sel(t, query="ANIMAL=whale") is None


def test_regex_header_full_match():
    t = RouteTable([route("r", rule("rx", RouteMatch(headers=(
        HeaderMatch(name="user", value="jason|ed", type="RegularExpression"),))))])
    assert sel(t, headers={"user": "ed"}) == "rx"
    assert sel(t, headers={"user": "eddie"}) is None


def test_oldest_route_then_name_then_rule_order():
    new = route("a-new", rule("new", path("PathPrefix", "/")), idx=5)
    old = route("z-old", rule("old", path("PathPrefix", "/")), idx=1)
    assert sel(RouteTable([new, old])) == "old"
    same1 = route("b", rule("b", path("PathPrefix", "/")), idx=1)
    same2 = route("a", rule("a", path("PathPrefix", "/")), idx=1)
    assert sel(RouteTable([same1, same2])) == "a"
    t = RouteTable([route("r", rule("first", path("PathPrefix", "/")),
                          rule("second", path("PathPrefix", "/")))])
    assert sel(t) == "first"


def test_matches_within_a_rule_are_or_ed():
    t = RouteTable([route("r", rule("multi", path("Exact", "/a"), path("Exact", "/b")))])
    assert sel(t, p="/a") == "multi" and sel(t, p="/b") == "multi" and sel(t, p="/c") is None


# -- hostnames (httproute-hostname-intersection, matching-across-routes) -------------

def test_hostname_specificity_across_routes():
    catch_all = route("all", rule("all", path("PathPrefix", "/")), idx=0)
    wild = route("wild", rule("wild", path("PathPrefix", "/")), hostnames=["*.example.com"], idx=1)
    exact = route("exact", rule("exact", path("PathPrefix", "/")), hostnames=["foo.example.com"], idx=2)
    t = RouteTable([catch_all, wild, exact])
    assert sel(t, host="foo.example.com") == "exact"
    assert sel(t, host="FOO.example.com:8080") == "exact"
    assert sel(t, host="bar.example.com") == "wild"
    assert sel(t, host="a.b.example.com") == "wild"
    assert sel(t, host="example.com") == "all"
    # hostname specificity outranks path specificity
    t2 = RouteTable([route("p", rule("p", path("Exact", "/x"))),
                     route("h", rule("h", path("PathPrefix", "/")), hostnames=["foo.example.com"])])
    assert sel(t2, host="foo.example.com", p="/x") == "h"


def test_route_with_non_matching_hostname_is_skipped():
    t = RouteTable([route("only", rule("only"), hostnames=["a.example.com"])])
    assert sel(t, host="b.example.com") is None


@pytest.mark.parametrize("names,host,score", [
    ((), "x", (0, 0)),
    (("*.wildcard.io",), "foo.wildcard.io", (0, 13)),
    (("*.wildcard.io",), "wildcard.io", None),
    (("very.specific.com", "*.specific.com"), "very.specific.com", (17, 17)),
])
def test_hostname_score(names, host, score):
    assert hostname_score(names, host) == score


@pytest.mark.parametrize("kind,value,p,ok", [
    ("PathPrefix", "/", "/anything", True),
    ("PathPrefix", "/foo/", "/foo", True),
    ("PathPrefix", "/foo", "/foobar", False),
    ("Exact", "/foo", "/foo", True),
    ("RegularExpression", "/v[0-9]+/.*", "/v12/x", True),
    ("RegularExpression", "/v[0-9]+", "/v12/x", False),
    ("RegularExpression", "(", "/", False),   # bad regex never matches
    ("Unknown", "/", "/", False),
])
def test_path_matches(kind, value, p, ok):
    assert path_matches(kind, value, p) is ok


# -- weighted backends (httproute-weight) ----------------------------------------

def test_weighted_split_is_deterministic_and_proportional():
    refs = (be("v1", 70), be("v2", 30), be("zero", 0))
    rng = random.Random(42)
    picks = Counter(pick_backend(refs, rng).name for _ in range(10_000))
    assert picks["zero"] == 0
    assert abs(picks["v1"] / 10_000 - 0.7) < 0.02
    a, b = random.Random(42), random.Random(42)
    assert [pick_backend(refs, a).name for _ in range(50)] == \
        [pick_backend(refs, b).name for _ in range(50)]


def test_single_backend_and_all_zero():
    assert pick_backend((be("only"),), random.Random(1)).name == "only"
    with pytest.raises(NoBackend):
        pick_backend((be("a", 0), be("b", 0)), random.Random(1))
