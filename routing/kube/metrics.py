"""The Kubernetes source's health as Prometheus series (as ztunnel exports its
xDS connection state). The watcher process records them into the supervisor's
multiprocess directory (core/metrics.py), so :15020/metrics shows them.

    shoal_kube_synced{resource}              1 once the initial list is applied
    shoal_kube_missing{resource}             1 while the API does not serve it (CRD absent)
    shoal_kube_objects{resource}             valid objects held
    shoal_kube_relists_total{resource}       lists after the first (410 Gone, SIGHUP)
    shoal_kube_events_total{resource}        watch events applied
    shoal_kube_errors_total{resource}        list/watch failures
    shoal_kube_refused_objects               objects refused by validation

and ztunnel's names for its config-source stream (src/xds/metrics.rs), the
`url` being the resource (`pods`, `httproutes.gateway.networking.k8s.io`)
where ztunnel has an xDS type URL:

    istio_xds_connection_terminations_total{reason}   ConnectionError | Error | Reconnect
    istio_xds_message_total{url}                      list pages and watch events
    istio_xds_message_bytes_total{url}                their objects' bytes (JSON)
"""

from __future__ import annotations

from typing import Any

_METRICS: dict[str, Any] | None = None
_LAST: dict[tuple[str, str], int] = {}      # (resource, counter) -> value already counted


def all_metrics() -> list[Any]:
    """The metric objects (for checks of what /metrics can carry)."""
    return list(_metrics().values())


def _metrics() -> dict[str, Any]:
    global _METRICS
    if _METRICS is None:
        from prometheus_client import Counter, Gauge
        c: dict[str, Any] = dict(registry=None)
        g: dict[str, Any] = dict(registry=None, multiprocess_mode="mostrecent")
        _METRICS = {
            "synced": Gauge("shoal_kube_synced", "Initial list applied", ("resource",), **g),
            "missing": Gauge("shoal_kube_missing", "Resource not served by the API", ("resource",), **g),
            "objects": Gauge("shoal_kube_objects", "Valid objects held", ("resource",), **g),
            "relists": Counter("shoal_kube_relists", "Lists after the first", ("resource",), **c),
            "events": Counter("shoal_kube_events", "Watch events applied", ("resource",), **c),
            "errors": Counter("shoal_kube_errors", "List and watch failures", ("resource",), **c),
            "refused": Gauge("shoal_kube_refused_objects", "Objects refused by validation", (), **g),
            "terminations": Counter("istio_xds_connection_terminations",
                                    "Config-source streams (list/watch) that ended",
                                    ("reason",), **c),
            "messages": Counter("istio_xds_message", "Config-source messages received",
                                ("url",), **c),
            "message_bytes": Counter("istio_xds_message_bytes",
                                     "Config-source bytes received", ("url",), **c),
        }
    return _METRICS


def record(health: dict[str, Any], refused: int) -> None:
    """Bring the series up to `KubeSource.health()`."""
    m = _metrics()
    for h in health.get("resources", ()):
        res = h["resource"]
        m["synced"].labels(res).set(1 if h["synced"] else 0)
        m["missing"].labels(res).set(1 if h["missing"] else 0)
        m["objects"].labels(res).set(h["objects"])
        for name in ("relists", "events", "errors", "messages", "message_bytes"):
            new = h[name] - _LAST.get((res, name), 0)
            if new > 0:
                m[name].labels(res).inc(new)
                _LAST[(res, name)] = h[name]
        for reason, count in h.get("terminations", {}).items():
            new = count - _LAST.get((res, reason), 0)
            if new > 0:
                m["terminations"].labels(reason).inc(new)
                _LAST[(res, reason)] = count
    m["refused"].set(refused)
