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
