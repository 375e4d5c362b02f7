"""The node certificate store: a real memfd shared with real forked processes."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from shoal.controlplane.authority import CertificateAuthority
from shoal.core.identity.certs import WorkloadCert, csr_pem, load_pem_certs, make_csr
from shoal.core.identity.manager import CertManager
from shoal.core.identity.spiffe import Identity
from shoal.core.identity.store import ENV_FD, CertStore

A = Identity.parse("spiffe://cluster.local/ns/a/sa/a")


@pytest.fixture
def ca():
    return CertificateAuthority.self_signed()


@pytest.fixture
def store(monkeypatch):
    monkeypatch.delenv(ENV_FD, raising=False)
    s = CertStore.create()
    yield s
    s.close()


def issue(ca, ident=A) -> WorkloadCert:
    key, csr = make_csr(ident)
    signed = ca.sign_csr(csr_pem(csr), ident.uri)
    return WorkloadCert.build(key, load_pem_certs(signed.cert_chain[0])[0], (), tuple(ca.roots))


def in_child(fn) -> bytes:
    """Run fn() in a forked child (it inherits the store); its bytes come back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.write(w, fn())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out


def test_a_forked_process_reads_the_certificate_and_key(store, ca):
    cert = issue(ca)
    store.put(cert)
    got = in_child(lambda: CertStore.inherited().get(A.uri).key_pem())
    assert got == cert.key_pem()
    assert CertStore.inherited().get(A.uri).serial == cert.serial


def test_the_store_is_anonymous_memory_not_a_file(store):
    target = os.readlink(f"/proc/self/fd/{store.fd}")
    assert target.startswith("/memfd:shoal-certs")


def test_one_renewal_per_node_through_the_lease(store, ca):
    old = issue(ca)
    store.put(old)
    newer_than = old.not_after.timestamp()
    assert store.claim(A.uri, newer_than) is None                 # we renew
    other = in_child(lambda: repr(CertStore.inherited().claim(A.uri, newer_than)).encode())
    assert other.startswith(b"Busy(")                             # the other process waits
    time.sleep(1.1)   # certificate times have a 1 s resolution: make the renewal newer
    store.put(issue(ca))
    adopted = in_child(lambda: CertStore.inherited().claim(A.uri, newer_than).serial.encode())
    assert adopted.decode() == store.get(A.uri).serial != old.serial


def test_a_dead_processes_lease_does_not_block(store):
    in_child(lambda: repr(CertStore.inherited().claim(A.uri, 0.0)).encode())
    assert store.claim(A.uri, 0.0) is None


def test_a_live_lease_expires(store):
    assert store.claim(A.uri, 0.0, now=1000.0) is None
    busy = in_child(lambda: repr(CertStore.inherited().claim(A.uri, 0.0, now=1001.0)).encode())
    late = in_child(lambda: repr(CertStore.inherited().claim(A.uri, 0.0, now=1000.0 + 60)).encode())
    assert busy.startswith(b"Busy(") and late == b"None"


class DownCA:
    """A CA that is down: every request fails (counts them)."""

    def __init__(self):
        self.calls = 0

    async def sign(self, identity, csr, ttl=None):
        self.calls += 1
        raise OSError("CA down")

    async def trust_bundle(self):
        raise OSError("CA down")


def test_a_new_manager_starts_on_the_stored_certificate_with_the_ca_down(store, ca):
    cert = issue(ca)
    store.put(cert)
    down = DownCA()

    async def main():
        mgr = CertManager(down, store=CertStore.inherited())
        try:
            got = await asyncio.wait_for(mgr.fetch(A), 1)
            return got, mgr.server_context(A)
        finally:
            await mgr.close()
    got, ctx = asyncio.run(main())
    assert got.serial == cert.serial and ctx is not None and down.calls == 0
