"""Config parsing bounded (core.model.loader, core.model.errors, core.regex):
alias bombs and deep nesting are refused before anything is built, quoted
values are short whatever their size, and every user regex is RE2."""

import time

import pytest

from shoal.core import regex
from shoal.core.model import ConfigError, HTTPRoute, load_text
from shoal.core.model.errors import MAX_MESSAGE, MAX_QUOTED, FieldError, quote
from shoal.core.model.loader import MAX_DEPTH, YamlShapeError, check_shape
from shoal.waypoint.routes import _value_matches

POD = """apiVersion: v1
kind: Pod
metadata:
  name: p
  labels:
"""

# 600 bytes; with nested aliases it denotes 9^7 = 4.8 million strings.
BOMB = POD + """    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    return [str(e) for e in info.value.errors]


def test_alias_bomb_refused_quickly_with_a_short_message():
    start = time.perf_counter()
    errors = _errors(BOMB)
    assert time.perf_counter() - start < 1.0
    assert len(errors) == 1 and "aliases expand" in errors[0] and "line 10" in errors[0]
    assert len(errors[0]) < 300


def test_moderate_alias_use_is_fine():
    text = POD + "    a: &v x\n    b: *v\n" + "spec: {containers: [{name: c, image: i}]}\n"
    (pod,) = load_text(text).resources
    assert pod.meta.labels == {"a": "x", "b": "x"}


def test_small_bomb_below_the_expansion_bound_still_quotes_briefly():
    # 9^3 = 729 strings: allowed by the expansion bound, refused as labels.
    text = POD + """    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: [*b,*b,*b,*b,*b,*b,*b,*b,*b]
"""
    check_shape(text)
    for e in _errors(text):
        assert len(e) < 400, e


@pytest.mark.parametrize("text", [
    "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5),
    "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "x: 1\n",
])
def test_nesting_deeper_than_the_limit_refused(text):
    with pytest.raises(YamlShapeError, match="nested deeper"):
        check_shape(text)
    assert "nested deeper" in _errors(text)[0]


def test_quote_is_bounded_for_any_value():
    huge = {"k%d" % i: ["x" * 10_000] * 1000 for i in range(1000)}
    q = quote(huge)
    assert len(q) <= MAX_QUOTED
    assert quote("short") == "'short'"
    assert len(quote("y" * 10**6)) <= MAX_QUOTED


def test_field_error_messages_are_capped():
    e = FieldError(file="f", kind="Pod", namespace="n", name="p", field="x",
                   message="z" * 100_000)
    assert len(e.message) <= MAX_MESSAGE


def test_long_value_in_an_error_is_truncated():
    text = POD.replace("name: p", "name: " + "v" * 5000) + "    app: x\n"
    for e in _errors(text):
        assert len(e) < 500, e[:600]


ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: n}
spec:
  parentRefs: [{kind: Service, group: "", name: svc}]
  rules:
    - matches: [{path: {type: RegularExpression, value: "%s"}}]
"""


@pytest.mark.parametrize("pattern,why", [
    (r"(a)\\1", "invalid escape sequence"),                 # backreference
    (r"/(?=api)x", "invalid perl operator"),              # lookahead
    ("/" + "(a|b)" * 200, "program of size"),            # above Envoy's program size
])
def test_regex_refused_with_re2s_reason(pattern, why):
    errors = _errors(ROUTE % pattern)
    assert any("RegularExpression" in e or "regular expression" in e for e in errors)
    assert any(why in e for e in errors), errors


def test_redos_pattern_is_accepted_and_matches_in_linear_time():
    (route,) = load_text(ROUTE % "/api/(a+)+").of(HTTPRoute)
    assert route.rules[0].matches[0].path.value == "/api/(a+)+"
    evil = "/api/" + "a" * 100_000 + "b"
    start = time.perf_counter()
    assert not regex.fullmatch("/api/(a+)+", evil)
    assert regex.fullmatch("/api/(a+)+", "/api/aaaa")
    assert time.perf_counter() - start < 0.5         # Python's re: hours
    assert not _value_matches("RegularExpression", "(a+)+", "a" * 50_000 + "b")


def test_regex_is_full_match_like_envoy():
    assert regex.fullmatch("v[0-9]+", "v12")
    assert not regex.fullmatch("v[0-9]+", "xv12")
    assert not regex.fullmatch("(", "(")              # invalid: never matches
