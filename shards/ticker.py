"""One periodic wakeup per worker for all of its periodic work.

A worker polls a few shared-memory words (its heartbeat stamp, the log
control word, the routing generation) and its app has periodic chores of its
own (ztunnel: react to a new routing generation; waypoint: flush telemetry).
Each on its own `asyncio.sleep` loop, an idle worker woke once per loop and
interval, the loops drifting apart (~21 wakeups/s, each a task step, a
future and a timer of Python). Here every chore is a hook of one timer
callback: an idle worker wakes `TICK_INTERVAL`⁻¹ times a second, and a
wakeup costs one `call_later` and the hooks' own loads.

Hooks are plain callables taking `time.monotonic()`; they must not block
(a blocked loop stops the heartbeat stamps, which is how the supervisor
spots a hung worker) and they decide for themselves when their own, slower,
interval has passed (`Every`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from shoal.core import log as core_log

# The tightest reaction bound any hook promises: a routing generation change
# reaches ztunnel's listeners and live connections within it (a now-denied
# connection lives on at most this long), a /logging change every worker.
TICK_INTERVAL = 0.1

Hook = Callable[[float], None]
LOG = core_log.get("ticker")


class Ticker:
    """Runs every hook once per `interval`, on the running loop.

    The timer is armed by the first `add` (a hook registered during an
    app's `start` runs from then on) and stops with `stop`.
    """

    def __init__(self, interval: float = TICK_INTERVAL) -> None:
        self.interval = interval
        self.hooks: list[Hook] = []
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, hook: Hook) -> None:
        self.hooks.append(hook)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._handle = self._loop.call_later(self.interval, self._tick)

    def remove(self, hook: Hook) -> None:
        if hook in self.hooks:
            self.hooks.remove(hook)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def run_hooks(self, now: float) -> None:
        """One pass: every hook, each isolated (one failing hook must not
        stop the heartbeat, nor the others)."""
        for hook in list(self.hooks):
            try:
                hook(now)
            except Exception:
                LOG.exception("periodic hook failed", extra={"fields": {"hook": repr(hook)}})

    def _tick(self) -> None:
        self.run_hooks(time.monotonic())
        if self._handle is not None and self._loop is not None:
            self._handle = self._loop.call_later(self.interval, self._tick)


class Every:
    """A hook that runs `fn` at most once per `interval` (>= the tick's):
    for chores slower than the tick, without a timer of their own. It runs
    on the first tick unless `last` (a monotonic time) says it just ran."""

    def __init__(self, interval: float, fn: Callable[[float], None], *,
                 last: float | None = None) -> None:
        self.interval = interval
        self.fn = fn
        self.last = last

    def __call__(self, now: float) -> None:
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            self.fn(now)
