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
                         {"file", "resource", "field", "message", ...}], "total", "at"},
                     "policies": [{"policy", "ancestor", "reason", "message"}, ...]}
    }

`status.policies` holds what istiod writes in an AuthorizationPolicy's status
for ztunnel (ancestor "ztunnel"): HTTP attributes it cannot enforce, actions
it does not support.
"""

from __future__ import annotations

from typing import Any

from shoal.core.authz import l4_status
from shoal.core.records import Authorization, to_dict
from shoal.routing.view import View

ZTUNNEL_ANCESTOR = "ztunnel"     # istiod's model.Ztunnel binding ancestor

SECTIONS = {"workloads": "workload", "services": "service", "policies": "authorization",
            "waypoints": "waypoint", "routes": "httproute", "namespaces": "namespace"}


def dump_view(view: View) -> dict[str, Any]:
    """Plain-data dump of a RoutingView or StaticView (JSON-serialisable with orjson)."""
    items = view.items_many(SECTIONS.values())
    out: dict[str, Any] = {"generation": view.generation}
    for section, kind in SECTIONS.items():
        out[section] = [json_safe(to_dict(r)) for r in items[kind]]
    status = dict(view.status() or {})
    status["policies"] = [st for st in (policy_status(p) for p in items["authorization"])
                          if st is not None]
    out["status"] = status
    return out


def policy_status(policy: Authorization) -> dict[str, str] | None:
    """istiod's ztunnel binding status of one policy, None when it has none."""
    st = l4_status(policy)
    if st is None:
        return None
    return {"policy": policy.key, "ancestor": ZTUNNEL_ANCESTOR, "reason": st[0], "message": st[1]}


def json_safe(value: Any) -> Any:
    # JSON objects have string keys; records use int keys for ports
    # (Workload.services), so turn them into strings here, once, rather than
    # asking every serialiser for a non-standard option.
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
