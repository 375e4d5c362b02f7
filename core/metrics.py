"""Istio's metrics, defined once, in prometheus_client's multiprocess mode.

Every worker process records into files under PROMETHEUS_MULTIPROC_DIR (a
private temp dir the supervisor creates, exports before forking and removes
on exit); whoever serves /metrics sums all the files, so the 15020 endpoint
shows one set of series for the whole proxy, as Istio users expect.

Apps record with a labels dict; missing labels render as "unknown", as in
ztunnel (`CommonTrafficLabels`):

    m = core.metrics.istio()
    m.inc(m.tcp_opened, {"reporter": "destination", "source_workload": "sleep"})
    m.inc(m.tcp_sent, labels, len(data))
    m.observe(m.request_duration, labels, elapsed_ms)
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import tempfile
from typing import Any, Mapping

from shoal.core import __version__
from shoal.core.pids import alive

UNKNOWN = "unknown"

# reference/istio-ztunnel.md section 5 (CommonTrafficLabels), in Istio's order.
SOURCE_LABELS = ("source_workload", "source_canonical_service", "source_canonical_revision",
                 "source_workload_namespace", "source_principal", "source_app",
                 "source_version", "source_cluster")
DESTINATION_LABELS = ("destination_service", "destination_service_namespace",
                      "destination_service_name", "destination_workload",
                      "destination_canonical_service", "destination_canonical_revision",
                      "destination_workload_namespace", "destination_principal",
                      "destination_app", "destination_version", "destination_cluster")
TCP_LABELS = ("reporter", *SOURCE_LABELS, *DESTINATION_LABELS,
              "request_protocol", "response_flags", "connection_security_policy")
# Istio's stats filter adds `grpc_response_status` to every HTTP metric; it is
# empty (not "unknown") for requests that are not gRPC.
GRPC_STATUS_LABEL = "grpc_response_status"
HTTP_LABELS = (*TCP_LABELS, "response_code", GRPC_STATUS_LABEL)
# Labels whose absence renders as "" rather than UNKNOWN.
EMPTY_WHEN_MISSING = frozenset({GRPC_STATUS_LABEL})

# istio_request_duration_milliseconds: Envoy's default histogram buckets,
# which Istio's stats plugin exports unchanged (milliseconds).
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                       30000, 60000, 300000, 600000, 1800000, 3600000)
# istio_request_bytes / istio_response_bytes: decades from 1 B to 100 MB, wide
# enough for API calls and bulk transfers without a long bucket tail.
SIZE_BUCKETS_BYTES = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000)

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"


DIR_PREFIX = "shoal-metrics-"
# In each metrics dir: a file every process using the dir holds a shared
# flock on (inherited by workers). A dir whose creator died (kill -9) is
# removed by the next supervisor only when nobody holds it: after SIGUSR2 the
# new supervisor uses the dir its dead predecessor created.
OWNER_FILE = ".owner"
_held: list[int] = []


def create_dir() -> str:
    """Supervisor, before forking: a private dir, exported for children."""
    cleanup_stale()
    path = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
    adopt_dir(path)
    return path


def adopt_dir(path: str) -> None:
    """Use `path` (made by this process or handed over by SIGUSR2) and hold it."""
    fd = os.open(os.path.join(path, OWNER_FILE), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held.append(fd)
    use_dir(path)


def cleanup_stale() -> list[str]:
    """Remove metrics dirs left by supervisors that died without cleaning up."""
    removed = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{DIR_PREFIX}*")):
        pid = os.path.basename(path)[len(DIR_PREFIX):].split("-")[0]
        if not pid.isdigit() or alive(int(pid)):
            continue
        try:
            fd = os.open(os.path.join(path, OWNER_FILE), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue   # not ours, or already gone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue   # in use (an upgraded supervisor)
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def use_dir(path: str) -> None:
    """Point prometheus_client at `path` even if it was imported earlier."""
    os.environ[ENV_DIR] = path
    from prometheus_client import values
    # prometheus_client picks its value class at import time; metrics made
    # after this line write to mmap'ed files in `path`.
    values.ValueClass = values.get_value_class()
    global _ISTIO
    _ISTIO = None


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def mark_dead(pid: int) -> None:
    """Supervisor, after reaping a worker: drop its live-gauge files."""
    if os.environ.get(ENV_DIR):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


def render() -> tuple[bytes, str]:
    """Prometheus text summed over every process writing to the dir."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    registry = CollectorRegistry()
    # process_open_fds, process_resident_memory_bytes, ... of the answering
    # process (ztunnel exports its process's; a worker holds the sockets).
    from prometheus_client import ProcessCollector
    ProcessCollector(registry=registry)
    if os.environ.get(ENV_DIR):
        from prometheus_client import multiprocess
        multiprocess.MultiProcessCollector(registry)
    else:   # a single process (unit tests): the live objects
        for metric in istio().all():
            registry.register(metric)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class IstioMetrics:
    """The metric objects. Create through `istio()`, after `use_dir`."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram
        self._children: dict[tuple, object] = {}
        c: dict[str, Any] = dict(registry=None)   # keyword arguments of every metric
        self.tcp_opened = Counter("istio_tcp_connections_opened", "TCP connections opened", TCP_LABELS, **c)
        self.tcp_closed = Counter("istio_tcp_connections_closed", "TCP connections closed", TCP_LABELS, **c)
        self.tcp_sent = Counter("istio_tcp_sent_bytes", "Bytes sent during TCP connections", TCP_LABELS, **c)
        self.tcp_received = Counter("istio_tcp_received_bytes", "Bytes received during TCP connections",
                                    TCP_LABELS, **c)
        # ztunnel's operational series (src/proxy/metrics.rs): connections that
        # ended in an error (with the same labels), and sockets open now.
        self.tcp_failed = Counter("istio_tcp_connections_failed", "TCP connections that failed",
                                  TCP_LABELS, **c)
        self.sockets_open = Gauge("istio_tcp_sockets_open", "Open TCP sockets", ("reporter",),
                                  multiprocess_mode="livesum", **c)
        self.requests = Counter("istio_requests", "Requests handled", HTTP_LABELS, **c)
        self.request_duration = Histogram("istio_request_duration_milliseconds", "Request duration",
                                          HTTP_LABELS, buckets=DURATION_BUCKETS_MS, **c)
        self.request_bytes = Histogram("istio_request_bytes", "Request body sizes", HTTP_LABELS,
                                       buckets=SIZE_BUCKETS_BYTES, **c)
        self.response_bytes = Histogram("istio_response_bytes", "Response body sizes", HTTP_LABELS,
                                        buckets=SIZE_BUCKETS_BYTES, **c)
        # gRPC requests only (Istio's stats filter): messages in each direction.
        self.request_messages = Counter("istio_request_messages", "gRPC messages sent by clients",
                                        HTTP_LABELS, **c)
        self.response_messages = Counter("istio_response_messages",
                                         "gRPC messages sent by servers", HTTP_LABELS, **c)
        # Gauge in "max" mode: every worker reports 1, the endpoint shows 1.
        self.build = Gauge("istio_build", "Istio component build info", ("component", "tag"),
                           multiprocess_mode="max", **c)
        # Framework counters, per worker id (the supervisor's dir sums
        # restarts of the same worker id; Prometheus sums across ids).
        self.worker_connections = Counter("shoal_worker_connections", "Connections accepted by a worker",
                                          ("worker", "listener"), **c)
        self.worker_bytes = Counter("shoal_worker_bytes", "Bytes moved by a worker",
                                    ("worker", "direction"), **c)
        self.worker_active = Gauge("shoal_worker_active_connections", "Open connections per worker",
                                   ("worker",), multiprocess_mode="livesum", **c)
        self.worker_restarts = Counter("shoal_worker_restarts", "Workers replaced after dying or hanging",
                                       ("reason",), **c)
        # Abuse and overload (core.hbone.h2limits, core.overload; docs/security.md).
        self.h2_limit_closed = Counter("shoal_http2_limit_closed_connections",
                                       "HTTP/2 connections closed (GOAWAY ENHANCE_YOUR_CALM) "
                                       "for exceeding an abuse limit", ("limit",), **c)
        self.overload_refused = Counter("shoal_overload_refused_connections",
                                        "New connections refused at a worker's overload limit",
                                        ("reason",), **c)
        # Certificates (core/identity/manager.py): the CA's reachability as the
        # last request of any worker saw it, and each certificate's expiry, so
        # an alert can fire well before a CA outage outlasts the certificates.
        self.ca_reachable = Gauge("shoal_ca_reachable", "1 if the last CA request got an answer",
                                  multiprocess_mode="livemostrecent", **c)
        self.cert_expiry = Gauge("shoal_certificate_expiry_timestamp_seconds",
                                 "Expiry (unix time) of the workload certificate held for an identity",
                                 ("identity",), multiprocess_mode="livemax", **c)

    def all(self) -> list:
        return [v for v in vars(self).values() if hasattr(v, "collect") and hasattr(v, "_name")]

    # Label-dict helpers: missing labels are "unknown", extra ones are refused.
    # Children are cached per (metric, values): prometheus_client's labels()
    # validates and locks on every call, which doubled the cost per record.

    @staticmethod
    def values_for(metric, labels: Mapping[str, str]) -> tuple[str, ...]:
        names = metric._labelnames
        if not labels.keys() <= set(names):
            extra = set(labels) - set(names)
            raise ValueError(f"{metric._name}: unknown labels {sorted(extra)}")
        return tuple([str(labels.get(n) or ("" if n in EMPTY_WHEN_MISSING else UNKNOWN))
                      for n in names])

    def child(self, metric, labels: Mapping[str, str]):
        """The labelled child (bind once per connection on hot paths)."""
        # Keyed on the dict's items as given: a call site passes the same
        # keys in the same order, so the hit path skips the 23-label fill.
        key = (id(metric), *labels.items())
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*self.values_for(metric, labels))
        return c

    def inc(self, metric, labels: Mapping[str, str], amount: float = 1) -> None:
        self.child(metric, labels).inc(amount)

    def observe(self, metric, labels: Mapping[str, str], value: float) -> None:
        self.child(metric, labels).observe(value)

    def set_build(self, component: str) -> None:
        self.build.labels(component, __version__).set(1)


_ISTIO: IstioMetrics | None = None


def istio() -> IstioMetrics:
    """The process's metric objects (created on first use, post-fork)."""
    global _ISTIO
    if _ISTIO is None:
        _ISTIO = IstioMetrics()
    return _ISTIO
