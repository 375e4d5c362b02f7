"""The routing table as a flat key space: records plus secondary indexes.

Both views (the in-memory `StaticView` and the shared-memory `RoutingView`)
store exactly this key space, so they answer every lookup the same way; the
writer diffs two key spaces to publish only what changed (O(change)).

Key scheme (every key is a str; values are records or index payloads):

| key                              | value                                      |
|----------------------------------|--------------------------------------------|
| `w/<uid>`                        | Workload                                   |
| `s/<ns>/<hostname>`              | Service (`Service.key`)                    |
| `a/<ns>/<name>`                  | Authorization                              |
| `g/<ns>/<name>`                  | Waypoint                                   |
| `r/<ns>/<name>`                  | HTTPRoute                                  |
| `n/<name>`                       | Namespace                                  |
| `i/ip/<network>/<ip>`            | workload uid (str)                         |
| `i/vip/<network>/<ip>`           | sorted service keys (list[str])            |
| `i/node/<node>`                  | sorted workload uids on that node          |
| `i/pglobal`                      | GLOBAL policy keys (root namespace)        |
| `i/pns/<ns>`                     | NAMESPACE-scoped policy keys of `<ns>`     |
| `i/ptgt/<kind>/<ns>/<name>`      | TARGET_REF policy keys naming that target  |
| `i/rsvc/<ns>/<name>`             | route keys with a Service parentRef        |
| `i/rwp/<ns>/<name>`              | route keys a waypoint serves               |

Pure: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

from shoal.core.records import (Authorization, HTTPRoute, Namespace, Service, Waypoint,
                             Workload)

# record kind -> key prefix (the kinds of `items(kind)`; aliases below)
PREFIX = {"workload": "w/", "service": "s/", "authorization": "a/",
          "waypoint": "g/", "httproute": "r/", "namespace": "n/"}
KIND_ALIASES = {"policy": "authorization", "policies": "authorization", "route": "httproute",
                "routes": "httproute", "workloads": "workload", "services": "service",
                "waypoints": "waypoint", "namespaces": "namespace"}
PREFIX_KIND = {v: k for k, v in PREFIX.items()}
INDEX_PREFIX = "i/"
SVC_SUFFIX = ".svc.cluster.local"


def record_key(record: Any) -> str:
    """The table key of one record."""
    if isinstance(record, Workload):
        return "w/" + record.uid
    if isinstance(record, Namespace):
        return "n/" + record.name
    prefix = {Service: "s/", Authorization: "a/", Waypoint: "g/", HTTPRoute: "r/"}[type(record)]
    return prefix + record.key


def canonical_kind(kind: str) -> str:
    kind = kind.lower()
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in PREFIX:
        raise ValueError(f"unknown record kind {kind!r}; use one of {sorted(PREFIX)}")
    return kind


def service_key_for_host(namespace: str, hostname: str) -> str:
    """`s/...` key for a short name, `name.ns`, `name.ns.svc` or an FQDN."""
    host = hostname.rstrip(".")
    if "." not in host:
        return f"s/{namespace}/{host}.{namespace}{SVC_SUFFIX}"
    parts = host.split(".")
    if len(parts) == 2 or (len(parts) == 3 and parts[2] == "svc"):
        return f"s/{parts[1]}/{parts[0]}.{parts[1]}{SVC_SUFFIX}"
    if host.endswith(SVC_SUFFIX) and len(parts) >= 3:
        return f"s/{parts[1]}/{host}"
    return f"s/{namespace}/{host}"


def contributions(rec: Any, services: Mapping[tuple[str, str], Service | None]
                  ) -> list[tuple[str, str]]:
    """The (index key, member) pairs one record adds to the secondary indexes.

    `services` maps (namespace, name) to Service records: a route attached to
    a Service is also indexed under that Service's waypoint.
    """
    if isinstance(rec, Workload):
        out = [(f"i/ip/{rec.network}/{ip}", rec.uid) for ip in rec.ips]
        if rec.node:
            out.append((f"i/node/{rec.node}", rec.uid))
        return out
    if isinstance(rec, Service):
        return [(f"i/vip/{rec.network}/{vip}", rec.key) for vip in rec.vips]
    if isinstance(rec, Authorization):
        if rec.scope == "GLOBAL":
            return [("i/pglobal", rec.key)]
        if rec.scope == "NAMESPACE":
            return [(f"i/pns/{rec.namespace}", rec.key)]
        if rec.scope == "TARGET_REF":
            return [(f"i/ptgt/{r.kind}/{r.namespace or rec.namespace}/{r.name}", rec.key)
                    for r in rec.target_refs]
        return []
    if isinstance(rec, HTTPRoute):
        out = []
        for parent in rec.parent_refs:
            ns = parent.namespace or rec.namespace
            if parent.kind == "Service":
                out.append((f"i/rsvc/{ns}/{parent.name}", rec.key))
                svc = services.get((ns, parent.name))
                if svc is not None and svc.waypoint is not None:
                    out.append((f"i/rwp/{svc.waypoint.key}", rec.key))
            elif parent.kind == "Gateway":
                out.append((f"i/rwp/{ns}/{parent.name}", rec.key))
        return out
    return []


def index_value(key: str, members: Iterable[str]) -> Any:
    """What an index key stores: the uid for `i/ip/...`, else a sorted list."""
    ordered = sorted(set(members))
    if key.startswith("i/ip/"):
        return ordered[0] if ordered else None
    return ordered


def build_keyspace(records: Iterable[Any]) -> dict[str, Any]:
    """All records and their secondary indexes as one key space."""
    records = list(records)
    out: dict[str, Any] = {record_key(r): r for r in records}
    services = {(r.namespace, r.name): r for r in records if isinstance(r, Service)}
    idx: dict[str, list[str]] = defaultdict(list)
    for r in records:
        for key, member in contributions(r, services):
            idx[key].append(member)
    for key, members in idx.items():
        out[key] = index_value(key, members)
    return out


def diff_keyspaces(old: dict[str, bytes], new: dict[str, bytes]) -> dict[str, bytes | None]:
    """Changed keys (new value) and removed keys (None) between two encoded spaces."""
    changes: dict[str, bytes | None] = {k: v for k, v in new.items() if old.get(k) != v}
    for k in old.keys() - new.keys():
        changes[k] = None
    return changes
