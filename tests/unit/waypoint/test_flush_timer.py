"""The waypoint's telemetry flush runs on a timer only while there is
traffic (shards.ticker.WhileBusy): armed by each new downstream connection,
kept while connections are open or pooled upstream ones await their sweep,
stopped after a last pass that flushes the metrics whatever their interval."""

from __future__ import annotations

from types import SimpleNamespace

from shoal.waypoint.app import WaypointApp
from shoal.waypoint.telemetry import FLUSH_INTERVAL


class FakeTelemetry:
    def __init__(self, now: float) -> None:
        self.now = now
        self._last_flush = now
        self.metric_flushes = 0
        self.log = SimpleNamespace(flush=lambda: None)

    def clock(self) -> float:
        return self.now

    def flush_metrics(self) -> None:
        self.metric_flushes += 1
        self._last_flush = self.now


class FakePool:
    def __init__(self) -> None:
        self.held = 0
        self.sweeps = 0

    def idle_count(self) -> int:
        return self.held

    def count(self) -> int:
        return 0

    def sweep(self) -> int:
        self.sweeps += 1
        return 0


def app_with(open_connections: int):
    app = WaypointApp.__new__(WaypointApp)
    app.hbone = None
    app.ctx = SimpleNamespace(listeners=[SimpleNamespace(open_connections=open_connections)])
    app.proxy = SimpleNamespace(pool=FakePool(), h2pool=FakePool())
    return app


def test_busy_while_a_connection_is_open_metrics_at_their_interval():
    app, tel = app_with(1), FakeTelemetry(100.0)
    tel.now += FLUSH_INTERVAL / 2
    assert app._flush_telemetry(tel, tel.now) is True
    assert tel.metric_flushes == 0, "metrics flushed before FLUSH_INTERVAL while serving"
    tel.now += FLUSH_INTERVAL
    assert app._flush_telemetry(tel, tel.now) is True
    assert tel.metric_flushes == 1 and app.proxy.pool.sweeps == 1


def test_idle_the_last_pass_flushes_the_metrics_and_stops():
    app, tel = app_with(0), FakeTelemetry(100.0)
    tel.now += FLUSH_INTERVAL / 10          # counts of the last request, not yet due
    assert app._flush_telemetry(tel, tel.now) is False
    assert tel.metric_flushes == 1, "the last counts would wait for the next request"


def test_pooled_upstream_connections_keep_it_armed_for_their_sweep():
    app, tel = app_with(0), FakeTelemetry(100.0)
    app.proxy.pool.held = 1
    assert app._flush_telemetry(tel, tel.now) is True
    app.proxy.pool.held = 0
    assert app._flush_telemetry(tel, tel.now) is False
