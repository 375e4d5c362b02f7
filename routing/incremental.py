"""Incremental compilation: a new ConfigSet -> only the changed table keys.

The writer must publish O(change). Records of a namespace depend only on that
namespace's resources and on the root namespace's selector policies
(routing/compile.py), so `IncrementalCompiler.update` recompiles just the
namespaces whose inputs changed (all of them when root selector policies
change), diffs their records against the previous ones, and maintains the
secondary indexes by each record's contributions. Routes are re-indexed on
every update because a route's waypoint index follows its parent Service.

Unchanged resources are detected by identity first (the watcher re-parses
only changed files), so an update is cheap even for a large config.

Transactional: on ConfigError nothing in the compiler's state changes.
"""

from __future__ import annotations

import dataclasses
import re
from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Iterable, cast

from shoal.core.model import ConfigError, ConfigSet, FieldError, Pod
from shoal.routing.codec import encode_value
from shoal.routing.compile import (CompileOptions, NamespaceInput, compile_namespace, compile_pods,
                             group_by_namespace, root_selector_policies, selects, slice_members,
                             service_selectors, workload_uid)
from shoal.routing.index import contributions, index_value, record_key
from shoal.core.records import HTTPRoute, Service


_REPLICA_NAME = re.compile(r"^(.+)-[0-9a-f]{10}-[0-9]+$")

# Above 1/4 of a namespace's pods changed, recompiling the namespace is cheaper.
POD_PATH_MAX_FRACTION = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Delta:
    """What one update changed: table keys -> new bytes, or None when removed."""
    changes: dict[str, bytes | None]
    namespaces: tuple[str, ...]          # namespaces recompiled

    @property
    def empty(self) -> bool:
        return not self.changes


class IncrementalCompiler:
    """Keeps the last good compiled state; `update` returns the delta to publish."""

    def __init__(self, options: CompileOptions = CompileOptions()) -> None:
        self.options = options
        self._groups: dict[str, NamespaceInput] = {}
        self._root_sel: list = []
        self._ns_keys: dict[str, set[str]] = {}        # namespace -> its record keys
        self._records: dict[str, Any] = {}             # record key -> record
        self._index: dict[str, frozenset[str]] = {}    # index key -> members
        self._contrib: dict[str, tuple[tuple[str, str], ...]] = {}
        self._encoded: dict[str, bytes] = {}
        self._services: dict[tuple[str, str], Service] = {}
        self._routes: dict[str, HTTPRoute] = {}
        self._resources: dict[tuple, Any] = {}           # resource_key -> resource
        self._by_ns: dict[str, set[tuple]] = {}          # namespace -> resource keys

    @property
    def keyspace(self) -> dict[str, bytes]:
        """The full encoded key space of the last good config (read-only please)."""
        return self._encoded

    def resource(self, key: tuple) -> Any | None:
        """The resource in force for a `resource_key` (None: absent)."""
        return self._resources.get(tuple(key))

    def records(self) -> list[Any]:
        return list(self._records.values())

    def update(self, cfg: ConfigSet | Iterable[Any], extra_pods: Iterable[Pod] = ()) -> Delta:
        """Compile a whole config against the previous state (namespaces whose
        inputs are unchanged are skipped).

        Raises:
            ConfigError: cross-resource conflicts; the previous state stays.
        """
        resources = cfg.resources if isinstance(cfg, ConfigSet) else tuple(cfg)
        extra = tuple(extra_pods)
        groups = group_by_namespace(resources, extra)
        candidates = {ns: groups.get(ns) for ns in set(groups) | set(self._groups)}
        index = {resource_key(r): r for r in resources}
        index.update({("Pod+", r.meta.namespace, r.meta.name): r for r in extra})
        return self._apply(candidates, resources=index)

    def update_resources(self, upserts: Iterable[Any] = (), deletes: Iterable[tuple] = (),
                         extra_upserts: Iterable[Pod] = (), extra_deletes: Iterable[tuple] = ()
                         ) -> Delta:
        """Apply a change set: O(changed resources + their namespaces' inputs).

        Args:
            upserts: new or changed resources.
            deletes: `resource_key`s (kind, namespace, name) of removed resources.
            extra_upserts / extra_deletes: overlay pods (mesh-assigned IPs), keyed
                by (namespace, name).
        """
        changes: dict[tuple, Any] = {}
        for r in upserts:
            changes[resource_key(r)] = r
        for key in deletes:
            changes[tuple(key)] = None
        for p in extra_upserts:
            changes[("Pod+", p.meta.namespace, p.meta.name)] = p
        for ns, name in extra_deletes:
            changes[("Pod+", ns, name)] = None
        touched: dict[str, set[tuple]] = {}
        for key in changes:
            touched.setdefault(_group_of(key), set()).add(key)
        candidates: dict[str, NamespaceInput | None] = {}
        hints: dict[str, set[str]] = {}
        for ns, keys in touched.items():
            patched = self._patch_pods(ns, keys, changes)
            if patched is not None:
                candidates[ns], hints[ns] = patched, {k[2] for k in keys}
                continue
            members = [(k, changes[k] if k in changes else self._resources[k])
                       for k in self._by_ns.get(ns, set()) | keys]
            main = [r for k, r in members if r is not None and k[0] != "Pod+"]
            over = [r for k, r in members if r is not None and k[0] == "Pod+"]
            candidates[ns] = group_by_namespace(main, over).get(ns)
        return self._apply(candidates, resource_changes=changes, hints=hints)

    def _patch_pods(self, ns: str, keys: set[tuple], changes: dict[tuple, Any]
                    ) -> NamespaceInput | None:
        """Fast path for plain Pod changes: patch the namespace's pod list instead of
        regrouping it (None when overlay pods or replicas could share a name)."""
        old = self._groups.get(ns)
        if old is None or any(k[0] != "Pod" or ("Pod+", ns, k[2]) in self._resources
                              or self._may_be_replica(ns, k[2]) for k in keys):
            return None
        pods = {p.meta.name: p for p in old.pods}
        for k in keys:
            current = pods.get(k[2])
            if current is not None and current is not self._resources.get(k):
                return None         # a Deployment replica of that name: regroup
            if changes[k] is None:
                pods.pop(k[2], None)
            else:
                pods[k[2]] = changes[k]
        return dataclasses.replace(old, pods=[pods[n] for n in sorted(pods)])

    def _may_be_replica(self, ns: str, name: str) -> bool:
        """A Deployment could own a replica of this name (`<deploy>-<hash>-<n>`)."""
        m = _REPLICA_NAME.match(name)
        return m is not None and ("Deployment", ns, m.group(1)) in self._resources

    def _apply(self, candidates: dict[str, NamespaceInput | None], *,
               resources: dict[tuple, Any] | None = None,
               resource_changes: dict[tuple, Any] | None = None,
               hints: dict[str, set[str]] | None = None) -> Delta:
        # cast, not a copy: the chain only reads self._groups (O(change) per update)
        groups = ChainMap(candidates, cast("dict[str, NamespaceInput | None]", self._groups))
        root_g = groups.get(self.options.root_namespace)
        root_sel = root_selector_policies({self.options.root_namespace: root_g} if root_g else {},
                                          self.options)
        if root_sel != self._root_sel:
            dirty = {ns for ns in set(groups) if groups.get(ns) is not None} | set(self._groups)
        else:
            dirty = {ns for ns, g in candidates.items() if g != self._groups.get(ns)}
        rec_changes: dict[str, Any] = {}
        ns_keys: dict[str, set[str]] = {}
        for ns in sorted(dirty):
            old, new_g = self._groups.get(ns), groups.get(ns)
            if (root_sel == self._root_sel and old is not None and new_g is not None
                    and _only_pods_differ(old, new_g)):
                pod_path = self._pods_changed(old, new_g, root_sel, (hints or {}).get(ns))
                if pod_path is not None:
                    changes, keys = pod_path
                    rec_changes.update(changes)
                    ns_keys[ns] = keys
                    continue
            new = compile_namespace(new_g, root_sel, self.options) if new_g is not None else []
            keys = {record_key(r) for r in new}
            ns_keys[ns] = keys
            for r in new:
                rkey = record_key(r)
                if self._records.get(rkey) != r:
                    rec_changes[rkey] = r
            for rkey in self._ns_keys.get(ns, set()) - keys:
                rec_changes[rkey] = None
        index_changes, contrib = self._reindex(rec_changes)
        self._check_ips(index_changes, rec_changes)
        changes = self._encode(rec_changes, index_changes)
        # commit
        for ns, g in candidates.items():
            if g is None:
                self._groups.pop(ns, None)
            else:
                self._groups[ns] = g
        self._root_sel = root_sel
        if resources is not None:
            self._resources = dict(resources)
            self._by_ns = {}
            for res_key in resources:
                self._by_ns.setdefault(_group_of(res_key), set()).add(res_key)
        for res_key, r in (resource_changes or {}).items():
            group = self._by_ns.setdefault(_group_of(res_key), set())
            if r is None:
                self._resources.pop(res_key, None)
                group.discard(res_key)
            else:
                self._resources[res_key] = r
                group.add(res_key)
        for ns, keys in ns_keys.items():
            if keys:
                self._ns_keys[ns] = keys
            else:
                self._ns_keys.pop(ns, None)
        for key, r in rec_changes.items():
            old = self._records.pop(key, None)
            if isinstance(old, Service):
                self._services.pop((old.namespace, old.name), None)
            self._routes.pop(key, None)
            if r is not None:
                self._records[key] = r
                if isinstance(r, Service):
                    self._services[(r.namespace, r.name)] = r
                elif isinstance(r, HTTPRoute):
                    self._routes[key] = r
        for key, members in index_changes.items():
            if members:
                self._index[key] = members
            else:
                self._index.pop(key, None)
        for key, pairs in contrib.items():
            if pairs:
                self._contrib[key] = pairs
            else:
                self._contrib.pop(key, None)
        for key, data in changes.items():
            if data is None:
                self._encoded.pop(key, None)
            else:
                self._encoded[key] = data
        return Delta(changes=changes, namespaces=tuple(sorted(dirty)))

    def _pods_changed(self, old: NamespaceInput, new: NamespaceInput, root_sel: list,
                      hint: set[str] | None = None):
        """Pod-level delta when only pods of a namespace changed: O(changed pods +
        endpoints of the services selecting them). None: fall back to the namespace.
        `hint`: the names of the only pods that may have changed."""
        old_pods = {p.meta.name: p for p in old.pods}
        new_pods = {p.meta.name: p for p in new.pods}
        names = hint if hint is not None else old_pods.keys() | new_pods.keys()
        changed = [n for n in names if old_pods.get(n) != new_pods.get(n)]
        if len(changed) * POD_PATH_MAX_FRACTION > max(len(new_pods), 1):
            return None
        sliced = set().union(*slice_members(new).values()) if new.slices else set()
        if sliced.intersection(changed):
            return None         # an EndpointSlice names the pod: recompile the namespace
        opts = self.options
        out: dict[str, Any] = {}
        keys = set(self._ns_keys.get(new.name, ()))
        for name in changed:
            if name not in new_pods:
                key = "w/" + workload_uid(new.name, name, opts)
                out[key] = None
                keys.discard(key)
        for w in compile_pods(new, [new_pods[n] for n in changed if n in new_pods], root_sel, opts):
            key = "w/" + w.uid
            keys.add(key)
            if self._records.get(key) != w:
                out[key] = w
        uids = {n: workload_uid(new.name, n, opts) for n in changed}
        for skey, sel in service_selectors(new):
            svc = self._records.get(skey)
            if svc is None:
                return None
            eps = set(svc.endpoints)
            for n in changed:
                eps.discard(uids[n])
                if n in new_pods and selects(sel, new_pods[n].meta.labels):
                    eps.add(uids[n])
            if eps != set(svc.endpoints):
                out[skey] = dataclasses.replace(svc, endpoints=tuple(sorted(eps)))
        return out, keys

    def _reindex(self, rec_changes: dict[str, Any]):
        """Index keys whose member sets change, and the new contribution table."""
        contrib: dict[str, tuple] = {}         # staged: record key -> new pairs (() = none)
        touched: dict[str, set[str]] = {}

        def members(key: str) -> set[str]:
            if key not in touched:
                touched[key] = set(self._index.get(key, ()))
            return touched[key]

        overlay: dict[tuple[str, str], Service | None] = {}
        for key, r in rec_changes.items():
            if key.startswith("s/"):
                old = self._records.get(key)
                if old is not None:
                    overlay[(old.namespace, old.name)] = None
        for r in rec_changes.values():
            if isinstance(r, Service):
                overlay[(r.namespace, r.name)] = r
        services = ChainMap(overlay, cast("dict[tuple[str, str], Service | None]", self._services))
        redo = dict(rec_changes)
        for k in self._routes:      # a route's waypoint index follows its parent Service
            redo.setdefault(k, self._routes[k])
        for key, r in redo.items():
            for ikey, member in self._contrib.get(key, ()):
                members(ikey).discard(member)
            pairs = tuple(contributions(r, services)) if r is not None else ()
            contrib[key] = pairs
            for ikey, member in pairs:
                members(ikey).add(member)
        changed = {k: frozenset(v) for k, v in touched.items()
                   if frozenset(v) != self._index.get(k, frozenset())}
        return changed, contrib

    def _check_ips(self, index_changes: dict[str, frozenset[str]], rec_changes: dict[str, Any]) -> None:
        errors = []
        for key, uids in index_changes.items():
            if key.startswith("i/ip/") and len(uids) > 1:
                names = sorted(uids)
                w = rec_changes.get("w/" + names[1]) or self._records.get("w/" + names[1])
                errors.append(FieldError(
                    file="", kind="Pod", namespace=getattr(w, "namespace", ""),
                    name=getattr(w, "name", names[1]), field="status.podIP",
                    message=f"IP {key.rsplit('/', 1)[1]} is used by several pods: {', '.join(names)}"))
        if errors:
            raise ConfigError(errors)

    def _encode(self, rec_changes: dict[str, Any],
                index_changes: dict[str, frozenset[str]]) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for key, r in rec_changes.items():
            out[key] = None if r is None else encode_value(r)
        for key, uids in index_changes.items():
            out[key] = encode_value(index_value(key, uids)) if uids else None
        return {k: v for k, v in out.items() if self._encoded.get(k) != v}


def resource_key(r: Any) -> tuple[str, str, str]:
    """(kind, namespace, name) of a resource, as `update_resources` deletes name them."""
    return r.meta.key


def _group_of(key: tuple) -> str:
    """The namespace whose records a resource feeds (a Namespace feeds itself)."""
    return key[2] if key[0] == "Namespace" else key[1]


def _only_pods_differ(old: NamespaceInput, new: NamespaceInput) -> bool:
    return (old.namespace == new.namespace and old.services == new.services
            and old.policies == new.policies and old.gateways == new.gateways
            and old.routes == new.routes and old.slices == new.slices)


def full_keyspace(records: Iterable[Any]) -> dict[str, bytes]:
    """Encoded key space of a record list (for tests: must equal the incremental one)."""
    from shoal.routing.codec import encode_keyspace
    from shoal.routing.index import build_keyspace
    return encode_keyspace(build_keyspace(records))


__all__ = ["Delta", "IncrementalCompiler", "full_keyspace", "resource_key"]
