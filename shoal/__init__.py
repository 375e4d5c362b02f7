"""shoal: an ambient service mesh in Python.

One distribution, one import namespace. The repository keeps a folder per
concern at its top; the build maps each folder under this package:

    shoal.core          the contract (records, model) and shared building blocks
    shoal.shards        supervisor and per-core workers
    shoal.routing       compiler, shared-memory table, config watcher
    shoal.controlplane  the CA and node authorization
    shoal.ztunnel       the L4 node proxy
    shoal.waypoint      the L7 proxy
    shoal.cni           CNI plugin, node agent, local mesh
    shoal.benchmarks    pytest-benchmark CPU studies (`shoal bench`)

Imports run downward only: docs/internals.md draws the map and
tests/unit/test_layering.py enforces it.
"""

__version__ = "0.2.0"
