"""HboneStream: one tunnel (one CONNECT stream) as an async byte stream.

The same interface as `core.pipe` endpoints: `read`, `write`, `write_eof`,
`abort`, `close`. Memory is bounded by HTTP/2 flow control: received bytes are
acknowledged to the peer only when `read()` hands them out, so at most one
stream window (4 MiB) waits here, and `write()` waits for send window and for
the TLS transport to drain below its high-water mark.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Protocol

from h2.errors import ErrorCodes

from shoal.core.hbone import fastpath
from shoal.core.hbone.errors import HboneError, LocalProtocolError, StreamResetError
from shoal.core.hbone.protocol import HboneClientProtocol, HboneServerProtocol
from shoal.core.hbone.settings import READ_SIZE, SEND_FRAME_SIZE

# A piped source (write_held) whose reads are sized to the send window
# (send_room: core.pipe's SizedReads, the C TcpPump on uvloop) is held for
# the window only once less than this, i.e. none, is left: its next read
# fits whatever is left, and with none left every peer owes a WINDOW_UPDATE
# (one that never updates an exhausted window deadlocks itself). Held with
# window left, a tunnel stalled on a peer that updates late: RFC 9113 leaves
# the timing to the receiver (Netty's windowUpdateRatio, Jetty's ratio: after
# 75% consumed, or only when exhausted). send.c has the same constant.
SIZED_HOLD_WINDOW = 1
# A source whose reads are not sized (asyncio's own loop with the C module:
# the TcpPump's data_received; a read the C Sender refused; a TcpEnd that
# reads its own way) stops reading once less send window than this is left:
# its next socket read (up to 256 KiB) would not fit, would be refused and
# queued, and the pipe's Python copy task would send the queue. Held, the
# bytes wait in the kernel until the window opens; so it is held for the
# window only when the peer owes a WINDOW_UPDATE
# (_HboneCore.window_update_owed): nghttpx's 64 KiB stream window is always
# short of this, and it updates only after 32 KiB consumed. That still
# assumes the peer updates once half a window is consumed: a later one can
# stall these sources.
HOLD_SEND_WINDOW = READ_SIZE


class StreamOwner(Protocol):
    """What a stream needs of the connection that carries it.

    `core.hbone.connection.HboneConnection` is the one implementation; the
    seam keeps the stream from importing the connection (which creates streams).
    """
    core: HboneClientProtocol | HboneServerProtocol   # the sans-IO HTTP/2 state
    loop: asyncio.AbstractEventLoop
    peer_identity: Any               # core.identity.Identity once the handshake is done
    can_write: asyncio.Event         # clear while the transport is above its high-water mark

    def flush(self) -> None:
        """Write what the core has queued."""

    def stream_done(self, stream: "HboneStream") -> None:
        """The stream finished: forget it (and close a draining connection)."""


# bytes_sent, bytes_received, _chunks, _sink, _error and _writing as C struct
# fields (core/hbone/native/flow.c) when the C module loads: the C data paths
# read and count them per DATA frame by pointer. (mypy checks against the
# Python stand-in.)
if TYPE_CHECKING:
    _TunnelFields = fastpath.PythonFields
else:
    _TunnelFields = fastpath.fields_base("TunnelFields")


class HboneStream(_TunnelFields):
    """A CONNECT tunnel. Created by `HbonePool.open()` or given to server handlers.

    Attributes:
        stream_id: the HTTP/2 stream id.
        authority: the CONNECT target `ip:port`.
        peer_identity: the SPIFFE identity of the other proxy (core.identity.Identity).
        response_headers: headers of the 200 (client side), e.g. `baggage`.
        bytes_sent / bytes_received: tunnel payload bytes, for metrics.
        opened_at: `time.monotonic()` when the stream was created (the pool
            tells short request tunnels from long ones by it).
    """

    def __init__(self, conn: StreamOwner, stream_id: int, authority: str) -> None:
        self._conn = conn
        self._core = conn.core
        self.stream_id = stream_id
        self.authority = authority
        self.peer_identity = conn.peer_identity
        self.response_headers: dict[str, str] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.opened_at = time.monotonic()
        self._chunks: deque = deque()
        self._eof = False
        self._error: HboneError | None = None
        self._read_waiter: asyncio.Future | None = None
        self._send_waiter: asyncio.Future | None = None
        self._writing = False              # a write() is sending (or waiting to)
        self._sink = None                  # set_sink (core.pipe): direct delivery
        self._held = None                  # the source write_held stopped reading
        self._held_for_window = False      # ... until a WINDOW_UPDATE (too, if over the mark)
        self._opened: asyncio.Future = conn.loop.create_future()
        self._done = False
        # Server: cancels the handler's work (authorization, upstream connect)
        # if the stream dies before it was answered; cleared once answered.
        # called (no arguments) once when the stream fails, e.g. a handler task's cancel
        self.on_fail: Callable[[], object] | None = None

    # -- called by the connection (wire side) -------------------------------

    def _feed(self, data: bytes, flow_controlled_length: int) -> None:
        sink = self._sink
        if sink is not None and not self._chunks and sink(data):
            # Consumed as read() would: the window reopens now (the
            # connection flushes after the events of this read).
            self.bytes_received += len(data)
            if flow_controlled_length:
                self._core.acknowledge(self.stream_id, flow_controlled_length)
            return
        self._chunks.append((data, flow_controlled_length))
        self._wake_reader()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake_reader()

    def _fail(self, error: HboneError) -> None:
        if self._error is None:
            self._error = error
        abandon, self.on_fail = self.on_fail, None
        if abandon is not None:
            abandon()
        if not self._opened.done():
            self._opened.set_exception(error)
            self._opened.exception()          # never "exception not retrieved"
        self._release_unread()
        self._wake_reader()
        self._wake_sender()
        self._release_held()
        self._finish()

    def _release_unread(self) -> None:
        # Bytes nobody will read still hold connection window: give it back,
        # or a few reset streams would stall every other stream on the connection.
        if self._chunks:
            unread = sum(fcl for _, fcl in self._chunks)
            self._chunks.clear()
            if unread:
                self._core.acknowledge(self.stream_id, unread)
                self._conn.flush()

    def _set_open(self, headers: dict[str, str]) -> None:
        self.response_headers = headers
        if not self._opened.done():
            self._opened.set_result(None)

    def _wake_reader(self) -> None:
        w = self._read_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_sender(self) -> None:
        w = self._send_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _window_opened(self) -> None:
        self._wake_sender()
        self._held_for_window = False
        self._release_held()

    def _hold(self, source, hold_window: int | None = None) -> None:
        """Stop `source` reading until the transport is under its mark and,
        if the window was short, a WINDOW_UPDATE came (the C Sender calls
        this too: send.c). `hold_window`: SIZED_HOLD_WINDOW after a read
        sized to the window (short: less than that left, i.e. none); None:
        reads of any size (short: the rule below)."""
        if self._held is not None or self._error is not None:
            return
        window = self._core.send_window(self.stream_id)
        if hold_window is not None:
            # The next read is sized to the window too: it fits whatever is
            # left, and none left is when every peer owes an update.
            short = window < hold_window
        else:
            # Held for a short window only if a WINDOW_UPDATE is owed: with
            # more than half of a small window left (a small read sent), the
            # peer may wait for more data before it sends one, and a held
            # source then never sends it (the tunnel stalled). Not held, a
            # read that does not fit takes the copy task, which waits for
            # the update with the window used up. (A peer that updates only
            # after more than half is consumed can still stall a source
            # whose reads are not sized: HOLD_SEND_WINDOW.)
            short = window < HOLD_SEND_WINDOW and self._core.window_update_owed(self.stream_id)
        if (short or not self._conn.can_write.is_set()) and source.hold_reading():
            self._held = source
            self._held_for_window = short

    def _release_held(self, force: bool = False) -> None:
        """Let the held source read again once what held it is over: the
        transport drained (resume_writing) and, if the window was short,
        any WINDOW_UPDATE came (not only one past HOLD_SEND_WINDOW: a peer
        whose windows never grow that far must not stall the tunnel); or
        at once when the stream failed or finished (`force`: the pipe then
        sees why)."""
        source = self._held
        if source is None:
            return
        if force or self._error is not None or (self._conn.can_write.is_set()
                                                and not self._held_for_window):
            self._held = None
            self._held_for_window = False
            source.release_reading()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._release_unread()
            self._release_held(force=True)
            self._conn.stream_done(self)

    # -- the application side -----------------------------------------------

    async def wait_open(self) -> None:
        """Wait for the server's 200. Raises HboneError(status) if refused."""
        await self._opened

    async def read(self, n: int = READ_SIZE) -> bytes:
        """Up to `n` bytes; b"" once the peer half-closed. Bytes-like: a large
        DATA body comes as the bytearray it was decrypted into (no copy); it is
        the caller's, nothing else refers to it.

        Raises:
            StreamResetError: the tunnel was reset or its connection died.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                self._check_done()
                return b""
            self._read_waiter = self._conn.loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        data, fcl = self._chunks.popleft()
        if len(data) > n:
            self._chunks.appendleft((data[n:], 0))
            data = data[:n]
        self.bytes_received += len(data)
        if fcl:
            # The consumer took these bytes: only now may the peer send more.
            self._core.acknowledge(self.stream_id, fcl)
            self._conn.flush()
        return data

    async def write(self, data) -> None:
        """Send all of `data`, waiting for flow-control window and transport drain.

        Raises:
            StreamResetError: the tunnel was reset or its connection died.
        """
        self._writing = True           # write_nowait must not overtake this write
        try:
            view = data            # the object itself first: no copy for a whole frame
            while view:
                if self._error is not None:
                    raise self._error
                try:
                    n = self._core.send_data(self.stream_id, view)
                except LocalProtocolError as e:
                    raise self._error or StreamResetError(
                        f"tunnel {self.authority} closed: {e.reason}") from e
                if n:
                    self.bytes_sent += n
                    view = memoryview(view)[n:]
                    self._conn.flush()
                if view:
                    self._send_waiter = self._conn.loop.create_future()
                    try:
                        await self._send_waiter
                    finally:
                        self._send_waiter = None
            if not self._conn.can_write.is_set():
                await self._conn.can_write.wait()
        finally:
            self._writing = False

    def set_sink(self, sink) -> None:
        """core.pipe's direct delivery: received data goes to `sink(data)`
        (True: taken) while nothing is queued for read()."""
        self._sink = sink

    def native_sink(self, push, pushed: list, i: int, source=None):
        """core.pipe's `push` into this stream (write_nowait, or write_held
        with `source`, then `pushed[i] += len(data)`) with its common case
        in C, or None."""
        make = getattr(self._conn, "native_sender", None)
        return make(self, push, pushed, i, source) if make is not None else None

    def write_nowait(self, data) -> bool:
        """Send all of `data` now if the windows and the transport allow it
        without waiting; False (nothing sent) otherwise, or on any error
        (write() then raises it)."""
        return self._send_now(data, None)

    def write_held(self, data, source) -> bool:
        """write_nowait, and also while the transport is above its
        high-water mark: `data` then goes out all the same (the transport
        holds one read more than its mark). After a send that leaves the
        transport over its mark or the window short, `source` (a core.pipe
        TcpEnd) stops reading until both recover. Short: none left if the
        source's reads are sized by send_room (`sized_reads`), else less
        than HOLD_SEND_WINDOW once an update is owed (_hold)."""
        return self._send_now(data, source)

    def send_room(self) -> int:
        """The most one DATA frame may carry now: the least of the stream's
        and the connection's send window, the peer's SETTINGS_MAX_FRAME_SIZE
        and SEND_FRAME_SIZE; 0 if no window is left (or the stream is gone).
        A piped source sizes its reads by it (core.pipe.SizedReads), as the
        C TcpPump by send.c's sender_window: a read then always fits."""
        window = self._core.send_window(self.stream_id)
        if window <= 0:
            return 0
        return min(window, self._core.max_outbound_frame_size, SEND_FRAME_SIZE)

    def _send_now(self, data, source) -> bool:
        n = len(data)
        over = not self._conn.can_write.is_set()
        if (self._writing or self._error is not None or (over and source is None)
                or self._core.send_window(self.stream_id) < n):
            return False
        try:
            self._core.send_data(self.stream_id, data)
        except LocalProtocolError:
            return False
        self.bytes_sent += n
        self._conn.flush()
        if source is not None:
            # send.c's rule, by the source's reads (SIZED_HOLD_WINDOW's note).
            sized = getattr(source, "sized_reads", False)
            if (not self._conn.can_write.is_set() or self._core.send_window(self.stream_id)
                    < (SIZED_HOLD_WINDOW if sized else HOLD_SEND_WINDOW)):
                self._hold(source, SIZED_HOLD_WINDOW if sized else None)
        return True

    def write_eof(self) -> None:
        """Half-close: END_STREAM (the TCP FIN of the plaintext side)."""
        if self._error is None and not self._core.dead:
            try:
                self._core.end_stream(self.stream_id)
            except LocalProtocolError:
                return
            self._conn.flush()
            self._check_done()

    def abort(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """Reset: RST_STREAM (the TCP RST of the plaintext side)."""
        self._core.reset_stream(self.stream_id, error_code)
        self._conn.flush()
        self._fail(StreamResetError(f"tunnel {self.authority} reset locally",
                                    error_code=error_code))

    reset = abort

    def close(self) -> None:
        """Release the stream: reset it unless both sides finished cleanly."""
        if self._core.stream_state(self.stream_id) != "CLOSED":
            self.abort()
        self._finish()

    def _check_done(self) -> None:
        if self._core.stream_state(self.stream_id) == "CLOSED" and not self._chunks:
            self._finish()

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def __repr__(self) -> str:
        return f"HboneStream(id={self.stream_id}, authority={self.authority!r})"
