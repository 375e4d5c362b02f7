"""Supervisor options: one validated dataclass and the click flags for it.

ztunnel and waypoint CLIs reuse the flags:

    @click.command()
    @supervisor_options
    def run(supervisor: SupervisorOptions, **app_flags): ...
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import click

from shoal.core.constants import ADMIN_PORT, METRICS_PORT, READINESS_PORT
from shoal.core import log as core_log
from shoal.core import sched
from shoal.core.log import parse_spec
from shoal.routing.kube import SCHEME

# SIGTERM drain: Kubernetes' default terminationGracePeriodSeconds is 30 s;
# we must be done before the kubelet's SIGKILL, so 25 s leaves a margin.
DEFAULT_DRAIN_TIMEOUT = 25.0
# A worker that has not stamped its heartbeat for this long is hung
# (gunicorn's default worker timeout is 30 s as well).
DEFAULT_WORKER_TIMEOUT = 30.0
# More workers than this only adds context switches on any host we target,
# and each worker holds its own listeners in every pod netns.
MAX_WORKERS = 256
# The scheduler slice each worker asks for (core/sched.py): the kernel's
# shortest. A worker's turn per wakeup is tens of microseconds, so the
# shortest slice costs it nothing and lets it run as soon as it wakes
# instead of after a longer-sliced task's turn (docs/operations.md).
DEFAULT_SCHED_SLICE_US = sched.MIN_SLICE_NS // 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorOptions:
    workers: int = 0                      # 0: the container's CPU limit (cpu_limit)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    config: str | None = None             # directory of Kubernetes YAML, or kubernetes:[KUBECONFIG]
    admin_port: int = ADMIN_PORT          # 0 disables; bound to 127.0.0.1
    metrics_port: int = METRICS_PORT      # 0 disables
    readiness_port: int = READINESS_PORT  # 0 disables
    bind: str = "0.0.0.0"                 # address of the metrics and readiness ports
    log_level: str = "info"
    pidfile: str | None = None
    cpu_steering: bool = True             # slot i's listeners take connections arriving on CPU i
    sched_slice_us: int = DEFAULT_SCHED_SLICE_US  # 0: the kernel's default slice

    def __post_init__(self) -> None:
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"--workers must be between 1 and {MAX_WORKERS} (0: the container's CPU limit)")
        if self.drain_timeout < 0:
            raise ValueError("--drain-timeout must be >= 0 seconds")
        if self.worker_timeout < 1:
            raise ValueError("--worker-timeout must be >= 1 second")
        lo, hi = sched.MIN_SLICE_NS // 1000, sched.MAX_SLICE_NS // 1000
        if self.sched_slice_us and not lo <= self.sched_slice_us <= hi:
            raise ValueError(f"--sched-slice-us must be 0 (the kernel's default) or {lo}-{hi}")
        for name in ("admin_port", "metrics_port", "readiness_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be a TCP port (0 disables)")
        try:
            parse_spec(self.log_level)
        except ValueError as e:
            raise ValueError(f"--log-level: {e}") from None

    @property
    def worker_count(self) -> int:
        return self.workers or cpu_limit()


# cgroup v2 CPU quota of this container ("max 100000" when unlimited).
CPU_MAX = "/sys/fs/cgroup/cpu.max"


def steering_cpu(slot: int) -> int:
    """The CPU whose connections worker slot `slot` takes (SO_INCOMING_CPU):
    the slot-th CPU this process may run on, wrapping when there are more
    slots than CPUs. Slots and CPUs are both numbered from the supervisor's
    affinity, so a pod pinned to CPUs 4-7 steers 4, 5, 6, 7, not 0-3."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return cpus[slot % len(cpus)]


def cpu_limit(cpu_max: str = CPU_MAX) -> int:
    """Workers by default: the container's CPU limit (cgroup v2 `cpu.max`, quota /
    period rounded up), else the CPUs this process may run on. A pod limited
    to 2 CPUs on a 64-core node gets 2 workers, not 64 throttled ones."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cpu_max) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return max(cpus, 1)
    if quota == "max" or int(period) <= 0:
        return max(cpus, 1)
    return max(1, min(cpus, -(-int(quota) // int(period))))


# `--config kubernetes:[KUBECONFIG]` selects the Kubernetes API source (routing/kube).
KUBERNETES_SCHEME = SCHEME

FLAGS = ("workers", "drain_timeout", "worker_timeout", "config", "admin_port", "metrics_port",
         "readiness_port", "log_level", "pidfile", "cpu_steering",
         "sched_slice_us")


def supervisor_options(fn):
    """Add the supervisor flags to a click command; it receives `supervisor=`."""
    opts = [
        click.option("--workers", type=int, default=0, show_default="the container's CPU limit",
                     help="Worker processes (each binds its own SO_REUSEPORT listeners)."),
        click.option("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT, show_default=True,
                     help="Seconds open connections get to finish on SIGTERM/SIGHUP/SIGUSR2."),
        click.option("--worker-timeout", type=float, default=DEFAULT_WORKER_TIMEOUT, show_default=True,
                     help="A worker silent this long is killed (SIGABRT, then SIGKILL) and replaced."),
        click.option("--config", type=click.Path(file_okay=False), default=None,
                     help="Directory of Kubernetes YAML (watched; SIGHUP re-reads it)."),
        click.option("--kubernetes-api", is_flag=True, default=False,
                     help="Read the config from the Kubernetes API (list + watch): in-cluster "
                     "service account, else $KUBECONFIG, else ~/.kube/config."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="Read the config from the Kubernetes API of this kubeconfig."),
        click.option("--admin-port", type=int, default=ADMIN_PORT, show_default=True,
                     help="Admin server on 127.0.0.1 (0 disables)."),
        click.option("--metrics-port", type=int, default=METRICS_PORT, show_default=True,
                     help="Prometheus /metrics and /stats/prometheus (0 disables)."),
        click.option("--readiness-port", type=int, default=READINESS_PORT, show_default=True,
                     help="/healthz/ready (0 disables)."),
        click.option("--log-level", default="info", show_default=True, envvar="RUST_LOG",
                     help="Initial log levels, ztunnel's syntax: `info` or `access:debug,info` "
                     "(env RUST_LOG; see /logging)."),
        click.option("--log-format", type=click.Choice(sorted(core_log.FORMATTERS)),
                     default=None, envvar="LOG_FORMAT",
                     help="Log lines as ztunnel's text (plain, the default) or JSON "
                     "(env LOG_FORMAT, as ztunnel)."),
        click.option("--cpu-steering/--no-cpu-steering", default=True, show_default=True,
                     help="Worker i's listeners take the connections whose packets the kernel "
                     "handles on the i-th CPU (SO_INCOMING_CPU, Linux >= 6.2), the rest by hash: "
                     "a client thread's connections share a worker instead of waking every "
                     "worker. --no-cpu-steering spreads every connection by hash."),
        click.option("--sched-slice-us", type=int, default=DEFAULT_SCHED_SLICE_US,
                     show_default=True,
                     help="CPU slice each worker asks the scheduler for (EEVDF, Linux >= 6.12): "
                     "a short one runs a woken worker before longer-sliced tasks, at the same "
                     "CPU share. 0 keeps the kernel's default (0.7 ms x (1 + log2 CPUs))."),
        click.option("--pidfile", type=click.Path(dir_okay=False), default=None,
                     help="Write the supervisor's pid here (kept across SIGUSR2 upgrades)."),
    ]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        values = {k: kwargs.pop(k) for k in FLAGS}
        log_format = kwargs.pop("log_format")
        if log_format:      # every process of this supervisor reads it (core.log.setup)
            os.environ["LOG_FORMAT"] = log_format
        kube, kubeconfig = kwargs.pop("kubernetes_api"), kwargs.pop("kubeconfig")
        if kube or kubeconfig:
            if values["config"] is not None:
                raise click.UsageError("--config and --kubernetes-api/--kubeconfig are exclusive")
            values["config"] = KUBERNETES_SCHEME + (os.path.abspath(kubeconfig) if kubeconfig else "")
        try:
            kwargs["supervisor"] = SupervisorOptions(**values)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        return fn(*args, **kwargs)

    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper
