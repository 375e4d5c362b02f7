"""waypoint.downstream.close_stream: FIN first, linger, then release (no reset
racing the last bytes)."""

import asyncio

from shoal.waypoint import downstream


class FakeStream:
    def __init__(self, reads, hang=False):
        self.calls = []
        self.reads = list(reads)
        self.hang = hang

    def write_eof(self):
        self.calls.append("write_eof")

    async def read(self, n):
        self.calls.append("read")
        if self.reads:
            return self.reads.pop(0)
        if self.hang:
            await asyncio.sleep(3600)
        return b""

    def close(self):
        self.calls.append("close")


def test_fin_then_drain_until_the_client_ends_then_close():
    s = FakeStream([b"late bytes", b"more"])
    asyncio.run(downstream.close_stream(s))
    assert s.calls == ["write_eof", "read", "read", "read", "close"]


def test_a_client_that_never_ends_is_released_after_the_linger(monkeypatch):
    monkeypatch.setattr(downstream, "LINGER_S", 0.05)
    s = FakeStream([], hang=True)
    asyncio.run(asyncio.wait_for(downstream.close_stream(s), 2))
    assert s.calls[0] == "write_eof" and s.calls[-1] == "close"


def test_errors_of_a_dead_stream_still_close_it():
    class Dead(FakeStream):
        def write_eof(self):
            raise ConnectionResetError("gone")
    s = Dead([])
    asyncio.run(downstream.close_stream(s))
    assert s.calls == ["close"]
