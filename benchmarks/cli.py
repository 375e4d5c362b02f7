"""`shoal bench`: the pytest-benchmark CPU studies, from the installed package.

An operator studies CPU cost on their own machine without the repository:

    shoal bench                          # every study (a few minutes)
    shoal bench -k routing               # the studies whose name matches
    shoal bench --json out.json -- -x    # keep pytest-benchmark's JSON; more pytest args

The studies are the `bench_*.py` modules of `shoal.benchmarks`; each measures
shoal against a peer in the same run (see its docstring), so the ratios hold
on any machine while absolute numbers do not.
"""

from __future__ import annotations

import os
import sys

import click

# pytest options that make the installed modules a benchmark run whatever the
# current directory holds: no config file of the caller's project, studies
# only, no result cache written into the caller's directory, no xdist (a
# benchmark shares its core with nothing).
BASE_ARGS = ["-c", os.devnull, "--pyargs", "shoal.benchmarks", "-o", "python_files=bench_*.py",
             "-p", "no:cacheprovider", "-p", "no:xdist", "--import-mode=importlib",
             "--benchmark-enable", "--benchmark-only"]
# A checkout (an editable install) also has the load runs, which need the
# repository's test helpers and real peers: they are not CPU studies.
LOAD_RUNS = os.path.join(os.path.dirname(__file__), "load")


def pytest_args(select: str | None, json_out: str | None, extra: tuple[str, ...]) -> list[str]:
    args = [*BASE_ARGS, f"--ignore={LOAD_RUNS}"]
    if select:
        args += ["-k", select]
    if json_out:
        args.append(f"--benchmark-json={json_out}")
    return [*args, *extra]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-k", "select", metavar="EXPR", help="Only the studies matching EXPR (pytest -k).")
@click.option("--json", "json_out", metavar="FILE", help="Write pytest-benchmark's JSON to FILE.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def bench(select: str | None, json_out: str | None, extra: tuple[str, ...]) -> None:
    """Run the CPU studies (pytest-benchmark) of the installed shoal."""
    import pytest
    sys.exit(pytest.main(pytest_args(select, json_out, extra)))
