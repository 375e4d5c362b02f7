"""routing: the config compiler and the lock-free shared-memory routing table.

Modules (public API in docs/internals.md):
- records.py      the compiled records (shared contract)
- compile.py      resources (core.model) -> records, Istio semantics (pure)
- incremental.py  IncrementalCompiler: config or change set -> changed table keys
- index.py        the flat key space: records + secondary indexes (pure)
- codec.py        values <-> bytes (orjson; pure)
- shm.py          the store: one writer, lock-free readers (invariants at its top)
- liveness.py     is a reader / segment owner process alive (pid + start time)
- view.py         BaseView lookups; StaticView (memory) and RoutingView (shm)
- source.py       DirectorySource: YAML directory + inotify + overlay pods
- watcher.py      the writer process (run_watcher); `python -m shoal.routing.watcher`
- runtime.py      TableHandle / run_watcher / attach_view
- dump.py         dump_view(view) -> the /config_dump JSON
- cli.py          `shoal config validate|dump`
"""
