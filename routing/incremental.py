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

from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Iterable

from core.model import ConfigError, ConfigSet, FieldError, Pod
from routing.codec import encode_value
from routing.compile import (CompileOptions, NamespaceInput, compile_namespace,
                             group_by_namespace, root_selector_policies)
from routing.index import contributions, index_value, record_key
from routing.records import HTTPRoute, Service, Workload


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
        self._ns_keys: dict[str, list[str]] = {}       # namespace -> its record keys
        self._records: dict[str, Any] = {}             # record key -> record
        self._index: dict[str, frozenset[str]] = {}    # index key -> members
        self._contrib: dict[str, tuple[tuple[str, str], ...]] = {}
        self._encoded: dict[str, bytes] = {}
        self._services: dict[tuple[str, str], Service] = {}
        self._routes: dict[str, HTTPRoute] = {}

    @property
    def keyspace(self) -> dict[str, bytes]:
        """The full encoded key space of the last good config (read-only please)."""
        return self._encoded

    def records(self) -> list[Any]:
        return list(self._records.values())

    def update(self, cfg: ConfigSet | Iterable[Any], extra_pods: Iterable[Pod] = ()) -> Delta:
        """Compile `cfg` against the previous state.

        Raises:
            ConfigError: cross-resource conflicts; the previous state stays.
        """
        groups = group_by_namespace(cfg, extra_pods)
        root_sel = root_selector_policies(groups, self.options)
        if root_sel != self._root_sel:
            dirty = set(groups) | set(self._groups)
        else:
            dirty = {ns for ns in set(groups) | set(self._groups)
                     if groups.get(ns) != self._groups.get(ns)}
        rec_changes: dict[str, Any] = {}
        ns_keys: dict[str, list[str]] = {}
        for ns in sorted(dirty):
            new = compile_namespace(groups[ns], root_sel, self.options) if ns in groups else []
            keys = [record_key(r) for r in new]
            ns_keys[ns] = keys
            for key, r in zip(keys, new):
                if self._records.get(key) != r:
                    rec_changes[key] = r
            for key in set(self._ns_keys.get(ns, ())) - set(keys):
                rec_changes[key] = None
        index_changes, contrib = self._reindex(rec_changes)
        self._check_ips(index_changes, rec_changes)
        changes = self._encode(rec_changes, index_changes)
        # commit
        self._groups, self._root_sel = groups, root_sel
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
        self._contrib = contrib
        for key, data in changes.items():
            if data is None:
                self._encoded.pop(key, None)
            else:
                self._encoded[key] = data
        return Delta(changes=changes, namespaces=tuple(sorted(dirty)))

    def _reindex(self, rec_changes: dict[str, Any]):
        """Index keys whose member sets change, and the new contribution table."""
        contrib = dict(self._contrib)
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
        services = ChainMap(overlay, self._services)
        redo = dict(rec_changes)
        for k in self._routes:      # a route's waypoint index follows its parent Service
            redo.setdefault(k, self._routes[k])
        for key, r in redo.items():
            for ikey, member in contrib.pop(key, ()):
                members(ikey).discard(member)
            if r is not None:
                pairs = tuple(contributions(r, services))
                if pairs:
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


def full_keyspace(records: Iterable[Any]) -> dict[str, bytes]:
    """Encoded key space of a record list (for tests: must equal the incremental one)."""
    from routing.codec import encode_keyspace
    from routing.index import build_keyspace
    return encode_keyspace(build_keyspace(records))


__all__ = ["Delta", "IncrementalCompiler", "full_keyspace", "Workload"]
