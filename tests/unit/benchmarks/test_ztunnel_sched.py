"""The burst analysis of benchmarks/load/ztunnel_sched.py on perf's own text."""

import pytest

from shoal.benchmarks.load.ztunnel_sched import (Run, burst_figures, bursts, parse_timehist,
                                                 summary)

# perf sched timehist's layout (perf 6.1): header, then time, [cpu],
# comm[tid] or comm[tid/pid], wait time, scheduling delay, run time (ms).
TIMEHIST = """\
           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
   100.000050 [0001]  python[500]                         3.000      0.010      0.050
   100.000090 [0001]  python[601]                         4.000      0.005      0.040
   100.000100 [0000]  <idle>                              0.000      0.000      0.100
   100.000130 [0000]  stunnel4[702/700]                   1.000      0.002      0.030
   100.000200 [0001]  Web Content[503/500]                0.500      0.000      0.020
   100.004000 [0000]  python[500]                         3.800      0.000      0.010
"""


def test_parse_timehist_reads_runs_and_skips_idle_and_headers():
    runs = parse_timehist(TIMEHIST)
    assert [(r.pid, r.cpu) for r in runs] == [(500, 1), (601, 1), (700, 0), (500, 1), (500, 0)]
    first = runs[0]
    assert first.start == pytest.approx(100.0) and first.end == pytest.approx(100.00005)
    # a thread counts as its process; a comm with a space still parses
    assert runs[3].start == pytest.approx(100.00018)


def test_bursts_split_on_a_quiet_gap_only():
    runs = parse_timehist(TIMEHIST)
    groups = bursts(runs, gap=0.001)
    assert [len(g) for g in groups] == [4, 1]
    # a run that starts inside an earlier, longer run does not open a burst
    long_then_late = [Run(0.0, 0.010, 0, 1), Run(0.002, 0.003, 1, 2), Run(0.0105, 0.011, 0, 1)]
    assert [len(g) for g in bursts(long_then_late, gap=0.001)] == [3]


def test_burst_figures_span_busy_idle_and_colocation():
    roles = {1: "client", 2: "proxy-in", 3: "proxy-out"}
    burst = [Run(0.0, 100e-6, 0, 1), Run(100e-6, 150e-6, 0, 2), Run(120e-6, 200e-6, 1, 3),
             Run(200e-6, 300e-6, 0, 1)]
    f = burst_figures(burst, roles, cpus=2)
    assert f["span_us"] == pytest.approx(300)
    assert f["busy_us"] == pytest.approx({"client": 200, "proxy-in": 50, "proxy-out": 80})
    assert f["idle_us"] == pytest.approx(2 * 300 - 330)
    assert f["proxy_on_client_cpu"] is True
    moved = [Run(0.0, 1e-4, 0, 1), Run(1e-5, 5e-5, 1, 2)]
    assert burst_figures(moved, roles, cpus=2)["proxy_on_client_cpu"] is False
    assert burst_figures([Run(0.0, 1e-4, 0, 1)], roles, cpus=2)["proxy_on_client_cpu"] is False


def test_summary_means_and_span_quantiles():
    figs = [{"span_us": s, "busy_us": {"client": 10.0 * i}, "idle_us": 5.0,
             "proxy_on_client_cpu": i % 2 == 0} for i, s in enumerate(range(100, 200))]
    s = summary(figs)
    assert s["bursts"] == 100
    assert s["span_us"] == {"p50": 150, "p90": 190, "p99": 199}
    assert s["busy_us"]["client"] == pytest.approx(495)
    assert sum(s["busy_us"].values()) == pytest.approx(495)
    assert s["idle_us"] == 5.0 and s["proxy_on_client_cpu"] == 0.5
