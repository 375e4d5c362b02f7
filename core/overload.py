"""Per-worker overload protection, after Envoy's overload manager.

What a worker may hold, whoever connects: a bounded number of connections
and of pending TLS handshakes. Established (authenticated) connections are
never touched. At `max_connections` a new connection is accepted and closed
at once (the client fails fast; its retry may land on another worker or
replica); at `max_pending_handshakes` the oldest unfinished handshake is
aborted to make room. Each increments
`shoal_overload_refused_connections_total{reason="max_connections"|
"pending_handshake_evicted"}` and is logged at most once per LOG_EVERY
seconds. Envoy's equivalent is `global_downstream_max_connections` (refuse
new, counter `downstream_cx_overload_reject`); it ships no default, we do.

The handshake timeout stays as it is (HboneSettings.connect_timeout): a
pending handshake lives at most that long, so the pending limit divided by
it bounds the rate of TLS work a silent flood can cause.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Callable

from shoal.core import log as shoal_log

# Connections one worker holds at most. Each costs two fds at most (client
# side and upstream) plus buffers bounded by flow control; 16384 keeps a
# worker under the usual 65536-fd limit with room for upstreams and listeners.
MAX_CONNECTIONS = 16384
# TLS handshakes in progress on one worker. Until its ClientHello is whole a
# connection costs ~3 KiB (core.hbone.tlsio allocates nothing before); once
# OpenSSL works on it, ~48 KiB (measured, docs/security.md), so 1024 bound
# that phase to ~50 MB. An honest handshake takes milliseconds; when the
# limit is reached the *oldest* pending handshake is aborted to make room:
# those are the stalled ones, so a slow-handshake flood cannot lock honest
# clients out (a plain "refuse new" would hand the attacker every slot).
MAX_PENDING_HANDSHAKES = 1024
# Refusals are counted every time but logged at most this often.
LOG_EVERY = 10.0

LOG = shoal_log.get("overload")


def fd_budget() -> int:
    """Connections the fd limit allows: half the soft RLIMIT_NOFILE (a
    connection may need an upstream socket too), less a reserve."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, (soft - 64) // 2)


class Overload:
    """The limits of one worker and what it currently holds."""

    def __init__(self, *, max_connections: int | None = None,
                 max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
                 log: logging.Logger = LOG) -> None:
        self.max_connections = max_connections or min(MAX_CONNECTIONS, fd_budget())
        self.max_pending_handshakes = max_pending_handshakes
        self.connections = 0
        self._pending: dict[object, Callable[[], None]] = {}   # oldest first
        self.refused: dict[str, int] = {}
        self.log = log
        self._logged = 0.0

    @property
    def pending_handshakes(self) -> int:
        return len(self._pending)

    def admit(self, conn: object, evict: Callable[[], None]) -> str | None:
        """A connection arrived: None if taken (then `handshake_done(conn)`
        and `closed(conn)` follow), else why it was refused (the caller
        closes it). `evict()` aborts its handshake if room is needed later."""
        if self.connections >= self.max_connections:
            return self._refuse("max_connections")
        self.connections += 1
        if len(self._pending) >= self.max_pending_handshakes:
            oldest = next(iter(self._pending))
            self._refuse("pending_handshake_evicted")
            self._pending.pop(oldest)()
        self._pending[conn] = evict
        return None

    def admit_plain(self) -> str | None:
        """A connection without a handshake (a captured plaintext one) arrived:
        None if taken (then `closed(conn)` follows), else why it was refused.
        It counts against the same `max_connections` as HBONE ones: as
        Envoy's global limit, it bounds the worker, whatever the listener."""
        if self.connections >= self.max_connections:
            return self._refuse("max_connections")
        self.connections += 1
        return None

    def handshake_done(self, conn: object) -> None:
        self._pending.pop(conn, None)

    def closed(self, conn: object) -> None:
        self.connections -= 1
        self._pending.pop(conn, None)

    def _refuse(self, reason: str) -> str:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        _count("overload_refused", reason)
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            self.log.warning("overload: %s (%d connections, %d pending TLS handshakes); "
                             "established connections are kept", reason, self.connections,
                             len(self._pending), extra={"fields": {"reason": reason}})
        return reason


def count_h2_limit(limit: str) -> None:
    """An HTTP/2 connection was closed for exceeding `limit` (h2limits)."""
    _count("h2_limit_closed", limit)


def _count(metric: str, label: str) -> None:
    from shoal.core import metrics
    try:
        getattr(metrics.istio(), metric).labels(label).inc()
    except Exception:      # metrics must never take a connection down
        LOG.debug("could not record %s{%s}", metric, label, exc_info=True)


_WORKER: Overload | None = None


def worker_overload() -> Overload:
    """This process's (worker's) Overload, made on first use (post-fork)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = Overload()
    return _WORKER
