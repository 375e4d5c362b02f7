"""waypoint.lb: round robin, least request, outlier ejection (Envoy defaults)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shoal.waypoint.lb import (BASE_EJECTION_SECONDS, CONSECUTIVE_FAILURES, LEAST_REQUEST, Balancer)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_round_robin_spreads_evenly():
    b = Balancer()
    keys = ["a", "b", "c"]
    assert Counter(b.pick(keys) for _ in range(300)) == {"a": 100, "b": 100, "c": 100}


def test_least_request_prefers_idle():
    b = Balancer(mode=LEAST_REQUEST, rng=random.Random(1))
    for _ in range(10):
        b.started("busy")
    picks = Counter(b.pick(["busy", "idle"]) for _ in range(50))
    assert picks == {"idle": 50}


def test_an_abandoned_request_is_no_longer_active_and_no_failure():
    b = Balancer(mode=LEAST_REQUEST, rng=random.Random(1))
    for _ in range(CONSECUTIVE_FAILURES - 1):
        b.started("a")
        b.finished("a", False, ["a", "b"])
    b.started("a")
    b.abandoned("a")
    assert b._host("a").active == 0 and b._host("a").failures == CONSECUTIVE_FAILURES - 1
    assert not b.ejected("a")


def test_unknown_mode_refused():
    with pytest.raises(ValueError):
        Balancer(mode="RANDOMISH")


def test_consecutive_failures_eject_then_return():
    clock = Clock()
    b = Balancer(clock=clock)
    keys = [f"h{i}" for i in range(10)]
    for _ in range(CONSECUTIVE_FAILURES):
        b.started("h0")
        b.finished("h0", ok=False, all_keys=keys)
    assert b.ejected("h0")
    assert "h0" not in {b.pick(keys) for _ in range(50)}
    clock.t += BASE_EJECTION_SECONDS + 0.1
    assert not b.ejected("h0")
    assert "h0" in {b.pick(keys) for _ in range(50)}


def test_success_resets_the_failure_count():
    b = Balancer(clock=Clock())
    for _ in range(CONSECUTIVE_FAILURES - 1):
        b.finished("a", ok=False, all_keys=["a", "b"])
    b.finished("a", ok=True)
    b.finished("a", ok=False, all_keys=["a", "b"])
    assert not b.ejected("a")


def test_max_ejection_percent_keeps_most_hosts():
    b = Balancer(clock=Clock())
    keys = ["a", "b", "c"]
    for k in keys:
        for _ in range(CONSECUTIVE_FAILURES):
            b.finished(k, ok=False, all_keys=keys)
    # 10 % of 3 rounds to 0, but one host may always be ejected: only one is.
    assert sum(b.ejected(k) for k in keys) == 1


def test_panic_mode_uses_ejected_hosts_when_nothing_else():
    b = Balancer(clock=Clock())
    for _ in range(CONSECUTIVE_FAILURES):
        b.finished("only", ok=False, all_keys=["only"])
    assert b.ejected("only") and b.pick(["only"]) == "only"


def test_exclude_prefers_another_host_for_retries():
    b = Balancer()
    assert {b.pick(["a", "b"], exclude=frozenset({"a"})) for _ in range(10)} == {"b"}
    assert b.pick(["a"], exclude=frozenset({"a"})) == "a"
    assert b.pick([]) is None


def test_forget_drops_old_hosts():
    b = Balancer()
    b.started("x")
    b.forget(["y"])
    assert "x" not in b._hosts
