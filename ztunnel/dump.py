"""The ztunnel sections of the admin `/config_dump` (plain JSON data).

Keys follow ztunnel's config dump: `workloads`, `services`, `policies`,
`certificates`, plus shoal's `connections` and `routing` status. Record
dicts use the field names of routing/records.py; maps keyed by port get
string keys so any JSON encoder takes them.
"""

from __future__ import annotations

from typing import Any, Iterable

from routing.records import to_dict


def _json_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_keys(v) for v in value]
    return value


def records(view: Any, kind: str) -> list[dict[str, Any]]:
    return [_json_keys(to_dict(r)) for r in view.items(kind)]


def cert_entry(identity: str, cert: Any | None, state: str = "Available") -> dict[str, Any]:
    """One certificate as ztunnel dumps it: identity, state, certChain."""
    if cert is None:
        return {"identity": identity, "state": "Unavailable: not fetched yet", "certChain": []}
    chain = [cert.leaf, *cert.chain, *cert.roots]
    return {"identity": identity, "state": state,
            "certChain": [{"serialNumber": format(c.serial_number, "x"),
                           "validFrom": c.not_valid_before_utc.isoformat(),
                           "expirationTime": c.not_valid_after_utc.isoformat(),
                           "valid": True} for c in chain]}


def config_dump(view: Any, certs: Iterable[tuple[str, Any | None]],
                connections: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "workloads": records(view, "workload"),
        "services": records(view, "service"),
        "policies": records(view, "authorization"),
        "waypoints": records(view, "waypoint"),
        "certificates": [cert_entry(i, c) for i, c in certs],
        "connections": connections or [],
        "routing": _json_keys(view.status()),
    }
