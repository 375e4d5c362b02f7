import os
import shutil

import pytest


def pytest_collection_modifyitems(items):
    # e2e needs root (netns, nft); skip cleanly elsewhere.
    if os.geteuid() != 0 or not shutil.which("nft"):
        skip = pytest.mark.skip(reason="needs root and nft")
        for item in items:
            if "/e2e/cni/" in str(item.fspath):
                item.add_marker(skip)
