"""Waiting for a condition: the one polling helper of the test suite.

Prefer awaiting an event (a readiness line, an asyncio.Event, a socket
read); poll only what has no event (another process's state, a file, a
metric). Every wait has a deadline and fails naming what it waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable

# Between two polls: short enough that a test waits ~no longer than the
# condition takes, long enough not to steal the CPU from what it waits for.
POLL_INTERVAL = 0.02


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


def poll(cond: Callable[[], Any], timeout: float, *, interval: float = POLL_INTERVAL,
         retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """`cond()`'s first truthy value within `timeout` s, else its last value.

    Exceptions in `retry_on` (e.g. OSError while a port is not open yet)
    count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except retry_on:
            value = None
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0,
             what: str | Callable[[], str] = "condition", *, interval: float = POLL_INTERVAL,
             retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll `cond` until truthy; return that value.

    Raises:
        AssertionError: not within `timeout` s (naming `what`, a string or a
            function giving the state to report).
    """
    last: list[BaseException] = []

    def attempt() -> Any:
        try:
            return cond()
        except retry_on as e:
            last[:] = [e]
            return None

    value = poll(attempt, timeout, interval=interval)
    if not value:
        error = f" (last error: {last[0]})" if last else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {_describe(what)}{error}")
    return value


async def until(cond: Callable[[], Any | Awaitable[Any]], timeout: float = 5.0,
                what: str | Callable[[], str] = "condition", *,
                interval: float = POLL_INTERVAL) -> Any:
    """`wait_for` on the event loop: `cond` may be a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {_describe(what)}")
        await asyncio.sleep(interval)


async def log_line(caplog, text: str, timeout: float = 5.0) -> None:
    """A captured log record containing `text` (pytest's caplog)."""
    await until(lambda: any(text in r.getMessage() for r in caplog.records), timeout,
                f"a log line containing {text!r}")
