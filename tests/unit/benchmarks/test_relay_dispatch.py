"""relay_dispatch's figures, on made-up latencies."""

import pytest

from shoal.benchmarks.load.relay_dispatch import added_us


def test_added_is_each_quantile_less_the_direct_paths():
    lat = {"direct": [float(i) for i in range(100)],           # p50 50, p90 90, p99 99
           "pair": [10.0 + 2 * i for i in range(100)]}         # p50 110, p90 190, p99 208
    f = added_us(lat)
    assert f["pair"]["p50"] == pytest.approx(110.0)
    assert (f["pair"]["added_p50"], f["pair"]["added_p90"], f["pair"]["added_p99"]) == \
        pytest.approx((60.0, 100.0, 109.0))
    assert f["direct"]["added_p99"] == 0.0
