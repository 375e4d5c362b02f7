"""The fast data path over real TLS: large DATA bodies are decrypted straight
into their own buffers, and the bytes stay exact."""

import os

import pytest

from shoal.core.hbone import fastpath
from shoal.core.hbone.connection import HboneConnection
from shoal.core.hbone.settings import MIB
from tests.helpers.hbone_net import HbonePair, digest, roundtrip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_large_bodies_take_the_direct_path_byte_exact(monkeypatch):
    calls, relays = [], []
    original = HboneConnection.received_into
    make_relay = HboneConnection.native_relay

    def counting(self, n):
        calls.append(n)
        return original(self, n)

    def keeping(self, sslsock, raw):
        relay = make_relay(self, sslsock, raw)
        relays.append(relay)
        return relay
    monkeypatch.setattr(HboneConnection, "received_into", counting)
    monkeypatch.setattr(HboneConnection, "native_relay", keeping)
    async with HbonePair() as rig:
        stream = await rig.open()
        payload = os.urandom(4 * MIB + 5)
        got = await roundtrip(stream, payload)
        assert digest(got) == digest(payload)
    # Both directions carry 4 MiB in DATA frames of 64 KiB (the client's
    # writes) or up to 256 KiB (the server's pipe): most of it must have been
    # written straight into body buffers, or, where the server pipes the
    # tunnel to its plain socket with the C module on, relayed by the C
    # relay (core/hbone/native/relay.c), not copied through h2's buffer.
    relayed = sum(r.frames for r in relays if r is not None)
    if fastpath.native is None:
        assert relayed == 0 and sum(calls) > 4 * MIB
    else:
        assert relayed > 4 * MIB // (64 * 1024) // 2
        assert sum(calls) > 2 * MIB
