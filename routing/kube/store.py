"""The informer cache of the Kubernetes API source (sans-IO: no sockets, no clock).

The I/O side (routing/kube/informer.py) feeds it list results and watch
events; the writer drains the changes. Invariants:

1. `current[key]` is the last *valid* resource seen for (kind, namespace,
   name). An object that fails validation is refused alone: it is listed in
   `refused` with its field errors and its previous valid version stays in
   force (nothing of it reaches the table), as a bad file does for the
   directory source.
2. `pending` maps key -> resource (upsert) or None (delete) for changes not
   yet handed to the writer; several events for one key collapse into the
   last one, so a burst costs the writer one change per object.
3. A re-list (after `410 Gone`) publishes only the difference: an object whose
   resourceVersion is the one already held is neither parsed nor published,
   and keys absent from the new list are deleted.
4. A Pod that has finished (phase Succeeded or Failed) is treated as deleted:
   its IP goes back to the node's pool and may be handed to a new pod.
5. A resource's creation index (Gateway API's oldest-first tie-break) orders
   by `metadata.creationTimestamp` (whole seconds), then by the order in
   which this cache first saw the object.
"""

from __future__ import annotations

import calendar
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from shoal.core.model import ConfigSet, FieldError
from shoal.core.model.loader import parse_object
from shoal.routing.kube.kinds import Kind

TERMINAL_PHASES = ("Succeeded", "Failed")
MAX_REFUSED = 200       # refused objects remembered with their errors (a flood stays bounded)

Key = tuple[str, str, str]


@dataclass(slots=True, kw_only=True)
class KindHealth:
    """Sync state of one resource kind (shown in /config_dump and as metrics)."""
    kind: str
    resource: str                   # plural.group, as RBAC names it
    synced: bool = False            # the initial list has been applied
    missing: bool = False           # the API does not serve it (a CRD not installed)
    resource_version: str = ""      # last list, event or bookmark seen
    objects: int = 0
    relists: int = 0                # lists after the first one (410 Gone, reconnects)
    events: int = 0
    bookmarks: int = 0
    errors: int = 0
    last_error: str = ""
    # As ztunnel counts its xDS stream (istio_xds_* series): messages (list
    # pages and watch events) and their bytes (the objects as JSON), and why
    # list/watch streams ended: ConnectionError, Error, Reconnect.
    messages: int = 0
    message_bytes: int = 0
    terminations: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class _Entry:
    rv: str
    resource: Any | None            # None: never valid yet (refused on arrival)


@dataclass(slots=True)
class Changes:
    upserts: list = field(default_factory=list)
    deletes: list[Key] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)


class ObjectStore:
    """Objects of every watched kind, keyed by (kind, namespace, name)."""

    def __init__(self, kinds: tuple[Kind, ...]) -> None:
        self.kinds = {k.kind: k for k in kinds}
        self.health = {k.kind: KindHealth(kind=k.kind, resource=k.name) for k in kinds}
        self._entries: dict[Key, _Entry] = {}
        self._pending: dict[Key, Any] = {}
        self._refused: dict[Key, list[FieldError]] = {}
        self._first_seen: dict[Key, int] = {}
        self._listing: dict[str, set[Key]] = {}     # kind -> keys seen by the list in progress
        self.version = 0            # bumped on every change of state or health (for waiters)

    # -- input from the informers ---------------------------------------------
    def replace(self, kind: str, items: list[dict], resource_version: str) -> int:
        """Apply a complete list of one kind; returns how many keys changed."""
        before = len(self._pending)
        self.begin_list(kind)
        self.list_page(kind, items)
        self.end_list(kind, resource_version)
        return len(self._pending) - before

    def begin_list(self, kind: str) -> None:
        """A list of `kind` starts; pages follow (list_page), then end_list.
        Applying page by page keeps only one page of raw objects in memory."""
        self._listing[kind] = set()

    def list_page(self, kind: str, items: list[dict]) -> None:
        seen = self._listing[kind]
        self._received(kind, items)
        for obj in items:
            key = self._apply(kind, obj)
            if key is not None:
                seen.add(key)

    def end_list(self, kind: str, resource_version: str) -> None:
        """The list is complete: keys it did not name are deleted."""
        h = self.health[kind]
        if h.synced or h.missing:
            h.relists += 1
        seen = self._listing.pop(kind, set())
        for key in [k for k in self._entries if k[0] == kind and k not in seen]:
            self._delete(key)
        h.synced, h.missing, h.resource_version = True, False, resource_version
        h.objects = sum(1 for k in self._entries if k[0] == kind)
        self.version += 1

    def event(self, kind: str, type_: str, obj: dict) -> None:
        """One watch event: ADDED, MODIFIED, DELETED or BOOKMARK."""
        h = self.health[kind]
        self._received(kind, (obj,))
        rv = _meta(obj).get("resourceVersion") or h.resource_version
        h.resource_version = str(rv)
        if type_ == "BOOKMARK":
            h.bookmarks += 1
        elif type_ == "DELETED":
            h.events += 1
            key = self._key(kind, obj)
            if key in self._entries or key in self._refused:
                self._delete(key)
        else:
            h.events += 1
            self._apply(kind, obj)
        self.version += 1

    def _received(self, kind: str, objs) -> None:
        h = self.health[kind]
        h.messages += 1
        h.message_bytes += sum(len(orjson.dumps(o)) for o in objs)

    def terminated(self, kind: str, reason: str) -> None:
        """A list or watch stream of `kind` ended (ztunnel's termination reasons)."""
        t = self.health[kind].terminations
        t[reason] = t.get(reason, 0) + 1
        self.version += 1

    def failed(self, kind: str, message: str, *, missing: bool = False) -> None:
        h = self.health[kind]
        h.errors += 1
        h.last_error = message
        if missing:
            h.missing = True
            # A CRD that was uninstalled takes its objects with it.
            for key in [k for k in self._entries if k[0] == kind]:
                self._delete(key)
        self.version += 1

    # -- output to the writer --------------------------------------------------
    @property
    def synced(self) -> bool:
        """Every kind listed once, or known to be absent."""
        return all(h.synced or h.missing for h in self.health.values())

    @property
    def has_changes(self) -> bool:
        return bool(self._pending)

    def drain(self) -> Changes:
        out = Changes()
        for key, r in self._pending.items():
            if r is None:
                out.deletes.append(key)
            else:
                out.upserts.append(r)
        self._pending = {}
        return out

    def snapshot(self) -> ConfigSet:
        """Every valid resource (pending changes count as handed out)."""
        self._pending = {}
        res = [e.resource for e in self._entries.values() if e.resource is not None]
        res.sort(key=lambda r: r.meta.index)
        return ConfigSet(resources=tuple(res))

    def reject(self, key: Key, previous: Any | None, errors: list[FieldError]) -> None:
        """The writer refused a change (a conflict across objects, e.g. one IP for
        two pods): remember why and hold `previous` as the object in force."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.resource = previous
        self._remember(key, errors)
        self.version += 1

    def get(self, key: Key) -> Any | None:
        """The valid resource held for a key (None: absent or never valid)."""
        entry = self._entries.get(key)
        return entry.resource if entry is not None else None

    def valid(self, kind: str) -> list:
        return [e.resource for k, e in self._entries.items() if k[0] == kind and e.resource is not None]

    def refused(self) -> list[FieldError]:
        return [e for errs in self._refused.values() for e in errs]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, e in self._entries.items():
            if e.resource is not None:
                out[key[0]] = out.get(key[0], 0) + 1
        for kind, h in self.health.items():
            h.objects = out.get(kind, 0)
        return dict(sorted(out.items()))

    # -- internals ---------------------------------------------------------------
    def _key(self, kind: str, obj: dict) -> Key:
        md = _meta(obj)
        ns = (md.get("namespace") or "default") if self.kinds[kind].namespaced else ""
        return (kind, ns, str(md.get("name", "")))

    def _apply(self, kind: str, obj: dict) -> Key | None:
        key = self._key(kind, obj)
        rv = str(_meta(obj).get("resourceVersion", ""))
        entry = self._entries.get(key)
        if entry is not None and rv and entry.rv == rv:
            return key                  # invariant 3: nothing new
        if kind == "Pod" and (obj.get("status") or {}).get("phase") in TERMINAL_PHASES:
            self._delete(key)
            return key
        obj = _with_api_version(self.kinds[kind], obj)
        index = self._first_seen.get(key)
        if index is None:
            index = self._first_seen[key] = _creation_index(obj, len(self._first_seen))
        res, errors, _notes = parse_object(obj, index=index)
        if errors:
            self._remember(key, errors)
            if entry is not None:
                entry.rv = rv           # seen; the valid version stays in force
            else:
                self._entries[key] = _Entry(rv, None)
            return key
        self._refused.pop(key, None)
        if entry is not None and entry.resource is not None and entry.resource == res:
            entry.rv = rv               # a change shoal does not use (a status timestamp)
            return key
        if res is None:                 # skipped on purpose (a Gateway of another class)
            if entry is not None and entry.resource is not None:
                self._pending[key] = None
            self._entries[key] = _Entry(rv, None)
            return key
        self._entries[key] = _Entry(rv, res)
        self._pending[key] = res
        return key

    def _delete(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        self._refused.pop(key, None)
        if entry is not None and entry.resource is not None:
            self._pending[key] = None
        elif self._pending.get(key) is not None:
            self._pending[key] = None

    def _remember(self, key: Key, errors: list[FieldError]) -> None:
        self._refused.pop(key, None)
        if len(self._refused) >= MAX_REFUSED:
            self._refused.pop(next(iter(self._refused)))
        self._refused[key] = list(errors)


# Objects first seen within one creationTimestamp second keep their arrival order.
SEEN_PER_SECOND = 1_000_000


def _creation_index(obj: dict, seen: int) -> int:
    stamp = _meta(obj).get("creationTimestamp")
    try:
        secs = int(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))) if stamp else 0
    except (TypeError, ValueError):
        secs = 0
    return secs * SEEN_PER_SECOND + seen % SEEN_PER_SECOND


def _meta(obj: dict) -> dict:
    md = obj.get("metadata") if isinstance(obj, dict) else None
    return md if isinstance(md, dict) else {}


def _with_api_version(kind: Kind, obj: dict) -> dict:
    """Items of a list carry no kind/apiVersion (the list does): add them."""
    if obj.get("kind") == kind.kind and obj.get("apiVersion") == kind.api_version:
        return obj
    return {**obj, "kind": kind.kind, "apiVersion": kind.api_version}
