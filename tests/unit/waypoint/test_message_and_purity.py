"""waypoint.message helpers, and the sans-IO rule: pure modules import no I/O."""

from __future__ import annotations

import ast
import pathlib

import pytest

from shoal.waypoint import message

ROOT = pathlib.Path(__file__).resolve().parents[3]
PURE = ["core/authz.py", "waypoint/routes.py", "waypoint/filters.py", "waypoint/http1.py",
        "waypoint/message.py", "waypoint/lb.py", "waypoint/destination.py"]
FORBIDDEN = {"socket", "asyncio", "os", "signal", "mmap", "selectors", "subprocess"}


@pytest.mark.parametrize("path", PURE)
def test_pure_modules_do_no_io(path):
    tree = ast.parse((ROOT / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, imported & FORBIDDEN


def test_header_helpers():
    h = [("Host", "a"), ("X-Multi", "1"), ("x-multi", "2")]
    assert message.get(h, "x-MULTI") == "1,2" and message.get(h, "nope") is None
    assert message.get_all(h, "X-Multi") == ["1", "2"]
    assert message.set_(h, "x-multi", "3") == [("Host", "a"), ("x-multi", "3")]
    assert message.set_(h, "New", "v")[-1] == ("New", "v")
    assert message.remove(h, "X-MULTI") == [("Host", "a")]
    assert message.as_dict(h) == {"host": "a", "x-multi": "1,2"}


def test_request_head_path_query_copy():
    r = message.RequestHead(method="GET", target="/a#frag", headers=[("h", "v")])
    assert r.path == "/a" and r.query == ""
    c = r.copy()
    c.headers.append(("x", "y"))
    assert r.headers == [("h", "v")]
