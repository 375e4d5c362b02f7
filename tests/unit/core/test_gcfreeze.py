"""core.gcfreeze on real forks: the child inherits frozen objects, the parent
does not keep them frozen, and a booted worker's garbage is collected before
the rest is frozen. Each test that freezes does it in a child, so the test
process's own collector is left as it was."""

from __future__ import annotations

import gc
import json
import os
import weakref

from shoal.core import gcfreeze


def _in_child(fn) -> object:
    """Run `fn` in a forked child; its JSON result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return json.loads(out)


def _fork_and_report() -> dict:
    r, w = os.pipe()
    pid = gcfreeze.fork()
    if pid == 0:
        os.write(w, str(gc.get_freeze_count()).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        grandchild = int(f.read())
    os.waitpid(pid, 0)
    return {"child": grandchild, "parent_after": gc.get_freeze_count()}


def test_fork_freezes_for_the_child_and_the_parent_collects_as_before():
    seen = _in_child(_fork_and_report)
    assert seen["child"] > 1000, "the child sees its parent's objects frozen"
    assert seen["parent_after"] == 0, "the parent's collector still walks its own objects"


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def _boot_then_freeze() -> dict:
    a, b = _Node(), _Node()
    a.peer, b.peer = b, a                 # a cycle: only the collector frees it
    dropped = weakref.ref(a)
    del a, b
    kept = _Node()
    frozen = gcfreeze.freeze_booted()
    return {"frozen": frozen, "count": gc.get_freeze_count(),
            "cycle_freed": dropped() is None, "kept_alive": kept.peer is None,
            "enabled": gc.isenabled()}


def test_freeze_booted_collects_boot_garbage_then_freezes_the_rest():
    seen = _in_child(_boot_then_freeze)
    assert seen["cycle_freed"], "garbage from booting is collected, not frozen forever"
    assert seen["frozen"] == seen["count"] > 1000
    assert seen["kept_alive"] and seen["enabled"]
