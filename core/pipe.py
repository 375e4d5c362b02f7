"""Copy bytes both ways between two byte streams, half-close and reset aware.

    a_to_b, b_to_a = await core.pipe.pipe(a, b)

An endpoint is the `Endpoint` Protocol below: `async read(n) -> bytes` (b""
at EOF), `async write(data)` (returns once the data is accepted within the
endpoint's buffer limit), `write_eof()`, `abort()`, `close()` and `at_eof`;
`HboneStream` is one, `TcpEnd` (below) is the fast plaintext one, and an
asyncio `(StreamReader, StreamWriter)` pair is wrapped in `StreamEnd`
automatically.

Semantics (what a TCP proxy must preserve):
- EOF on one side becomes a half-close on the other (FIN ↔ END_STREAM); the
  other direction keeps flowing until it ends too.
- An error/reset on either side resets both (RST ↔ RST_STREAM): `abort()`
  on a TCP endpoint sends a real RST (SO_LINGER 0).
- Bounded: each direction holds at most one read (READ_SIZE) in flight; a
  writer that does not drain stops that direction's reads.

Direct delivery: an endpoint that can push (`set_sink`) hands each arriving
chunk straight to the other endpoint's `write_nowait` while nothing is queued
and that endpoint can take it without waiting (window, drain, no write in
progress); the copy tasks then wake only for what had to queue, for EOF and
for errors. A 1 KB request through a ztunnel thus costs no task wakeup
(docs/bench/profiles/). Whatever `write_nowait` refuses takes the queued
path, in order. A TcpEnd piped into an endpoint that can tell its send room
(HboneStream.send_room) reads no more than that at a time (SizedReads; the
C TcpPump on uvloop), so a read fits and needs no copy task either.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Protocol

from shoal.core.hbone import fastpath

# One read is at most this much: big reads amortise per-call Python costs.
READ_SIZE = 256 * 1024
# A TcpEnd stops reading its socket while this much is queued and unread.
READ_HIGH_WATER = 512 * 1024
# Writes return once the transport has less than this queued (asyncio default 64 KiB).
WRITE_HIGH_WATER = 1024 * 1024

_LINGER_RST = struct.pack("ii", 1, 0)


class Endpoint(Protocol):
    """One side of a byte stream (TCP connection, HBONE tunnel, ...)."""

    async def read(self, n: int = READ_SIZE) -> bytes:
        """Up to `n` bytes; b"" once the peer ended its side.

        Raises:
            ConnectionError (or the transport's error): the stream was reset.
        """
        ...

    async def write(self, data: bytes) -> None:
        """Queue `data`; returns once the endpoint's buffer is under its limit.

        Raises:
            ConnectionError: the stream is closed or was reset.
        """
        ...

    # Optional, for direct delivery (both or neither):
    #   set_sink(fn | None): call fn(data) -> bool with arriving data while
    #     nothing is queued; True means fn took it (counts as read).
    #   write_nowait(data) -> bool: take all of `data` now, or nothing (False)
    #     if it would have to wait or the endpoint failed (write() then says why).
    # Optional, backpressure without a copy task (a source that can stop
    # reading, a destination that can tell it when to start again):
    #   hold_reading() / release_reading(): stop / restart reading the peer.
    #   write_held(data, source) -> bool: write_nowait, and also while the
    #     endpoint's buffer is over its limit: then `data` goes out all the
    #     same; `source` is held while the endpoint could not take its next
    #     read at once (buffer over its limit, flow-control window short).
    #   send_room() -> int: the most write_held may take now in one piece
    #     (0: none, or unknown); a source reads no more than that (SizedReads).

    def write_eof(self) -> None:
        """Half-close: the peer reads EOF after what was written."""
        ...

    def abort(self) -> None:
        """Reset (RST / RST_STREAM): unread and unsent bytes are dropped."""
        ...

    def close(self) -> None:
        """Release the stream (gracefully when both sides ended)."""
        ...

    @property
    def at_eof(self) -> bool:
        """True once the peer ended its side and every received byte was read
        (an idle keep-alive connection in this state is dead)."""
        ...


class PipeReset(ConnectionError):
    """One side of a pipe was reset; both sides were aborted."""


def abort_with_rst(transport: asyncio.WriteTransport) -> None:
    """Close a TCP transport with RST instead of FIN (SO_LINGER 0)."""
    if transport.is_closing():
        transport.abort()
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except (OSError, ValueError):     # already closed underneath
            pass
    transport.abort()


# transport, _drain_waiter, bytes_written and _can_write as C struct fields
# (core/hbone/native/flow.c) when the C module loads: the C relay checks
# write_nowait's conditions and counts bytes_written per DATA frame by
# pointer. (mypy checks against the Python stand-in.)
if TYPE_CHECKING:
    _PlainEndFields = fastpath.PythonFields
else:
    _PlainEndFields = fastpath.fields_base("PlainEndFields")


class TcpEnd(_PlainEndFields, asyncio.Protocol):
    """A plaintext TCP connection as a pipe endpoint, with no StreamReader copy.

    Use as the protocol of `loop.create_connection` / `create_server`, or via
    `connect_tcp()`. `closed` resolves when the transport is gone.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._eof = False
        self._error: Exception | None = None
        self._paused = False              # reading stopped: READ_HIGH_WATER queued
        self._held = False                # reading stopped: hold_reading (the sink's backpressure)
        self._read_waiter: asyncio.Future | None = None
        self._drain_waiter: asyncio.Future | None = None
        self._can_write = True
        self._sink = None                 # set_sink: where arriving data goes directly
        # Each read sized to what the sink may send now (a SizedReads reads
        # for it): write_held holds it for the window only when none is left.
        self.sized_reads = False
        self.bytes_written = 0            # handed to the transport (write, write_nowait)
        self.made: asyncio.Future = self.loop.create_future()
        self.closed: asyncio.Future = self.loop.create_future()

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if not self.made.done():
            self.made.set_result(self)

    def data_received(self, data: bytes) -> None:
        # While piped, the transport calls the C TcpPump (set_sink) instead,
        # which does exactly this.
        sink = self._sink
        if sink is not None and not self._chunks and sink(data):
            self._taken(len(data))
            return
        self._queue(data)

    def _queue(self, data: bytes) -> None:
        """Keep `data` for read(); stop reading at READ_HIGH_WATER."""
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued >= READ_HIGH_WATER and not self._paused:
            self._paused = True
            assert self.transport is not None     # data only comes once connected
            if not self._held:
                self.transport.pause_reading()
        self._wake()

    def hold_reading(self) -> bool:
        """Stop reading the socket until release_reading() (the sink's
        destination is over its buffer limit). True if it was not held yet."""
        if self._held:
            return False
        self._held = True
        t = self.transport
        if not self._paused and t is not None and not t.is_closing():
            t.pause_reading()
        return True

    def release_reading(self) -> None:
        """Read again (unless READ_HIGH_WATER bytes still wait for read())."""
        if not self._held:
            return
        self._held = False
        t = self.transport
        if not self._paused and t is not None and not t.is_closing():
            t.resume_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True          # keep the write side open: half-close

    def connection_lost(self, exc) -> None:
        if exc is not None and self._error is None:
            self._error = exc if isinstance(exc, ConnectionError) else ConnectionResetError(str(exc))
        self._eof = True
        self._can_write = True
        self._wake()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._can_write = False

    def resume_writing(self) -> None:
        self._can_write = True
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake(self) -> None:
        w = self._read_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # The attribute `_taken` adds to (a subclass's count of bytes read), or
    # None: the C TcpPump then counts without calling `_taken`.
    taken_counter: str | None = None

    def _taken(self, n: int) -> None:
        """`n` bytes went to the sink without a read() (counted in `taken_counter`)."""
        name = self.taken_counter
        if name is not None:
            setattr(self, name, getattr(self, name) + n)

    # endpoint interface
    def set_sink(self, sink) -> None:
        self._sink = sink
        self._read_into(sink)

    def _read_into(self, sink) -> None:
        """While piped, the transport's protocol reads for this end: a C
        TcpPump doing what data_received does (core/hbone/native/plain.c),
        or without the C module, if the sink can tell its send room, a
        SizedReads; self again after."""
        transport, native = self.transport, fastpath.native
        self.sized_reads = False
        if (transport is None or not hasattr(transport, "set_protocol")
                or type(self).data_received is not TcpEnd.data_received):
            return               # a subclass that reads its own way
        current = transport.get_protocol()
        if current is not self and getattr(current, "end", None) is not self:
            return               # someone else's protocol now: not ours to replace
        reader: Any = None            # a TcpPump or a SizedReads
        if sink is not None and native is not None:
            taken = None if type(self)._taken is TcpEnd._taken else self._taken
            reader = native.TcpPump(self, sink, self._chunks, taken, self.taken_counter)
        elif sink is not None and getattr(sink, "send_room", None) is not None:
            reader = SizedReads(self, sink.send_room)
            self.sized_reads = True
        if reader is not None or current is not self:
            transport.set_protocol(reader if reader is not None else self)

    def write_nowait(self, data) -> bool:
        t = self.transport
        if t is None or not self._can_write or self._drain_waiter is not None or t.is_closing():
            return False
        t.write(data)
        self.bytes_written += len(data)
        return True

    async def read(self, n: int = READ_SIZE) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._read_waiter = self.loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        if len(self._chunks) == 1 or len(self._chunks[0]) >= n:
            data = self._chunks.popleft()
        else:
            parts, size = [], 0
            while self._chunks and size + len(self._chunks[0]) <= n:
                part = self._chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts) if parts else self._chunks.popleft()
        if len(data) > n:
            self._chunks.appendleft(data[n:])
            data = data[:n]
        self._queued -= len(data)
        if self._paused and self._queued < READ_HIGH_WATER // 2:
            self._paused = False
            assert self.transport is not None     # paused only once connected
            if not self._held and not self.transport.is_closing():
                self.transport.resume_reading()
        return data

    async def write(self, data) -> None:
        if self.transport is None or self.transport.is_closing():
            raise self._error or ConnectionResetError("connection closed")
        self.transport.write(data)
        if not self._can_write:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
            if self._error is not None:
                raise self._error
        self.bytes_written += len(data)

    def write_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write_eof()
            except (OSError, RuntimeError):
                pass

    def abort(self) -> None:
        if self.transport is not None:
            abort_with_rst(self.transport)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks


_read_buffers = threading.local()


def _read_buffer() -> memoryview:
    """This thread's read buffer (READ_SIZE), lent to one read at a time:
    a loop's get_buffer, recv_into and buffer_updated run back to back in
    its thread, and buffer_updated copies the bytes out before it returns.
    Per thread, not per process: recv_into runs without the GIL."""
    view = getattr(_read_buffers, "view", None)
    if view is None:
        view = _read_buffers.view = memoryview(bytearray(READ_SIZE))
    return view


class SizedReads(asyncio.BufferedProtocol):
    """A piped TcpEnd's protocol when the sink can tell its send room and
    the C TcpPump is not there (SHOAL_NATIVE=0): each read is sized to what
    the sink may send now, so it fits and the sink holds the end for the
    window only once none is left; a peer that sends WINDOW_UPDATE late
    (RFC 9113 leaves it to the receiver) then still gets the window used
    up (docs/hbone.md, backpressure). The bytes go the way data_received
    takes them; every other callback is the end's own.

    `room()`: the sink's send_room (0: a whole READ_SIZE read)."""

    def __init__(self, end: TcpEnd, room: Callable[[], int]) -> None:
        self.end, self.room = end, room
        self._view = _read_buffer()

    def get_buffer(self, sizehint: int) -> memoryview:
        # sizehint is the loop's suggestion; what one read may take is ours.
        # A new view each time (as the C TcpPump's): a caller's release()
        # cannot spoil the next read's.
        size = self.room()
        return self._view[:size if 0 < size < READ_SIZE else READ_SIZE]

    def buffer_updated(self, nbytes: int) -> None:
        self.end.data_received(bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        return self.end.eof_received()

    def connection_lost(self, exc) -> None:
        self.end.connection_lost(exc)

    def pause_writing(self) -> None:
        self.end.pause_writing()

    def resume_writing(self) -> None:
        self.end.resume_writing()


class StreamEnd:
    """An asyncio (StreamReader, StreamWriter) pair as a pipe endpoint."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, n: int = READ_SIZE) -> bytes:
        return await self.reader.read(n)

    async def write(self, data) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def write_eof(self) -> None:
        if not self.writer.is_closing() and self.writer.can_write_eof():
            try:
                self.writer.write_eof()
            except (OSError, RuntimeError):
                pass

    def abort(self) -> None:
        abort_with_rst(self.writer.transport)

    def close(self) -> None:
        self.writer.close()

    @property
    def at_eof(self) -> bool:
        return self.reader.at_eof()


def endpoint(obj) -> Endpoint:
    """`obj` as a pipe endpoint (wraps a (reader, writer) tuple)."""
    if isinstance(obj, tuple):
        return StreamEnd(*obj)
    return obj


async def connect_tcp(host: str, port: int, *, sock: socket.socket | None = None,
                      timeout: float = 10.0) -> TcpEnd:
    """Open a plaintext TCP connection as a TcpEnd (optionally on a prepared socket)."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
        _, proto = await loop.create_connection(TcpEnd, sock=sock)
    else:
        async with asyncio.timeout(timeout):
            _, proto = await loop.create_connection(TcpEnd, host, port)
    return proto


async def _copy(src, dst) -> int:
    total = 0
    while True:
        data = await src.read(READ_SIZE)
        if not data:
            dst.write_eof()
            return total
        try:
            await dst.write(data)
        except ConnectionError:
            # The destination is gone (closed or reset). That ends this
            # direction only: the other one still delivers what the destination
            # sent before closing, and a reset shows up there as a read error.
            # (Aborting here would RST the source and lose those last bytes.)
            return total
        total += len(data)


async def pipe(a, b) -> tuple[int, int]:
    """Copy a→b and b→a until both directions ended.

    Returns:
        (bytes copied a→b, bytes copied b→a).
    Raises:
        PipeReset: one side was reset or failed; both were aborted (RST).
    """
    a, b = endpoint(a), endpoint(b)
    direct = [end for end in (a, b) if hasattr(end, "set_sink")]
    pushed = [0, 0]                       # bytes delivered directly a→b, b→a
    if len(direct) == 2:
        a.set_sink(_counted(b, pushed, 0, a))
        b.set_sink(_counted(a, pushed, 1, b))
    ab = asyncio.ensure_future(_copy(a, b))
    ba = asyncio.ensure_future(_copy(b, a))
    try:
        await asyncio.wait((ab, ba), return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        ab.cancel()
        ba.cancel()
        a.abort()
        b.abort()
        raise
    finally:
        for end in direct:
            end.set_sink(None)
    failed = next((t for t in (ab, ba) if t.done() and t.exception() is not None), None)
    if failed is not None:
        for t in (ab, ba):
            t.cancel()
        a.abort()
        b.abort()
        await asyncio.gather(ab, ba, return_exceptions=True)
        raise PipeReset(str(failed.exception()) or type(failed.exception()).__name__) \
            from failed.exception()
    for end in (a, b):
        close = getattr(end, "close", None)
        if close is not None:
            close()
    return ab.result() + pushed[0], ba.result() + pushed[1]


def _counted(end, pushed: list, i: int, source=None):
    """The sink `source` pushes into `end` with: True when `end` took the
    data (counted in pushed[i]). Where `source` can be held and `end` can
    hold it, data goes out even while `end` is over its buffer limit and
    `source` stops reading until it drains, so backpressure needs no copy
    task (a held source's next read waits in the kernel, not in a queue)."""
    hold = source if hasattr(end, "write_held") and hasattr(source, "hold_reading") else None
    send = end.write_nowait if hold is None else functools.partial(end.write_held, source=hold)

    def push(data) -> bool:
        if send(data):
            pushed[i] += len(data)
            return True
        return False
    room = getattr(end, "send_room", None) if hold is not None else None
    if room is not None:
        # The Python path sizes the source's reads by it (SizedReads).
        push.send_room = room                      # type: ignore[attr-defined]
    native_sink = getattr(end, "native_sink", None)
    if native_sink is not None:
        # The same push with its common case in C (HboneStream: core/hbone/
        # native/send.c), or None where that does not apply.
        sender = native_sink(push, pushed, i, hold)
        if sender is not None:
            return sender
    if type(end).write_nowait is TcpEnd.write_nowait:
        # What push does, for the C receive path of HBONE (core/hbone/native/
        # relay.c): it checks write_nowait's conditions on `end` and does
        # push's work itself, without calling push.
        push.native_target = (end, pushed, i)      # type: ignore[attr-defined]
    return push
