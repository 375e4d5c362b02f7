"""The node proxy's certificate manager (ztunnel's SecretManager).

Invariants (reference/istio-ztunnel.md §7):
- One certificate per identity (service account), shared by every pod of
  that identity on the node; the key is made here and never leaves memory.
- Fetches are prioritised: RealTime (a connection waits) over Warmup (a new
  workload was seen) over Background (renewal). At most
  MAX_CONCURRENT_FETCHES run at once.
- Renewal at REFRESH_FRACTION of the lifetime; a failure retries with
  exponential backoff capped at BACKOFF_MAX. While a renewal fails, the old
  certificate is served until it expires.
- A new certificate (or trust bundle) gives new TLS contexts; connections
  already established keep their own TLS session (an `ssl.SSLObject` holds a
  reference to the context it was made from), so nothing is dropped.
- `forget`/`retain` drop identities no workload needs any more.
- With a node store (core/identity/store.py), certificates outlive this
  process: a new worker (restart, SIGHUP, SIGUSR2) adopts the valid ones
  before it ever asks the CA, and a renewal is made once per node (the
  store's lease), the other workers adopting it. So with the CA down, a node
  that holds valid certificates keeps serving through worker restarts.
- Retries are jittered (JITTER): after a CA outage, the nodes' retries do not
  arrive in lock-step.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from shoal.core import log
from shoal.core.identity import tls as shoal_tls
from shoal.core.identity.certs import (CertError, WorkloadCert, cert_json, csr_pem, make_csr,
                                       serial_hex)
from shoal.core.identity.spiffe import Identity

# ztunnel renews at half-life: enough margin to ride out a CA outage of 12 h on 24 h certs.
REFRESH_FRACTION = 0.5
# First retry delay after a failed fetch; doubled per failure.
BACKOFF_INITIAL = 1.0
# ztunnel's cap: a CA outage must not make every node hammer it when it returns.
BACKOFF_MAX = 150.0
# ztunnel's SecretManager runs at most 8 CA requests at once.
MAX_CONCURRENT_FETCHES = 8
# Roots can rotate between renewals; poll the bundle this often.
TRUST_BUNDLE_POLL_INTERVAL = 60.0
# The scheduler re-checks at least this often, so a clock jump is noticed.
SCHEDULER_MAX_SLEEP = 5.0
# Each retry delay is scaled by a random factor in [1 - JITTER, 1] ("equal
# jitter"): spreads the retries of every node after a CA outage while keeping
# the delay at least half the exponential value.
JITTER = 0.5
# While another process of the node holds the renewal lease, look at the
# store again this often (a CA round trip takes tens of ms).
LEASE_POLL = 0.1

_log = log.get("identity")


class Priority(enum.IntEnum):
    REALTIME = 0
    WARMUP = 1
    BACKGROUND = 2


class CertState(str, enum.Enum):
    INITIALIZING = "Initializing"
    AVAILABLE = "Available"
    UNAVAILABLE = "Unavailable"


class CertUnavailable(Exception):
    """No valid certificate for an identity; `reason` says why."""

    def __init__(self, identity: Identity, reason: str) -> None:
        super().__init__(f"no certificate for {identity.uri}: {reason}")
        self.identity, self.reason = identity, reason


def refresh_time(cert: WorkloadCert) -> float:
    """When to renew `cert` (unix time)."""
    start, end = cert.not_before.timestamp(), cert.not_after.timestamp()
    return start + (end - start) * REFRESH_FRACTION


def backoff_delay(failures: int) -> float:
    """Delay before retry number `failures` (1-based), before jitter."""
    return min(BACKOFF_INITIAL * (2 ** max(failures - 1, 0)), BACKOFF_MAX)


def jittered(delay: float, r: float) -> float:
    """`delay` scaled into [(1 - JITTER) * delay, delay] by `r` in [0, 1]."""
    return delay * (1.0 - JITTER * (1.0 - r))


@dataclass(slots=True)
class _Entry:
    identity: Identity
    cert: WorkloadCert | None = None
    state: CertState = CertState.INITIALIZING
    error: str = ""
    failures: int = 0
    refresh_at: float = 0.0
    queued: Priority | None = None
    in_flight: bool = False
    store_gen: int = -1          # the node store's generation when last looked at
    waiters: list[asyncio.Future] = field(default_factory=list)
    contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)


class CertManager:
    """Certificates for the identities of the workloads on this node.

    Args:
        ca_client: has `async sign(identity, csr_pem, ttl) -> SignResponse` and
            `async trust_bundle()` (core.identity.caclient.CaClient).
        node_name: for logs and the admin dump.
        clock: unix time (injectable; unit tests drive `tick()` by hand).
        background: run the renewal scheduler task (off in unit tests).
        ttl: lifetime to ask for (timedelta); None takes the CA's default (24 h).
        store: the node's CertStore shared with the other processes, or None.
        metrics: core.metrics.IstioMetrics for the CA reachability and
            certificate expiry gauges, or None.
        rng: returns a float in [0, 1) for the retry jitter.

    Create it anywhere (pre-fork is fine: nothing starts until the first
    fetch/prefetch, which must run inside the worker's event loop).
    """

    def __init__(self, ca_client: Any, *, node_name: str = "", clock: Callable[[], float] = time.time,
                 background: bool = True, ttl=None,
                 max_concurrent: int = MAX_CONCURRENT_FETCHES, store=None, metrics=None,
                 rng: Callable[[], float] = random.random) -> None:
        self.ca = ca_client
        self.store = store
        self.metrics = metrics
        self.rng = rng
        self.node_name = node_name
        self.clock = clock
        self.ttl = ttl
        self._background = background
        self._max_concurrent = max_concurrent
        self._entries: dict[Identity, _Entry] = {}
        self._roots: tuple = ()
        self._queue: asyncio.PriorityQueue | None = None
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._wake: asyncio.Event | None = None
        self._bundle_checked = 0.0
        self.fetches = 0

    # -- public API ----------------------------------------------------------
    async def fetch(self, identity: Identity | str) -> WorkloadCert:
        """A valid certificate for `identity`, fetching it now if needed (RealTime).

        Raises:
            CertUnavailable: the CA refused or could not be reached.
        """
        entry = self._entry(Identity.of(identity))
        cert = self._valid(entry) or self._adopt_stored(entry)
        if cert is not None:
            return cert
        fut = asyncio.get_running_loop().create_future()
        entry.waiters.append(fut)
        self._enqueue(entry, Priority.REALTIME)
        return await fut

    def prefetch(self, identity: Identity | str) -> None:
        """Fetch ahead of need (Warmup); returns at once."""
        entry = self._entry(Identity.of(identity))
        if entry.cert is None and self._adopt_stored(entry) is None and not entry.in_flight:
            self._enqueue(entry, Priority.WARMUP)

    def get(self, identity: Identity | str) -> WorkloadCert | None:
        """The cached certificate if it is valid now, else None (never fetches)."""
        entry = self._entries.get(Identity.of(identity))
        return None if entry is None else (self._valid(entry) or self._adopt_stored(entry))

    def forget(self, identity: Identity | str) -> None:
        """No workload needs `identity` any more: drop its certificate."""
        entry = self._entries.pop(Identity.of(identity), None)
        if entry is not None:
            self._fail_waiters(entry, "identity forgotten")
            self._report_expiry(entry.identity, None)

    def retain(self, identities: Iterable[Identity | str]) -> None:
        """Keep exactly these identities (prefetching new ones), forget the rest."""
        keep = {Identity.of(i) for i in identities}
        for ident in list(self._entries):
            if ident not in keep:
                self.forget(ident)
        for ident in keep:
            self.prefetch(ident)

    def client_context(self, identity: Identity | str) -> ssl.SSLContext | None:
        """Cached HBONE client context for the current certificate, or None."""
        return self._context(Identity.of(identity), "client")

    def server_context(self, identity: Identity | str) -> ssl.SSLContext | None:
        return self._context(Identity.of(identity), "server")

    async def client_context_for(self, identity: Identity | str) -> ssl.SSLContext:
        """Fetch if needed, then the client context (raises CertUnavailable)."""
        ident = Identity.of(identity)
        await self.fetch(ident)
        return self._context(ident, "client") or await self._refetch_context(ident, "client")

    async def server_context_for(self, identity: Identity | str) -> ssl.SSLContext:
        ident = Identity.of(identity)
        await self.fetch(ident)
        return self._context(ident, "server") or await self._refetch_context(ident, "server")

    @property
    def roots(self) -> tuple:
        return self._roots

    def list(self) -> list[dict]:
        """Rows for `shoal ztunnel-config certificates`."""
        rows = []
        for ident, e in sorted(self._entries.items(), key=lambda kv: kv[0].uri):
            c = e.cert
            rows.append({"identity": ident.uri, "state": self._state(e).value,
                         "serial": c.serial if c else "",
                         "not_before": c.not_before.isoformat() if c else "",
                         "not_after": c.not_after.isoformat() if c else "",
                         "error": e.error})
        return rows

    def admin_section(self) -> dict:
        """The "certificates" key of /config_dump, as ztunnel's admin.rs dumps
        it: state "Unavailable: <reason>" on failure; each certificate with
        its PEM (base64), decimal serial and RFC 3339 validity."""
        out = []
        for row, e in zip(self.list(), sorted(self._entries.values(), key=lambda e: e.identity.uri)):
            state = row["state"]
            if state == CertState.UNAVAILABLE.value and e.error:
                state = f"{state}: {e.error}"
            item = {"identity": row["identity"], "state": state, "certChain": [], "rootCerts": []}
            if e.cert:
                item["certChain"] = [cert_json(c) for c in (e.cert.leaf, *e.cert.chain)]
                item["rootCerts"] = [cert_json(c) for c in e.cert.roots]
            out.append(item)
        return {"node": self.node_name, "certificates": out}

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._queue = self._wake = None   # a later fetch starts fresh workers
        for e in self._entries.values():
            self._fail_waiters(e, "certificate manager closed")
        close_client = getattr(self.ca, "close", None)   # the gRPC client holds a channel
        if close_client is not None:
            await close_client()

    # -- scheduling (tick/idle are public for tests with a fake clock) --------
    def tick(self) -> None:
        """Queue every renewal or retry that is due at `clock()`."""
        now = self.clock()
        for e in list(self._entries.values()):
            if e.cert is not None and now >= e.cert.not_after.timestamp():
                e.cert, e.contexts = None, {}
                e.state = CertState.UNAVAILABLE
                e.error = e.error or "certificate expired"
            if not e.in_flight and e.queued is None and now >= e.refresh_at:
                self._enqueue(e, Priority.BACKGROUND if e.cert else Priority.WARMUP)

    async def idle(self) -> None:
        """Wait until no fetch is queued or running."""
        if self._queue is not None:
            await self._queue.join()

    async def refresh_trust_bundle(self) -> None:
        """Ask the CA for its bundle and apply it if it changed."""
        self._bundle_checked = self.clock()
        self.apply_trust_bundle(await self.ca.trust_bundle())

    def apply_trust_bundle(self, roots) -> None:
        """A new set of roots (root rotation): new TLS contexts for every identity."""
        roots = tuple(roots)
        if not roots or _ders(roots) == _ders(self._roots):
            return
        first = not self._roots
        self._roots = roots
        for e in self._entries.values():
            if e.cert is not None and _ders(e.cert.roots) != _ders(roots):
                e.cert = e.cert.with_roots(roots)
                e.contexts = {}
        if hasattr(self.ca, "update_roots"):
            self.ca.update_roots(roots)
        if not first:
            _log.info("trust bundle updated", extra={"fields": {
                "roots": [serial_hex(r) for r in roots], "node": self.node_name}})

    # -- internals -------------------------------------------------------------
    def _entry(self, ident: Identity) -> _Entry:
        entry = self._entries.get(ident)
        if entry is None:
            entry = self._entries[ident] = _Entry(identity=ident)
        return entry

    def _valid(self, entry: _Entry) -> WorkloadCert | None:
        c = entry.cert
        if c is None:
            return None
        now = self.clock()
        return c if c.not_before.timestamp() <= now < c.not_after.timestamp() else None

    def _state(self, e: _Entry) -> CertState:
        if e.cert is not None and self._valid(e) is None:
            return CertState.UNAVAILABLE
        return e.state

    def _context(self, ident: Identity, side: str) -> ssl.SSLContext | None:
        entry = self._entries.get(ident)
        if entry is None:
            return None
        cert = self._valid(entry) or self._adopt_stored(entry)
        if cert is None:
            return None
        ctx = entry.contexts.get(side)
        if ctx is None:
            build = shoal_tls.client_context if side == "client" else shoal_tls.server_context
            ctx = entry.contexts[side] = build(cert)
        return ctx

    async def _refetch_context(self, ident: Identity, side: str) -> ssl.SSLContext:
        # Forgotten or expired between fetch and context build: one more try.
        await self.fetch(ident)
        ctx = self._context(ident, side)
        if ctx is None:
            raise CertUnavailable(ident, "certificate not valid after fetch")
        return ctx

    def _ensure_started(self) -> asyncio.PriorityQueue:
        if self._queue is not None:
            return self._queue
        # The tasks are handed the queue and event they serve: close() drops
        # them (a later fetch starts fresh ones) after cancelling the tasks.
        queue = self._queue = asyncio.PriorityQueue()
        wake = self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker(queue), name=f"cert-fetch-{i}")
                       for i in range(self._max_concurrent)]
        if self._background:
            self._tasks.append(asyncio.create_task(self._scheduler(wake), name="cert-scheduler"))
        return queue

    def _enqueue(self, entry: _Entry, prio: Priority) -> None:
        queue = self._ensure_started()
        if entry.in_flight or (entry.queued is not None and entry.queued <= prio):
            return
        entry.queued = prio
        queue.put_nowait((int(prio), next(self._seq), entry.identity))

    async def _worker(self, queue: asyncio.PriorityQueue) -> None:
        while True:
            _, _, ident = await queue.get()
            try:
                entry = self._entries.get(ident)
                if entry is None or entry.in_flight or entry.queued is None:
                    continue  # forgotten, or a stale lower-priority duplicate
                entry.queued, entry.in_flight = None, True
                try:
                    await self._fetch_once(entry)
                finally:
                    entry.in_flight = False
            finally:
                queue.task_done()

    async def _fetch_once(self, entry: _Entry) -> None:
        ident = entry.identity
        claimed = self._claim(entry)
        if claimed is not _CLAIMED:
            return   # adopted a renewal from the store, or another process renews it
        self.fetches += 1
        try:
            key, csr = make_csr(ident)
            resp = await self.ca.sign(ident, csr_pem(csr), self.ttl)
            cert = WorkloadCert.build(key, resp.cert_chain[0], resp.cert_chain[1:], resp.trust_bundle)
            if cert.identity != ident:
                raise CertError("identity_mismatch",
                                f"CA issued {cert.identity.uri} instead of {ident.uri}")
        except asyncio.CancelledError:
            self._store_call("release", ident.uri)
            raise
        except Exception as e:  # the CA client's errors, bad answers: back off and retry
            self._store_call("release", ident.uri)
            self._report_ca(getattr(e, "status", 0) != 0)   # an HTTP refusal: the CA is up
            self._on_failure(entry, str(e))
            return
        self._report_ca(True)
        if self._entries.get(ident) is not entry:
            self._store_call("release", ident.uri)
            return  # forgotten while in flight
        self.apply_trust_bundle(cert.roots)
        self._bundle_checked = self.clock()   # the answer carried the current bundle
        if _ders(cert.roots) != _ders(self._roots):
            cert = cert.with_roots(self._roots)
        self._store_call("put", cert)
        renewed = entry.cert is not None
        self._install(entry, cert)
        _log.info("certificate renewed" if renewed else "certificate issued", extra={"fields": {
            "identity": ident.uri, "serial": cert.serial, "not_after": cert.not_after.isoformat()}})

    def _install(self, entry: _Entry, cert: WorkloadCert) -> None:
        entry.cert, entry.contexts = cert, {}
        entry.state, entry.error, entry.failures = CertState.AVAILABLE, "", 0
        entry.refresh_at = refresh_time(cert)
        self._report_expiry(entry.identity, cert)
        for fut in entry.waiters:
            if not fut.done():
                fut.set_result(cert)
        entry.waiters.clear()
        if self._wake is not None:
            self._wake.set()

    # -- the node store --------------------------------------------------------
    def _adopt_stored(self, entry: _Entry) -> WorkloadCert | None:
        """A valid certificate another process of the node put in the store
        (checked only when the store changed: a generation read is one pread)."""
        if self.store is None:
            return None
        gen = self._store_call("generation")
        if gen is None or gen == entry.store_gen:
            return None
        entry.store_gen = gen
        cert = self._store_call("get", entry.identity.uri, self.clock())
        if cert is None:
            return None
        self._install(entry, self._with_current_roots(cert))
        _log.info("certificate adopted from the node store", extra={"fields": {
            "identity": entry.identity.uri, "serial": cert.serial,
            "not_after": cert.not_after.isoformat()}})
        return entry.cert

    def _with_current_roots(self, cert: WorkloadCert) -> WorkloadCert:
        if not self._roots:
            self.apply_trust_bundle(cert.roots)
        if _ders(cert.roots) != _ders(self._roots):
            return cert.with_roots(self._roots)
        return cert

    def _claim(self, entry: _Entry) -> object:
        """Before a CA request: adopt a newer stored certificate, or wait for
        the process renewing it, or take the lease (returns _CLAIMED)."""
        if self.store is None:
            return _CLAIMED
        newer_than = entry.cert.not_after.timestamp() if entry.cert is not None else 0.0
        got = self._store_call("claim", entry.identity.uri, newer_than, self.clock())
        if isinstance(got, WorkloadCert):
            self._install(entry, self._with_current_roots(got))
            return got
        if got is not None:   # Busy: another process asks the CA right now
            entry.refresh_at = self.clock() + LEASE_POLL
            if self._wake is not None:
                self._wake.set()
            return got
        return _CLAIMED

    def _store_call(self, method: str, *args):
        if self.store is None:   # no node store (or it broke): the CA path alone
            return None
        try:
            return getattr(self.store, method)(*args)
        except Exception as e:   # a broken store must not stop the CA path
            _log.error("certificate store failed; using the CA only", extra={"fields": {
                "operation": method, "error": str(e)}})
            self.store = None
            return None

    # -- metrics -----------------------------------------------------------------
    def _report_ca(self, reachable: bool) -> None:
        if self.metrics is not None:
            self.metrics.ca_reachable.set(1 if reachable else 0)

    def _report_expiry(self, ident: Identity, cert: WorkloadCert | None) -> None:
        if self.metrics is not None:
            self.metrics.cert_expiry.labels(ident.uri).set(
                cert.not_after.timestamp() if cert is not None else 0)

    def _on_failure(self, entry: _Entry, reason: str) -> None:
        entry.failures += 1
        delay = jittered(backoff_delay(entry.failures), self.rng())
        entry.refresh_at = self.clock() + delay
        entry.error = reason
        if self._valid(entry) is None:
            entry.state = CertState.UNAVAILABLE
        _log.warning("certificate fetch failed", extra={"fields": {
            "identity": entry.identity.uri, "error": reason, "failures": entry.failures,
            "retry_in_s": delay}})
        self._fail_waiters(entry, reason)

    def _fail_waiters(self, entry: _Entry, reason: str) -> None:
        for fut in entry.waiters:
            if not fut.done():
                fut.set_exception(CertUnavailable(entry.identity, reason))
        entry.waiters.clear()

    async def _scheduler(self, wake: asyncio.Event) -> None:
        while True:
            self.tick()
            now = self.clock()
            if self._entries and now - self._bundle_checked >= TRUST_BUNDLE_POLL_INTERVAL:
                try:
                    await self.refresh_trust_bundle()
                except Exception as e:  # keep the current bundle; retry next interval
                    _log.warning("trust bundle poll failed", extra={"fields": {"error": str(e)}})
            due = [e.refresh_at for e in self._entries.values() if not e.in_flight and e.queued is None]
            delay = min([SCHEDULER_MAX_SLEEP, *(max(d - now, 0.0) for d in due)])
            wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns instead
            # of raising when the cancel from close() meets a wake-up in the
            # same loop turn, and this loop would then never end.
            try:
                async with asyncio.timeout(max(delay, 0.01)):
                    await wake.wait()
            except TimeoutError:
                pass


_CLAIMED = object()


def _ders(certs) -> tuple[bytes, ...]:
    return tuple(sorted(c.tbs_certificate_bytes for c in certs))
