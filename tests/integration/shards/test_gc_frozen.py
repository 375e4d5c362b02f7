"""A booted worker keeps the cyclic collector off its boot objects
(core/gcfreeze.py): /config_dump reports how many it froze."""

from __future__ import annotations

import json

import pytest

from tests.helpers.shards_proc import http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_every_worker_froze_what_it_inherited_and_built_at_boot(shards):
    s = shards(workers=2)
    seen = {}
    for _ in range(8):                      # http() connects from each CPU in turn
        status, body = http(s.admin, "/config_dump")
        assert status == 200
        worker = json.loads(body)["worker"]
        seen[worker["pid"]] = worker["gc_frozen_objects"]
    assert set(seen) == s.worker_pids()
    # The modules and the app alone are thousands of tracked objects.
    assert min(seen.values()) > 1000, seen
