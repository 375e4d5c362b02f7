"""ztunnel_tail's pooled figures and stall grouping, on made-up latencies."""

import pytest

from shoal.benchmarks.load.ztunnel import quantile
from shoal.benchmarks.load.ztunnel_tail import (PATHS, SECOND_PEER, added_ratio, path_figures,
                                              slow_clusters, summary)


def test_slow_requests_sent_close_together_are_one_stall():
    sent = [0.000, 0.001, 0.002, 0.003, 0.100, 0.104, 0.300]
    lat = [0.005, 0.005, 0.005, 0.005, 0.005, 0.0001, 0.005]
    # the 4 of the first burst, then 0.100 alone (0.104 is fast), then 0.300
    assert slow_clusters(sent, lat, 0.001) == [4, 1, 1]


def test_a_gap_of_exactly_cluster_gap_starts_a_new_stall():
    assert slow_clusters([0.0, 0.010], [1.0, 1.0], 0.5, gap=0.010) == [1, 1]
    assert slow_clusters([0.0, 0.0099], [1.0, 1.0], 0.5, gap=0.010) == [2]


def test_path_figures_pool_and_count_whole_bursts():
    # 1,000 requests of 0.5 ms and 12 slow ones: three whole bursts of 4
    sent = [i * 0.004 for i in range(1000)] + [5.0 + k + j * 1e-4 for k in range(3) for j in range(4)]
    lat = [0.0005] * 1000 + [0.003] * 12
    f = path_figures(sent, lat)
    assert f["requests"] == 1012
    assert f["p50_ms"] == pytest.approx(0.5)
    assert f["p99_ms"] == pytest.approx(3.0)       # the slowest 1 % are the stalls
    assert f["over_1ms_per_10k"] == pytest.approx(1e4 * 12 / 1012)
    assert f["slow_per_cluster"] == 4 and f["whole_burst_share"] == 1.0


def test_added_ratio_subtracts_the_direct_path():
    assert added_ratio(1.3, 0.9, 0.5) == pytest.approx(2.0)


def test_quantile_of_a_short_list_stays_in_range():
    assert quantile([1.0], 0.99) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 3.0


def test_summary_pools_rounds_and_gives_each_rounds_ratio():
    def rnd(base, p99_extra):
        lat = [base] * 99 + [base + p99_extra]
        return [i * 0.004 for i in range(100)], lat
    rounds = {"ztunnel x2": [rnd(0.002, 0.004), rnd(0.002, 0.001)],
              "stunnel x2": [rnd(0.002, 0.001), rnd(0.002, 0.001)],
              "direct": [rnd(0.001, 0.0), rnd(0.001, 0.0)]}
    assert list(rounds) == list(PATHS)
    s = summary(rounds)
    # each round: (p99 - direct's) / (stunnel's - direct's): (6-1)/(3-1), (3-1)/(3-1)
    assert s["round_added_p99_ratio"]["rounds"] == pytest.approx([2.5, 1.0])
    # pooled, 200 requests: the p99 is the 2nd slowest, 3 ms for both pairs
    assert s["paths"]["ztunnel x2"]["p99_ms"] == pytest.approx(3.0)
    assert s["added_p99_ratio"] == pytest.approx(1.0)
    assert s["added_p50_ratio"] == pytest.approx(1.0)


def test_a_second_peer_is_compared_with_the_first():
    def rnd(base, p99_extra):
        return [i * 0.004 for i in range(100)], [base] * 99 + [base + p99_extra]
    rounds = {"ztunnel x2": [rnd(0.002, 0.001)],
              "stunnel x2": [rnd(0.002, 0.001)],
              "direct": [rnd(0.001, 0.0)],
              SECOND_PEER: [rnd(0.003, 0.001)]}
    s = summary(rounds)
    # the second pair adds (4-1) ms at the p99 and (3-1) at the p50, the first (3-1) and (2-1)
    assert s["a_a"]["added_p99_ratio"] == pytest.approx(1.5)
    assert s["a_a"]["added_p50_ratio"] == pytest.approx(2.0)
    assert s["a_a"]["round_added_p99_ratio"]["rounds"] == pytest.approx([1.5])
    assert "a_a" not in summary({n: rounds[n] for n in PATHS})
