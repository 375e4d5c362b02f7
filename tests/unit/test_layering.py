"""The house's layering, enforced (docs/internals.md draws the same map).

Each top folder is installed as `shoal.<folder>`. Imports run downward only:

    shoal (the CLI)                   wires every package's commands (`shoal bench` too)
    benchmarks                        the CPU studies: may import everything below
    controlplane, ztunnel, waypoint, cni    the apps: never each other
    shards                            supervisor and workers (runs the watcher)
    routing                           compiler, shared-memory table, watcher
    core                              the contract (records, model) and blocks

Nothing installed imports tests/ or benchmarks/load/ (the wheel has neither).
Between modules there is no import cycle, within a package or across.

Every import counts, wherever it is written: module level, inside a function
("lazy"), under `if TYPE_CHECKING:`, or as a module name string handed to
`importlib.import_module` or kept for a lazy import table. A lazy import hides
a dependency from the reader; it does not remove it.

The sans-IO cores (STYLE.md rule 1) are checked here too: they must not
import modules that do I/O or touch process state, so they stay testable
byte by byte and reusable from any adapter.
"""

from __future__ import annotations

import ast
import pathlib
import re
from functools import cache

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Folder -> layer. A module may import its own folder or a lower layer.
LAYERS = {
    "core": 0,
    "routing": 1,
    "shards": 2,
    "controlplane": 3, "ztunnel": 3, "waypoint": 3, "cni": 3,
    "benchmarks": 4,
    "shoal": 5,
}
# `shoal/__init__.py` itself (the version) is the parent of every module and
# is imported before any of them: below everything, it imports nothing.
ROOT_PACKAGE = "shoal/__init__"
LAYERS[ROOT_PACKAGE] = -1
# Folders of the repository that the wheel maps to `shoal.<folder>`.
PACKAGED = [f for f in LAYERS if f not in ("shoal", ROOT_PACKAGE)]
# Code that is never installed: the load runs drive real peers with the
# test helpers, and may import them; installed code may import neither.
UNPACKAGED = ("benchmarks/load", "tests")

SANS_IO_MODULES = [
    "core/authz.py",
    "core/hbone/protocol.py",
    "core/hbone/events.py",
    "core/hbone/errors.py",
    "core/hbone/settings.py",
    "core/hbone/h2limits.py",
    "core/records.py",
    "core/zds.py",
    "routing/compile.py",
    "routing/incremental.py",
    "routing/codec.py",
    "routing/kube/store.py",
    "controlplane/tokenauth.py",
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
]

FORBIDDEN_IO = {"socket", "asyncio", "os", "signal", "mmap", "subprocess", "select",
                "selectors", "ssl", "posix_ipc", "uvloop", "threading", "multiprocess",
                "multiprocessing"}

# A module name written as a string: "shoal.routing.runtime", "shoal.x.cli:attr",
# or (a bug: a second copy of the package) "core.hbone.stream".
_MODULE_STRING = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+(:[A-Za-z_]\w*)?$")


def _module_name(path: pathlib.Path) -> str:
    """Repository path -> its installed dotted name (shoal.core.x, tests.y)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] == "shoal":
        return ".".join(parts)
    if parts[0] in PACKAGED:
        return "shoal." + ".".join(parts)
    return ".".join(parts)


@cache
def modules() -> dict[str, pathlib.Path]:
    found = {}
    for folder in [*LAYERS, "tests"]:
        for path in (ROOT / folder).rglob("*.py"):
            if ".venv" not in path.parts:
                found[_module_name(path)] = path
    return found


def _resolve(name: str) -> str | None:
    """The longest known module that `name` names (or lies inside)."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


def _from_target(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def imports_of(name: str) -> tuple[tuple[str, int, str], ...]:
    """(imported name as written, line, how) for every import in a module."""
    path = modules()[name]
    return scan(path.read_text(), name, is_package=path.name == "__init__.py")


def _is_logger_call(func: ast.expr) -> bool:
    """logging.getLogger(name) or shoal's log.get(name)."""
    if not isinstance(func, ast.Attribute):
        return False
    owner = func.value.id if isinstance(func.value, ast.Name) else ""
    return func.attr == "getLogger" or (func.attr == "get" and "log" in owner)


def _not_imports(tree: ast.AST) -> set[int]:
    """Strings that look like module names but import nothing: logger names
    and `python -m module` arguments of a child process."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_logger_call(node.func):
            skip.update(id(a) for a in node.args)
        elif isinstance(node, (ast.List, ast.Tuple)):
            for before, after in zip(node.elts, node.elts[1:]):
                if isinstance(before, ast.Constant) and before.value == "-m":
                    skip.add(id(after))
    return skip


def scan(source: str, name: str, *, is_package: bool = False) -> tuple[tuple[str, int, str], ...]:
    tree = ast.parse(source)
    skip = _not_imports(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(node, name, is_package)
            for a in node.names:
                # `from pkg import module` imports the module, not just pkg.
                sub = f"{target}.{a.name}"
                found.append((sub if sub in modules() else target, node.lineno, "import"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in skip and _MODULE_STRING.match(node.value):
            target = node.value.split(":")[0]
            if target in modules() or "shoal." + target in modules():
                found.append((target, node.lineno, "string"))
    return tuple(found)


def project_edges(name: str) -> set[tuple[str, int]]:
    """(imported project module, line) for every import of one module."""
    edges = set()
    for target, line, _ in imports_of(name):
        resolved = _resolve(target)
        if resolved is not None and resolved != name:
            edges.add((resolved, line))
    return edges


def _folder(name: str) -> str:
    parts = name.split(".")
    if name == "shoal":
        return ROOT_PACKAGE
    if parts[0] == "shoal":
        return parts[1] if parts[1] in LAYERS else "shoal"
    return parts[0]


def _packaged(name: str) -> bool:
    path = modules()[name].relative_to(ROOT).as_posix()
    return not path.startswith(UNPACKAGED)


def installed_modules() -> list[str]:
    return sorted(n for n in modules() if _packaged(n))


@pytest.mark.parametrize("name", installed_modules())
def test_imports_run_downward(name):
    here = _folder(name)
    bad = []
    for target, line in sorted(project_edges(name)):
        there = _folder(target)
        if not _packaged(target):
            bad.append(f"line {line}: {target} is test or load-run code, never installed")
        elif there != here and LAYERS[there] >= LAYERS[here]:
            side = "sideways" if LAYERS[there] == LAYERS[here] else "upward"
            bad.append(f"line {line}: {target} ({side}: {here} may not import {there})")
    assert not bad, f"{name} imports against the layering:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_bare_top_level_imports(name):
    """`import core.x` would load a second copy of shoal from the checkout."""
    if modules()[name] == pathlib.Path(__file__).resolve():
        return          # this file names bare modules in its own self-test
    bare = [(t, line) for t, line, _ in imports_of(name)
            if t.split(".")[0] in PACKAGED]
    assert not bare, f"{name}: write shoal.<folder>, not {bare}"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {n: {t for t, _ in project_edges(n)} for n in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import cycles (break them with a seam, not a lazy import):\n  " + \
        "\n  ".join(" <-> ".join(c) for c in cycles)


def test_the_scanner_sees_every_kind_of_import():
    """A lazy, a TYPE_CHECKING, a relative and a string import are all edges."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from shoal.routing.view import StaticView\n"
        "def f():\n    import shoal.ztunnel.app\n"
        "from .records import Workload\n"
        "TABLE = {'x': 'shoal.waypoint.cli:waypoint'}\n"
        "LOG = logging.getLogger('shoal.ztunnel.inpod')\n"
        "LOG2 = log.get('cni.agent')\n"
        "CMD = [python, '-m', 'shoal.cni.cli']\n")
    found = {(t, how) for t, _, how in scan(source, "shoal.core.authz")}
    assert found >= {("shoal.routing.view", "import"), ("shoal.ztunnel.app", "import"),
                     ("shoal.core.records", "import"), ("shoal.waypoint.cli", "string")}
    assert not {t for t, _ in found} & {"shoal.ztunnel.inpod", "shoal.cni.cli", "cni.agent"}


def _top_names(path: pathlib.Path) -> set[str]:
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
    bad = _top_names(path) & FORBIDDEN_IO
    assert not bad, f"{module} imports {sorted(bad)}: keep I/O in the adapters"
