"""The Python path's reads of a piped TcpEnd are sized to the tunnel's send
window (core.pipe.SizedReads by HboneStream.send_room), as the C TcpPump's
are on uvloop (test_relay_differential's test_a_pumped_read_...): a read
always fits, so it is sent whole with nothing queued for the pipe's copy
task, and the TcpEnd is held for the window only once none is left. Held
with window left (the old rule, HOLD_SEND_WINDOW once an update is owed by
the half rule), a peer that updates later than at half waited for data the
held tunnel never sent (tests/integration/hbone/test_late_window_updates.py).

The harness is test_relay_differential's SendRun on its Python run: real
TLS 1.3 in memory, the server's stream queues what arrives, and the pushing
TcpEnd on a real socket pair is piped (set_sink) with the C module off.
Then test_pump's scripts through SizedReads against data_received.
"""

from __future__ import annotations

import asyncio

import pytest

from shoal.core.hbone import fastpath
from shoal.core.hbone.settings import HboneSettings
from shoal.core.hbone.stream import SIZED_HOLD_WINDOW
from shoal.core.pipe import READ_SIZE, SizedReads, TcpEnd
from shoal.ztunnel.proxy.inputs import CountingEnd
from tests.unit.hbone import test_pump
from tests.unit.hbone.test_relay_differential import FREE, HELD, SendRun, _sized_run, read_to_zero


class PipedSendRun(SendRun):
    """SendRun's Python run with its pushing TcpEnd piped: set_sink puts a
    SizedReads in as its transport's protocol, and pump_read reads through
    it, counting the bytes the push sent at once."""

    async def start(self, monkeypatch) -> None:
        await super().start(monkeypatch)       # which undid its own native = None
        monkeypatch.setattr(fastpath, "native", None)

    async def setup_push(self) -> None:
        await super().setup_push()
        self.src.set_sink(self.push)
        assert isinstance(self.reader(), SizedReads) and self.src.sized_reads

    def reader(self):
        return self.src.transport.get_protocol()

    def sent_count(self) -> int:
        return self.push_pushed[1]


def sized_run(monkeypatch, window: int = 100_000):
    return _sized_run(monkeypatch, window, PipedSendRun(False, HboneSettings()))


async def test_a_read_is_sized_to_the_window_sent_whole_and_held_only_at_zero(monkeypatch):
    run = await sized_run(monkeypatch)
    try:
        assert run.c.send_room() == 100_000 == run.c._core.send_window(run.c.stream_id)
        snap = read_to_zero(run, lambda n: n)                         # every byte at once
        assert run.c._held_for_window
        assert snap["read_size"] == READ_SIZE                         # none left: not sized
        assert snap["server_got"] == b"".join(bytes([n % 251]) * n
                                              for n in (30_000, 30_000, 40_000))
        snap = run.do(("read",))                                      # the WINDOW_UPDATE
        assert snap["held"] == FREE and 0 < snap["read_size"] <= 100_000
        assert snap["read_size"] == snap["windows"][1]
        assert SIZED_HOLD_WINDOW == 1
    finally:
        run.close()


async def test_a_read_is_at_most_one_frame_of_a_small_framed_peer(monkeypatch):
    run = await sized_run(monkeypatch)
    try:
        assert run.do(("max_frame", 16_384))["read_size"] == 16_384
        assert run.pump_read(16_384) == (16_384, 16_384)
        assert not run.src._chunks and run.do(("look",))["held"] == FREE
    finally:
        run.close()


async def test_a_sized_read_over_the_mark_is_held_for_the_mark_only(monkeypatch):
    """Over the transport's mark a sized read still goes out and the
    TcpEnd is held; the drain releases it though the window is short by the
    half rule: the next read is sized to it, so no update need come first."""
    run = await sized_run(monkeypatch)
    try:
        run.do(("pause",))
        assert run.pump_read(60_000) == (100_000, 60_000)
        assert run.do(("look",))["held"] == HELD and not run.c._held_for_window
        assert run.c._core.window_update_owed(run.c.stream_id)
        snap = run.do(("resume",))
        assert snap["held"] == FREE and snap["read_size"] == 40_000
    finally:
        run.close()


async def test_a_refused_read_queues_whole_as_data_received_queues_it(monkeypatch):
    """A read the push refuses (a write() in progress) queues for read()."""
    run = await sized_run(monkeypatch)
    try:
        run.do(("writing", True))
        assert run.pump_read(4096) == (100_000, 0)
        assert list(run.src._chunks) == [bytes([4096 % 251]) * 4096]
        assert run.src._queued == 4096
    finally:
        run.do(("writing", False))
        run.close()


async def test_unpiped_or_a_sink_without_room_the_end_reads_for_itself(monkeypatch):
    """set_sink(None) (the pipe ended) puts the TcpEnd back as its
    transport's protocol, and so does a sink that cannot tell its room (a
    TcpEnd's write_nowait): its reads are then unsized, as before."""
    run = await sized_run(monkeypatch)
    try:
        for sink in (None, lambda data: False):
            run.src.set_sink(sink)
            assert run.src.transport.get_protocol() is run.src and not run.src.sized_reads
    finally:
        run.close()


# -- everything else a TcpEnd does, read through SizedReads -------------------
#
# test_pump's scripts (a TcpEnd on a real socket pair, asyncio's loop and
# uvloop), the C module off: with a sink that can tell its room, the reads go
# through SizedReads; with one that cannot, data_received reads as before.
# Both must agree after every step.

class RoomSink(test_pump.Sink):
    """test_pump's sink with a send room (0: whole reads, as data_received's)."""

    room = 0

    def send_room(self) -> int:
        return self.room


class SizedRun(test_pump.Run):
    """`pump`: the sink has a send room, so SizedReads reads for the end."""

    def make_sink(self) -> test_pump.Sink:
        return RoomSink() if self.pump else test_pump.Sink()

    def set_sink(self, sink) -> None:
        saved = fastpath.native
        fastpath.native = None
        try:
            self.end.set_sink(sink)
        finally:
            fastpath.native = saved
        sized = self.pump and sink is not None
        assert isinstance(self.end.transport.get_protocol(), SizedReads) == sized
        assert self.end.sized_reads == sized


@pytest.mark.parametrize("loop", test_pump.LOOPS)
@pytest.mark.parametrize("kind, ops", [
    (TcpEnd, test_pump.TAKEN_REFUSED_OPS), (CountingEnd, test_pump.TAKEN_REFUSED_OPS),
    (CountingEnd, test_pump.HIGH_WATER_OPS), (CountingEnd, test_pump.CALLBACK_OPS),
    (CountingEnd, test_pump.FAIL_OPS)])
def test_sized_reads_deliver_as_data_received_does(loop, kind, ops):
    test_pump.compare(loop, kind, ops, SizedRun)


def test_a_small_room_splits_reads_and_keeps_every_byte_in_order():
    """A room of 100 bytes: 3 KB arrive in reads of at most 100 bytes, each
    taken, in order."""
    async def main():
        run = SizedRun(True, CountingEnd)
        await run.start()
        try:
            run.sink.room = 100
            calls = run.sink.calls
            await run.do(("send", 3 * test_pump.KB))
            assert run.sink.took == bytes(i % 251 for i in range(3 * test_pump.KB))
            assert run.sink.calls - calls >= 3 * test_pump.KB // 100
            assert run.end.bytes_read == 3 * test_pump.KB and not run.end._chunks
        finally:
            run.close()
    asyncio.run(main())
