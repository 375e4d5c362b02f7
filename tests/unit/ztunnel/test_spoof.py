"""When the in-pod ztunnel spoofs the client address toward the app."""

from __future__ import annotations

import asyncio
import logging
import socket

from shoal.ztunnel.spoof import SpoofState, spoofable


def test_spoofable_addresses():
    assert spoofable("10.1.0.5", "10.1.0.9") == socket.AF_INET
    assert spoofable("fd00::5", "fd00::9") == socket.AF_INET6
    assert spoofable("", "10.1.0.9") is None                # no client known
    assert spoofable("10.1.0.9", "10.1.0.9") is None        # the pod itself
    assert spoofable("127.0.0.1", "10.1.0.9") is None
    assert spoofable("0.0.0.0", "10.1.0.9") is None
    assert spoofable("fd00::5", "10.1.0.9") is None          # other family
    assert spoofable("not-an-ip", "10.1.0.9") is None


def test_routing_checked_once_shared_by_concurrent_connections():
    calls = []

    async def check(family):
        calls.append(family)
        await asyncio.sleep(0)
        return ""

    async def run():
        st = SpoofState(check, log=logging.getLogger("t"), pod="p")
        got = await asyncio.gather(*(st.source("10.1.0.9", f"10.2.0.{i}") for i in range(1, 6)))
        assert got == [(f"10.2.0.{i}", 0) for i in range(1, 6)]
        assert await st.source("10.1.0.9", "10.1.0.9") is None
    asyncio.run(run())
    assert calls == [socket.AF_INET]


def test_missing_routing_falls_back_and_logs_once(caplog):
    async def check(family):
        return "no local route in table 100"

    async def run():
        st = SpoofState(check, log=logging.getLogger("t.spoof"), pod="Kubernetes//Pod/a/b")
        assert await st.source("10.1.0.9", "10.2.0.1") is None
        assert await st.source("10.1.0.9", "10.2.0.2") is None
        st.failed("EPERM")
        assert await st.source("fd00::9", "fd00::1") is None    # every family off
    with caplog.at_level(logging.WARNING, logger="t.spoof"):
        asyncio.run(run())
    warnings = [r for r in caplog.records if "source spoofing unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_a_crashing_check_means_no_spoofing():
    async def check(family):
        raise RuntimeError("boom")

    async def run():
        st = SpoofState(check, log=logging.getLogger("t"), pod="p")
        assert await st.source("10.1.0.9", "10.2.0.1") is None
    asyncio.run(run())


def test_dedicated_mode_never_spoofs():
    async def run():
        st = SpoofState(None, log=logging.getLogger("t"), pod="")
        assert await st.source("10.1.0.9", "10.2.0.1") is None
    asyncio.run(run())
