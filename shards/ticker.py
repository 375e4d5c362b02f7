"""One slow periodic wakeup per worker, plus pushes and timers armed by work.

A worker looks at a few shared-memory words (its heartbeat stamp, the log
control word, the routing generation) and its app has chores of its own
(ztunnel: react to a new routing generation; waypoint: flush telemetry).
Every idle node of a cluster pays each periodic wakeup, so:
- the hooks of a `Ticker` run once per its interval, which a worker sets
  to its heartbeat's (worker_timeout / 2): a safety poll, not a bound;
- what must react sooner is pushed: a new routing generation or /logging
  change arrives as a word on the worker's control socket and the worker
  runs the hooks at once (`Ticker.poke`); the tick only catches a push that
  was lost (a supervisor that restarted between a publish and its send);
- work that needs a short timer only while it exists (buffered telemetry)
  arms a `WhileBusy`, which stops itself once the work is gone.

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

# The default interval of a Ticker built without one (tests, an app run
# outside a worker); a worker passes its heartbeat interval instead.
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

    def poke(self) -> None:
        """Run every hook now (a pushed event: a new routing generation, a
        /logging change), the periodic schedule unchanged."""
        self.run_hooks(time.monotonic())

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


class WhileBusy:
    """A timer that exists only while there is work: `fn(now)` runs every
    `interval` from the first `arm()` until it returns False (nothing left
    to do); the next `arm()` starts it again. `arm()` on an armed timer is
    one attribute test, cheap enough for a per-request path."""

    def __init__(self, interval: float, fn: Callable[[float], bool]) -> None:
        self.interval = interval
        self.fn = fn
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = False

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self) -> None:
        if self._handle is None and not self._stopped:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._fire)

    def stop(self) -> None:
        """For good: later `arm()` calls do nothing (the app is draining)."""
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        try:
            busy = self.fn(time.monotonic())
        except Exception:
            LOG.exception("busy timer failed", extra={"fields": {"fn": repr(self.fn)}})
            busy = True     # the work is still there: try again next interval
        if busy:
            self.arm()
