"""The protocol and decision cores are sans-IO (STYLE.md rule 1).

They must not import modules that do I/O or touch process state, so they
stay testable byte by byte and reusable from any adapter.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

SANS_IO_MODULES = [
    "core/authz.py",
    "core/hbone/protocol.py",
    "core/hbone/events.py",
    "core/hbone/errors.py",
    "core/hbone/settings.py",
    "core/records.py",
    "routing/compile.py",
    "routing/incremental.py",
    "routing/codec.py",
    "core/model/parse_core.py",
    "core/model/parse_authz.py",
    "core/model/parse_gateway.py",
    "core/model/resources.py",
    "ztunnel/outbound.py",
    "ztunnel/inbound.py",
    "waypoint/routes.py",
    "waypoint/filters.py",
    "waypoint/http1.py",
    "waypoint/lb.py",
    "cni/spec.py",
    "cni/zds.py",
]

FORBIDDEN = {"socket", "asyncio", "os", "signal", "mmap", "subprocess", "select",
             "selectors", "ssl", "posix_ipc", "uvloop", "threading", "multiprocess",
             "multiprocessing"}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", SANS_IO_MODULES)
def test_module_does_no_io(module):
    path = ROOT / module
    assert path.exists(), f"{module} is listed as sans-IO but is missing"
    bad = imported_modules(path) & FORBIDDEN
    assert not bad, f"{module} imports {sorted(bad)}: keep I/O in the adapters"
