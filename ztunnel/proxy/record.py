"""One proxied connection's telemetry: opened once, closed once (no I/O).

A `ConnectionRecord` owns what Istio reports about one connection: its
labels (`telemetry.ConnectionMeta`), response flags, the bytes it moved and
its end. `open()` counts istio_tcp_connections_opened_total; `close()` is
the one place a connection ends: the closed counter, the bytes not reported
yet, and the JSON "connection complete" access log line. A connection
refused before it was opened (no route) counts its open at close, with the
refusal's flags, as ztunnel labels connections refused before a
destination was known.

`Tracker` holds the open records whose byte counts it adds to
istio_tcp_{received,sent}_bytes_total every `report()` (called every
`bytes_report_interval` while any is tracked: `on_live` arms that timer),
so a long-lived connection shows in the counters before it ends; at close
the counters settle exactly at the final totals.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from shoal.core import log as shoal_log
from shoal.ztunnel import telemetry
from shoal.ztunnel.telemetry import ConnectionMeta, LiveBytes

ACCESS = shoal_log.get("access")

NO_FLAGS = "-"


class Refused(Exception):
    """A connection ended before it carried bytes: Envoy response `flags`
    (CONNECT, DENY, IDENTITY_ERROR, ...) and the operator-facing `error`."""

    def __init__(self, flags: str, error: str) -> None:
        super().__init__(error)
        self.flags = flags
        self.error = error


class Tracker:
    """The connection records of one proxy and the metrics they count into.

    `metrics` has `inc(metric, labels, amount)` and the TCP metrics
    (`tcp_opened`, `tcp_closed`, `tcp_received`, `tcp_sent`).
    """

    def __init__(self, metrics: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.clock = clock
        self._live: dict[ConnectionRecord, LiveBytes] = {}
        # Called when a connection starts being tracked: the proxy arms its
        # report timer then, so an idle proxy has no timer at all.
        self.on_live: Callable[[], None] | None = None

    def start(self, meta: ConnectionMeta, started: float | None = None) -> ConnectionRecord:
        """A record for a connection accepted at `started` (default: now)."""
        return ConnectionRecord(self, meta, self.clock() if started is None else started)

    def report(self) -> None:
        """Add the bytes open connections moved since the last report."""
        for rec, live in list(self._live.items()):
            self.add_bytes(telemetry.tcp_labels(rec.meta), *live.take())
            if live.gone is not None and live.gone():
                del self._live[rec]

    def open_count(self) -> int:
        return len(self._live)

    def count(self, metric: Any, meta: ConnectionMeta, flags: str = NO_FLAGS) -> None:
        self.metrics.inc(metric, telemetry.tcp_labels(meta, flags), 1)

    def add_bytes(self, labels: dict, request: int, response: int) -> None:
        m = self.metrics
        if request:
            m.inc(m.tcp_received, labels, request)
        if response:
            m.inc(m.tcp_sent, labels, response)


class ConnectionRecord:
    """One connection (see the module docstring). `meta` may be replaced by
    `open()` once the destination is known."""

    __slots__ = ("tracker", "meta", "started", "opened", "closed", "live")

    def __init__(self, tracker: Tracker, meta: ConnectionMeta, started: float) -> None:
        self.tracker = tracker
        self.meta = meta
        self.started = started
        self.opened = False
        self.closed = False
        self.live: LiveBytes | None = None

    def open(self, meta: ConnectionMeta | None = None) -> None:
        """The destination is known: count the open (with `meta`'s labels)."""
        if meta is not None:
            self.meta = meta
        self.opened = True
        m = self.tracker.metrics
        self.tracker.count(m.tcp_opened, self.meta)
        m.inc(m.sockets_open, {"reporter": self.meta.reporter}, 1)

    def track(self, request: Callable[[], int], response: Callable[[], int],
              gone: Callable[[], bool] | None = None) -> None:
        """Report this open connection's bytes periodically: `request()` and
        `response()` are the running totals from the client and from the
        server; `gone()` true means it ended without a close (forget it)."""
        self.live = LiveBytes(request, response, gone)
        self.tracker._live[self] = self.live
        if self.tracker.on_live is not None:
            self.tracker.on_live()

    def refuse(self, refused: Refused, *, request_bytes: int = 0) -> None:
        self.close(request_bytes=request_bytes, response_bytes=0, error=refused.error,
                   flags=refused.flags)

    def close(self, *, request_bytes: int, response_bytes: int, error: str = "",
              flags: str = NO_FLAGS) -> None:
        """The connection ended having moved these totals. Idempotent."""
        if self.closed:
            return
        self.closed = True
        t = self.tracker
        if not self.opened:
            t.count(t.metrics.tcp_opened, self.meta, flags)
        else:
            t.metrics.inc(t.metrics.sockets_open, {"reporter": self.meta.reporter}, -1)
        labels = telemetry.tcp_labels(self.meta, flags)
        t.metrics.inc(t.metrics.tcp_closed, labels, 1)
        if error or flags != NO_FLAGS:
            t.metrics.inc(t.metrics.tcp_failed, labels, 1)
        new_request, new_response = request_bytes, response_bytes
        if self.live is not None:     # part of it was reported while it was open
            t._live.pop(self, None)
            new_request, new_response = self.live.take(request_bytes, response_bytes)
        t.add_bytes(labels, new_request, new_response)
        self._log(request_bytes, response_bytes, error)

    def _log(self, request_bytes: int, response_bytes: int, error: str) -> None:
        meta = self.meta
        outbound_side = meta.reporter == telemetry.SOURCE
        fields = telemetry.access_fields(
            meta, bytes_sent=request_bytes if outbound_side else response_bytes,
            bytes_recv=response_bytes if outbound_side else request_bytes,
            duration=self.tracker.clock() - self.started, error=error)
        if error:
            ACCESS.error("connection complete", extra={"fields": fields})
        else:
            ACCESS.info("connection complete", extra={"fields": fields})
