"""plan.c's `plan_h2` (an HTTP/2 request's upstream head from a plan)
against the Python code it replaces.

For an HTTP/2 request served from a plan, `_h1.plan_h2` takes h2's request
fields and builds the upstream head that h2server._request (the
RequestHead), Proxy.begin (the trace context), Forwarder._upstream_headers
(drop_length) and serialize_request_head make for it. These tests compare
the two byte by byte (the random ids put aside, checked for their form) on
chosen and generated field lists, check what is left to Python (a miss:
None) and the plan key shared with HTTP/1.1, and that nothing leaks.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from shoal.waypoint.downstream import Downstream
from shoal.waypoint.h1native import native
from shoal.waypoint.h2server import _request
from shoal.waypoint.request import RequestState
from tests.helpers.leaks import assert_child_prints, assert_nothing_kept
from tests.unit.waypoint.test_h1native import PROPERTY_EXAMPLES
from tests.unit.waypoint.test_plan_head import assert_same_head, python_upstream_head

pytestmark = pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")

TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True, scope="module")
def seeded():
    native.seed(os.urandom(32))


def req(path: bytes = b"/", authority: bytes = b"echo:8080", *extra, method: bytes = b"GET",
        scheme: bytes = b"http") -> list:
    """h2's fields for a request (pseudo-headers first, as h2 validated them)."""
    return [(b":method", method), (b":path", path), (b":scheme", scheme),
            (b":authority", authority)] + list(extra)


def key(fields: list) -> str:
    pseudo = dict(f for f in fields if f[0].startswith(b":"))
    return f"{pseudo[b':method'].decode('latin-1')} {pseudo[b':path'].decode('latin-1')} " \
        f"{pseudo[b':authority'].decode('latin-1')}"


def python_head(fields: list, sampling: float = 1.0):
    """What the Python path sends upstream for `fields`, and its ids."""
    rr = _request(SimpleNamespace(headers=fields, stream_ended=object()))
    head = rr.head
    st = RequestState(down=Downstream(source_ip="10.0.0.1", protocol="http2"), head=head, t0=0.0)
    return python_upstream_head(st, rr, head, sampling)


def same(fields: list, sampling: float = 1.0) -> None:
    """The C head equals the Python one once the random ids are put aside,
    and the ids have the form (and the parts) Python gives them."""
    t = native.plan_h2(fields, {key(fields): "plan"}, sampling)
    assert t is not None and t[0] == "plan", t
    incoming = [v for k, v in fields if k == b"x-request-id"]
    assert_same_head(t[1:], python_head(fields, sampling),
                     incoming[0].decode("latin-1") if incoming else None)


CHOSEN = [
    req(),
    req(b"/a?b=c", b"h", (b"user-agent", b"h2load nghttp2/1.52.0")),
    req(b"/", b"echo:8080", (b"host", b"echo:8080"), (b"accept", b"*/*")),   # Host kept in place
    req(b"/x", b"h", (b"te", b"trailers"), (b"x-bar", b"2")),
    req(b"/", b"h", (b"traceparent", TP), (b"a", b"b")),
    req(b"/", b"h", (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7")),   # invalid
    req(b"/", b"h", (b"x-forwarded-proto", b"https"), (b"x-request-id", b"abc"),
        (b"x-forwarded-proto", b"ftp"), (b"content-length", b"0")),
    req(b"/", b"h", (b"x-request-id", b"Z-1"), (b"user-agent", b"caf\xe9")),
    req(b"/h", b"h", (b"cookie", b"a=1"), (b"cookie", b"b=2"), method=b"HEAD"),
    req(b"/d", b"h:1", (b"content-type", b"text/grpc"), method=b"DELETE"),
    req(b"*", b"h", method=b"OPTIONS"),
    req(b"/", b"h", (b"x-request-id", b""), (b"accept", b"*/*")),     # empty: a new one added
]


@pytest.mark.parametrize("fields", CHOSEN)
def test_chosen_requests_byte_for_byte(fields):
    same(fields)


_NAMES = [b"accept", b"user-agent", b"host", b"traceparent", b"x-request-id",
          b"x-forwarded-proto", b"content-length", b"te", b"x-a", b"cookie", b"via"]
_VALUES = [b"", b"1", b"*/*", TP, b"abc", b"caf\xe9", b"trailers", b"0", b"a, b"]


@hs.composite
def requests(draw) -> list:
    path = draw(hs.sampled_from([b"/", b"/a?b#c", b"*", b"//x", b"/%20"]))
    authority = draw(hs.sampled_from([b"echo:8080", b"h", b"[::1]:80"]))
    method = draw(hs.sampled_from([b"GET", b"HEAD", b"DELETE", b"OPTIONS"]))
    extra = draw(hs.lists(hs.tuples(hs.sampled_from(_NAMES), hs.sampled_from(_VALUES)),
                          max_size=6))
    return req(path, authority, *extra, method=method)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(requests())
def test_generated_requests_agree_with_python(fields):
    got = native.plan_h2(fields, {key(fields): "plan"}, 1.0)
    if got is not None:
        same(fields)
    else:       # only what Python decides (several or long ids) is left to it here
        names = [k for k, _ in fields]
        assert names.count(b"traceparent") > 1 or names.count(b"x-request-id") > 1 or \
            any(k == b"x-request-id" and len(v) > 40 for k, v in fields)


MISSES = [
    req(scheme=b"https"),                                   # x-forwarded-proto would say so
    req(scheme=b"HTTP"),
    req(authority=b""),                                      # Host routes it: Python's
    [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b"host", b"h")],
    req() + [(b":protocol", b"websocket")],
    req(b"/a b"),                                            # the key would be ambiguous
    req(b"/", b"h", (b"x-a", b"1\r\nx-b: 2")),
    req(b"/", b"h", (b"x-a\n", b"1")),
    req(b"/", b"h", (b"x-a", b"\x001")),
    req(b"/", b"h", (b"expect", b"100-continue")),
    req(b"/", b"h", (b"content-type", b"application/grpc+proto")),
    req(b"/", b"h", (b"traceparent", TP), (b"traceparent", b"x")),
    req(b"/", b"h", (b"x-request-id", b"a"), (b"x-request-id", b"b")),
    req(b"/", b"h", (b"x-request-id", b"a" * 41)),
    req(b"/", b"h", (b"x-a", "str")),                       # not bytes
    req(b"/", b"h", [b"x-a", b"1"]),                         # not a tuple
    req(b"/", b"h", *[(b"x-a", b"1")] * 129),                # more fields than C keeps
    req()[:3] + [(b"x-a", b"1"), req()[3]],                  # a pseudo-header after a field
    req() + [(b":path", b"/b")],                             # one twice
    # An upper-case name (h2 refuses them; never trusted here): h2server._request
    # looks for "host" as it is, so HOST would not stop its Host from :authority.
    req(b"/", b"h", (b"HOST", b"h")),
    req(b"/", b"h", (b"X-a", b"1")),
]


@pytest.mark.parametrize("fields", MISSES)
def test_what_python_decides_is_a_miss(fields):
    plans = {"GET / h": "plan", "GET / echo:8080": "plan", "GET / ": "plan",
             "GET /a b echo:8080": "plan"}
    assert native.plan_h2(fields, plans, 1.0) is None


def test_the_key_is_method_path_and_authority_as_for_http11():
    plans = {"GET /a h": "plan"}
    assert native.plan_h2(req(b"/a", b"h"), plans, 1.0)[0] == "plan"
    # The key an HTTP/1.1 request to the same URL and Host finds (planpath.py).
    assert native.plan_request(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", plans, 1.0)[0] == "plan"
    for other in (req(b"/a?x", b"h"), req(b"/a", b"h", method=b"HEAD"), req(b"/a", b"h:80")):
        assert native.plan_h2(other, plans, 1.0) is None
    assert native.plan_h2(req(b"/a", b"h"), {}, 1.0) is None


def test_ids_are_new_for_every_request():
    fields = req()
    plans = {key(fields): "plan"}
    got = [native.plan_h2(fields, plans, 1.0) for _ in range(1000)]
    assert len({t[2] for t in got}) == 1000 and len({t[3] for t in got}) == 1000


def test_wrong_arguments_raise():
    with pytest.raises(TypeError):
        native.plan_h2(tuple(req()), {}, 1.0)
    with pytest.raises(TypeError):
        native.plan_h2(req(), [], 1.0)
    with pytest.raises(TypeError):
        native.plan_h2(req(), {})


def test_no_references_or_memory_kept():
    hit, miss = CHOSEN[4], MISSES[9]
    plan = object()
    plans = {key(hit): plan, key(miss): plan}

    def batch():
        for _ in range(500):
            native.plan_h2(hit, plans, 1.0)
            native.plan_h2(miss, plans, 1.0)
            native.plan_h2(MISSES[0], plans, 1.0)
            native.plan_h2(CHOSEN[1], plans, 1.0)

    batch()
    assert_nothing_kept([hit, miss, plan, plans] + [v for f in hit for v in f], batch)


# Run in a child: a collection that empties the caller's list (and the plan
# table) while plan_h2 makes its key or its answer must not leave it
# reading freed fields or returning a freed plan.
_GC_DROPS_EVERYTHING = r"""
import gc, weakref
from shoal.waypoint.h1native import native
native.seed(b"\x01" * 32)
class P:
    pass
bad = []
for threshold in range(1, 16):
    plans = {"GET /a h": P()}
    alive = weakref.ref(plans["GET /a h"])
    fields = [(b":method", b"GET"), (b":path", b"/a"), (b":scheme", b"http"),
              (b":authority", b"h"), (bytes([120, 45]) + bytes([97]) * 20, bytes([118]) * 30)]
    armed = []
    def drop(phase, info, plans=plans, fields=fields, armed=armed):
        if phase == "start" and armed:
            plans.clear()
            fields.clear()
    gc.collect()
    gc.callbacks.append(drop)
    armed.append(1)
    gc.set_threshold(threshold)
    t = native.plan_h2(fields, plans, 0.0)
    gc.set_threshold(700)
    armed.clear()
    gc.callbacks.remove(drop)
    if t is not None and (alive() is None or b"x-" + b"a" * 20 + b": " + b"v" * 30 not in t[1]):
        bad.append(threshold)
        t = None
print("bad", bad)
"""


def test_a_collection_that_drops_the_fields_and_plan_mid_call_leaves_the_answer_whole():
    assert_child_prints(_GC_DROPS_EVERYTHING, "bad []")


_WIDE_NAMES = _NAMES + [b"connection", b"keep-alive", b"proxy-connection", b"trailer",
                        b"transfer-encoding", b"upgrade", b"expect", b"content-type", b"x-b",
                        b"caf\xe9", b"", b"HOST", b"Traceparent", b"X-A"]
_WIDE_VALUES = _VALUES + [b" ", b"\t", b"x-a", b"X-A, x-b", b" x-a\x0b", b"x-a\xa0", b"\x85x-b",
                          b"application/grpc", b"APPLICATION/GRPC+proto", b"application/grpcx",
                          TP.upper(), b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01", b"a" * 40,
                          b"100-continue", b",", b"host"]


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(hs.lists(hs.tuples(hs.sampled_from(_WIDE_NAMES), hs.sampled_from(_WIDE_VALUES)),
                max_size=6))
def test_wider_field_shapes_served_by_c_are_python_s_heads(extra):
    """Connection's tokens with Python's whitespace around them, gRPC and
    Expect, ids of every length, names in upper case: whatever C serves is
    the head the Python path makes (what it leaves is Python's anyway)."""
    fields = req(b"/", b"h", *extra)
    got = native.plan_h2(fields, {key(fields): "plan"}, 1.0)
    if any(k != k.lower() for k, _ in extra):
        assert got is None
    elif got is not None:
        same(fields)
