"""The fast data path over real TLS: large DATA bodies are decrypted straight
into their own buffers, and the bytes stay exact."""

import os

import pytest

from shoal.core.hbone.connection import HboneConnection
from shoal.core.hbone.settings import MIB
from tests.helpers.hbone_net import HbonePair, digest, roundtrip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_large_bodies_take_the_direct_path_byte_exact(monkeypatch):
    calls = []
    original = HboneConnection.received_into

    def counting(self, n):
        calls.append(n)
        return original(self, n)
    monkeypatch.setattr(HboneConnection, "received_into", counting)
    async with HbonePair() as rig:
        stream = await rig.open()
        payload = os.urandom(4 * MIB + 5)
        got = await roundtrip(stream, payload)
        assert digest(got) == digest(payload)
    # both directions carry 4 MiB in DATA frames of up to 256 KiB: most of it
    # must have been written straight into body buffers, not copied
    assert sum(calls) > 4 * MIB

