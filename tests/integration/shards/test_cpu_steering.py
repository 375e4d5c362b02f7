"""CPU steering (`--cpu-steering`, the default): worker slot i's listeners take
the connections whose SYN the kernel handled on the i-th CPU (SO_INCOMING_CPU),
so a client thread's connections share one worker instead of waking each.

A loopback SYN is handled on the connecting thread's CPU, so pinning the
connecting thread (tests.helpers.shards_proc.on_cpu) chooses the CPU.
"""

from __future__ import annotations

import platform

import pytest

from shoal.shards.options import steering_cpu
from tests.helpers.shards_proc import CPUS, worker_of

# Before 6.2 the reuseport lookup ignored SO_INCOMING_CPU (fixed by "soreuseport:
# Fix socket selection for SO_INCOMING_CPU"): the option is then a no-op.
STEERING_KERNEL = (6, 2)
# Connections per CPU: with hashing, 20 landing on one of 2 workers by
# chance has probability 2 * 2**-20.
TRIES = 20


def kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


pytestmark = [
    pytest.mark.integration, pytest.mark.timeout(60),
    pytest.mark.skipif(len(CPUS) < 2, reason="steering needs two CPUs to tell workers apart"),
    pytest.mark.skipif(kernel() < STEERING_KERNEL, reason="the kernel ignores SO_INCOMING_CPU "
                       "in reuseport groups before 6.2"),
]


def test_each_cpus_connections_go_to_that_cpus_worker(shards):
    s = shards()
    for cpu in CPUS[:2]:
        served = {worker_of(s.echo, cpu=cpu)[1] for _ in range(TRIES)}
        assert served == {next(w for w in (0, 1) if steering_cpu(w) == cpu)}, \
            f"connections made on CPU {cpu} went to workers {served}"


def test_no_cpu_steering_spreads_one_cpus_connections_by_hash(shards):
    s = shards(extra=["--no-cpu-steering"])
    served = {worker_of(s.echo, cpu=CPUS[0])[1] for _ in range(TRIES)}
    assert served == {0, 1}
