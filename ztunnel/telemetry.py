"""Istio's TCP metric labels and the JSON access log line (pure).

Labels follow ztunnel's `CommonTrafficLabels` (reference section 5): every
missing value renders as "unknown"; `request_protocol` is always "tcp";
`connection_security_policy` is "mutual_tls" for HBONE, else "unknown".

Source identity labels come only from what was verified: the peer's mTLS
certificate on inbound HBONE (a workload found by IP is used only when its
identity is that certificate's), the local pod on outbound. A plaintext
inbound connection has no verified source: its source labels, principal
included, are "unknown" (an IP is not an identity).

Byte counters use Istio's (Envoy's) meaning for both reporters:
`istio_tcp_received_bytes_total` counts request bytes (client -> server),
`istio_tcp_sent_bytes_total` response bytes (server -> client). From the
source proxy's own point of view that is "flipped" (what it received from
the app it sends upstream); the access log un-flips: `bytes_sent` is what
this proxy sent toward the next hop, `bytes_recv` what it got back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.core.records import Service, Workload

UNKNOWN = "unknown"
MUTUAL_TLS = "mutual_tls"
SOURCE = "source"
DESTINATION = "destination"

# Label names in a fixed order: prometheus_client wants them up front.
TCP_LABELS = (
    "reporter",
    "source_workload", "source_canonical_service", "source_canonical_revision",
    "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_cluster",
    "destination_service", "destination_service_namespace", "destination_service_name",
    "destination_workload", "destination_canonical_service",
    "destination_canonical_revision", "destination_workload_namespace",
    "destination_principal", "destination_app", "destination_version", "destination_cluster",
    "request_protocol", "response_flags", "connection_security_policy",
)

CLUSTER = "Kubernetes"     # Istio's default cluster id


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionMeta:
    """What telemetry knows about one proxied connection.

    Attributes:
        reporter: "source" (outbound side) or "destination" (inbound side).
        src_addr / dst_addr: "ip:port" strings; dst_addr is the next hop.
        hbone_addr: the CONNECT :authority ("" for plaintext).
        mtls: whether the hop is HBONE (mutual TLS).
    """
    reporter: str
    src_addr: str
    dst_addr: str
    hbone_addr: str = ""
    src_workload: Workload | None = None
    src_identity: str = ""
    dst_workload: Workload | None = None
    dst_identity: str = ""
    dst_service: Service | None = None
    mtls: bool = False

    @property
    def direction(self) -> str:
        return "outbound" if self.reporter == SOURCE else "inbound"


def _v(value: str | None) -> str:
    return value if value else UNKNOWN


def _workload_labels(prefix: str, w: Workload | None, principal: str) -> dict[str, str]:
    if w is None:
        return {f"{prefix}_workload": UNKNOWN, f"{prefix}_canonical_service": UNKNOWN,
                f"{prefix}_canonical_revision": UNKNOWN,
                f"{prefix}_workload_namespace": UNKNOWN, f"{prefix}_principal": _v(principal),
                f"{prefix}_app": UNKNOWN, f"{prefix}_version": UNKNOWN,
                f"{prefix}_cluster": UNKNOWN}
    canonical = w.canonical_name or w.workload_name or w.name
    return {
        f"{prefix}_workload": _v(w.workload_name or w.name),
        f"{prefix}_canonical_service": _v(canonical),
        f"{prefix}_canonical_revision": _v(w.canonical_revision),
        f"{prefix}_workload_namespace": _v(w.namespace),
        f"{prefix}_principal": _v(principal),
        f"{prefix}_app": _v(canonical),
        f"{prefix}_version": _v(w.canonical_revision),
        f"{prefix}_cluster": CLUSTER,
    }


def tcp_labels(meta: ConnectionMeta, response_flags: str = "-") -> dict[str, str]:
    """Istio's TCP metric labels for one connection."""
    labels = {"reporter": meta.reporter}
    labels.update(_workload_labels("source", meta.src_workload, meta.src_identity))
    svc = meta.dst_service
    labels["destination_service"] = _v(svc.hostname if svc else "")
    labels["destination_service_namespace"] = _v(svc.namespace if svc else "")
    labels["destination_service_name"] = _v(svc.name if svc else "")
    labels.update(_workload_labels("destination", meta.dst_workload, meta.dst_identity))
    labels["request_protocol"] = "tcp"
    labels["response_flags"] = response_flags or "-"
    labels["connection_security_policy"] = MUTUAL_TLS if meta.mtls else UNKNOWN
    return labels


def label_values(labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels[name] for name in TCP_LABELS)


def format_duration(seconds: float) -> str:
    """ztunnel writes durations like "13ms"."""
    return f"{int(round(seconds * 1000))}ms"


def access_fields(meta: ConnectionMeta, *, bytes_sent: int, bytes_recv: int,
                  duration: float, error: str = "") -> dict[str, Any]:
    """The fields of the "connection complete" JSON access log line.

    `bytes_sent` is what went from the client toward the destination,
    `bytes_recv` what came back, whichever side reports (un-flipped).
    """
    src, dst = meta.src_workload, meta.dst_workload
    fields: dict[str, Any] = {
        "src.addr": meta.src_addr,
        "src.workload": src.name if src else None,
        "src.namespace": src.namespace if src else None,
        "src.identity": meta.src_identity or None,
        "dst.addr": meta.dst_addr,
        "dst.hbone_addr": meta.hbone_addr or None,
        "dst.service": meta.dst_service.hostname if meta.dst_service else None,
        "dst.workload": dst.name if dst else None,
        "dst.namespace": dst.namespace if dst else None,
        "dst.identity": meta.dst_identity or None,
        "direction": meta.direction,
        "bytes_sent": bytes_sent,
        "bytes_recv": bytes_recv,
        "duration": format_duration(duration),
    }
    if error:
        fields["error"] = error
    return {k: v for k, v in fields.items() if v is not None}


def baggage(w: Workload | None) -> str | None:
    """Istio's `baggage` header describing a workload (baggage.rs), or None.

    e.g. `k8s.cluster.name=Kubernetes,k8s.namespace.name=default,
    k8s.deployment.name=echo,service.name=echo,service.version=v1`.
    """
    if w is None:
        return None
    kind = "deployment" if w.workload_type == "deployment" else "pod"
    parts = [f"k8s.cluster.name={CLUSTER}", f"k8s.namespace.name={w.namespace}",
             f"k8s.{kind}.name={w.workload_name or w.name}",
             f"service.name={w.canonical_name or w.workload_name or w.name}",
             f"service.version={w.canonical_revision or 'latest'}"]
    return ",".join(parts)


class LiveBytes:
    """The byte counts of one open connection, reported in deltas.

    `request()` / `response()` return the running totals (bytes from the
    client / from the server). `take()` returns what was not reported yet;
    taken periodically and once at close with the final totals, the counters
    end up exactly at the totals.
    """

    __slots__ = ("request", "response", "gone", "reported_request", "reported_response")

    def __init__(self, request, response, gone=None) -> None:
        self.request = request
        self.response = response
        # Optional: true once the connection ended without a close report
        # (e.g. a tunnel that died before its 200), so it is not kept forever.
        self.gone = gone
        self.reported_request = 0
        self.reported_response = 0

    def take(self, request: int | None = None, response: int | None = None) -> tuple[int, int]:
        """(new request bytes, new response bytes) since the last take."""
        req = self.request() if request is None else request
        resp = self.response() if response is None else response
        d_req = max(0, req - self.reported_request)
        d_resp = max(0, resp - self.reported_response)
        self.reported_request += d_req
        self.reported_response += d_resp
        return d_req, d_resp
