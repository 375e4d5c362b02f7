"""Comparing plan.c's upstream heads with the ones the Python path makes.

Both paths make their own random ids (a request id, a trace id or a span
id): the heads are compared once those are put aside, and the ids checked
for the form (and the parts kept from the request) Python gives them.
"""

from __future__ import annotations

import re

HEX32 = re.compile(r"[0-9a-f]{32}")
NEW_TP = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


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
