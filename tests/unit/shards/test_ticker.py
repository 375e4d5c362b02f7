"""shards.ticker: every periodic chore of a worker on one timer."""

import asyncio

from shoal.shards.ticker import Every, Ticker, WhileBusy

INTERVAL = 0.01


async def test_hooks_share_one_timer_and_run_once_per_tick():
    loop = asyncio.get_running_loop()
    ticker = Ticker(INTERVAL)
    seen: list[tuple[str, float]] = []
    ticked = asyncio.Event()

    def second(now):
        seen.append(("b", now))
        if len(seen) >= 6:
            ticked.set()

    ticker.add(lambda now: seen.append(("a", now)))
    timers_after_one = len(loop._scheduled) if hasattr(loop, "_scheduled") else None
    ticker.add(second)
    if timers_after_one is not None:     # the default loop: count its timers
        assert len(loop._scheduled) == timers_after_one, "a second hook armed a second timer"
    await asyncio.wait_for(ticked.wait(), 5)
    ticker.stop()
    names = [n for n, _ in seen[:6]]
    assert names == ["a", "b"] * 3
    # Both hooks of one pass see the same clock reading: one wakeup.
    assert seen[0][1] == seen[1][1] and seen[2][1] == seen[3][1]


async def test_a_failing_hook_neither_stops_the_tick_nor_the_others(caplog):
    ticker = Ticker(INTERVAL)
    calls = []
    done = asyncio.Event()

    def boom(now):
        raise RuntimeError("hook bug")

    def count(now):
        calls.append(now)
        if len(calls) == 3:
            done.set()

    ticker.add(boom)
    ticker.add(count)
    await asyncio.wait_for(done.wait(), 5)
    ticker.stop()
    assert "periodic hook failed" in caplog.text


async def test_stop_and_remove():
    ticker = Ticker(INTERVAL)
    calls = []
    stopped = asyncio.Event()

    def hook(now):
        calls.append(now)
        ticker.stop()           # from inside a pass: no further tick
        stopped.set()

    ticker.add(hook)
    await asyncio.wait_for(stopped.wait(), 5)
    assert ticker._handle is None, "stopped from a hook, yet re-armed"
    ticker.remove(hook)
    ticker.remove(hook)         # already gone: no error
    assert ticker.hooks == []


def test_every_runs_at_most_once_per_interval():
    runs = []
    hook = Every(1.0, runs.append, last=10.0)
    for now in (10.5, 10.99, 11.0, 11.5, 12.1, 12.2):
        hook(now)
    assert runs == [11.0, 12.1]


def test_every_runs_at_the_first_tick_by_default():
    runs = []
    hook = Every(15.0, runs.append)
    hook(3.0)
    hook(4.0)
    assert runs == [3.0]


async def test_poke_runs_every_hook_at_once_and_keeps_the_schedule():
    ticker = Ticker(3600.0)         # a tick that never comes during the test
    seen = []
    ticker.add(lambda now: seen.append(("a", now)))
    ticker.add(lambda now: seen.append(("b", now)))
    handle = ticker._handle
    ticker.poke()
    assert [n for n, _ in seen] == ["a", "b"] and seen[0][1] == seen[1][1]
    assert ticker._handle is handle, "a poke re-armed the periodic timer"
    ticker.stop()


async def test_while_busy_runs_while_its_work_lasts_then_stops_until_armed():
    work = [3]                      # passes with work left, then idle
    runs = []
    idle = asyncio.Event()

    def fn(now):
        runs.append(now)
        work[0] -= 1
        if work[0] <= 0:
            idle.set()
        return work[0] > 0

    timer = WhileBusy(INTERVAL, fn)
    assert not timer.armed
    timer.arm()
    first = timer._handle
    timer.arm()                     # armed: no second timer
    assert timer._handle is first
    await asyncio.wait_for(idle.wait(), 5)
    assert len(runs) == 3 and not timer.armed, "idle, yet still armed"
    idle.clear()
    work[0] = 1
    timer.arm()                     # new work: runs again
    await asyncio.wait_for(idle.wait(), 5)
    assert len(runs) == 4 and not timer.armed
    timer.stop()
    timer.arm()                     # stopped for good (draining)
    assert not timer.armed


async def test_while_busy_keeps_trying_after_a_failure(caplog):
    calls = []
    done = asyncio.Event()

    def fn(now):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("flush bug")
        done.set()
        return False

    timer = WhileBusy(INTERVAL, fn)
    timer.arm()
    await asyncio.wait_for(done.wait(), 5)
    assert len(calls) == 2 and "busy timer failed" in caplog.text
