"""h2's connection with fewer copies on the HBONE data path.

Four changes, all invisible on the wire (measured in docs/bench/hbone.md):
- DATA frames of at least ZERO_COPY_MIN bytes are queued by reference
  (`chunks_to_send`), not copied four times by hyperframe/h2;
- DATA on an open stream, sent or received, skips h2's per-frame machinery
  (frame objects, state machines, dispatch) where that machinery provably
  changes nothing but the flow-control windows, which are kept the same way:
  the per-request cost of a small-payload tunnel was mostly this;
- DATA bodies are parsed with one copy instead of two, and large ones are
  decrypted straight into their own buffer (`_FrameBuffer`, `body_buffer`);
- a DATA frame prints as its length (h2 formats every received frame);
- the flow-control windows (both send windows, both inbound WindowManagers)
  and the state machines' states are fields of C structs when the C module
  loads (core/hbone/native/flow.c), so the C data paths reach them by
  pointer, not by attribute lookups.
Pure module: no I/O.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.events as h2e
import h2.exceptions as h2x
import hyperframe.exceptions
import hyperframe.frame
from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.errors import ErrorCodes, _error_code_from_int
from h2.exceptions import StreamIDTooLowError
from h2.stream import H2Stream, H2StreamStateMachine, StreamState
from h2.windows import WindowManager

from shoal.core.hbone import fastpath
from shoal.core.hbone.h2limits import (DEFAULT_LIMITS, MAX_CLOSED_STREAMS, GuardedFrameBuffer,
                                       GuardedH2Connection)

# DATA frames with at least this much payload are queued by reference (header
# + the caller's buffer) instead of being copied four times by hyperframe/h2
# (tobytes, join, bytearray +=, bytes()); smaller frames are coalesced.
ZERO_COPY_MIN = 16 * 1024
_FRAME_HEADER = struct.Struct(">HBBBL")
_END_STREAM = 0x1
_PADDED = 0x8
# States in which h2's SEND_DATA input changes nothing and calls nothing
# (h2/connection.py and h2/stream.py transition tables): the fast send path
# below may skip the state machines there.
_CONN_SEND_OK = frozenset({ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN})
_STREAM_SEND_OK = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})
# Likewise for RECV_DATA without END_STREAM: the connection machine stays
# where it is, the stream machine stays and emits one DataReceived.
_CONN_RECV_OK = _CONN_SEND_OK
_STREAM_RECV_OK = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
# The same, as tuples for the C relay (core/hbone/native/relay.c, send.c).
RECV_OK_CONNECTION = tuple(_CONN_RECV_OK)
RECV_OK_STREAM = tuple(_STREAM_RECV_OK)
SEND_OK_CONNECTION = tuple(_CONN_SEND_OK)
SEND_OK_STREAM = tuple(_STREAM_SEND_OK)
# A DATA frame at least this large that has not fully arrived gets its own
# body buffer, filled by the transport without further copies; below this the
# per-frame bookkeeping costs more than the copy it saves.
DIRECT_BODY_MIN = 32 * 1024
# A body buffer is written whole before it is read (the frame is only parsed
# once full), so the C module's uninitialised bytearray saves bytearray()'s
# zero-fill: one pass over every received byte (docs/bench/profiles/).
_new_body = fastpath.native.body if fastpath.native is not None else bytearray


# The C structs that hold the windows (flow.c) when the C module loads; on the
# pure-Python path the attributes stay in the instance dicts, as in h2.
_WindowBase: Any = fastpath.fields_base("Window")
_StreamBase: Any = fastpath.fields_base("StreamWindows")
_ConnectionBase: Any = fastpath.fields_base("ConnectionWindows")
_StateBase: Any = fastpath.fields_base("StateMachine")
# _data, _body, _headers_buffer and _preamble_len, which the C relay checks
# before every read it takes (core/hbone/native/relay.c's conn_ready).
_FrameBufferBase: Any = fastpath.fields_base("FrameBufferFields")


class _WindowManager(_WindowBase, WindowManager):
    """h2's WindowManager; its three counters are C fields (flow.c)."""


class _ConnectionStateMachine(_StateBase, H2ConnectionStateMachine):
    """h2's connection state machine; its state is a C field."""


class _StreamStateMachine(_StateBase, H2StreamStateMachine):
    """h2's stream state machine; its state is a C field."""


class _H2Stream(_StreamBase, H2Stream):
    """h2's stream; its send window, inbound WindowManager and state
    machine are C fields."""

    def __init__(self, stream_id: int, config: H2Configuration, inbound_window_size: int,
                 outbound_window_size: int) -> None:
        super().__init__(stream_id, config=config, inbound_window_size=inbound_window_size,
                         outbound_window_size=outbound_window_size)
        # Fresh, as h2 made them (IDLE, nothing received): the same in C fields.
        self.state_machine = _StreamStateMachine(stream_id)
        self._inbound_window_manager = _WindowManager(inbound_window_size)


class _FrameBuffer(_FrameBufferBase, GuardedFrameBuffer):
    """h2's frame buffer, with fewer copies of DATA bodies.

    - A DATA frame that is whole in the buffer is parsed with one copy instead
      of two (the base class slices the bytearray, then hyperframe copies the
      slice again with `tobytes`).
    - A large unpadded DATA frame that is not whole yet gets its own body
      buffer (`body_buffer()`): the transport decrypts the rest of the body
      straight into it (`body_filled(n)`), and the finished buffer becomes the
      frame's data: no copy at all after decryption. At most one such buffer
      exists per connection, of at most the validated frame length.
    """

    def __init__(self, server: bool = False) -> None:
        super().__init__(server=server)
        self._body: bytearray | None = None     # the DATA body being filled
        self._body_have = 0
        self._body_frame = None                 # its hyperframe DataFrame

    def add_data(self, data) -> None:
        if self._body is not None and data:
            view = memoryview(data)
            take = min(len(view), len(self._body) - self._body_have)
            self._body[self._body_have:self._body_have + take] = view[:take]
            self._body_have += take
            data = view[take:]
        super().add_data(data)

    def body_buffer(self) -> memoryview | None:
        """Where the next received bytes belong, if they are a DATA body's."""
        if self._body is None:
            return None
        return memoryview(self._body)[self._body_have:]

    def body_filled(self, n: int) -> None:
        """`n` bytes were written into the view `body_buffer()` returned."""
        self._body_have += n

    def body_buffer_pending(self) -> bool:
        """A DATA body is being filled and is not whole yet."""
        return self._body is not None and self._body_have < len(self._body)

    def __next__(self):
        if self._body is not None:
            if self._body_have < len(self._body):
                raise StopIteration
            frame, body = self._body_frame, self._body
            self._body, self._body_frame, self._body_have = None, None, 0
            frame.data = body
            frame.body_len = len(body)
            new_frame = self._update_header_buffer(frame)
            return new_frame if new_frame is not None else self.__next__()
        buf = self._data
        if len(buf) < 9 or buf[3] != 0x0:           # not a DATA frame: h2's path
            return super().__next__()
        length = int.from_bytes(buf[0:3], "big")
        whole = len(buf) >= length + 9
        if not whole and (length < DIRECT_BODY_MIN or buf[4] & _PADDED):
            raise StopIteration
        self._validate_frame_length(length)
        try:
            frame, _ = hyperframe.frame.Frame.parse_frame_header(memoryview(bytes(buf[:9])))
        except (hyperframe.exceptions.InvalidDataError,
                hyperframe.exceptions.InvalidFrameError) as err:
            raise h2x.ProtocolError(f"Received frame with invalid header: {err}") from err
        if not whole:
            # Start a body buffer with what we have; the rest goes straight in.
            self._body = body = _new_body(length)
            have = len(buf) - 9
            body[:have] = memoryview(buf)[9:]
            self._body_have, self._body_frame = have, frame
            buf.clear()
            raise StopIteration
        view = memoryview(buf)
        body = view[9:9 + length]
        try:
            frame.parse_body(body)
        except hyperframe.exceptions.InvalidDataError as err:
            raise h2x.ProtocolError("Received frame with non-compliant data") from err
        except hyperframe.exceptions.InvalidFrameError as err:
            raise h2x.FrameDataMissingError("Frame data missing or invalid") from err
        finally:
            body.release()
            view.release()
        del buf[:9 + length]
        new_frame = self._update_header_buffer(frame)
        return new_frame if new_frame is not None else self.__next__()


class BoundedH2Connection(H2Connection):
    """h2's connection with its closed-stream history bounded as in
    GuardedH2Connection (for the waypoint's h2 upstream, which uses h2 directly)."""

    MAX_CLOSED_STREAMS = MAX_CLOSED_STREAMS


class H2ConnectionFast(_ConnectionBase, GuardedH2Connection):
    """h2's connection (with shoal's abuse limits, core.hbone.h2limits) with
    DATA frame bodies queued by reference.

    Output order is kept: h2 writes some frames straight into
    `_data_to_send`; those bytes are moved into `_chunks` before anything
    queued after them.
    """


    frame_buffer_class = _FrameBuffer
    # what frame_buffer_class makes (h2 declares its base, FrameBuffer)
    incoming_buffer: _FrameBuffer

    def __init__(self, config: H2Configuration, *, limits=DEFAULT_LIMITS, **kw) -> None:
        self._chunks: list = []
        super().__init__(config, limits=limits, **kw)
        # Fresh, as h2 made them (IDLE, nothing received): the same in C fields.
        self.state_machine = _ConnectionStateMachine()
        self._inbound_flow_control_window_manager = _WindowManager(
            max_window_size=self.local_settings.initial_window_size)

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream:
        """h2 4.4's _begin_new_stream (h2 is pinned to 4.4.x), making an
        _H2Stream: the same checks, the same stream, its windows in C fields."""
        outbound = self._stream_id_is_outbound(stream_id)
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise StreamIDTooLowError(stream_id, highest)
        if (stream_id % 2) != int(allowed_ids):
            raise h2x.ProtocolError("Invalid stream ID for peer.")
        s = _H2Stream(stream_id, config=self.config,
                      inbound_window_size=self.local_settings.initial_window_size,
                      outbound_window_size=self.remote_settings.initial_window_size)
        s.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = s
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return s

    def send_data(self, stream_id, data, end_stream=False, pad_length=None) -> None:
        """h2's send_data; an unpadded DATA frame without END_STREAM that
        fits both windows is queued directly (the same bytes and window
        accounting as h2's path, without its per-frame Python machinery):
        by reference when large, appended to the pending output when small."""
        n = len(data)
        if n and not end_stream and pad_length is None:
            stream = self.streams.get(stream_id)
            if (stream is not None and self.state_machine.state in _CONN_SEND_OK
                    and stream.state_machine.state in _STREAM_SEND_OK
                    and n <= self.outbound_flow_control_window
                    and n <= stream.outbound_flow_control_window
                    and n <= self.max_outbound_frame_size):
                header = _FRAME_HEADER.pack((n >> 8) & 0xFFFF, n & 0xFF, 0, 0,
                                            stream_id & 0x7FFFFFFF)
                if n < ZERO_COPY_MIN:
                    out = self._data_to_send
                    out += header
                    out += data
                else:
                    chunks = self._chunks
                    if self._data_to_send:
                        chunks.append(bytes(self._data_to_send))
                        self._data_to_send = bytearray()
                    chunks.append(header)
                    chunks.append(data)
                self.outbound_flow_control_window -= n
                stream.outbound_flow_control_window -= n
                self.guard.data_frames_sent += 1     # WINDOW_UPDATE credit
                return
        super().send_data(stream_id, data, end_stream=end_stream, pad_length=pad_length)

    def _prepare_for_sending(self, frames) -> None:
        if not frames:
            return
        self.guard.on_sent(frames)
        chunks = self._chunks
        if self._data_to_send:
            chunks.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        for f in frames:
            # bytes on a DataFrame (the only type whose data is read below)
            data: Any = getattr(f, "data", None)
            if type(f) is hyperframe.frame.DataFrame and not f.pad_length \
                    and len(data) >= ZERO_COPY_MIN:
                n = len(data)
                flags = _END_STREAM if "END_STREAM" in f.flags else 0
                chunks.append(_FRAME_HEADER.pack((n >> 8) & 0xFFFF, n & 0xFF, 0, flags,
                                                 f.stream_id & 0x7FFFFFFF))
                chunks.append(data)
            else:
                chunks.append(f.serialize())

    def send_graceful_goaway(self, last_stream_id: int, additional_data: bytes = b"") -> None:
        """Queue GOAWAY(NO_ERROR, last_stream_id) but keep the connection open.

        h2's `close_connection` moves its state machine to CLOSED, after which
        no stream may send another byte; a graceful shutdown (RFC 9113 §6.8)
        needs the streams up to `last_stream_id` to carry on, so the frame is
        queued without touching the state machine."""
        self._prepare_for_sending([hyperframe.frame.GoAwayFrame(
            stream_id=0, last_stream_id=last_stream_id, error_code=0,
            additional_data=additional_data)])

    def _receive_goaway_frame(self, frame):
        """A GOAWAY with NO_ERROR is a graceful shutdown (RFC 9113 §6.8):
        streams up to its last_stream_id still complete, so unlike h2 we keep
        the state machine open and the queued output; an error GOAWAY takes
        h2's path (connection closed, output dropped)."""
        if frame.error_code != 0:
            return super()._receive_goaway_frame(frame)
        event = h2e.ConnectionTerminated()
        event.error_code = _error_code_from_int(0)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def receive_data(self, data) -> list:
        """h2's receive_data, with whole DATA frames on open streams taken
        by `_open_stream_data` and every other frame by h2 (errors included:
        anything unusual about a DATA frame sends it down h2's path)."""
        buf = self.incoming_buffer
        buf.add_data(data)
        buf.max_frame_size = self.max_inbound_frame_size
        events: list = []
        fast = self._open_stream_data
        try:
            while True:
                event = fast(buf)
                if event is not None:
                    events.append(event)
                    continue
                try:
                    frame = buf.__next__()
                except StopIteration:
                    return events
                events.extend(self._receive_frame(frame))
        except hyperframe.exceptions.InvalidPaddingError as err:
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise h2x.ProtocolError("Received frame with invalid padding.") from err
        except h2x.ProtocolError as err:
            self._terminate_connection(err.error_code)
            raise

    def _open_stream_data(self, buf: "_FrameBuffer"):
        """The next frame, if it is a whole flagless DATA frame with payload on
        an open stream without content-length, as h2 would receive it: both
        inbound windows consumed (raising FlowControlError past them), the
        abuse guard told, one DataReceived. Otherwise None, consuming nothing."""
        b = buf._data
        if len(b) < 9 or b[3] or b[4] or buf._body is not None or buf._headers_buffer:
            return None
        n = (b[0] << 16) | (b[1] << 8) | b[2]
        if not n or n > buf.max_frame_size or len(b) < 9 + n:
            return None
        sid = int.from_bytes(b[5:9], "big") & 0x7FFFFFFF
        stream = self.streams.get(sid)
        if (stream is None or self.state_machine.state not in _CONN_RECV_OK
                or stream.state_machine.state not in _STREAM_RECV_OK
                or stream._expected_content_length is not None):
            return None
        self.guard.on_data_payload()
        self._inbound_flow_control_window_manager.window_consumed(n)
        stream._inbound_window_manager.window_consumed(n)
        event = h2e.DataReceived(stream_id=sid, data=bytes(memoryview(b)[9:9 + n]),
                                 flow_controlled_length=n)
        del b[:9 + n]
        return event

    def body_buffer(self) -> memoryview | None:
        """A writable view for the rest of a large DATA body, or None."""
        return self.incoming_buffer.body_buffer()

    def receive_filled(self, n: int) -> list:
        """`n` bytes were written into `body_buffer()`: process them."""
        buf = self.incoming_buffer
        buf.body_filled(n)
        if buf.body_buffer_pending():
            return []                   # the body is not whole yet: nothing to parse
        return self.receive_data(b"")

    def chunks_to_send(self) -> list:
        if self._data_to_send:
            self._chunks.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        out, self._chunks = self._chunks, []
        return out

    def data_to_send(self, amount: int | None = None) -> bytes:
        if amount is not None:     # pragma: no cover - we never ask for part of it
            raise NotImplementedError("HBONE drains the whole queue")
        return b"".join(self.chunks_to_send())


def _data_frame_repr(self) -> str:
    return f"<{len(self.data)} bytes>"


# h2 evaluates `repr(frame)` for every received frame, even with logging off,
# and hyperframe's DataFrame repr re-serialises and hex-encodes the whole body:
# that was ~25% of an HBONE receiver's CPU (cProfile, docs/bench/hbone.md).
# The replacement only changes how a DATA frame prints.
# Replacing the method on the class is the point (mypy forbids it by default).
hyperframe.frame.DataFrame._body_repr = _data_frame_repr  # type: ignore[method-assign]
