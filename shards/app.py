"""What an app (ztunnel, waypoint, the test app) implements to run in shards.

The fork contract (STYLE.md rule 7):
- `App.__init__` runs in the supervisor, BEFORE forking, once. It may parse
  and validate options and import modules; it must not touch process state:
  no sockets, threads, event loops, signal handlers, open files or shared
  memory (all would be shared by every worker, or lost at fork).
- `App.start(ctx)` runs in each worker AFTER the fork, on the worker's
  uvloop event loop, with signals reset, the worker's own listeners and the
  routing view attached. It opens listeners (`ctx.serve` or
  `ctx.sockets.listen`) and returns once the worker can serve. Raising
  here is a boot error (exit code 3; repeated, the supervisor halts).
  Periodic work is a hook on `ctx.ticker` (shards/ticker.py), the worker's
  one timer at heartbeat pace, run at once when a new routing generation
  is pushed; work with a tighter bound arms a `WhileBusy` while it exists,
  not a sleeping task: an idle node wakes once per heartbeat.
- `App.drain(deadline)` runs when the worker must stop: the listeners opened
  with `ctx.serve` are already closed (without resetting queued connections)
  and `ctx.drain` has fired. Finish or close the app's own work by
  `deadline` (a `time.monotonic()` value); connections accepted through
  `ctx.serve` are awaited and, past the deadline, aborted by the framework.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from shoal.core.drain import DrainWatcher
from shoal.core.sockets import SocketFactory
from shoal.routing.view import View
from shoal.shards.ticker import Ticker


class App:
    """Base class; override what you need. See the module docstring."""

    name = "app"

    def __init__(self, options: Any = None) -> None:
        self.options = options

    async def start(self, ctx: "WorkerContext") -> None:
        """Post-fork: open listeners and start serving."""

    async def drain(self, deadline: float) -> None:
        """Stop the app's own work by `deadline` (monotonic seconds)."""

    def admin_sections(self) -> dict[str, Callable[[], object]]:
        """Extra `/config_dump` keys: name -> callable returning JSON-able data."""
        return {}

    def ready(self) -> bool:
        """`/healthz/ready` also requires routing generation > 0."""
        return True


@dataclass(kw_only=True, eq=False)
class WorkerContext:
    """Everything a worker gives its app (post-fork only)."""
    worker_id: int                 # the slot, 0..workers-1; stable across restarts
    routing: View                  # the table (RoutingView), or an empty StaticView without --config
    sockets: SocketFactory         # listeners survive worker restarts (shards/handoff.py)
    drain: DrainWatcher            # fires when the worker starts draining
    metrics: Any                   # core.metrics.IstioMetrics
    log: logging.Logger
    generation: int = 0            # the supervisor's roll generation (SIGHUP bumps it)
    # The worker's one periodic wakeup (heartbeat pace, and poked on each
    # pushed routing generation): add the app's periodic chores here
    # (shards/ticker.py) rather than a sleeping task of their own.
    ticker: Ticker = field(default_factory=Ticker)
    listeners: list = field(default_factory=list)
    wrap_factory: Callable[[SocketFactory], SocketFactory] | None = None
    _bytes: tuple | None = field(default=None, repr=False)

    def serve(self, host: str, port: int, protocol_factory: Callable[[], asyncio.BaseProtocol], *,
              name: str = "", sockets: SocketFactory | None = None):
        """Listen on host:port and serve each connection with a new protocol.

        The listener is closed by the framework on drain, after serving the
        connections already queued. Returns a `shards.listener.Listener`.

        Raises:
            OSError: the address cannot be bound.
        """
        from shoal.shards.listener import Listener
        factory = sockets or self.sockets
        sock = factory.listen(host, port)
        label = name or f"{host}:{port}"
        counter = self.metrics.worker_connections.labels(str(self.worker_id), label)
        # On drain the socket is just closed here: the slot keeps its copy
        # for the next worker (use sockets.close_listener to give it up).
        lst = Listener(sock, protocol_factory, name=label, on_accept=counter.inc, log=self.log)
        self.listeners.append(lst)
        return lst

    def socket_factory(self, inner: SocketFactory) -> SocketFactory:
        """Wrap another factory (e.g. a pod netns one) so its listeners are
        handed over like `ctx.sockets`' are."""
        return self.wrap_factory(inner) if self.wrap_factory else inner

    def count_bytes(self, sent: int, received: int) -> None:
        """Framework byte counters (the app calls this as it moves data)."""
        if self._bytes is None:   # bound once: labels() costs more than inc()
            w = str(self.worker_id)
            self._bytes = (self.metrics.worker_bytes.labels(w, "sent"),
                           self.metrics.worker_bytes.labels(w, "received"))
        if sent:
            self._bytes[0].inc(sent)
        if received:
            self._bytes[1].inc(received)

