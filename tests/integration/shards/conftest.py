"""The `shards` fixture: start supervisors of the echo app, kill whatever is left."""

from __future__ import annotations

import pytest

from tests.helpers.shards_proc import Shards


@pytest.fixture
def shards(tmp_path):
    """`shards(workers=2, extra=[...], wait_ready=True)` starts one supervisor."""
    started: list[Shards] = []

    def start(workers: int = 2, extra: list[str] = (), wait_ready: bool = True) -> Shards:
        s = Shards(workers=workers, extra=list(extra), tmp=str(tmp_path))
        started.append(s)
        return s.start(wait_ready=wait_ready)
    yield start
    for s in started:
        s.kill_all()
