import os
import shutil

import pytest


def pytest_collection_modifyitems(items):
    # The mesh needs root (netns, nft) and curl/nghttp/h2load in the pods.
    missing = [t for t in ("nft", "curl", "nghttp", "h2load") if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        skip = pytest.mark.skip(reason=f"needs root and {', '.join(missing) or 'nft'}")
        for item in items:
            if "/e2e/waypoint/" in str(item.fspath):
                item.add_marker(skip)
