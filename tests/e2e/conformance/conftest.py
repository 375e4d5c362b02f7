"""The mesh for the Gateway API Mesh conformance tests, and their report.

One mesh (2 nodes) for the session, from manifests/base.yaml. Each test is
marked `@pytest.mark.conformance("<suite short name>")`; its outcome is
recorded, and when SHOAL_CONFORMANCE_REPORT names a file the session ends
by writing the ConformanceReport there (report.py).
"""

import json
import os
import secrets
import shutil
import sys
import tempfile

import pytest

from tests.e2e.conformance import report
from tests.e2e.conformance.harness import APPS, MANIFESTS, NS, Case, Mesh
from tests.helpers.local_mesh import free_base

REPORT_ENV = "SHOAL_CONFORMANCE_REPORT"
_OUTCOMES: dict[str, str] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance(name): a Gateway API conformance test")


def pytest_collection_modifyitems(items):
    missing = [t for t in ("nft",) if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        skip = pytest.mark.skip(reason=f"needs root and {', '.join(missing) or 'nft'}")
        for item in items:
            if "/e2e/conformance/" in str(item.fspath):
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    mark = item.get_closest_marker("conformance")
    if mark is None:
        return
    name = mark.args[0]
    if rep.failed:
        _OUTCOMES[name] = report.FAILED
    elif rep.skipped and _OUTCOMES.get(name) != report.FAILED:
        _OUTCOMES[name] = report.SKIPPED
    elif rep.when == "call" and rep.passed and name not in _OUTCOMES:
        _OUTCOMES[name] = report.PASSED


def pytest_sessionfinish(session):
    path = os.environ.get(REPORT_ENV)
    if path and _OUTCOMES:
        with open(path, "w") as f:
            f.write(report.dump(report.build(_OUTCOMES)))
        with open(path + ".results.json", "w") as f:
            json.dump(_OUTCOMES, f, indent=1, sort_keys=True)


@pytest.fixture(scope="session")
def mesh():
    mid = "g" + secrets.token_hex(3)
    # Short: the agents' unix socket paths live under it (AF_UNIX: 107 bytes).
    m = Mesh(f"/tmp/shoal-mesh-{mid}")
    with tempfile.TemporaryDirectory(prefix="shoal-conf-") as tmp:
        base = open(os.path.join(MANIFESTS, "base.yaml")).read()
        with open(os.path.join(tmp, "base.yaml"), "w") as f:
            f.write(base.replace("{python}", sys.executable)
                    .replace("{echo}", os.path.join(APPS, "echo.py")))
        try:
            m.shoal("up", "-f", tmp, "--nodes", "2", "--id", mid, "--cidr-base", str(free_base()),
                    timeout=180)
            m.refresh()
            # Every echo answers through the waypoint before any test runs.
            m.expect([Case(name="ready", backend="echo", namespace=NS)])
            yield m
        except AssertionError:
            logs = os.path.join(m.run_dir, "logs")
            if os.path.isdir(logs):
                for name in sorted(os.listdir(logs)):
                    sys.stderr.write(f"--- {name}\n{open(os.path.join(logs, name)).read()[-2000:]}\n")
            raise
        finally:
            m.shoal("down", check=False)
            shutil.rmtree(m.run_dir, ignore_errors=True)


@pytest.fixture
def routes(mesh):
    """`routes("x.yaml")` applies manifests/x.yaml for this test and removes it after."""
    applied = []

    def apply(manifest: str) -> Mesh:
        mesh.apply(manifest)
        applied.append(manifest)
        return mesh

    yield apply
    for manifest in reversed(applied):
        mesh.delete(manifest)
