"""core.pipe.pipe over in-memory endpoints: half-close and reset semantics."""

import asyncio

import pytest

from shoal.core.pipe import PipeReset, pipe
from tests.helpers.wait import until


class FakeEnd:
    """An endpoint fed from a script; records what is written to it."""

    def __init__(self, script):
        self.script = list(script)     # bytes, b"" (EOF), or an exception
        self.written = bytearray()
        self.eof = False
        self.aborted = False
        self.closed = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def read(self, n):
        await self.gate.wait()
        await asyncio.sleep(0)
        if not self.script:
            await asyncio.Event().wait()     # nothing more, never EOF
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def write(self, data):
        assert not self.eof, "write after write_eof"
        self.written += data

    def write_eof(self):
        self.eof = True

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True


async def test_both_directions_copied_and_half_closed():
    a = FakeEnd([b"hello ", b"world", b""])
    b = FakeEnd([b"answer", b""])
    assert await pipe(a, b) == (11, 6)
    assert bytes(b.written) == b"hello world" and b.eof
    assert bytes(a.written) == b"answer" and a.eof
    assert a.closed and b.closed and not a.aborted


async def test_half_close_keeps_other_direction_open():
    a = FakeEnd([b"req", b""])               # a finishes first
    b = FakeEnd([b"r1", b"r2", b""])
    b.gate.clear()
    task = asyncio.ensure_future(pipe(a, b))
    await until(lambda: b.eof, what="a's FIN forwarded to b")
    assert not task.done()                   # the other direction still runs
    b.gate.set()
    assert await task == (3, 4)
    assert bytes(a.written) == b"r1r2"


async def test_reset_on_one_side_resets_both():
    a = FakeEnd([b"x", ConnectionResetError("peer reset")])
    b = FakeEnd([])
    with pytest.raises(PipeReset):
        await pipe(a, b)
    assert a.aborted and b.aborted


async def test_stream_end_tuple_is_wrapped():
    reader = asyncio.StreamReader()
    reader.feed_data(b"abc")
    reader.feed_eof()

    class W:
        def __init__(self):
            self.buf, self.eof = b"", False
            self.transport = None

        def write(self, d):
            self.buf += d

        async def drain(self):
            pass

        def is_closing(self):
            return False

        def can_write_eof(self):
            return True

        def write_eof(self):
            self.eof = True

        def close(self):
            pass
    w = W()
    b = FakeEnd([b"zz", b""])
    assert await pipe((reader, w), b) == (3, 2)
    assert w.buf == b"zz" and w.eof and bytes(b.written) == b"abc"


class MemoryTransport:
    """What a TcpEnd writes to; `closing` after close/abort."""

    def __init__(self):
        self.out = bytearray()
        self.eof = self.closing = False

    def write(self, data):
        self.out += data

    def write_eof(self):
        self.eof = True

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    abort = close

    def get_extra_info(self, name, default=None):
        return default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def _tcp_end():
    from shoal.core.pipe import TcpEnd
    end, transport = TcpEnd(), MemoryTransport()
    end.connection_made(transport)
    return end, transport


async def test_tcp_ends_deliver_directly_and_queue_in_order_under_backpressure():
    """Data arriving while the other side can take it is written at once,
    inside data_received (no task wakeup); while the other side is paused it
    queues, and later arrivals queue behind it: the order never changes.
    pipe()'s byte counts include both paths."""
    a, ta = _tcp_end()
    b, tb = _tcp_end()
    task = asyncio.ensure_future(pipe(a, b))
    await until(lambda: a._sink is not None, what="pipe wired the sinks")
    a.data_received(b"one ")
    assert tb.out == b"one "                       # synchronously: the direct path
    b.pause_writing()
    a.data_received(b"two ")                       # refused: b must not be written now
    a.data_received(b"three ")                     # queued behind "two", not written first
    assert tb.out == b"one "
    await until(lambda: tb.out == b"one two three ", what="the queued path wrote both")
    a.data_received(b"four ")                      # b still paused, a write waits: queued
    assert tb.out == b"one two three "
    b.resume_writing()
    await until(lambda: tb.out == b"one two three four ", what="the queue drained in order")
    a.data_received(b"five")
    assert tb.out == b"one two three four five"    # direct again
    b.data_received(b"back")
    assert ta.out == b"back"
    a.eof_received()
    b.eof_received()
    assert await task == (len(b"one two three four five"), len(b"back"))
    assert tb.eof and ta.eof
    assert a._sink is None and b._sink is None     # unwired once the pipe ended
