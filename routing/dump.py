"""The routing table as JSON for `/config_dump` and `shoal config dump`.

Shape (every record is `routing.records.to_dict` output, field names as in
core/records.py; all sections come from ONE generation):

    {
      "generation": 7,
      "workloads":  [Workload, ...],       sorted by uid
      "services":   [Service, ...],        sorted by "<ns>/<hostname>"
      "policies":   [Authorization, ...],  sorted by "<ns>/<name>"
      "waypoints":  [Waypoint, ...],
      "routes":     [HTTPRoute, ...],
      "namespaces": [Namespace, ...],
      "status":     {"generation", "source", "applied_at", "counts",
                     "error": null | {"code", "message", "errors": [
                         {"file", "resource", "field", "message", ...}], "total", "at"}}
    }
"""

from __future__ import annotations

from typing import Any

from shoal.core.records import to_dict

SECTIONS = {"workloads": "workload", "services": "service", "policies": "authorization",
            "waypoints": "waypoint", "routes": "httproute", "namespaces": "namespace"}


def dump_view(view: Any) -> dict[str, Any]:
    """Plain-data dump of a RoutingView or StaticView (JSON-serialisable with orjson)."""
    items = view.items_many(SECTIONS.values())
    out: dict[str, Any] = {"generation": view.generation}
    for section, kind in SECTIONS.items():
        out[section] = [json_safe(to_dict(r)) for r in items[kind]]
    out["status"] = view.status()
    return out


def json_safe(value: Any) -> Any:
    # JSON objects have string keys; records use int keys for ports
    # (Workload.services), so turn them into strings here, once, rather than
    # asking every serialiser for a non-standard option.
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
