"""`shoal ztunnel-config` tables, formatted like `istioctl ztunnel-config`.

Pure: input is the JSON of the admin endpoint `/config_dump`, output text.
Columns follow istioctl (NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL
for workloads, and so on) so operators read them the same way.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def flatten(dump: dict[str, Any]) -> dict[str, Any]:
    """The table sections of a `/config_dump`: routing records plus certificates."""
    return {**dump.get("routing", {}), "certificates": dump.get("certificates", [])}


def render(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by at least one space (istioctl's tabwriter)."""
    rows = [[_cell(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = [" ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in rows:
        lines.append(" ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "None"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "None"
    return str(value)


def _waypoint(ref: dict | None) -> str:
    return ref["name"] if ref else "None"


def workloads(dump: dict[str, Any], namespace: str | None = None) -> str:
    rows = []
    for w in sorted(dump.get("workloads", []), key=lambda w: (w["namespace"], w["name"])):
        if namespace and w["namespace"] != namespace:
            continue
        rows.append([w["namespace"], w["name"], ",".join(w.get("ips") or ()) or "None",
                     w.get("node") or "None", _waypoint(w.get("waypoint")),
                     w.get("protocol", "TCP")])
    return render(["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"], rows)


def services(dump: dict[str, Any], namespace: str | None = None) -> str:
    healthy = {w["uid"] for w in dump.get("workloads", []) if w.get("status") == "HEALTHY"}
    rows = []
    for s in sorted(dump.get("services", []), key=lambda s: (s["namespace"], s["name"])):
        if namespace and s["namespace"] != namespace:
            continue
        eps = s.get("endpoints") or ()
        up = sum(1 for e in eps if e in healthy)
        rows.append([s["namespace"], s["name"], ",".join(s.get("vips") or ()) or "None",
                     _waypoint(s.get("waypoint")), f"{up}/{len(eps)}"])
    return render(["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"], rows)


_SCOPE = {"GLOBAL": "Global", "NAMESPACE": "Namespace", "WORKLOAD_SELECTOR": "WorkloadSelector",
          "TARGET_REF": "TargetRef"}


def policies(dump: dict[str, Any], namespace: str | None = None) -> str:
    rows = []
    for p in sorted(dump.get("policies", []), key=lambda p: (p["namespace"], p["name"])):
        if namespace and p["namespace"] != namespace:
            continue
        scope = _SCOPE.get(p["scope"], p["scope"])
        if p["scope"] == "NAMESPACE":
            scope = f"Namespace {p['namespace']}"
        rows.append([p["namespace"], p["name"], p["action"].capitalize(), scope])
    return render(["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"], rows)


def certificates(dump: dict[str, Any]) -> str:
    """Leaf, intermediates and roots per identity (the CertManager's dump)."""
    rows = []
    for c in sorted(dump.get("certificates", []), key=lambda c: c["identity"]):
        chain = list(c.get("certChain") or [])
        roots = list(c.get("rootCerts") or [])
        if not chain:
            rows.append([c["identity"], "Leaf", c.get("state", "Unavailable"), "false",
                         "None", "None", "None"])
            continue
        entries = [("Leaf" if i == 0 else "Intermediate", cert) for i, cert in enumerate(chain)]
        entries += [("Root", cert) for cert in roots]
        for kind, cert in entries:
            name = c["identity"] if kind == "Leaf" else ("ROOTCA" if kind == "Root" else "CA")
            rows.append([name, kind, c.get("state", "Available"),
                         str(cert.get("valid", True)).lower(), cert.get("serialNumber"),
                         cert.get("expirationTime"), cert.get("validFrom")])
    return render(["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER",
                   "NOT AFTER", "NOT BEFORE"], rows)


TABLES = {"workloads": workloads, "services": services, "policies": policies,
          "certificates": certificates}
