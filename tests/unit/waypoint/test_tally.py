"""native/tally.c: request metrics counted per slot, as Telemetry._aggregate
counts them (bisect_left on the histograms' upper bounds, sums)."""

from __future__ import annotations

import bisect
import math
import random

import pytest

from shoal.core.metrics import DURATION_BUCKETS_MS, SIZE_BUCKETS_BYTES
from shoal.waypoint.h1native import native

pytestmark = pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")

DUR = [*DURATION_BUCKETS_MS, math.inf]
SIZE = [*SIZE_BUCKETS_BYTES, math.inf]


def python_counts(values, bounds):
    counts = [0] * len(bounds)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    return counts


def test_buckets_and_sums_are_bisect_lefts():
    t = native.Tally(DUR, SIZE)
    rng = random.Random(7)
    durs = [rng.choice([0.0, 0.5, 1.0, 5.0, 5.000001, 1e9]) for _ in range(300)] + \
        [rng.uniform(0, 70000) for _ in range(300)]
    sizes = [rng.choice([0, 1, 10, 11, 1024, 10 ** 9]) for _ in range(600)]
    for i, (d, s) in enumerate(zip(durs, sizes)):
        t.add(i % 3, d, 0, s)
    taken = {e[0]: e for e in t.take()}
    assert sorted(taken) == [0, 1, 2]
    for slot, e in taken.items():
        mine_d, mine_s = durs[slot::3], sizes[slot::3]
        _, count, dur, dur_sum, req, req_sum, resp, resp_sum = e
        assert count == len(mine_d) == 200
        assert dur == python_counts(mine_d, DUR) and resp == python_counts(mine_s, SIZE)
        assert req == python_counts([0] * 200, SIZE) and req_sum == 0
        assert dur_sum == pytest.approx(sum(mine_d)) and resp_sum == sum(mine_s)
    assert t.take() == []               # taken: zeroed


def test_bad_slots_and_bounds_are_refused():
    t = native.Tally(DUR, SIZE)
    for slot in (-1, 4096):
        with pytest.raises(ValueError):
            t.add(slot, 1.0, 0, 0)
    with pytest.raises(ValueError):
        native.Tally([], SIZE)
    with pytest.raises(ValueError):
        native.Tally(list(range(33)), SIZE)
    t.add(4095, 1.0, 0, 0)
    assert [e[:2] for e in t.take()] == [(4095, 1)]


def test_bounds_without_a_last_infinity_are_refused():
    """bisect_left puts a value above every bound at index len(bounds):
    with the 32 bounds the C arrays hold and no +Inf last, that count
    would land past the duration array (in the request-size counts)."""
    finite = [float(b) for b in range(1, 33)]
    for dur, size in ((finite, SIZE), (DUR, SIZE[:-1]), ([2.0, 1.0, math.inf], SIZE)):
        with pytest.raises(ValueError):
            native.Tally(dur, size)
    t = native.Tally([*finite[:31], math.inf], SIZE)
    t.add(0, 1e9, 0, 0)
    _, count, dur, _, req, _, resp, _ = t.take()[0]
    assert count == 1 and dur[-1] == 1 and sum(dur) == 1
    assert req == python_counts([0], SIZE) and resp == python_counts([0], SIZE)
    # A refused __init__ keeps the bounds the tally had.
    with pytest.raises(ValueError):
        t.__init__(DUR, finite)
    t.add(1, 7.0, 0, 0)
    assert t.take()[0][2] == python_counts([7.0], [*finite[:31], math.inf])
