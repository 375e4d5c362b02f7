"""plan.c's upstream head and ids against the Python code they replace.

For a request served from a plan, `_h1.plan_request` builds the upstream
head that Proxy.begin (the trace context), Forwarder._upstream_headers
(drop_length) and serialize_request_head make for a request forwarded
unchanged. These tests compare the two byte by byte (the random ids put
aside and checked for their form), on chosen heads and on generated ones,
check what plan.c leaves to Python (a miss), and that nothing leaks.
"""

from __future__ import annotations

import os
import random
import re

import pytest
from hypothesis import given, settings

from shoal.waypoint import message
from shoal.waypoint.downstream import Downstream
from shoal.waypoint.forward import Forwarder
from shoal.waypoint.h1native import native
from shoal.waypoint.http1 import RequestReceived, serialize_request_head
from shoal.waypoint.message import RequestHead
from shoal.waypoint.request import RequestState
from shoal.waypoint.telemetry import trace_context
from tests.helpers.leaks import assert_child_prints, assert_nothing_kept
from tests.unit.waypoint.test_h1native import PROPERTY_EXAMPLES, request_heads

pytestmark = pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# The comparison below serves test_plan_h2 too (HTTP/2 requests served from
# a plan get the same upstream head and ids).
HEX32 = re.compile(r"[0-9a-f]{32}")
NEW_TP = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


def python_upstream_head(st, req, head, sampling: float) -> tuple:
    """What the Python path sends upstream for a request forwarded unchanged
    (Proxy.begin's trace context, Forwarder._upstream_headers with
    drop_length, serialize_request_head): (head bytes, request id,
    traceparent, parent span). `st` is the request's RequestState, `req`
    what its reader made of it and `head` its RequestHead."""
    st.authority = head.authority or message.get(head.headers, "host") or ""
    rng = random.Random()
    st.traceparent, st.parent_span = trace_context(message.get(head.headers, "traceparent"),
                                                   rng, sampling)
    fwd = Forwarder.__new__(Forwarder)
    fwd.rng, fwd.trace_sampling = rng, sampling
    out = fwd._upstream_headers(st, req, head, drop_length=True)
    return serialize_request_head(head, out), st.request_id, st.traceparent, st.parent_span


def assert_same_head(c: tuple, py: tuple, incoming: str | None) -> None:
    """`c` and `py` are (head bytes, request id, traceparent, parent span)
    from C and from Python for one request whose X-Request-Id was
    `incoming` (None when it had none)."""
    c_head, rid, tp, parent = c
    py_head, py_rid, py_tp, py_parent = py
    assert parent == py_parent
    if incoming:            # an empty one is kept, and a new id made
        assert rid == py_rid == incoming
    else:
        assert HEX32.fullmatch(rid) and HEX32.fullmatch(py_rid)
    if py_parent:           # continued: same trace id and flags, a new span
        a, b = tp.split("-"), py_tp.split("-")
        assert (a[0], a[1], a[3]) == (b[0], b[1], b[3]) and re.fullmatch("[0-9a-f]{16}", a[2])
    else:
        assert NEW_TP.fullmatch(tp) and NEW_TP.fullmatch(py_tp)
    norm_c = c_head.replace(tp.encode(), b"<tp>").replace(rid.encode(), b"<rid>")
    norm_py = py_head.replace(py_tp.encode(), b"<tp>").replace(py_rid.encode(), b"<rid>")
    assert norm_c == norm_py


@pytest.fixture(autouse=True, scope="module")
def seeded():
    native.seed(os.urandom(32))


def key(data: bytes) -> str:
    method, target, _, host, *_ = native.parse_request(data)
    return f"{method} {target} {host}"


def python_head(data: bytes, sampling: float = 1.0):
    """What the Python path sends upstream for `data`, and its ids."""
    method, target, headers, host, version, keep_alive, clen = native.parse_request(data)
    head = RequestHead(method, target, headers, "http", host)
    req = RequestReceived(head=head, http_version=version, keep_alive=keep_alive,
                          upgrade=False, chunked=False, content_length=clen)
    st = RequestState(down=Downstream(source_ip="10.0.0.1"), head=head, t0=0.0)
    return python_upstream_head(st, req, head, sampling)


def c_head(data: bytes, sampling: float = 1.0):
    t = native.plan_request(data, {key(data): "plan"}, sampling)
    assert t is not None and t[0] == "plan", t
    assert t[1] == native.parse_request(data)
    return t[2:]


def same(data: bytes, sampling: float = 1.0) -> None:
    """The C head equals the Python one once the random ids are put aside,
    and the ids have the form (and the parts) Python gives them."""
    assert_same_head(c_head(data, sampling), python_head(data, sampling),
                     message.get(native.parse_request(data)[2], "x-request-id"))


CHOSEN = [
    b"GET / HTTP/1.1\r\nHost: echo:8080\r\n\r\n",
    b"GET /a?b=c HTTP/1.0\r\n\r\n",                                       # no Host
    b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\n"
    b"Keep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\nTrailer: t\r\nX-Bar: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nTraceparent: " + TP.encode() + b"\r\nA: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: 00-" + b"0" * 32 + b"-b7ad6b7169203331-01\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: 000-0af7651916cd43dd8448eb211c80319c-"
    b"b7ad6b7169203331-1\r\n\r\n",                                        # odd but valid
    b"GET / HTTP/1.1\r\nX-Forwarded-Proto: https\r\nHost: h\r\nx-request-id: abc\r\n"
    b"x-forwarded-proto: ftp\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n",              # Host named: dropped
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: traceparent\r\ntraceparent: " + TP.encode() +
    b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHOST: h\r\nX-Request-Id: Z-1\r\nUser-Agent: caf\xe9\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-a\r\nConnection: \t X-B ,, \r\nX-A: 1\r\n"
    b"X-B: 2\r\n\r\n",                                                    # the last one names
    b"HEAD /h HTTP/1.1\r\nHost: h\r\nUpgrade-Insecure-Requests: 1\r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Type: text/grpc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: \r\nA: b\r\n\r\n",    # empty: a new one added
]


@pytest.mark.parametrize("data", CHOSEN)
def test_chosen_heads_byte_for_byte(data):
    same(data)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(request_heads())
def test_generated_heads_agree_with_python(data):
    t = native.parse_request(data)
    if t is None:
        assert native.plan_request(data, {"x": "plan"}, 1.0) is None
        return
    got = native.plan_request(data, {key(data): "plan"}, 1.0)
    if got[0] is not None:
        same(data)


MISSES = [
    b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Type: Application/GRPC+proto\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + TP.encode() + b"\r\ntraceparent: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nx-request-id: a\r\nX-Request-ID: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nx-request-id: " + b"a" * 41 + b"\r\n\r\n",
]


@pytest.mark.parametrize("data", MISSES)
def test_what_python_decides_is_a_miss(data):
    """Proxy.begin's own business (Expect, gRPC counters, joined ids): the
    parse comes back for the ordinary path, with no plan."""
    assert native.plan_request(data, {key(data): "plan"}, 1.0) == \
        (None, native.parse_request(data))


def test_only_the_same_method_target_and_host_find_a_plan():
    plans = {"GET /a h": "plan"}
    assert native.plan_request(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", plans, 1.0)[0] == "plan"
    for other in (b"GET /a?x HTTP/1.1\r\nHost: h\r\n\r\n", b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n",
                  b"GET /a HTTP/1.1\r\nHost: h:80\r\n\r\n", b"GET /a HTTP/1.0\r\n\r\n"):
        assert native.plan_request(other, plans, 1.0)[0] is None
    assert native.plan_request(b"GET /a HTTP/1.1\r\nHost: h\r\n", plans, 1.0) is None  # partial
    assert native.plan_request(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", {}, 1.0)[0] is None


def test_new_traces_are_sampled_at_the_rate_and_incoming_flags_kept():
    data = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    plans = {key(data): "plan"}
    assert {native.plan_request(data, plans, 0.0)[4][-2:] for _ in range(200)} == {"00"}
    assert {native.plan_request(data, plans, 100.0)[4][-2:] for _ in range(200)} == {"01"}
    sampled = sum(native.plan_request(data, plans, 50.0)[4].endswith("-01") for _ in range(4000))
    assert 1700 < sampled < 2300            # 50 % (about 10 standard deviations of room)
    kept = b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + TP[:-2].encode() + b"00\r\n\r\n"
    assert native.plan_request(kept, {key(kept): "plan"}, 100.0)[4].endswith("-00")


def test_ids_are_new_for_every_request():
    data = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    plans = {key(data): "plan"}
    got = [native.plan_request(data, plans, 1.0) for _ in range(1000)]
    assert len({t[3] for t in got}) == 1000 and len({t[4] for t in got}) == 1000


def test_a_seed_gives_the_ids_it_always_gave():
    """The ids are written without printf now (plan.c's hex16): for one
    seed, the same ids, digit for digit, as printf's `%016llx` made (the
    values below came from the printf version)."""
    native.seed(b"\x01" * 32)
    new = native.plan_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", {"GET / h": "p"}, 0.0)
    assert new[3:] == ("d2d878d2d2d2cdf02d2d2cd2d2d2d32a",
                       "00-96969696969696922d2d2d2d2d00002d-c3c3c3c3c39696bf-00", "")
    kept = native.plan_request(b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + TP.encode() +
                               b"\r\n\r\n", {"GET / h": "p"}, 0.0)
    assert kept[3:] == ("11e6c788524b422be2a1e23c41385521", TP[:36] + "e295e1e290f0e85e" + TP[52:],
                        TP[36:52])
    native.seed(os.urandom(32))


def test_seed_wants_32_random_bytes():
    with pytest.raises(ValueError):
        native.seed(b"short")
    with pytest.raises(ValueError):
        native.seed(bytes(32))
    with pytest.raises(TypeError):
        native.plan_request(b"", [], 1.0)


def test_no_references_or_memory_kept():
    hit = CHOSEN[3]
    miss = MISSES[0]
    plan = object()
    plans = {key(hit): plan, key(miss): plan}

    def batch():
        for _ in range(500):
            native.plan_request(hit, plans, 1.0)
            native.plan_request(miss, plans, 1.0)
            native.plan_request(b"GET / HTTP/1.1\r\n", plans, 1.0)
            native.plan_request(CHOSEN[1], plans, 1.0)

    batch()
    assert_nothing_kept([hit, miss, plan, plans], batch)


# Run in a child: without the fix the answer holds a freed object.
_GC_DROPS_THE_PLAN = r"""
import gc, weakref
from shoal.waypoint.h1native import native
native.seed(b"\x01" * 32)
class P:
    pass
bad = []
for threshold in range(1, 16):
    plans = {"GET /a h": P()}
    alive = weakref.ref(plans["GET /a h"])
    armed = []
    def drop(phase, info, plans=plans, armed=armed):
        if phase == "start" and armed:
            plans.clear()
    gc.collect()
    gc.callbacks.append(drop)
    armed.append(1)
    gc.set_threshold(threshold)
    t = native.plan_request(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", plans, 0.0)
    gc.set_threshold(700)
    armed.clear()
    gc.callbacks.remove(drop)
    if t[0] is not None and alive() is None:
        bad.append(threshold)
        t = None    # leak the tuple: its first item is freed memory
print("bad", bad)
"""


def test_a_collection_that_drops_the_plan_mid_call_leaves_the_answer_whole():
    """plan_request allocates its answer after the lookup; a collection
    starting there may run Python (a finaliser, a gc callback) that drops
    the plan from the table: the answer still holds a live plan."""
    assert_child_prints(_GC_DROPS_THE_PLAN, "bad []")
