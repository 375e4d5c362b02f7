"""Endpoint load balancing and outlier ejection for the waypoint (pure).

Envoy semantics, with Envoy's defaults as constants:
- ROUND_ROBIN walks the healthy endpoints in order; LEAST_REQUEST picks the
  endpoint with fewer active requests among two random choices (Envoy's
  "power of two choices", choice_count = 2).
- Outlier detection (consecutive_5xx): an endpoint whose last
  `CONSECUTIVE_FAILURES` requests failed (5xx from us or it, connect
  failure, reset, timeout) is ejected for `BASE_EJECTION_SECONDS` times
  the number of times it was ejected; at most `MAX_EJECTION_PERCENT` of
  the endpoints are ejected at once, but always at least one may be (Envoy
  ejects one host even when 10 % of the set rounds down to zero).
- When every endpoint is ejected we use them anyway (Envoy's panic mode)
  rather than failing every request.

State is per worker process (as in Envoy, per worker thread): each shard
learns outliers from its own traffic.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Envoy outlier_detection defaults (consecutive_5xx, base_ejection_time,
# max_ejection_percent); Istio leaves them unset, so these apply.
CONSECUTIVE_FAILURES = 5
BASE_EJECTION_SECONDS = 30.0
MAX_EJECTION_PERCENT = 10
# Ejection time grows with repeated ejections but is capped (Envoy's
# max_ejection_time default: 300 s).
MAX_EJECTION_SECONDS = 300.0

ROUND_ROBIN = "ROUND_ROBIN"
LEAST_REQUEST = "LEAST_REQUEST"
MODES = (ROUND_ROBIN, LEAST_REQUEST)


@dataclass(slots=True)
class _Host:
    active: int = 0
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


@dataclass(slots=True)
class Balancer:
    """Chooses endpoints (any hashable key, e.g. "ip:port") for one backend."""
    mode: str = ROUND_ROBIN
    rng: _random.Random = field(default_factory=_random.Random)
    clock: Callable[[], float] = field(default=lambda: 0.0)
    _hosts: dict = field(default_factory=dict)
    _rr: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"load balancing mode must be one of {MODES}, not {self.mode!r}")

    def _host(self, key) -> _Host:
        h = self._hosts.get(key)
        if h is None:
            h = self._hosts[key] = _Host()
        return h

    def available(self, keys: Sequence) -> list:
        """The keys not currently ejected (all of them in panic mode)."""
        now = self.clock()
        ok = [k for k in keys if self._host(k).ejected_until <= now]
        return ok or list(keys)

    def pick(self, keys: Sequence, exclude: frozenset = frozenset()):
        """One endpoint among `keys`, skipping `exclude` (tried already) when
        another is available. Returns None when `keys` is empty."""
        if not keys:
            return None
        cands = self.available(keys)
        if exclude:
            cands = [k for k in cands if k not in exclude] or cands
        if len(cands) == 1:
            return cands[0]
        if self.mode == LEAST_REQUEST:
            a, b = self.rng.sample(cands, 2)
            return a if self._host(a).active <= self._host(b).active else b
        self._rr = (self._rr + 1) % len(cands)
        return cands[self._rr]

    def started(self, key) -> None:
        self._host(key).active += 1

    def finished(self, key, ok: bool, all_keys: Sequence = ()) -> None:
        """Record the outcome of one request to `key`.

        `ok` is False for a 5xx, connect failure, reset or timeout.
        `all_keys` (the backend's current endpoints) bounds ejections.
        """
        h = self._host(key)
        h.active = max(h.active - 1, 0)
        if ok:
            h.failures = 0
            return
        h.failures += 1
        if h.failures >= CONSECUTIVE_FAILURES and self._may_eject(all_keys or (key,)):
            h.failures = 0
            h.ejections += 1
            span = min(BASE_EJECTION_SECONDS * h.ejections, MAX_EJECTION_SECONDS)
            h.ejected_until = self.clock() + span

    def abandoned(self, key) -> None:
        """A request to `key` ended for a reason that says nothing about the
        endpoint (the client left, the worker is closing): no longer active,
        no outcome recorded."""
        h = self._host(key)
        h.active = max(h.active - 1, 0)

    def _may_eject(self, keys: Sequence) -> bool:
        now = self.clock()
        ejected = sum(1 for k in keys if self._host(k).ejected_until > now)
        limit = max(1, len(keys) * MAX_EJECTION_PERCENT // 100)
        return ejected < limit

    def ejected(self, key) -> bool:
        return self._host(key).ejected_until > self.clock()

    def forget(self, live: Sequence) -> None:
        """Drop state of endpoints no longer present (bounded memory)."""
        keep = set(live)
        for k in [k for k in self._hosts if k not in keep]:
            del self._hosts[k]
