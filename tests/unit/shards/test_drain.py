"""core.drain: trigger/watcher pairs and run_with_drain ordering."""

import asyncio
import time

from shoal.core import drain
from shoal.core.drain import DrainMode


async def test_trigger_waits_for_every_hold():
    trigger, watcher = drain.new()
    a, b = watcher.hold(), watcher.hold()
    done = asyncio.ensure_future(trigger.start_drain_and_wait())
    assert await watcher.wait_for_drain() is DrainMode.GRACEFUL
    a.release()
    await asyncio.sleep(0)
    assert not done.done()
    b.release()
    b.release()   # releasing twice counts once
    await asyncio.wait_for(done, 1)
    assert watcher.holds == 0


async def test_immediate_escalates_graceful_never_the_reverse():
    trigger, watcher = drain.new()
    trigger.start_drain(DrainMode.GRACEFUL)
    trigger.start_drain(DrainMode.IMMEDIATE)
    trigger.start_drain(DrainMode.GRACEFUL)
    assert watcher.mode is DrainMode.IMMEDIATE


async def test_run_with_drain_returns_component_result_without_drain():
    _, outer = drain.new()

    async def component(inner, force):
        return 42
    assert await drain.run_with_drain("c", outer, 1.0, component) == 42


async def test_run_with_drain_graceful_lets_work_finish():
    trigger, outer = drain.new()
    order = []

    async def component(inner, force):
        with inner.hold():
            await inner.wait_for_drain()
            order.append("stop accepting")
            await asyncio.sleep(0.05)
            order.append("finished")
        await force.wait()
        order.append("forced")
        return "ok"
    task = asyncio.ensure_future(drain.run_with_drain("c", outer, 5.0, component))
    await asyncio.sleep(0)
    await trigger.start_drain_and_wait(DrainMode.GRACEFUL)
    assert await task == "ok"
    assert order == ["stop accepting", "finished", "forced"]


async def test_run_with_drain_forces_after_deadline():
    trigger, outer = drain.new()
    forced_at = []

    async def component(inner, force):
        inner.hold()                 # never released: a stuck connection
        await force.wait()
        forced_at.append(asyncio.get_running_loop().time())
        return "forced"
    task = asyncio.ensure_future(drain.run_with_drain("c", outer, 0.1, component))
    await asyncio.sleep(0)
    t0 = asyncio.get_running_loop().time()
    trigger.start_drain(DrainMode.GRACEFUL)
    assert await asyncio.wait_for(task, 2) == "forced"
    assert 0.08 <= forced_at[0] - t0 < 1.0


async def test_run_with_drain_cancels_a_component_ignoring_force(monkeypatch):
    monkeypatch.setattr(drain, "FORCE_GRACE", 0.05)
    trigger, outer = drain.new()

    async def component(inner, force):
        await asyncio.sleep(3600)
    task = asyncio.ensure_future(drain.run_with_drain("c", outer, 0.0, component))
    await asyncio.sleep(0)
    trigger.start_drain(DrainMode.IMMEDIATE)
    assert await asyncio.wait_for(task, 2) is None


async def test_wait_while_waits_for_work_that_arrives_during_the_wait():
    loop = asyncio.get_running_loop()
    first, late = loop.create_future(), loop.create_future()
    pending = {first}

    waiting = asyncio.ensure_future(drain.wait_while(lambda: set(pending),
                                                     time.monotonic() + 30))
    await asyncio.sleep(0)           # waiting on {first} now
    pending.add(late)                # as a handshake that becomes a connection
    pending.discard(first)
    first.set_result(None)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()        # the late arrival is waited for too
    late.set_result(None)
    await asyncio.wait_for(waiting, 5)


async def test_wait_while_returns_at_the_deadline_with_work_left():
    never = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    await drain.wait_while(lambda: {never}, started + 0.05)
    assert not never.done() and time.monotonic() - started < 5
    await drain.wait_while(lambda: {never}, started - 1)    # already past: no wait
