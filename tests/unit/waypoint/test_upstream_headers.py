"""The upstream headers (Forwarder._upstream_headers, one pass over the
client's) against the rules written out step by step (pure)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as hs

from shoal.waypoint import message
from shoal.waypoint.downstream import Downstream
from shoal.waypoint.forward import Forwarder
from shoal.waypoint.http1 import RequestReceived, strip_hop_by_hop
from shoal.waypoint.message import RequestHead
from shoal.waypoint.request import RequestState
from shoal.waypoint.telemetry import child_traceparent, traceparent, valid_traceparent

VALID_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NAMES = ["Host", "host", "traceparent", "Traceparent", "x-request-id", "X-Forwarded-Proto",
         "connection", "Connection", "keep-alive", "upgrade", "te", "content-length",
         "x-custom", "accept"]
VALUES = ["", "a", VALID_TP, "00-bad", "keep-alive", "x-custom", "x-custom, te", "upgrade",
          "close, accept", "3"]


def by_the_rules(st, req, out, rng, sampling, drop_length):
    """The rules one at a time (what the one-pass version must equal)."""
    headers = strip_hop_by_hop(out.headers, keep_upgrade=req.upgrade)
    if message.get(headers, "host") is None:
        headers.insert(0, ("host", out.authority or st.authority))
    tp = message.get(headers, "traceparent")
    tp = traceparent(rng, sampling) if tp is None or not valid_traceparent(tp) \
        else child_traceparent(tp, rng)
    headers = message.set_(headers, "traceparent", tp)
    rid = message.get(headers, "x-request-id")
    if not rid:
        rid = f"{rng.getrandbits(128):032x}"
        headers.append(("x-request-id", rid))
    headers = message.set_(headers, "x-forwarded-proto", out.scheme)
    if drop_length:
        headers = message.remove(headers, "content-length")
    return headers, tp, rid


@settings(max_examples=400, deadline=None)
@given(headers=hs.lists(hs.tuples(hs.sampled_from(NAMES), hs.sampled_from(VALUES)), max_size=8),
       upgrade=hs.booleans(), drop_length=hs.booleans(), authority=hs.sampled_from(["", "h:1"]))
def test_one_pass_equals_the_rules(headers, upgrade, drop_length, authority):
    head = RequestHead(method="GET", target="/", headers=headers, authority=authority)
    req = RequestReceived(head=head, http_version="1.1", keep_alive=True, upgrade=upgrade,
                          chunked=False, content_length=None)
    st = RequestState(down=Downstream(), head=head, t0=0.0)
    st.authority = "fallback:80"
    fwd = Forwarder(None, h1=None, h2=None, rng=random.Random(7), clock=lambda: 0.0,
                    trace_sampling=50.0)
    got = fwd._upstream_headers(st, req, head, drop_length=drop_length)
    want, tp, rid = by_the_rules(st, req, head, random.Random(7), 50.0, drop_length)
    assert got == want
    assert (st.traceparent, st.request_id) == (tp, rid)
    assert head.headers == headers          # the client's list is left alone
