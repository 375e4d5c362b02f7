"""Waypoint telemetry: Istio's HTTP metrics, JSON access logs, traceparent.

Metric names and labels are Istio's (core/metrics.py), with
`reporter="waypoint"` as Istio's waypoints report. Label children are cached
per label tuple: prometheus_client's `labels()` lookup costs more than the
increment itself and a waypoint sees few distinct label sets.
"""

from __future__ import annotations

import logging
import random as _random
from dataclasses import dataclass

from core.authz import spiffe_parts, strip_spiffe
from routing.records import Service, Workload

ACCESS_LOG = logging.getLogger("shoal.access")
REPORTER = "waypoint"
# Label-set cache bound: label values come from config (services,
# workloads) and status codes, so this is only a guard against churn.
MAX_CACHED_LABEL_SETS = 4096


def traceparent(rng: _random.Random) -> str:
    """A new W3C traceparent (version 00, sampled)."""
    return f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"


def valid_traceparent(value: str | None) -> bool:
    if not value or len(value) != 55:
        return False
    parts = value.split("-")
    return len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16 \
        and parts[1] != "0" * 32 and parts[2] != "0" * 16


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """One finished request, for metrics and the access log."""
    source_principal: str | None
    source_ip: str
    source_workload: Workload | None
    destination: Service | None
    destination_workload: Workload | None
    upstream: str                  # "ip:port" or ""
    method: str
    path: str
    authority: str
    protocol: str                  # "http" | "http2" (Istio's request_protocol... HTTP/1.1)
    status: int
    flags: str                     # Envoy response flags: "-", "UF", "UT", "NR", "UC"...
    duration_ms: float
    request_bytes: int
    response_bytes: int
    request_id: str = ""
    traceparent: str = ""
    route: str = ""
    policy: str = ""


class Telemetry:
    """Records requests into core.metrics (when given) and the access log."""

    def __init__(self, metrics=None, *, access_log: bool = True,
                 log: logging.Logger = ACCESS_LOG) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.log = log
        self._children: dict[tuple, tuple] = {}

    def record(self, r: RequestRecord) -> None:
        if self.metrics is not None:
            self._metrics(r)
        if self.access_log and self.log.isEnabledFor(logging.INFO):
            self.log.info("request", extra={"fields": access_fields(r)})

    def _metrics(self, r: RequestRecord) -> None:
        key = (r.source_principal, r.source_workload and r.source_workload.uid,
               r.destination and r.destination.key,
               r.destination_workload and r.destination_workload.uid,
               r.protocol, r.status, r.flags)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            labels = labels_for(r)
            children = tuple(metric.labels(*m.values_for(metric, labels)) for metric in
                             (m.requests, m.request_duration, m.request_bytes, m.response_bytes))
            if len(self._children) >= MAX_CACHED_LABEL_SETS:
                self._children.clear()
            self._children[key] = children
        requests, duration, req_bytes, resp_bytes = children
        requests.inc()
        duration.observe(r.duration_ms)
        req_bytes.observe(r.request_bytes)
        resp_bytes.observe(r.response_bytes)


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
              "connection_security_policy": "mutual_tls" if r.source_principal else "none"}
    labels.update(_workload_labels("source", r.source_workload, r.source_principal))
    dst_principal = r.destination_workload.identity if r.destination_workload else None
    labels.update(_workload_labels("destination", r.destination_workload, dst_principal))
    if r.destination is not None:
        labels["destination_service"] = r.destination.hostname
        labels["destination_service_name"] = r.destination.name
        labels["destination_service_namespace"] = r.destination.namespace
    return {k: v for k, v in labels.items() if v}


def access_fields(r: RequestRecord) -> dict[str, object]:
    """The access log line (Envoy's default fields, JSON)."""
    return {
        "method": r.method, "path": r.path, "authority": r.authority, "protocol": r.protocol,
        "response_code": r.status, "response_flags": r.flags,
        "duration_ms": round(r.duration_ms, 3), "bytes_received": r.request_bytes,
        "bytes_sent": r.response_bytes, "upstream_host": r.upstream or "-",
        "downstream_peer": r.source_ip, "source_principal": r.source_principal or "-",
        "destination_service": r.destination.hostname if r.destination else "-",
        "route_name": r.route or "-", "policy": r.policy or "-",
        "request_id": r.request_id, "traceparent": r.traceparent, "reporter": REPORTER,
    }
