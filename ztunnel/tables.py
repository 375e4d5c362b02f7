"""`shoal ztunnel-config` tables, formatted like `istioctl ztunnel-config`.

Pure: input is the JSON of the admin endpoint `/config_dump` in ztunnel's
layout (ztunnel/configdump.py), output text. Columns follow istioctl's
writer (istioctl/pkg/writer/ztunnel/configdump, its testdata/allsummary.txt)
so operators read them the same way.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from shoal.core.addr import split_host_port

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def render(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "None") -> str:
    """Left-aligned columns separated by at least one space (istioctl's tabwriter)."""
    rows = [[_cell(c, empty) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = [" ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in rows:
        lines.append(" ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines) + "\n"


def _cell(value: Any, empty: str = "None") -> str:
    if value is None or value == "":
        return empty
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or empty
    return str(value)


def _waypoint_name(ref: dict | None, services: list[dict[str, Any]]) -> str:
    """istioctl's waypointName: the Service whose VIP the waypoint address is."""
    if not ref:
        return "None"
    for svc in services:
        if ref.get("destination") in (svc.get("vips") or ()):
            return svc["name"]
    return "NA"


def _ip(network_address: str) -> str:
    return network_address.partition("/")[2] or network_address


def workloads(dump: dict[str, Any], namespace: str | None = None) -> str:
    services = dump.get("services", [])
    rows = []
    for w in sorted(dump.get("workloads", []), key=lambda w: (w["namespace"], w["name"])):
        if namespace and w["namespace"] != namespace:
            continue
        ips = w.get("workloadIps") or ()
        rows.append([w["namespace"], w["name"], ips[0] if ips else "None",
                     w.get("node") or "None", _waypoint_name(w.get("waypoint"), services),
                     w.get("protocol", "TCP")])
    return render(["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"], rows)


def services(dump: dict[str, Any], namespace: str | None = None) -> str:
    all_services = dump.get("services", [])
    rows = []
    for s in sorted(all_services, key=lambda s: (s["namespace"], s["name"], s["hostname"])):
        if namespace and s["namespace"] != namespace:
            continue
        eps = list((s.get("endpoints") or {}).values())
        up = sum(1 for e in eps if e.get("status", "Healthy") == "Healthy")
        vips = s.get("vips") or ()
        rows.append([s["namespace"], s["name"], _ip(vips[0]) if vips else "None",
                     _waypoint_name(s.get("waypoint"), all_services), f"{up}/{len(eps)}"])
    return render(["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"], rows)


def policies(dump: dict[str, Any], namespace: str | None = None) -> str:
    rows = []
    for p in sorted(dump.get("policies", []), key=lambda p: (p["namespace"], p["name"])):
        if namespace and p["namespace"] != namespace:
            continue
        rows.append([p["namespace"], p["name"], p["action"], p["scope"]])
    return render(["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"], rows)


def certificates(dump: dict[str, Any]) -> str:
    """Leaf, intermediates and roots per identity; "NA" where there is none,
    as istioctl prints an Initializing or Unavailable certificate."""
    rows = []
    now = datetime.now(timezone.utc)
    for c in dump.get("certificates", []):
        state = "Unavailable" if "Unavailable" in c.get("state", "") else c.get("state", "")
        chain = list(c.get("certChain") or [])
        if not chain:
            rows.append([c["identity"], "NA", state, "false", "NA", "NA", "NA"])
            continue
        entries = [("Leaf" if i == 0 else "Intermediate", cert) for i, cert in enumerate(chain)]
        entries += [("Root", cert) for cert in c.get("rootCerts") or ()]
        for kind, cert in entries:
            rows.append([c["identity"], kind, state, str(_cert_valid(cert, now)).lower(),
                         format(int(cert["serialNumber"]), "x"), cert.get("expirationTime") or "NA",
                         cert.get("validFrom") or "NA"])
    return render(["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER",
                   "NOT AFTER", "NOT BEFORE"], rows)


def _cert_valid(cert: dict[str, Any], now: datetime) -> bool:
    try:
        start = datetime.strptime(cert["validFrom"], RFC3339).replace(tzinfo=timezone.utc)
        end = datetime.strptime(cert["expirationTime"], RFC3339).replace(tzinfo=timezone.utc)
    except (KeyError, ValueError):
        return False
    return start < now < end


def connections(dump: dict[str, Any], namespace: str | None = None) -> str:
    """istioctl's connections summary: inbound and outbound per local workload."""
    names = {_ip(a): s["hostname"] for s in dump.get("services", []) for a in s.get("vips") or ()}
    names.update({ip: f"{w['name']}.{w['namespace']}" for w in dump.get("workloads", [])
                  for ip in w.get("workloadIps") or ()})

    def lookup(address: str) -> str:
        ip, port = split_host_port(address)
        return f"{names[ip]}:{port}" if ip in names else address

    rows = []
    states = sorted((dump.get("workloadState") or {}).values(),
                    key=lambda s: (s["info"]["namespace"], s["info"]["name"]))
    for st in states:
        info = st["info"]
        if namespace and info["namespace"] != namespace:
            continue
        name = f"{info['name']}.{info['namespace']}"
        conns = st.get("connections") or {}
        for c in conns.get("inbound") or ():
            rows.append([name, "Inbound", lookup(c["actualDst"]), lookup(c["src"]), "", "HBONE"])
        for c in conns.get("outbound") or ():
            rows.append([name, "Outbound", lookup(c["src"]), lookup(c["actualDst"]),
                         lookup(c["originalDst"]), "HBONE"])
    return render(["WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL"], rows,
                  empty="")


def all_tables(dump: dict[str, Any], namespace: str | None = None) -> str:
    """`istioctl ztunnel-config all`: every summary, one blank line apart."""
    parts = [workloads(dump, namespace), services(dump, namespace), policies(dump, namespace),
             certificates(dump), connections(dump, namespace)]
    return "\n".join(parts)


TABLES: dict[str, Callable[..., str]] = {"workloads": workloads, "services": services, "policies": policies,
          "certificates": certificates, "connections": connections, "all": all_tables}
