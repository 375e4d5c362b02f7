"""benchmarks/load/headline.py: same-run ratios, spread over runs, the doc block."""

import pytest

from shoal.benchmarks.load import headline

HB = {"throughput": {"P1": {"shoal": {"gbit_s": 6.0, "cpu_s_per_gb_entry": 1.0, "cpu_s_per_gb_exit": 1.0},
                            "stunnel": {"gbit_s": 4.0, "cpu_s_per_gb_entry": 2.0, "cpu_s_per_gb_exit": 2.0}}},
      "short": {"shoal": {"conns_per_s": 100.0}, "stunnel": {"conns_per_s": 50.0}}}


def test_ratio_is_taken_within_each_run_then_summarised():
    slow = {"throughput": {"P1": {"shoal": {"gbit_s": 2.0, "cpu_s_per_gb_entry": 1, "cpu_s_per_gb_exit": 1},
                                  "stunnel": {"gbit_s": 1.0, "cpu_s_per_gb_entry": 1, "cpu_s_per_gb_exit": 1}}}}
    row = headline.ROWS[0]
    shoal, peer, ratio = headline.figures(row, [HB, slow])
    # 6/4 and 2/1: ratios per run, never a ratio of medians across runs.
    assert ratio == [1.5, 2.0]
    text, plotted = headline.table({"hbone": [HB, slow]})
    assert "**1.75× (1.50×–2.00×)**" in text
    assert plotted[0] == ("HBONE pair, iperf3 1 stream, 1 worker per side", 1.75, "≥ 1.0×")


def test_missing_cases_are_left_out_not_zero():
    text, plotted = headline.table({"hbone": [HB]})
    assert "8 streams" not in text            # no P8 in this run
    assert [p[0] for p in plotted] == ["HBONE pair, iperf3 1 stream, 1 worker per side",
                                       "HBONE CPU per GB (entry + exit), 1 stream, 1 worker per side",
                                       "HBONE short connections"]
    assert plotted[1][1] == 0.5               # CPU: shoal/peer, lower is better


def test_two_workers_per_side_are_reported_as_such_beside_one():
    """stunnel's threads use both cores; shoal as deployed runs a worker per
    core: the `--processes 1,2` run gives both rows, each labelled."""
    run = {"throughput": {"P8": {
        "shoal": {"gbit_s": 3.0, "cpu_s_per_gb_entry": 2.0, "cpu_s_per_gb_exit": 2.0},
        "shoal_2proc": {"gbit_s": 4.5, "cpu_s_per_gb_entry": 1.5, "cpu_s_per_gb_exit": 1.5},
        "stunnel": {"gbit_s": 4.0, "cpu_s_per_gb_entry": 1.5, "cpu_s_per_gb_exit": 1.5}}}}
    text, plotted = headline.table({"hbone": [run]})
    got = dict((p[0], p[1]) for p in plotted)
    assert got["HBONE pair, iperf3 8 streams, 1 worker per side"] == 0.75
    assert got["HBONE pair, iperf3 8 streams, 2 workers per side"] == 1.125
    assert got["HBONE CPU per GB (entry + exit), 8 streams, 2 workers per side"] == 1.0


def test_rewrite_replaces_only_the_marked_block():
    doc = "# Benchmarks\n\nintro\n\n" + headline.BEGIN + "\nold\n" + headline.END + "\n\nrest\n"
    new = headline.rewrite(doc, "new\n")
    assert new == "# Benchmarks\n\nintro\n\n" + headline.BEGIN + "\nnew\n" + headline.END + "\n\nrest\n"
    first = headline.rewrite("# Benchmarks\n\nintro\n", "t\n")
    assert first.startswith("# Benchmarks\n\n## Headline (`make bench-load`)\n\n" + headline.BEGIN)
    assert first.endswith("intro\n")


def test_ambient_path_is_reported_beside_the_plain_proxy():
    wp = {"runs": {"nginx_w1": {"rps": 20000.0, "cpu_per_1k_rps": 0.025}},
          "hbone_in_hbone_out_w1": {"rps": 500.0, "cpu_per_1k_rps": 0.75}}
    text, plotted = headline.table({"waypoint": [wp]})
    assert ("| waypoint ambient path (HBONE in and out) 1 KB, 1 worker | 500 req/s "
            "| nginx plaintext proxy, 1 worker 20,000 | **0.03×** | — |") in text
    cpu = next(p for p in plotted if p[0] == "waypoint ambient path CPU per request, 1 worker")
    assert cpu[1] == pytest.approx(30.0) and cpu[2] == "—"     # shoal/peer: lower is better


def test_p99_added_latency_subtracts_the_same_runs_direct_path():
    """Issue 15's goal is the p99 a pair adds: each path's p99 less the direct
    path's of the same run; a run from before the direct path was measured
    gives the whole-request row alone."""
    def zt(z99, s99, d99=None):
        run = {"cpu_1kb_rr": {"ztunnel x2": {"p99_ms": z99}, "stunnel x2": {"p99_ms": s99}}}
        if d99 is not None:
            run["latency_1kb_rr_direct"] = {"p99_ms": d99}
        return run
    text, plotted = headline.table({"ztunnel": [zt(0.9, 0.8, 0.5), zt(1.0, 1.0, 0.6), zt(0.7, 0.7)]})
    got = dict((p[0], p[1]) for p in plotted)
    assert got["ztunnel p99 latency per 1 KB request"] == pytest.approx(1.0)
    # (0.9-0.5)/(0.8-0.5) and (1.0-0.6)/(1.0-0.6); the third run has no direct path.
    added = "ztunnel p99 added latency per 1 KB request (less the direct path's)"
    assert got[added] == pytest.approx((4 / 3 + 1.0) / 2)
    assert "| 0.4 (0.4–0.4) ms | 2 × stunnel 0.35 (0.3–0.4) |" in text
