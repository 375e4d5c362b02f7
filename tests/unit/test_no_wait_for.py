"""No `asyncio.wait_for` in shoal's code while Python 3.11 is supported.

On 3.11 `wait_for` returns the inner result instead of raising when its task
is cancelled in the same loop turn in which the awaited thing completes
(CPython gh-86296, fixed in 3.12 by building wait_for on asyncio.timeout). A
loop that waits that way never sees the cancel from its owner's close(), and
the close waits for it forever: CI once hung 120 s on the certificate
scheduler this way. `async with asyncio.timeout(t)` runs in the same task and
cannot lose the cancel.
"""

from __future__ import annotations

import ast

from tests.unit.test_layering import installed_modules, modules


def wait_for_calls(source: str) -> list[int]:
    """Lines that call asyncio.wait_for, spelt as an attribute or imported."""
    tree = ast.parse(source)
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module == "asyncio" for a in n.names if a.name == "wait_for"}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "wait_for"
                and isinstance(f.value, ast.Name) and f.value.id == "asyncio") \
                or (isinstance(f, ast.Name) and f.id in imported):
            lines.append(node.lineno)
    return lines


def test_the_scan_sees_both_spellings():
    assert wait_for_calls("import asyncio\nasync def f(x):\n    await asyncio.wait_for(x, 1)\n") == [3]
    assert wait_for_calls("from asyncio import wait_for as w\nasync def f(x):\n    await w(x, 1)\n") == [3]
    assert wait_for_calls("import asyncio\nasync def f(e):\n"
                          "    async with asyncio.timeout(1):\n        await e.wait()\n") == []


def test_no_asyncio_wait_for():
    found = {str(modules()[n]): lines for n in installed_modules()
             if (lines := wait_for_calls(modules()[n].read_text()))}
    assert not found, f"use `async with asyncio.timeout(...)` (this file's docstring): {found}"
