"""The config watcher: the only writer of the routing table.

Loop: wait for a change (inotify) or SIGHUP -> load and validate the source
-> compile incrementally -> publish only the changed keys -> write status.
A bad change is refused: its errors are logged (one JSON line each, with
file, resource and field), stored in the table's status area (so the admin
endpoint of any worker shows them) and the last good table stays in force.

With the Kubernetes API as source (routing/kube/), the first publish waits
for every kind's initial list; then each batch of watch events is applied
with `IncrementalCompiler.update_resources` (O(change)). An object the
compiler refuses (one IP claimed by two pods) is refused alone: the batch is
applied again one object at a time and only the failing ones are held back,
each listed in the status with its kind, namespace, name and field, next to
the per-resource sync health.

A restarted watcher takes the table over (routing/shm.py, invariant 7) and
publishes only the difference between the table and the config, so readers
keep routing throughout and see no change when there is none.

Signal handlers only set flags; the loop acts on them. The wait sleeps until
there is work: the source's own event (inotify, a watch batch) or a byte on
the watcher's self-pipe, which `signal.set_wakeup_fd` writes the moment a
signal arrives (in whichever thread the kernel picked) and which setting
`hup` or `stop` writes too (tests stop a watcher from another thread). So
an idle watcher has no periodic wakeup of its own; a source that must poll
(a missing directory, no inotify) polls at its own named interval.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import time
from typing import Any, Callable

import orjson

from shoal.core import log
from shoal.core.model import ConfigError
from shoal.routing.compile import CompileOptions
from shoal.routing.incremental import IncrementalCompiler, resource_key
from shoal.routing import kube
from shoal.routing.kube import metrics as kube_metrics
from shoal.routing.index import diff_keyspaces
from shoal.routing.shm import STATUS_MAX, TableFullError, TableWriter
from shoal.routing.source import DirectorySource

MAX_STATUS_ERRORS = 20      # errors kept in the status area (all of them go to the log)
# The Kubernetes source's health is rewritten at most this often (and at once
# when the refused objects change): under a stream of pod events, encoding the
# status and the metrics for every small batch cost more than the batch.
SOURCE_STATUS_INTERVAL = 0.25

LOG = log.get("routing.watcher")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Wakeup:
    """The self-pipe a watcher's wait selects on next to its source (both ends
    non-blocking: a full pipe already holds a wakeup not yet read)."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def set(self) -> None:
        """Wake the wait (safe in a signal handler and from any thread)."""
        try:
            os.write(self.wfd, b"\0")
        except BlockingIOError:
            pass

    def drain(self) -> None:
        try:
            while os.read(self.rfd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            os.close(fd)


class WakingFlag:
    """A bool attribute of a Watcher whose raising wakes its wait."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: "Watcher | None", owner: type | None = None) -> bool:
        return getattr(obj, self.slot)

    def __set__(self, obj: "Watcher", value: bool) -> None:
        setattr(obj, self.slot, value)
        if value:
            obj.wakeup.set()


class Watcher:
    """One writer bound to one source and one table (usable without signals in tests)."""

    def __init__(self, source: Any, table_name: str,
                 on_publish: Callable[[], None] | None = None) -> None:
        self.source = source
        # Told after each new generation is in the table (the shards
        # supervisor pushes it to the workers, which then poll nothing).
        self.on_publish = on_publish
        self.writer = TableWriter.attach(table_name)
        self.compiler = IncrementalCompiler(CompileOptions.from_env(os.environ))
        self._published_once = False
        self._good: dict[str, Any] = {}
        self._main: dict[tuple, Any] = {}
        self._over: dict[tuple, Any] = {}
        self.wakeup = Wakeup()
        self._hup = False
        self._stop = False
        self._status_at = float("-inf")
        self._refused_count = 0
        self._status_dirty = False

    # Raising a flag wakes the wait, so the loop acts on it at once; the loop
    # drains the pipe before it reads the flags, so none is missed.
    hup = WakingFlag()
    stop = WakingFlag()

    def reload(self) -> bool:
        """Load, compile and publish; False (and the old table kept) on a bad config."""
        try:
            cfg, extra = self.source.load()
            delta = self._compile(cfg, extra)
        except ConfigError as exc:
            self._refuse(exc)
            return False
        if not self._published_once:
            changes = diff_keyspaces(self.writer.read_all(), self.compiler.keyspace)
        else:
            changes = delta.changes
        try:
            if changes or self.writer.generation == 0:
                self.writer.apply(changes)
        except TableFullError as exc:
            # The compiler already moved on; rebuild it and diff against the table next time.
            self.compiler = IncrementalCompiler(CompileOptions.from_env(os.environ))
            self._main, self._over = {}, {}
            self._published_once = False
            self._refuse_message(str(exc), exc.code)
            return False
        if not self._published_once:
            # The big initial state lives as long as the process: keep the cyclic
            # GC from rescanning it on every later reload (p99 latency).
            gc.freeze()
        self._published_once = True
        self._good = {"generation": self.writer.generation, "source": self.source.describe(),
                      "applied_at": _now(), "counts": cfg.counts(), "changed_keys": len(changes),
                      "notes": [str(n) for n in cfg.notes][:MAX_STATUS_ERRORS]}
        self.writer.set_status({**self._good, "error": None, "writer_pid": os.getpid()})
        LOG.info("config applied", extra={"fields": {
            "generation": self.writer.generation, "changed_keys": len(changes),
            "namespaces": list(delta.namespaces)[:MAX_STATUS_ERRORS]}})
        for note in cfg.notes:
            LOG.info("config note", extra={"fields": {"note": str(note)}})
        return True

    def apply_changes(self) -> bool:
        """Publish the source's pending changes (a source with `changes()`: the
        Kubernetes API). False when nothing could be published."""
        pending = self.source.changes()
        applied = True
        if len(pending):
            try:
                changes = self.compiler.update_resources(upserts=pending.upserts,
                                                         deletes=pending.deletes).changes
            except ConfigError:
                changes = self._one_by_one(pending)
            try:
                if changes:
                    self.writer.apply(changes)
            except TableFullError as exc:
                self._refuse_message(str(exc), exc.code)
                self.compiler = IncrementalCompiler()   # rebuilt from the source on the next reload
                self._published_once = False
                return False
            self._good.update(generation=self.writer.generation, applied_at=_now(),
                              changed_keys=len(changes))
            LOG.debug("changes applied", extra={"fields": {
                "generation": self.writer.generation, "objects": len(pending),
                "changed_keys": len(changes)}})
        self._write_source_status()
        return applied

    def _one_by_one(self, pending) -> dict[str, bytes | None]:
        """A batch the compiler refused: apply its objects one by one and hold
        back only those that fail (the rest of the cluster's config applies)."""
        merged: dict[str, bytes | None] = {}
        items = [(resource_key(r), r) for r in pending.upserts] + [(k, None) for k in pending.deletes]
        for key, r in items:
            try:
                delta = self.compiler.update_resources(upserts=[r] if r else [],
                                                       deletes=[] if r else [key])
            except ConfigError as exc:
                for e in exc.errors:
                    LOG.error("object refused", extra={"fields": e.to_dict()})
                self.source.reject(key, self.compiler.resource(key), exc.errors)
                continue
            merged.update(delta.changes)
        return merged

    def _write_source_status(self, force: bool = False) -> None:
        """The Kubernetes source's health and refused objects, in the status area."""
        health = getattr(self.source, "health", None)
        if health is None:
            return
        refused_now = self.source.refused()
        now = time.monotonic()
        if (not force and len(refused_now) == self._refused_count
                and now - self._status_at < SOURCE_STATUS_INTERVAL):
            self._status_dirty = True
            return
        self._status_at, self._refused_count, self._status_dirty = now, len(refused_now), False
        info = health()
        refused = [e.to_dict() for e in refused_now]
        for e in refused:
            e.pop("file", None)
            e.pop("document", None)
        status = {**self._good, "error": None, "writer_pid": os.getpid(),
                  "counts": info.pop("counts", self._good.get("counts")), "kubernetes": info,
                  "refused": {"total": len(refused), "errors": refused[:MAX_STATUS_ERRORS]}}
        while len(orjson.dumps(status, default=str)) > STATUS_MAX and status["refused"]["errors"]:
            status["refused"]["errors"].pop()
        self.writer.set_status(status)
        kube_metrics.record(info, len(refused))

    def _compile(self, cfg, extra):
        """Full compile the first time, then only the resources that changed
        (the source returns unchanged resources as the same objects)."""
        main = {resource_key(r): r for r in cfg.resources}
        over = {(p.meta.namespace, p.meta.name): p for p in extra}
        if not self._published_once:
            delta = self.compiler.update(cfg, extra)
        else:
            delta = self.compiler.update_resources(
                upserts=[r for k, r in main.items() if self._main.get(k) is not r],
                deletes=[k for k in self._main if k not in main],
                extra_upserts=[p for k, p in over.items() if self._over.get(k) is not p],
                extra_deletes=[k for k in self._over if k not in over])
        self._main, self._over = main, over
        return delta

    def _refuse(self, exc: ConfigError) -> None:
        for e in exc.errors:
            LOG.error("config refused", extra={"fields": e.to_dict()})
        errors = [e.to_dict() for e in exc.errors[:MAX_STATUS_ERRORS]]
        self._write_error({"code": exc.code, "message": f"{len(exc.errors)} config error(s); "
                           "the last good config stays in force", "errors": errors,
                           "total": len(exc.errors), "at": _now()})

    def _refuse_message(self, message: str, code: str) -> None:
        LOG.error("config refused", extra={"fields": {"code": code, "message": message}})
        self._write_error({"code": code, "message": message, "errors": [], "total": 1,
                           "at": _now()})

    def _write_error(self, error: dict) -> None:
        status = {**self._good, "generation": self.writer.generation,
                  "source": self.source.describe(), "error": error, "writer_pid": os.getpid()}
        while len(orjson.dumps(status, default=str)) > STATUS_MAX and error["errors"]:
            error["errors"].pop()          # keep the status within its shm area
        self.writer.set_status(status)

    def run(self) -> None:
        wake = self.wakeup.rfd
        synced = getattr(self.source, "wait_synced", None)
        while synced is not None and not self.stop and not synced(None, wake):
            self.wakeup.drain()     # first publish only once every kind was listed
        incremental = hasattr(self.source, "changes")
        if not self.stop:
            self._announcing(self.reload)
            if incremental:
                self._write_source_status(force=True)
        while not self.stop:
            changed = self.source.wait(SOURCE_STATUS_INTERVAL if self._status_dirty else None, wake)
            self.wakeup.drain()
            if incremental and self._status_dirty and not changed:
                self._write_source_status(force=True)       # the last batch's health
            if self.hup:
                self.hup = False
                self.source.invalidate()
                LOG.info("SIGHUP: re-reading the config")
                changed = True
            if changed and not self.stop:
                self._announcing(self.apply_changes if incremental and self._published_once
                                 else self.reload)

    def _announcing(self, publish: Callable[[], bool]) -> None:
        """Run one publish step; tell `on_publish` if the generation moved."""
        before = self.writer.generation
        publish()
        if self.on_publish is not None and self.writer.generation != before:
            self.on_publish()

    def close(self) -> None:
        self.writer.close()
        close = getattr(self.source, "close", None)
        if close:
            close()
        self.wakeup.close()     # after the source: a Kubernetes source's loop watches it


def make_source(source: Any) -> Any:
    """A source object from a `--config` value: a directory, or
    `kubernetes:[KUBECONFIG]` for the Kubernetes API (routing/kube/)."""
    if isinstance(source, str) and source.startswith(kube.SCHEME):
        from shoal.routing.kube.source import KubeSource, parse_spec
        return KubeSource(parse_spec(source))
    if isinstance(source, (str, os.PathLike)):
        return DirectorySource(source)
    return source


def run_watcher(source: Any, table_name: str, on_publish: Callable[[], None] | None = None) -> None:
    """Run the watcher in this process until SIGTERM/SIGINT (SIGHUP re-reads).

    Args:
        source: a directory path or a source object (`load()`, `wait(timeout, wake)`:
            True on a change, False on timeout or when the `wake` fd is readable,
            `invalidate()`, `describe()`), e.g. `DirectorySource(dir, overlay=...)`.
        table_name: `TableHandle.name` of a table created by the supervisor.
        on_publish: called after each new generation is published.
    """
    w = Watcher(make_source(source), table_name, on_publish)

    def on_stop(signum, frame):
        w.stop = True

    def on_hup(signum, frame):
        w.hup = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    old = signal.set_wakeup_fd(w.wakeup.wfd, warn_on_full_buffer=False)
    try:
        w.run()
    finally:
        signal.set_wakeup_fd(old)
        w.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m shoal.routing.watcher",
                                description="Run the routing-table writer on a config directory "
                                "or on the Kubernetes API (kubernetes:[KUBECONFIG]).")
    p.add_argument("--table", required=True, help="shared memory name (TableHandle.name)")
    p.add_argument("--overlay", help="directory of Pods with IPs for Deployment replicas")
    p.add_argument("config_dir")
    args = p.parse_args(argv)
    log.setup()
    source = (DirectorySource(args.config_dir, overlay=args.overlay) if args.overlay
              else make_source(args.config_dir))
    run_watcher(source, args.table)


if __name__ == "__main__":
    main()
