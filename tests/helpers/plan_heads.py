"""Comparing plan.c's upstream heads with the ones the Python path makes.

Both paths make their own random ids (a request id, a trace id or a span
id): the heads are compared once those are put aside, and the ids checked
for the form (and the parts kept from the request) Python gives them.
"""

from __future__ import annotations

import random
import re

from shoal.waypoint import message
from shoal.waypoint.forward import Forwarder
from shoal.waypoint.http1 import serialize_request_head
from shoal.waypoint.telemetry import trace_context

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
