"""shards.options: validation and the shared click flags."""

import os
import click
import pytest
from click.testing import CliRunner

from shoal.shards.options import SupervisorOptions, supervisor_options


@pytest.mark.parametrize("kw, msg", [
    ({"workers": -1}, "--workers"), ({"workers": 10_000}, "--workers"),
    ({"drain_timeout": -1}, "--drain-timeout"), ({"worker_timeout": 0.5}, "--worker-timeout"),
    ({"admin_port": 70000}, "--admin-port"), ({"log_level": "loud"}, "--log-level"),
    ({"sched_slice_us": 99}, "--sched-slice-us"), ({"sched_slice_us": 100_001}, "--sched-slice-us"),
    ({"sched_slice_us": -1}, "--sched-slice-us"),
])
def test_bad_values_are_refused_with_the_flag_name(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SupervisorOptions(**kw)


@pytest.mark.parametrize("us", [0, 100, 100_000])
def test_sched_slice_takes_zero_and_the_kernels_range(us):
    assert SupervisorOptions(sched_slice_us=us).sched_slice_us == us


def test_worker_count_defaults_to_the_cpu_limit():
    from shoal.shards.options import cpu_limit
    assert SupervisorOptions().worker_count == cpu_limit()
    assert SupervisorOptions(workers=3).worker_count == 3


def test_decorator_builds_options_and_keeps_app_flags():
    got = {}

    @click.command()
    @supervisor_options
    @click.option("--node-name", default="n")
    def run(supervisor, node_name):
        got.update(supervisor=supervisor, node_name=node_name)
    r = CliRunner().invoke(run, ["--workers", "3", "--drain-timeout", "2", "--node-name", "x",
                                 "--admin-port", "0", "--config", "/tmp"])
    assert r.exit_code == 0, r.output
    assert got["node_name"] == "x"
    assert got["supervisor"] == SupervisorOptions(workers=3, drain_timeout=2.0, admin_port=0,
                                                  config="/tmp")
    r = CliRunner().invoke(run, ["--workers", "-2"])
    assert r.exit_code == 2 and "--workers" in r.output
    assert "--worker-timeout" in CliRunner().invoke(run, ["--help"]).output


def test_cpu_limit_reads_the_cgroup_quota(tmp_path):
    from shoal.shards.options import cpu_limit
    cpus = len(os.sched_getaffinity(0))
    f = tmp_path / "cpu.max"
    f.write_text("max 100000\n")
    assert cpu_limit(str(f)) == cpus                       # no limit: every CPU we may use
    f.write_text("150000 100000\n")
    assert cpu_limit(str(f)) == min(cpus, 2)               # 1.5 CPUs: rounded up
    f.write_text("50000 100000\n")
    assert cpu_limit(str(f)) == 1                          # under one CPU: still one worker
    f.write_text("6400000 100000\n")
    assert cpu_limit(str(f)) == cpus                       # a limit above the CPUs we have
    assert cpu_limit(str(tmp_path / "absent")) == cpus     # cgroup v1 or no cgroupfs
