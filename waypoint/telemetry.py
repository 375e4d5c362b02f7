"""Waypoint telemetry: Istio's HTTP metrics, JSON access logs, traceparent.

Metric names and labels are Istio's (core/metrics.py), with
`reporter="waypoint"` as Istio's waypoints report.

Cost matters here: recording straight into prometheus_client's
multiprocess values costs about 30 µs per request (seven mmap'ed value
updates, each under a lock) and a `logging` access-log record about 60 µs,
together a third of a proxied request. So:
- requests are aggregated per label set in plain Python counters and
  flushed into the prometheus values at most every `FLUSH_INTERVAL`
  (Envoy flushes its stats every 5 s; scrapes see at most this much lag),
  and on drain;
- access-log lines are built with orjson (the same JSON shape as
  core/log.py) and written in batches of whole lines no larger than
  PIPE_BUF, so lines from several workers sharing stderr never interleave;
  the `shoal.access` logger's level still switches them on and off.
"""

from __future__ import annotations

import bisect
import logging
import os
import random as _random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from shoal.core.authz import spiffe_parts, strip_spiffe
from shoal.core.records import Service, Workload
from shoal.waypoint.h1native import native

ACCESS_LOG = logging.getLogger("shoal.access")
REPORTER = "waypoint"
# Label-set bound: label values come from config (services, workloads) and
# status codes, so this only guards against churn.
MAX_CACHED_LABEL_SETS = 4096
# Seconds between flushes of the aggregated counters into prometheus_client.
FLUSH_INTERVAL = 1.0
# Access-log batch bound: a write(2) of at most PIPE_BUF bytes to a pipe is
# atomic, so whole lines from different workers cannot interleave.
ACCESS_LOG_BATCH = 4096
# An access-log batch is written at least this often (seconds).
ACCESS_LOG_FLUSH = 0.2


# Istio's default trace sampling (meshConfig defaultConfig.tracing.sampling): 1%.
DEFAULT_TRACE_SAMPLING_PERCENT = 1.0
SAMPLED = "01"
NOT_SAMPLED = "00"


def traceparent(rng: _random.Random, sampling_percent: float = 100.0) -> str:
    """A new W3C traceparent (version 00) for a request that arrived without
    one; sampled with probability `sampling_percent` / 100, as Envoy decides
    for a trace it starts."""
    flags = SAMPLED if rng.random() * 100.0 < sampling_percent else NOT_SAMPLED
    return f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-{flags}"


def child_traceparent(parent: str, rng: _random.Random) -> str:
    """The traceparent the waypoint sends upstream for an incoming one: the
    same trace id and flags (the caller's sampling decision is respected),
    the waypoint's own span id as the new parent."""
    version, trace_id, _, flags = parent.split("-")
    return f"{version}-{trace_id}-{rng.getrandbits(64):016x}-{flags}"


def trace_context(incoming: str | None, rng: _random.Random,
                  sampling_percent: float) -> tuple[str, str]:
    """(the traceparent to send upstream, the caller's span id or ""): an
    incoming valid traceparent is continued under a new span id with its
    sampled flag kept; otherwise a new trace, sampled at `sampling_percent`."""
    if incoming is None or not valid_traceparent(incoming):
        return traceparent(rng, sampling_percent), ""
    return child_traceparent(incoming, rng), incoming.split("-")[2]


def is_sampled(value: str) -> bool:
    """The W3C `sampled` bit of a valid traceparent's flags."""
    return bool(int(value[-2:], 16) & 1)


def valid_traceparent(value: str | None) -> bool:
    if not value or len(value) != 55:
        return False
    parts = value.split("-")
    return len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16 \
        and parts[1] != "0" * 32 and parts[2] != "0" * 16


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """One finished request, for metrics and the access log.

    Not frozen: one is made per request, and a frozen dataclass's __init__
    sets each of these fields through object.__setattr__ (about 3x slower)."""
    source_principal: str | None
    source_ip: str
    source_workload: Workload | None
    destination: Service | None
    destination_workload: Workload | None
    upstream: str                  # "ip:port" or ""
    method: str
    path: str
    authority: str
    protocol: str                  # Istio's request_protocol: "http" | "http2"
    status: int
    flags: str                     # Envoy response flags: "-", "UF", "UT", "NR", "UC"...
    duration_ms: float
    request_bytes: int
    response_bytes: int
    request_id: str = ""
    traceparent: str = ""
    route: str = ""
    policy: str = ""
    start_time: float = 0.0        # wall clock (unix seconds) the request arrived
    user_agent: str = ""
    x_forwarded_for: str = ""
    local_address: str = ""        # "ip:port" the client called (the VIP or pod address)
    parent_span_id: str = ""       # the caller's span id, from its traceparent
    grpc_status: str = ""          # gRPC requests: the response's grpc-status ("" otherwise)
    request_messages: int = 0      # gRPC messages client -> server
    response_messages: int = 0     # gRPC messages server -> client


class _Agg:
    """Counts for one label set since the last flush."""
    __slots__ = ("children", "count", "dur", "dur_sum", "req", "req_sum", "resp", "resp_sum",
                 "msgs", "req_msgs", "resp_msgs")

    def __init__(self, children, nd: int, ns: int, msgs=None) -> None:
        self.children = children
        self.msgs = msgs            # gRPC: (request, response) message counter children
        self.count = self.req_msgs = self.resp_msgs = 0
        self.dur, self.req, self.resp = [0] * nd, [0] * ns, [0] * ns
        self.dur_sum = self.req_sum = self.resp_sum = 0.0


class AccessLog:
    """Batched JSON lines (see the module docstring)."""

    def __init__(self, write=None, *, logger: logging.Logger = ACCESS_LOG,
                 clock=time.time) -> None:
        self._write = write or (lambda data: os.write(2, data))
        self.logger = logger
        self.clock = clock
        self._buf: list[bytes] = []
        self._size = 0
        self._first = 0.0
        self._sec = -1
        self._stamp = ""
        self._pid = os.getpid()
        self._scope = logger.name.removeprefix("shoal.")    # "access", as core/log.py

    def emit(self, fields: dict) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        now = self.clock()
        sec = int(now)
        if sec != self._sec:    # format the date once per second, not per line
            self._sec, self._stamp = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        line = orjson.dumps({"level": "info",
                             "time": f"{self._stamp}.{int((now - sec) * 1000):03d}Z",
                             "scope": self._scope, "message": "request", "pid": self._pid,
                             **fields}, default=str) + b"\n"
        if self._size + len(line) > ACCESS_LOG_BATCH:
            self.flush()
        if not self._buf:
            self._first = now
        self._buf.append(line)
        self._size += len(line)
        if now - self._first >= ACCESS_LOG_FLUSH:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            data = b"".join(self._buf)
            self._buf, self._size = [], 0
            try:
                self._write(data)
            except OSError:
                pass   # stderr gone: never fail a request over a log line


class Telemetry:
    """Records requests into core.metrics (when given) and the access log."""

    def __init__(self, metrics=None, *, access_log: bool = True, log: AccessLog | None = None,
                 clock=time.monotonic, spans=None) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.spans = spans          # waypoint.tracing.SpanExporter, or None: no export
        self.log = log or AccessLog()
        self.clock = clock
        self._aggs: dict[tuple, _Agg] = {}
        self._last_flush = clock()
        # Requests counted in C (native/tally.c, for plan-served requests
        # when there is no access log or span to write): slot -> its _Agg.
        self.tally: Any = None
        self._slot_aggs: list[_Agg] = []
        self._slots: dict[tuple, int] = {}
        if metrics is not None:
            self._dur_bounds = list(metrics.request_duration._upper_bounds)
            self._size_bounds = list(metrics.request_bytes._upper_bounds)
            if native is not None:
                self.tally = native.Tally(self._dur_bounds, self._size_bounds)

    @property
    def counts_in_c(self) -> bool:
        """May requests be counted in the C tally (nothing but metrics to
        make of them: no access log, no span export)?"""
        return self.tally is not None and not self.access_log and self.spans is None

    def slot(self, r: RequestRecord) -> int:
        """The tally slot of `r`'s label set (-1: none left, record it)."""
        key = _agg_key(r)
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slot_aggs) >= MAX_CACHED_LABEL_SETS:
                return -1
            slot = self._slots[key] = len(self._slot_aggs)
            self._slot_aggs.append(self._agg_for(key, r))
        return slot

    def record(self, r: RequestRecord) -> None:
        if self.metrics is not None:
            self._aggregate(r)
            if self.clock() - self._last_flush >= FLUSH_INTERVAL:
                self.flush_metrics()
        if self.access_log:
            self.log.emit(access_fields(r))
        if self.spans is not None and r.traceparent and is_sampled(r.traceparent):
            self.spans.record(r)

    def _agg_for(self, key: tuple, r: RequestRecord) -> _Agg:
        """The aggregate of `r`'s label set (`key`), made when new."""
        a = self._aggs.get(key)
        if a is None:
            if len(self._aggs) >= MAX_CACHED_LABEL_SETS:
                self.flush_metrics()
                self._aggs.clear()
            m = self.metrics
            labels = labels_for(r)
            children = tuple(metric.labels(*m.values_for(metric, labels)) for metric in
                             (m.requests, m.request_duration, m.request_bytes, m.response_bytes))
            values = m.values_for(m.requests, labels)
            msgs = (m.request_messages.labels(*values), m.response_messages.labels(*values)) \
                if r.grpc_status else None
            a = self._aggs[key] = _Agg(children, len(self._dur_bounds), len(self._size_bounds),
                                       msgs)
        return a

    def _aggregate(self, r: RequestRecord) -> None:
        key = _agg_key(r)
        a = self._aggs.get(key)
        if a is None:
            a = self._agg_for(key, r)
        a.count += 1
        a.req_msgs += r.request_messages
        a.resp_msgs += r.response_messages
        a.dur[bisect.bisect_left(self._dur_bounds, r.duration_ms)] += 1
        a.dur_sum += r.duration_ms
        a.req[bisect.bisect_left(self._size_bounds, r.request_bytes)] += 1
        a.req_sum += r.request_bytes
        a.resp[bisect.bisect_left(self._size_bounds, r.response_bytes)] += 1
        a.resp_sum += r.response_bytes

    def flush_metrics(self) -> None:
        """Move the aggregated counts into the prometheus values."""
        self._last_flush = self.clock()
        if self.tally is not None:
            for slot, n, dur, dur_sum, req, req_sum, resp, resp_sum in self.tally.take():
                a = self._slot_aggs[slot]
                a.count += n
                _fold(a.dur, dur)
                _fold(a.req, req)
                _fold(a.resp, resp)
                a.dur_sum += dur_sum
                a.req_sum += req_sum
                a.resp_sum += resp_sum
        # A slot's aggregate may have left _aggs (its bound): flushed all the same.
        for a in (*self._aggs.values(), *self._slot_aggs):
            if not a.count:
                continue
            requests, duration, req_bytes, resp_bytes = a.children
            requests.inc(a.count)
            _add(duration, a.dur, a.dur_sum)
            _add(req_bytes, a.req, a.req_sum)
            _add(resp_bytes, a.resp, a.resp_sum)
            if a.msgs is not None:
                a.msgs[0].inc(a.req_msgs)
                a.msgs[1].inc(a.resp_msgs)
            a.count = a.req_msgs = a.resp_msgs = 0
            a.dur, a.req, a.resp = [0] * len(a.dur), [0] * len(a.req), [0] * len(a.resp)
            a.dur_sum = a.req_sum = a.resp_sum = 0.0

    def flush(self) -> None:
        if self.metrics is not None:
            self.flush_metrics()
        self.log.flush()


def _agg_key(r: RequestRecord) -> tuple:
    """What tells `r`'s label set from another's."""
    return (r.source_principal, r.source_workload and r.source_workload.uid,
            r.destination and r.destination.key,
            r.destination_workload and r.destination_workload.uid,
            r.protocol, r.status, r.flags, r.grpc_status)


def _fold(into: list[int], counts: list[int]) -> None:
    for i, n in enumerate(counts):
        into[i] += n


def _add(hist_child, counts: list[int], total: float) -> None:
    """Add pre-bucketed observations to a prometheus_client Histogram child
    (what `observe` does one value at a time: `_sum` and the bucket values)."""
    hist_child._sum.inc(total)
    for i, n in enumerate(counts):
        if n:
            hist_child._buckets[i].inc(n)


def _workload_labels(prefix: str, w: Workload | None, principal: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if principal:
        out[f"{prefix}_principal"] = "spiffe://" + strip_spiffe(principal)
    if w is not None:
        out[f"{prefix}_workload"] = w.workload_name or w.name
        out[f"{prefix}_workload_namespace"] = w.namespace
        out[f"{prefix}_canonical_service"] = w.canonical_name or w.workload_name or w.name
        out[f"{prefix}_canonical_revision"] = w.canonical_revision
        out[f"{prefix}_app"] = w.labels.get("app", "")
        out[f"{prefix}_version"] = w.labels.get("version", "")
        out[f"{prefix}_cluster"] = "Kubernetes"
    elif principal:
        ns, _ = spiffe_parts(strip_spiffe(principal))
        if ns:
            out[f"{prefix}_workload_namespace"] = ns
    return out


def labels_for(r: RequestRecord) -> dict[str, str]:
    labels = {"reporter": REPORTER, "request_protocol": r.protocol,
              "response_code": str(r.status), "response_flags": r.flags,
              "connection_security_policy": "mutual_tls" if r.source_principal else "none",
              "grpc_response_status": r.grpc_status}
    labels.update(_workload_labels("source", r.source_workload, r.source_principal))
    dst_principal = r.destination_workload.identity if r.destination_workload else None
    labels.update(_workload_labels("destination", r.destination_workload, dst_principal))
    if r.destination is not None:
        labels["destination_service"] = r.destination.hostname
        labels["destination_service_name"] = r.destination.name
        labels["destination_service_namespace"] = r.destination.namespace
    return {k: v for k, v in labels.items() if v}


# Envoy's %RESPONSE_CODE_DETAILS% for the answers the waypoint makes itself
# (by response flag); an upstream's answer is "via_upstream".
CODE_DETAILS = {"NR": "route_not_found", "UH": "no_healthy_upstream",
                "UF": "upstream_reset_before_response_started{connection_failure}",
                "UT": "response_timeout", "UR": "upstream_reset_after_response_started",
                "DC": "downstream_remote_disconnect"}


def response_code_details(r: RequestRecord) -> str:
    if r.flags == "RBAC":
        return f"rbac_access_denied_matched_policy[{r.policy or 'none'}]"
    if r.flags in CODE_DETAILS:
        return CODE_DETAILS[r.flags]
    return "via_upstream" if r.upstream and r.status else "-"


def access_fields(r: RequestRecord) -> dict[str, object]:
    """The access log line: the keys of Istio's default JSON access log format
    (start_time, method, path, protocol, response_code, response_flags,
    response_code_details, bytes_received, bytes_sent, duration,
    x_forwarded_for, user_agent, request_id, authority, upstream_host,
    upstream_cluster, route_name, requested_server_name, ...) with Envoy's
    values ("HTTP/1.1", "-" for what is absent), plus shoal's own
    (source_principal, policy, traceparent...)."""
    port = r.authority.rpartition(":")[2] if ":" in r.authority else "80"
    return {
        "start_time": _rfc3339_ms(r.start_time) if r.start_time else "-",
        "duration": int(r.duration_ms),
        "x_forwarded_for": r.x_forwarded_for or "-", "user_agent": r.user_agent or "-",
        "downstream_remote_address": r.source_ip or "-",
        # In Istio's waypoint the original destination the client dialled.
        "downstream_local_address": r.local_address or "-",
        "method": r.method, "path": r.path, "authority": r.authority,
        "protocol": "HTTP/2" if r.protocol == "http2" else "HTTP/1.1",
        "response_code": r.status, "response_flags": r.flags,
        "response_code_details": response_code_details(r),
        # HBONE carries no SNI and the waypoint closes no connection for policy.
        "requested_server_name": "-", "connection_termination_details": "-",
        "duration_ms": round(r.duration_ms, 3), "bytes_received": r.request_bytes,
        "bytes_sent": r.response_bytes, "upstream_host": r.upstream or "-",
        "upstream_cluster": (f"outbound|{port}||{r.destination.hostname}"
                             if r.destination is not None else "-"),
        "downstream_peer": r.source_ip, "source_principal": r.source_principal or "-",
        "destination_service": r.destination.hostname if r.destination else "-",
        "route_name": r.route or "-", "policy": r.policy or "-",
        "request_id": r.request_id, "traceparent": r.traceparent, "reporter": REPORTER,
        **({"grpc_status": r.grpc_status} if r.grpc_status else {}),
    }


def _rfc3339_ms(t: float) -> str:
    """Envoy's %START_TIME% in its JSON default: 2026-12-04T23:00:00.123Z."""
    import time as _time
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
