import os
import shutil

import pytest


def pytest_collection_modifyitems(items):
    # e2e needs root (netns, nft, ip rule); skip cleanly elsewhere.
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ss"):
        skip = pytest.mark.skip(reason="needs root, nft and ss")
        for item in items:
            if "/e2e/ztunnel/" in str(item.fspath):
                item.add_marker(skip)
