"""Read side of the routing table: the lookups shards make (docs/internals.md).

`BaseView` implements every lookup once, over the flat key space of
routing/index.py. Two views plug a store under it:

- `StaticView`: in-memory records, for unit tests of other packages and for
  `shoal config validate`.
- `RoutingView`: the shared-memory table (routing/shm.py), lock-free. Every
  public method reads the table root once and does all its sub-lookups on
  that root, so one call sees one whole generation even if the writer
  publishes meanwhile. Decoded records are cached per view and the cache is
  dropped when the generation changes.

Returned records are immutable dataclasses; callers may keep them.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Iterator, Protocol

from shoal.routing.codec import decode_value
from shoal.routing.index import (PREFIX, build_keyspace, canonical_kind, record_key,
                           service_key_for_host)
from shoal.core.records import (Authorization, HTTPRoute, Namespace, Service, Waypoint,
                             WaypointRef, Workload)
from shoal.routing.shm import OFF_ROOT, TableReader, lookup, scan

_ROOT = struct.Struct("Q")          # the ROOT word, read natively (see routing/shm.py)

# Which `istio.io/waypoint-for` values let a waypoint serve each target type.
_SERVES_WORKLOADS = frozenset({"workload", "all"})
_SERVES_SERVICES = frozenset({"service", "all"})


class View(Protocol):
    """The lookups a shard makes: the seam between the apps and the table.

    Both stores implement it (`StaticView` in memory, `RoutingView` over
    shared memory) through `BaseView`; the ztunnel and the waypoint take a
    `View` and never know which. Each call sees one whole generation.
    """

    @property
    def generation(self) -> int:
        """0 until a config was published; then it grows with every update."""
        ...

    def status(self) -> dict[str, Any]: ...
    def quiesce(self) -> None:
        """Between calls (a heartbeat tick): let the writer reclaim old generations."""
        ...

    def workload_by_ip(self, ip: str, network: str = "") -> Workload | None: ...
    def workload_by_uid(self, uid: str) -> Workload | None: ...
    def workloads_on_node(self, node: str) -> list[Workload]: ...
    def service_by_vip(self, ip: str, network: str = "") -> Service | None: ...
    def services_by_vip(self, ip: str, network: str = "") -> list[Service]: ...
    def service_by_host(self, namespace: str, hostname: str) -> Service | None: ...
    def endpoints(self, service: Service) -> list[Workload]: ...
    def endpoints_for_port(self, service: Service, port: int) -> list[tuple[Workload, int]]: ...
    def policies_for_workload(self, w: Workload) -> list[Authorization]: ...
    def policies_for_target(self, kind: str, namespace: str, name: str) -> list[Authorization]: ...
    def waypoint(self, ref: WaypointRef | None) -> Waypoint | None: ...
    def waypoint_for_workload(self, w: Workload) -> Waypoint | None: ...
    def waypoint_for_service(self, s: Service) -> Waypoint | None: ...
    def routes_for_service(self, namespace: str, name: str) -> list[HTTPRoute]: ...
    def routes_for_waypoint(self, wp: Waypoint) -> list[HTTPRoute]: ...
    def namespace(self, name: str) -> Namespace | None: ...
    def items(self, kind: str) -> list[Any]: ...
    def items_many(self, kinds: Iterable[str]) -> dict[str, list[Any]]: ...


def target_port(service: Service, endpoint: Workload, port: int) -> int | None:
    """The endpoint's port for service `port`, or None when it does not serve it.

    Kubernetes' EndpointSlice rule: a numeric targetPort is every endpoint's
    port; a named one is the pod's container port of that name, and a pod
    that declares no such port is not an endpoint of that service port. The
    compiler resolved names per pod into `Workload.services`, which wins.
    A port the service does not declare has no endpoint; a service without
    ports (known by its VIP only) passes the port through.
    """
    mapped = endpoint.services.get(service.key)
    if mapped is not None and port in mapped:
        return mapped[port] or port
    for sp in service.ports:
        if sp.port == port:
            return sp.target_port or None      # 0: a name this pod does not declare
    return None if service.ports else port


class BaseView:
    """All lookups, written once over `_begin()`, `_get(key)` and `_scan(prefix)`."""

    # -- store hooks (subclasses) ---------------------------------------
    def _begin(self) -> None:
        """Pin one generation for the public call that follows."""

    def _get(self, key: str) -> Any:
        raise NotImplementedError

    def _scan(self, prefix: str) -> Iterator[Any]:
        raise NotImplementedError

    @property
    def generation(self) -> int:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def quiesce(self) -> None:
        """Nothing to reclaim for an in-memory store."""

    # -- workloads ---------------------------------------------------------
    def workload_by_ip(self, ip: str, network: str = "") -> Workload | None:
        self._begin()
        uid = self._get(f"i/ip/{network}/{ip}")
        return None if uid is None else self._get("w/" + uid)

    def workload_by_uid(self, uid: str) -> Workload | None:
        self._begin()
        return self._get("w/" + uid)

    def workloads_on_node(self, node: str) -> list[Workload]:
        self._begin()
        return self._many("w/", self._get(f"i/node/{node}"))

    # -- services ----------------------------------------------------------
    def service_by_vip(self, ip: str, network: str = "") -> Service | None:
        found = self.services_by_vip(ip, network)
        return found[0] if found else None

    def services_by_vip(self, ip: str, network: str = "") -> list[Service]:
        """Every service with this VIP (sorted by key); Istio lets VIPs collide."""
        self._begin()
        return self._many("s/", self._get(f"i/vip/{network}/{ip}"))

    def service_by_host(self, namespace: str, hostname: str) -> Service | None:
        self._begin()
        return self._get(service_key_for_host(namespace, hostname))

    def endpoints(self, service: Service) -> list[Workload]:
        self._begin()
        return self._many("w/", service.endpoints)

    def endpoints_for_port(self, service: Service, port: int) -> list[tuple[Workload, int]]:
        """The service's endpoints that serve `port`, each with its target port
        (Kubernetes' rule, see `target_port`); unhealthy ones included."""
        out = []
        for w in self.endpoints(service):
            tp = target_port(service, w, port)
            if tp is not None:
                out.append((w, tp))
        return out

    # -- policies ------------------------------------------------------------
    def policies_for_workload(self, w: Workload) -> list[Authorization]:
        """Global (root namespace) + namespace + selector policies, in that order."""
        self._begin()
        keys = [*(self._get("i/pglobal") or ()), *(self._get(f"i/pns/{w.namespace}") or ()),
                *w.authorization_policies]
        return self._many("a/", dict.fromkeys(keys))

    def policies_for_target(self, kind: str, namespace: str, name: str) -> list[Authorization]:
        self._begin()
        return self._many("a/", self._get(f"i/ptgt/{kind}/{namespace}/{name}"))

    # -- waypoints and routes --------------------------------------------------
    def waypoint(self, ref: WaypointRef | None) -> Waypoint | None:
        if ref is None:
            return None
        self._begin()
        return self._get("g/" + ref.key)

    def waypoint_for_workload(self, w: Workload) -> Waypoint | None:
        wp = self.waypoint(w.waypoint)
        return wp if wp is not None and wp.waypoint_for in _SERVES_WORKLOADS else None

    def waypoint_for_service(self, s: Service) -> Waypoint | None:
        wp = self.waypoint(s.waypoint)
        return wp if wp is not None and wp.waypoint_for in _SERVES_SERVICES else None

    def routes_for_service(self, namespace: str, name: str) -> list[HTTPRoute]:
        self._begin()
        return self._routes(self._get(f"i/rsvc/{namespace}/{name}"))

    def routes_for_waypoint(self, wp: Waypoint) -> list[HTTPRoute]:
        self._begin()
        return self._routes(self._get(f"i/rwp/{wp.key}"))

    def namespace(self, name: str) -> Namespace | None:
        self._begin()
        return self._get("n/" + name)

    def items(self, kind: str) -> list[Any]:
        """Every record of a kind (`workload`, `service`, `authorization`/`policy`,
        `waypoint`, `httproute`/`route`, `namespace`), sorted by key."""
        prefix = PREFIX[canonical_kind(kind)]
        self._begin()
        return list(self._scan(prefix))

    def items_many(self, kinds: Iterable[str]) -> dict[str, list[Any]]:
        """`items` of several kinds from ONE generation (for dumps)."""
        prefixes = {k: PREFIX[canonical_kind(k)] for k in kinds}
        self._begin()
        return {k: list(self._scan(p)) for k, p in prefixes.items()}

    # -- helpers -----------------------------------------------------------------
    def _many(self, prefix: str, keys: Any) -> list[Any]:
        if not keys:
            return []
        out = []
        for k in keys:
            rec = self._get(prefix + k)
            if rec is not None:
                out.append(rec)
        return out

    def _routes(self, keys: Any) -> list[HTTPRoute]:
        routes = self._many("r/", keys)
        # Gateway API precedence tie-break: older first, then namespace/name.
        routes.sort(key=lambda r: (r.creation_index, r.namespace, r.name))
        return routes


class StaticView(BaseView):
    """The RoutingView interface over in-memory records (no shared memory).

    Args:
        workloads, services, policies, waypoints, routes, namespaces: records.
        generation: what `generation` reports (default 1: "a config is loaded").
        status: what `status()` reports (defaults to a healthy static status).
    """

    def __init__(self, *, workloads=(), services=(), policies=(), waypoints=(), routes=(),
                 namespaces=(), generation: int = 1, status: dict | None = None) -> None:
        records = [*workloads, *services, *policies, *waypoints, *routes, *namespaces]
        self._space = build_keyspace(records)
        self._generation = generation
        self._status = status or {"generation": generation, "source": "static", "error": None}

    @classmethod
    def from_records(cls, records, **kw) -> "StaticView":
        """A view over a mixed iterable of records (e.g. `compile_resources` output)."""
        view = cls(**kw)
        view._space = build_keyspace(records)
        return view

    @property
    def generation(self) -> int:
        return self._generation

    def status(self) -> dict[str, Any]:
        return dict(self._status)

    def _get(self, key: str) -> Any:
        return self._space.get(key)

    def _scan(self, prefix: str) -> Iterator[Any]:
        for key in sorted(k for k in self._space if k.startswith(prefix)):
            yield self._space[key]


__all__ = ["BaseView", "StaticView", "View", "record_key", "target_port"]


# Decoded-record cache bound per view; a cleared cache only costs re-decoding.
MAX_CACHE_ENTRIES = 200_000


class RoutingView(BaseView):
    """Lock-free view of the shared-memory table (see routing/shm.py invariants).

    Create it in the worker after the fork with `routing.runtime.attach_view`.
    """

    def __init__(self, name: str) -> None:
        self._decode = decode_value
        self._reader = TableReader(name)
        self._mm = self._reader.mm
        self._word = -1
        self._gen = 0
        self._root = 0
        # key -> (generation validated at, raw bytes, decoded value). After a
        # generation change an entry is revalidated by comparing its bytes with
        # the table's (a ~1 µs walk) instead of being decoded again (~20 µs).
        self._cache: dict[str, tuple[int, bytes | None, Any]] = {}
        # Per-call result caches for the data-plane hot path (dropped per generation).
        self._by_ip: dict[str, Any] = {}
        self._by_vip: dict[str, Any] = {}
        self._begin()

    @property
    def name(self) -> str:
        return self._reader.name

    def _begin(self) -> None:
        word = _ROOT.unpack_from(self._mm, OFF_ROOT)[0]
        if word != self._word:
            self._word = word
            self._gen, self._root = word >> 32, (word & 0xFFFFFFFF) << 3
            self._by_ip.clear()
            self._by_vip.clear()
            self._reader.announce(self._gen)

    # Hot path: one ROOT load, one dict lookup on a warm cache.
    def workload_by_ip(self, ip: str, network: str = "") -> Workload | None:
        if _ROOT.unpack_from(self._mm, OFF_ROOT)[0] != self._word:
            self._begin()
        key = ip if not network else f"{network}/{ip}"
        try:
            return self._by_ip[key]
        except KeyError:
            pass
        uid = self._get(f"i/ip/{network}/{ip}")
        found = self._by_ip[key] = None if uid is None else self._get("w/" + uid)
        return found

    def service_by_vip(self, ip: str, network: str = "") -> Service | None:
        if _ROOT.unpack_from(self._mm, OFF_ROOT)[0] != self._word:
            self._begin()
        key = ip if not network else f"{network}/{ip}"
        try:
            return self._by_vip[key]
        except KeyError:
            pass
        keys = self._get(f"i/vip/{network}/{ip}")
        found = self._by_vip[key] = self._get("s/" + keys[0]) if keys else None
        return found

    def workload_by_uid(self, uid: str) -> Workload | None:
        if _ROOT.unpack_from(self._mm, OFF_ROOT)[0] != self._word:
            self._begin()
        return self._get("w/" + uid)

    def quiesce(self) -> None:
        """Between calls (e.g. on the heartbeat tick): let the writer reclaim."""
        self._begin()

    @property
    def generation(self) -> int:
        self._begin()
        return self._gen

    def _get(self, key: str) -> Any:
        entry = self._cache.get(key)
        if entry is not None and entry[0] == self._gen:
            return entry[2]
        raw = lookup(self._mm, self._root, key.encode())
        if entry is not None and entry[1] == raw:
            value = entry[2]                # unchanged in this generation: no decode
        else:
            value = None if raw is None else self._decode(key, raw)
            if len(self._cache) >= MAX_CACHE_ENTRIES:
                self._cache.clear()
        self._cache[key] = (self._gen, raw, value)
        return value

    def _scan(self, prefix: str) -> Iterator[Any]:
        found = sorted(scan(self._mm, self._root, prefix.encode()))
        for key, raw in found:
            yield self._decode(key.decode(), raw)

    def status(self) -> dict[str, Any]:
        out = self._reader.status()
        out["generation"] = self.generation
        return out

    def close(self) -> None:
        self._cache.clear()
        self._reader.close()
