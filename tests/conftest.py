"""Project-wide test set-up: tiers and root-only tests.

Area fixtures live next to their tests (tests/<tier>/<area>/conftest.py).
"""

import os
import sys

import pytest

ROOT = os.geteuid() == 0

# shoal logs ztunnel's text format by default; the tests read the logs of the
# processes they start as JSON lines, so every child asks for JSON (ztunnel's
# LOG_FORMAT=json). Tests of the text format set their own.
os.environ["LOG_FORMAT"] = "json"


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root (network namespaces, nftables)")
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            if not ROOT:
                item.add_marker(skip_root)
        elif "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def shoal_python() -> str:
    """The interpreter that has shoal installed (for child processes)."""
    return sys.executable
