"""The ztunnel sections of the admin `/config_dump` (plain JSON data).

Keys follow ztunnel's config dump: `workloads`, `services`, `policies`,
`certificates`, plus shoal's `connections` and `routing` status. Record
dicts use the field names of core/records.py; maps keyed by port get
string keys so any JSON encoder takes them.
"""

from __future__ import annotations

from typing import Any, Iterable

from shoal.routing.dump import dump_view


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
    """The shape `/config_dump` serves: the routing table under "routing"
    (core/admin.py adds it), the ztunnel's own sections at the top level."""
    return {
        "routing": dump_view(view),
        "certificates": [cert_entry(i, c) for i, c in certs],
        "connections": connections or [],
    }
