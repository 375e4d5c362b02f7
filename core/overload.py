"""Per-worker overload protection, after Envoy's overload manager.

What a worker may hold, whoever connects: a bounded number of connections
and of pending TLS handshakes. At a limit the worker refuses *new*
connections (accepted and closed at once, so the client fails fast and its
retry may land on another worker or replica) and never touches live ones;
each refusal increments `shoal_overload_refused_connections_total{reason}`
and is logged at most once per LOG_EVERY seconds. Envoy's equivalents are
`global_downstream_max_connections` (refuse new, counter
`downstream_cx_overload_reject`) and `max_pending_handshakes`-style listener
limits; Envoy ships no default for either, we do, below.

The handshake timeout stays as it is (HboneSettings.connect_timeout): a
pending handshake lives at most that long, so the pending limit divided by
it bounds the rate of TLS work a silent flood can cause.
"""

from __future__ import annotations

import logging
import resource
import time

from shoal.core import log as shoal_log

# Connections one worker holds at most. Each costs two fds at most (client
# side and upstream) plus buffers bounded by flow control; 16384 keeps a
# worker under the usual 65536-fd limit with room for upstreams and listeners.
MAX_CONNECTIONS = 16384
# TLS handshakes in progress on one worker. A handshake costs ~1-2 ms of CPU
# (ECDSA P-256 sign + verify of the client chain), so 1024 is about 1-2 s of
# work queued at most: a flood of silent or slow ClientHellos cannot starve
# the honest handshakes behind them for longer than that.
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
        self.pending_handshakes = 0
        self.refused: dict[str, int] = {}
        self.log = log
        self._logged = 0.0

    def admit(self) -> str | None:
        """A connection arrived: None to take it (counted as pending), or
        the reason it is refused."""
        if self.connections >= self.max_connections:
            return self._refuse("max_connections")
        if self.pending_handshakes >= self.max_pending_handshakes:
            return self._refuse("max_pending_handshakes")
        self.connections += 1
        self.pending_handshakes += 1
        return None

    def handshake_done(self) -> None:
        self.pending_handshakes -= 1

    def closed(self, *, pending: bool) -> None:
        self.connections -= 1
        if pending:
            self.pending_handshakes -= 1

    def _refuse(self, reason: str) -> str:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        _count("overload_refused", reason)
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            self.log.warning("overload: refusing new connections (%s: %d connections, %d "
                             "pending TLS handshakes); live connections are kept", reason,
                             self.connections, self.pending_handshakes,
                             extra={"fields": {"reason": reason}})
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
