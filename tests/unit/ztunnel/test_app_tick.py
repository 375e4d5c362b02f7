"""ZtunnelApp's periodic work rides the worker's tick (shards/ticker.py):
no sleeping task of its own, so an idle worker wakes once per tick."""

from __future__ import annotations

import asyncio
import logging

from shoal.core import metrics as core_metrics
from shoal.core.drain import DrainWatcher
from shoal.core.sockets import DefaultSocketFactory
from shoal.routing.view import StaticView
from shoal.shards.app import WorkerContext
from shoal.ztunnel.app import ZtunnelApp
from shoal.ztunnel.options import INPOD, ZtunnelOptions


class Counting:
    """A proxy stand-in: counts reconciles (one per generation change)."""

    def __init__(self) -> None:
        self.reconciles = 0
        self.scope = self

    def reconcile(self) -> None:
        self.reconciles += 1

    def local_workloads(self, view):
        return []

    def close_listeners(self) -> None:
        pass

    async def close(self, grace: float) -> None:
        pass


async def test_generation_check_is_a_tick_hook_not_a_task(tmp_path):
    (tmp_path / "token").write_text("t")
    (tmp_path / "root.pem").write_text("")
    # In-pod mode with no node agent: start() needs no listener nor CA call.
    opts = ZtunnelOptions(node="n1", mode=INPOD, zds_socket=str(tmp_path / "no-agent.sock"),
                          snapshot_wait=0.01, ca_token_file=str(tmp_path / "token"),
                          ca_root_cert=str(tmp_path / "root.pem"))
    view = StaticView(generation=1)
    ctx = WorkerContext(worker_id=0, routing=view, sockets=DefaultSocketFactory(),
                        drain=DrainWatcher(), metrics=core_metrics.istio(),
                        log=logging.getLogger("shoal.test.ztunnel"))
    app = ZtunnelApp(opts)
    before = asyncio.all_tasks()
    await app.start(ctx)
    try:
        assert app._check_generation in ctx.ticker.hooks
        # Its own tasks: the node agent client only (a generation watcher
        # task would be a second periodic wakeup).
        assert set(app._tasks) == asyncio.all_tasks() - before
        assert len(app._tasks) == 1
        proxy = Counting()
        app.proxies["pod"] = proxy          # type: ignore[assignment]
        ctx.ticker.run_hooks(0.0)
        assert proxy.reconciles == 0        # same generation: nothing to do
        view._generation = 2
        ctx.ticker.run_hooks(0.1)
        ctx.ticker.run_hooks(0.2)
        assert proxy.reconciles == 1        # one reconcile per change
    finally:
        await app.drain(0.0)
        ctx.ticker.stop()
    assert app._check_generation not in ctx.ticker.hooks
