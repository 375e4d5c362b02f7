"""CertManager scheduling with a fake clock and a fake CA (no sockets)."""

import asyncio
import datetime as dt

import pytest
from cryptography import x509

from shoal.controlplane.authority import CertificateAuthority
from shoal.core.identity.caclient import CaError, SignResponse
from shoal.core.identity.certs import load_pem_certs
from shoal.core.identity.manager import (BACKOFF_MAX, MAX_CONCURRENT_FETCHES, CertManager, CertState,
                                   CertUnavailable, Priority, backoff_delay, jittered,
                                   refresh_time)
from shoal.core.identity.spiffe import Identity
from tests.helpers.wait import until

T0 = 1_900_000_000.0
DAY = 86400.0
A = Identity.parse("spiffe://cluster.local/ns/a/sa/a")
B = Identity.parse("spiffe://cluster.local/ns/b/sa/b")


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


class FakeCA:
    """Signs with a real CertificateAuthority; can fail or block on demand."""

    def __init__(self, clock):
        self.ca = CertificateAuthority.self_signed(clock=clock)
        self.calls: list[Identity] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.running = 0
        self.max_running = 0

    async def sign(self, identity, csr, ttl=None):
        self.calls.append(identity)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            s = self.ca.sign_csr(csr, identity.uri, ttl=ttl)
            return SignResponse(cert_chain=tuple(load_pem_certs(s.cert_chain[0])),
                                trust_bundle=tuple(self.ca.roots))
        finally:
            self.running -= 1

    async def trust_bundle(self):
        return tuple(self.ca.roots)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def env(clock):
    ca = FakeCA(clock)
    # rng 1.0: no jitter, so delays are exact (test_jitter covers the spread).
    mgr = CertManager(ca, node_name="node-1", clock=clock, background=False, rng=lambda: 1.0)
    yield ca, mgr
    await mgr.close()


async def test_concurrent_fetches_share_one_ca_request(env):
    ca, mgr = env
    a1, a2 = await asyncio.gather(mgr.fetch(A), mgr.fetch(A.uri))
    assert a1 is a2 and a1.identity == A
    assert ca.calls == [A]
    assert await mgr.fetch(A) is a1          # cached
    assert ca.calls == [A]
    assert mgr.get(A) is a1 and mgr.get(B) is None


async def test_renews_at_half_life(env, clock):
    ca, mgr = env
    first = await mgr.fetch(A)
    clock.now = T0 + 0.49 * DAY
    mgr.tick()
    await mgr.idle()
    assert len(ca.calls) == 1 and mgr.get(A) is first
    clock.now = T0 + 0.51 * DAY
    mgr.tick()
    await mgr.idle()
    renewed = mgr.get(A)
    assert len(ca.calls) == 2 and renewed.serial != first.serial
    assert mgr.list()[0]["serial"] == renewed.serial


async def test_failed_renewal_keeps_the_old_cert_and_backs_off(env, clock):
    ca, mgr = env
    first = await mgr.fetch(A)
    ca.fail = CaError(0, "ca_unreachable", "CA down")
    clock.now = T0 + 0.6 * DAY
    delays = []
    for _ in range(12):
        mgr.tick()
        await mgr.idle()
        entry = mgr._entries[A]
        delays.append(entry.refresh_at - clock.now)
        clock.now = entry.refresh_at
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == BACKOFF_MAX
    assert mgr.list()[0]["state"] == "Available" and "CA down" in mgr.list()[0]["error"]
    assert mgr.get(A) is first
    ca.fail = None
    mgr.tick()
    await mgr.idle()
    assert mgr.get(A).serial != first.serial and mgr._entries[A].failures == 0


async def test_expired_cert_becomes_unavailable(env, clock):
    ca, mgr = env
    await mgr.fetch(A)
    ca.fail = CaError(503, "x", "CA down")
    clock.now = T0 + DAY + 1
    mgr.tick()
    await mgr.idle()
    assert mgr.get(A) is None
    assert mgr.list()[0]["state"] == "Unavailable"
    assert mgr.server_context(A) is None


async def test_refused_fetch_raises_with_the_reason(env):
    ca, mgr = env
    ca.fail = CaError(403, "not_on_node", "node node-1 has no pod running as x")
    with pytest.raises(CertUnavailable) as e:
        await mgr.fetch(B)
    assert "no pod running" in str(e.value)
    assert mgr.list()[0]["state"] == "Unavailable"


def test_backoff_is_exponential_and_capped():
    assert [backoff_delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff_delay(50) == BACKOFF_MAX == 150.0


def test_jitter_spreads_retries_within_half_to_full_delay():
    assert jittered(8.0, 0.0) == 4.0 and jittered(8.0, 1.0) == 8.0
    assert jittered(8.0, 0.5) == 6.0


async def test_at_most_eight_fetches_run_at_once(env):
    ca, mgr = env
    ca.gate = asyncio.Event()
    idents = [Identity.parse(f"spiffe://cluster.local/ns/n/sa/s{i}") for i in range(20)]
    tasks = [asyncio.create_task(mgr.fetch(i)) for i in idents]
    await until(lambda: ca.running == MAX_CONCURRENT_FETCHES, what="the first fetches at the CA")
    assert not any(t.done() for t in tasks)      # the other 12 wait for a slot
    ca.gate.set()
    certs = await asyncio.gather(*tasks)
    assert [c.identity for c in certs] == idents
    assert ca.max_running == MAX_CONCURRENT_FETCHES


async def test_realtime_goes_before_warmup(env):
    ca, mgr = env
    ca.gate = asyncio.Event()
    busy = [Identity.parse(f"spiffe://cluster.local/ns/n/sa/busy{i}") for i in range(8)]
    for i in busy:
        mgr.prefetch(i)
    await until(lambda: ca.running == len(busy), what="the busy prefetches at the CA")
    warm = [Identity.parse(f"spiffe://cluster.local/ns/n/sa/w{i}") for i in range(3)]
    for i in warm:
        mgr.prefetch(i)
    urgent = asyncio.create_task(mgr.fetch(A))
    await until(lambda: A in mgr._entries, what="the urgent fetch queued")
    ca.gate.set()
    await urgent
    await mgr.idle()
    assert ca.calls.index(A) == len(busy)  # first after the 8 already running


async def test_prefetch_upgraded_to_realtime(env):
    ca, mgr = env
    mgr.prefetch(A)
    assert mgr._entries[A].queued == Priority.WARMUP
    cert = await mgr.fetch(A)
    await mgr.idle()
    assert cert.identity == A and ca.calls == [A]


async def test_forget_and_retain(env):
    ca, mgr = env
    await mgr.fetch(A)
    mgr.retain([B])
    await mgr.idle()
    assert [r["identity"] for r in mgr.list()] == [B.uri]
    assert mgr.get(B) is not None and mgr.get(A) is None
    mgr.forget(B)
    assert mgr.list() == []


async def test_forget_while_in_flight_fails_the_waiter(env):
    ca, mgr = env
    ca.gate = asyncio.Event()
    t = asyncio.create_task(mgr.fetch(A))
    await until(lambda: ca.running == 1, what="the fetch in flight at the CA")
    mgr.forget(A)
    ca.gate.set()
    with pytest.raises(CertUnavailable):
        await t
    await mgr.idle()
    assert mgr.list() == []


async def test_new_cert_gives_new_contexts(env, clock):
    ca, mgr = env
    await mgr.fetch(A)
    c1, s1 = mgr.client_context(A), mgr.server_context(A)
    assert c1 is mgr.client_context(A)       # cached per certificate
    clock.now = T0 + 0.6 * DAY
    mgr.tick()
    await mgr.idle()
    assert mgr.client_context(A) is not c1 and mgr.server_context(A) is not s1


async def test_trust_bundle_update_applies_to_every_identity(env):
    ca, mgr = env
    await mgr.fetch(A)
    await mgr.fetch(B)
    ctx = mgr.server_context(A)
    extra = CertificateAuthority.self_signed().roots[0]
    ca.ca.roots = (*ca.ca.roots, extra)
    await mgr.refresh_trust_bundle()
    assert len(mgr.roots) == 2
    assert all(len(mgr.get(i).roots) == 2 for i in (A, B))
    new_ctx = mgr.server_context(A)
    assert new_ctx is not ctx and len(new_ctx.get_ca_certs()) == 2


async def test_ca_answer_for_another_identity_is_refused(env):
    ca, mgr = env
    async def wrong(identity, csr, ttl=None):
        # a CA bug: the CSR's key, but certified for another identity
        key = x509.load_pem_x509_csr(csr.encode()).public_key()
        s = ca.ca._issue(key, B, ttl=dt.timedelta(hours=1))
        return SignResponse(cert_chain=tuple(load_pem_certs(s.cert_chain[0])),
                            trust_bundle=tuple(ca.ca.roots))

    ca.sign = wrong
    with pytest.raises(CertUnavailable) as e:
        await mgr.fetch(A)
    assert "instead of" in str(e.value)


async def test_admin_section_shape(env):
    ca, mgr = env
    cert = await mgr.fetch(A)
    section = mgr.admin_section()
    assert section["node"] == "node-1"
    item = section["certificates"][0]
    assert item["identity"] == A.uri and item["state"] == CertState.AVAILABLE.value
    assert item["certChain"][0]["serialNumber"] == str(cert.leaf.serial_number)
    assert len(item["rootCerts"]) == 1


async def test_background_scheduler_renews_when_due():
    import time as _time
    offset = [0.0]
    clock = lambda: _time.time() + offset[0]  # noqa: E731
    ca = FakeCA(clock)
    mgr = CertManager(ca, clock=clock, background=True)
    try:
        first = await mgr.fetch(A)
        # move to 0.2 s before the half-life: the scheduler must wake up by itself
        offset[0] = refresh_time(first) - _time.time() - 0.2
        mgr._wake.set()
        deadline = _time.monotonic() + 5
        while mgr.get(A).serial == first.serial:
            assert _time.monotonic() < deadline, "no background renewal"
            await asyncio.sleep(0.02)
        assert len(ca.calls) == 2
    finally:
        await mgr.close()


async def test_close_ends_the_scheduler_woken_in_the_same_turn():
    # close() cancels the scheduler in the loop turn where a renewal has just
    # woken it; the cancel must end it (wait_for on 3.11 swallowed it, and
    # close() then waited for the scheduler forever).
    import time as _time
    mgr = CertManager(FakeCA(_time.time), clock=_time.time, background=True)
    await mgr.fetch(A)
    await mgr.idle()
    scheduler = next(t for t in mgr._tasks if t.get_name() == "cert-scheduler")
    await until(lambda: not mgr._wake.is_set())   # cleared right before it parks
    mgr._wake.set()
    await asyncio.wait_for(mgr.close(), 10)
    assert scheduler.cancelled()


async def test_without_a_node_store_no_store_error_is_logged(env, caplog):
    ca, mgr = env
    await mgr.fetch(A)
    ca.fail = CaError(503, "unavailable", "CA down")
    mgr._entries[A].refresh_at = 0
    mgr.tick()
    await mgr.idle()
    assert ca.calls == [A, A]
    assert not [r for r in caplog.records if "store" in r.getMessage()]
