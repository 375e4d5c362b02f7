"""Drain: stop accepting, let work finish until a deadline, then force.

Modelled on ztunnel's `drain.rs`. A `DrainTrigger` and its `DrainWatcher`
come in pairs (`new()`):
- whoever owns a component keeps the trigger and calls
  `await trigger.start_drain_and_wait(mode)`;
- the component's tasks get the watcher: they `await watcher.wait_for_drain()`
  to learn that they must stop, and hold a `watcher.hold()` while they have
  work in flight; the trigger returns once every hold is released.

`run_with_drain` ties it together for one component with a deadline, in the
order every shoal drain follows: stop accepting -> drain until the deadline
-> force. The same primitive serves connections, listeners, workers and the
USR2 handoff.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


class DrainMode(enum.Enum):
    GRACEFUL = "graceful"    # finish in-flight work (until a deadline)
    IMMEDIATE = "immediate"  # close now


class _Blocker:
    """Released exactly once (context manager or `release()`)."""

    __slots__ = ("_watcher", "_released")

    def __init__(self, watcher: "DrainWatcher") -> None:
        self._watcher = watcher
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._watcher._release()

    def __enter__(self) -> "_Blocker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DrainWatcher:
    """The component side: learn about a drain, block it while busy."""

    def __init__(self) -> None:
        self._signal = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._holds = 0
        self.mode: DrainMode | None = None

    @property
    def draining(self) -> bool:
        return self.mode is not None

    async def wait_for_drain(self) -> DrainMode:
        """Return once a drain started, with its mode."""
        await self._signal.wait()
        assert self.mode is not None
        return self.mode

    def hold(self) -> _Blocker:
        """Block the drain from completing until the result is released."""
        self._holds += 1
        self._idle.clear()
        return _Blocker(self)

    @property
    def holds(self) -> int:
        return self._holds

    def _release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._idle.set()


class DrainTrigger:
    """The owner side: start the drain and wait for the holds to go."""

    def __init__(self, watcher: DrainWatcher) -> None:
        self._watcher = watcher

    def start_drain(self, mode: DrainMode = DrainMode.GRACEFUL) -> None:
        w = self._watcher
        # An IMMEDIATE drain may escalate a GRACEFUL one, never the reverse.
        if w.mode is None or mode is DrainMode.IMMEDIATE:
            w.mode = mode
        w._signal.set()

    async def start_drain_and_wait(self, mode: DrainMode = DrainMode.GRACEFUL) -> None:
        self.start_drain(mode)
        await self._watcher._idle.wait()


async def wait_while(pending: Callable[[], "set[asyncio.Future]"], deadline: float) -> None:
    """Wait until `pending()` holds nothing unfinished, or until `deadline`
    (time.monotonic()). `pending()` is asked again after every wait, so work
    that arrives during the drain is waited for too: a connection accepted
    before the listener closed whose task, or TLS handshake, ends only after
    a first wait began. Returning under such work lets a worker exit, and
    reset a tunnel, while that work still runs."""
    while waits := {f for f in pending() if not f.done()}:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.wait(waits, timeout=left)


def new() -> tuple[DrainTrigger, DrainWatcher]:
    watcher = DrainWatcher()
    return DrainTrigger(watcher), watcher


async def run_with_drain(
    component: str,
    drain: DrainWatcher,
    deadline: float,
    make_future: Callable[[DrainWatcher, asyncio.Event], Awaitable[T]],
    *,
    log: logging.Logger | None = None,
) -> T | None:
    """Run a component until it ends or `drain` fires, then drain it.

    Args:
        component: name for the log lines.
        drain: the outer watcher; a drain there drains this component.
        deadline: seconds the component gets to finish after the drain starts.
        make_future: builds the component from an inner watcher (it holds
            `inner.hold()` per unit of in-flight work and stops accepting
            when `inner.wait_for_drain()` returns) and a `force` event (set
            when the deadline passed: close everything now).

    Returns:
        The component's result, or None if it had to be cancelled.
    """
    log = log or logging.getLogger("shoal.drain")
    trigger, inner = new()
    force = asyncio.Event()
    task = asyncio.ensure_future(make_future(inner, force))
    # The component holds the outer drain open until it is finished.
    with drain.hold():
        waiter = asyncio.ensure_future(drain.wait_for_drain())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            return task.result()
        mode = waiter.result()
        grace = 0.0 if mode is DrainMode.IMMEDIATE else deadline
        log.info("draining", extra={"fields": {"component": component, "mode": mode.value,
                                              "deadline_s": grace}})
        try:
            async with asyncio.timeout(grace):
                await trigger.start_drain_and_wait(mode)
        except TimeoutError:
            log.warning("drain deadline passed; forcing", extra={"fields": {
                "component": component, "in_flight": inner.holds}})
        force.set()
        try:
            # After `force` the component must end promptly; cancel if not.
            async with asyncio.timeout(FORCE_GRACE):
                return await task
        except (TimeoutError, asyncio.CancelledError):
            return None


# After `force` is set a component gets this long to close its sockets
# before it is cancelled (closing is local work, no peer round trips).
FORCE_GRACE = 1.0
