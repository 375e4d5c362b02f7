"""The waypoint's client-side HTTP/2 connection: h2's, with a response fast path.

h2 spends about as much CPU queueing one small response (HEADERS, then one
DATA) as the rest of the proxied request costs (state machines, frame
objects, validation flags, logging calls; docs/bench/waypoint.md). For the
plain case, the first response HEADERS on a stream whose request has ended
(HALF_CLOSED_REMOTE) and DATA that fits both windows and the client's max
frame size, `send_response` and `send_body` queue the same bytes h2 would,
with the same effects on h2's state:
- the HEADERS block from h2's own HPACK encoder (its dynamic table is the
  connection's), split into HEADERS + CONTINUATION at max_outbound_frame_size
  as h2 splits it, END_HEADERS on the last, END_STREAM on the first;
- the stream machine's `headers_sent` (response_sent), and CLOSED with
  `stream_closed_by = SEND_END_STREAM` on END_STREAM (send_end_stream; h2
  forgets closed streams lazily, the same way for both paths);
- both outbound windows reduced by the DATA length;
- the abuse guard's counts (a HEADERS frame, a DATA frame), as `on_sent`.
The connection machine's SEND_HEADERS / SEND_DATA inputs leave SERVER_OPEN
where it is and call nothing (h2/connection.py's table), so they are skipped.
Anything else returns False without touching anything: the caller then
uses h2's methods. The tests compare both paths byte for byte.

Receiving, a whole HEADERS frame that opens a new client stream (flags
END_HEADERS, with or without END_STREAM; no padding, no priority, no
CONTINUATION pending; under the header-block and concurrent-stream limits)
skips hyperframe's frame objects and h2's dispatch, and keeps everything
that has an effect: the abuse guard's accounting, h2's HPACK decoder, the
connection machine's RECV_HEADERS input, h2's own stream creation and
`receive_headers` (state machine, inbound header validation, events). Any
other frame, or any doubt, goes through h2's path; errors are raised and
turned into GOAWAY exactly as h2's `receive_data` does.

A header block made only of one-byte indexed fields (a client repeating a
request: h2load, a poller) does not change the HPACK table, so decoding it
again gives the same fields until the table changes; the last such block
of a connection is kept with its fields and reused while the decoder has
decoded nothing else and its table size was not set (`_CountingDecoder`).
h2's inbound validation of those fields is a pure function of the fields
and of flags that are the same for every new stream's request, so the
fields as h2 validated them the first time are reused too.
Sending, likewise: a response block that h2's encoder turned into one-byte
indexed fields only (a backend repeating its headers) encodes to the same
bytes while the encoder's table is unchanged (`_CountingEncoder`); the
last such block and its bytes are reused.
Pure module: no I/O.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.exceptions as h2x
from hpack import Decoder, Encoder
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, _decode_headers
from h2.errors import ErrorCodes
from h2.stream import StreamClosedBy, StreamInputs, StreamState
from hyperframe.exceptions import InvalidPaddingError

from shoal.core.hbone.h2limits import GuardedH2Connection

_HEADER = struct.Struct(">HBBBL")        # length (24 bits as 16 + 8), type, flags, stream
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
# Flags of a HEADERS frame the receive fast path takes: a whole block, with
# or without END_STREAM, and nothing else (PADDED and PRIORITY go to h2).
_PLAIN_HEADERS_FLAGS = frozenset({_END_HEADERS, _END_HEADERS | _END_STREAM})
# Bytes that are each a whole HPACK indexed header field (RFC 7541 6.1:
# high bit set, index 1..126; 0x80 is an error, 0xFF continues the index).
_ONE_BYTE_INDEXED = bytes(range(0x81, 0xFF))


class _CountingDecoder(Decoder):
    """hpack's decoder, counting what may have changed its table: every
    decode, and every table size set."""

    generation = 0

    def decode(self, data, raw=False):
        self.generation += 1
        return super().decode(data, raw)

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.generation += 1
        self.header_table.maxsize = value


class _CountingEncoder(Encoder):
    """hpack's encoder, counting what may have changed its table (as
    `_CountingDecoder`)."""

    generation = 0

    def encode(self, headers, huffman=True):
        self.generation += 1
        return super().encode(headers, huffman)

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.generation += 1
        Encoder.header_table_size.fset(self, value)    # type: ignore[attr-defined]
_OPEN = ConnectionState.SERVER_OPEN
_REMOTE_DONE = StreamState.HALF_CLOSED_REMOTE


def _frame(kind: int, flags: int, sid: int, payload) -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 8, n & 0xFF, kind, flags, sid) + payload


class DownstreamH2Connection(GuardedH2Connection):
    """GuardedH2Connection (h2 with shoal's abuse limits) plus `send_response`
    and `send_body` (see the module docstring)."""

    def __init__(self, config, **kw) -> None:
        super().__init__(config, **kw)
        old, dec = self.decoder, _CountingDecoder()
        dec.max_header_list_size = old.max_header_list_size
        dec.max_allowed_table_size = old.max_allowed_table_size
        self.decoder = self._dec = dec
        # Nothing was encoded yet: a fresh encoder is the same as h2's.
        self.encoder = self._enc = _CountingEncoder()
        # (block, decoder generation, fields, validated fields or None) of
        # the last all-indexed request block.
        self._indexed: tuple[bytes, int, tuple, tuple | None] | None = None
        # (fields, encoder generation, block) of the last all-indexed response head.
        self._indexed_out: tuple[list, int, bytes] | None = None

    def receive_data(self, data) -> list:
        """h2's receive_data, with new-stream HEADERS frames taken by
        `_new_stream_headers` (see the module docstring)."""
        buf = self.incoming_buffer
        buf.add_data(data)
        buf.max_frame_size = self.max_inbound_frame_size
        events: list = []
        try:
            while True:
                got = self._new_stream_headers(buf)
                if got is not None:
                    events += got
                    continue
                try:
                    frame = buf.__next__()
                except StopIteration:
                    return events
                events += self._receive_frame(frame)
        except InvalidPaddingError as e:
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise h2x.ProtocolError("Received frame with invalid padding.") from e
        except h2x.ProtocolError as e:
            self._terminate_connection(e.error_code)
            raise

    def _new_stream_headers(self, buf) -> list | None:
        """The events of the next frame if it is a plain HEADERS frame opening
        a new client stream, as h2 would give them; None (nothing consumed)
        for anything else."""
        b = buf._data
        if len(b) < 9 or b[3] != _HEADERS or b[4] not in _PLAIN_HEADERS_FLAGS \
                or buf._headers_buffer:
            return None
        n = (b[0] << 16) | (b[1] << 8) | b[2]
        if n > buf.max_frame_size or n > buf.max_header_block or len(b) < 9 + n:
            return None
        sid = int.from_bytes(b[5:9], "big") & 0x7FFFFFFF
        if (not sid & 1 or sid <= self.highest_inbound_stream_id or sid in self.streams
                or self.state_machine.state is not _OPEN or self.config.client_side
                or self.open_inbound_streams >= self.local_settings.max_concurrent_streams):
            return None
        end_stream = bool(b[4] & _END_STREAM)
        block = bytes(b[9:9 + n])
        del b[:9 + n]
        guard = self.guard                  # FloodGuard.on_frame for a HEADERS frame
        guard._check_outbound()
        guard.streams_opened += 1
        guard.empty_in_a_row = 0            # END_HEADERS is set
        headers, checked = self._decode(block)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(sid, AllowedStreamIDs.ODD)
        if checked is not None:
            return events + self._receive_checked(stream, headers, end_stream, checked)
        frames, stream_events = stream.receive_headers(headers, end_stream,
                                                       self.config.header_encoding)
        self._prepare_for_sending(frames)
        last = self._indexed
        if last is not None and last[0] is block:
            # The fields as h2 validated them, for the next stream with this block.
            head: Any = stream_events[0]        # RequestReceived
            self._indexed = (block, last[1], last[2], tuple(head.headers))
        return events + stream_events

    @staticmethod
    def _receive_checked(stream, headers: list, end_stream: bool, checked: tuple) -> list:
        """h2's `H2Stream.receive_headers` for a request block it validated
        before (the same fields, the same flags: a new stream's request
        HEADERS): the same transitions, events and content-length, the
        validated fields reused instead of validated again."""
        sm = stream.state_machine
        events = sm.process_input(StreamInputs.RECV_HEADERS)
        if end_stream:
            ended = sm.process_input(StreamInputs.RECV_END_STREAM)
            events[0].stream_ended = ended[0]
            events += ended
        stream._initialize_content_length(headers)
        head: Any = events[0]               # RequestReceived
        head.headers = list(checked)
        return events

    def _decode(self, block: bytes) -> tuple[Any, tuple | None]:
        """h2's `_decode_headers`, reusing the last all-indexed block's
        fields; with them, as h2 validated them (None: not yet)."""
        dec = self._dec
        last = self._indexed
        if last is not None and last[1] == dec.generation and last[0] == block:
            return list(last[2]), last[3]
        headers = _decode_headers(dec, block)
        if not block.translate(None, _ONE_BYTE_INDEXED):
            self._indexed = (block, dec.generation, tuple(headers), None)
        return headers, None

    def _encode(self, fields: list) -> bytes:
        """h2's encoder on `fields`, reusing the last all-indexed result."""
        enc = self._enc
        last = self._indexed_out
        if last is not None and last[1] == enc.generation and last[0] == fields:
            return last[2]
        encoded = enc.encode(fields)
        if not encoded.translate(None, _ONE_BYTE_INDEXED):
            self._indexed_out = (list(fields), enc.generation, encoded)
        return encoded

    def _plain_stream(self, sid: int):
        """The stream if its response may take the fast path, else None."""
        if self.state_machine.state is not _OPEN:
            return None
        stream = self.streams.get(sid)
        if stream is None or stream.state_machine.state is not _REMOTE_DONE:
            return None
        return stream

    def _fits(self, stream, n: int) -> bool:
        return n <= self.outbound_flow_control_window and \
            n <= stream.outbound_flow_control_window and n <= self.max_outbound_frame_size

    def send_response(self, sid: int, block: list, data: bytes | None,
                      end_stream: bool) -> bool:
        """h2's `send_headers(sid, block, end_stream=...)` for a final
        response (`block` starts with a non-1xx `:status`), followed, when
        `data` is not None, by `send_data(sid, data, end_stream=...)`
        (then END_STREAM goes on the DATA, not the HEADERS). False: not
        the plain case, nothing queued."""
        stream = self._plain_stream(sid)
        if stream is None:
            return False
        sm = stream.state_machine
        if sm.headers_sent or block[0][1][:1] == b"1":
            return False
        n = 0 if data is None else len(data)
        if n and not self._fits(stream, n):
            return False
        encoded = self._encode(block)
        size = self.max_outbound_frame_size
        head_flags = _END_STREAM if end_stream and data is None else 0
        if len(encoded) <= size:
            out = _frame(_HEADERS, head_flags | _END_HEADERS, sid, encoded)
        else:
            parts = [encoded[i:i + size] for i in range(0, len(encoded), size)]
            frames = [_frame(_HEADERS, head_flags, sid, parts[0])]
            frames += [_frame(_CONTINUATION, 0, sid, p) for p in parts[1:-1]]
            frames.append(_frame(_CONTINUATION, _END_HEADERS, sid, parts[-1]))
            out = b"".join(frames)
        sm.headers_sent = True
        stream.request_method = None        # as send_headers: the block has no :method
        self.guard.streams_opened += 1
        if data is not None:
            out += _frame(_DATA, _END_STREAM if end_stream else 0, sid, data)
            self.outbound_flow_control_window -= n
            stream.outbound_flow_control_window -= n
            self.guard.data_frames_sent += 1
        if end_stream:
            sm.state = StreamState.CLOSED
            sm.stream_closed_by = StreamClosedBy.SEND_END_STREAM
        self._data_to_send += out
        return True

    def send_body(self, sid: int, data: bytes, end_stream: bool) -> bool:
        """h2's `send_data(sid, data, end_stream=...)` after the response
        HEADERS. False: not the plain case (or it would not fit), nothing queued."""
        stream = self._plain_stream(sid)
        if stream is None or not stream.state_machine.headers_sent:
            return False
        n = len(data)
        if not self._fits(stream, n):
            return False
        self._data_to_send += _frame(_DATA, _END_STREAM if end_stream else 0, sid, data)
        self.outbound_flow_control_window -= n
        stream.outbound_flow_control_window -= n
        self.guard.data_frames_sent += 1
        if end_stream:
            sm = stream.state_machine
            sm.state = StreamState.CLOSED
            sm.stream_closed_by = StreamClosedBy.SEND_END_STREAM
        return True
