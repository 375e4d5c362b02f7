"""The routing table's process wiring (docs/internals.md).

    h = TableHandle.create()          # supervisor, before forking: owns the segment
    h.name                            # str passed to children
    run_watcher(source, h.name)       # the watcher child: blocks; reload on SIGHUP
    view = attach_view(h.name)        # a worker, after the fork: lock-free RoutingView
    h.unlink()                        # supervisor on clean stop: nothing left in /dev/shm

The supervisor creates the segment (so it outlives watcher restarts), every
child attaches by name, and only the supervisor unlinks it. Existing
mappings stay valid after the unlink (routing/shm.py, invariant 6).
"""

from __future__ import annotations

from shoal.routing.shm import DEFAULT_SIZE, NAME_PREFIX, TableWriter, cleanup_stale, unlink
from shoal.routing.view import RoutingView
from shoal.routing.watcher import run_watcher


class TableHandle:
    """Ownership of one routing-table segment."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, size: int = DEFAULT_SIZE, *, name: str | None = None,
               clean_stale: bool = True) -> "TableHandle":
        """Create an empty table (generation 0).

        Args:
            size: bytes of the segment; memory is touched only as it fills
                (tmpfs), and the table never grows past it.
            name: a POSIX shm name; default `/shoal-rt-<pid>-<random>`.
            clean_stale: first unlink segments left by crashed owners.
        """
        if clean_stale:
            cleanup_stale(NAME_PREFIX)
        writer = TableWriter.create(name, size)
        writer.close()
        return cls(writer.name)

    def unlink(self) -> None:
        """Remove the segment name; attached processes keep their mapping."""
        unlink(self.name)

    def __repr__(self) -> str:
        return f"TableHandle({self.name!r})"


def attach_view(name: str) -> RoutingView:
    """A read-only, lock-free view of the table (call after the fork)."""
    return RoutingView(name)


__all__ = ["TableHandle", "attach_view", "run_watcher"]
