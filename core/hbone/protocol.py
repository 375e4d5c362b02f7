"""Sans-IO HBONE: HTTP/2 CONNECT tunnels on top of h2, client and server roles.

Bytes go in with `receive_data()`, `Event`s come out; calls like
`open_tunnel()`, `accept()`, `send_data()` queue frames that
`data_to_send()` drains. Nothing here touches a socket, a clock or a loop.

Wire rules (Istio's HBONE, docs/hbone.md):
- plain CONNECT (RFC 9113 §8.5): `:method CONNECT` + `:authority ip:port`,
  no `:scheme`, no `:path`; anything else gets `400` on that stream only;
- request header blocks above the server's limit get `431` on that stream;
  response header blocks above the client's limit reset that stream;
- stream window 4 MiB, connection window 16 MiB, max frame 1 MiB;
- received DATA reopens the peer's window only when the application calls
  `acknowledge()`: a consumer that stops reading stops the peer (bounded memory).

Invariants:
- a stream is in `_streams` from its HEADERS until it is closed both ways or
  reset; `open_streams` is its size (the pool's load measure);
- after a RemoteProtocolError the connection is dead: h2 has queued a GOAWAY,
  which the adapter must still send before closing;
- graceful shutdown (RFC 9113 §6.8), in two steps as ztunnel's h2 crate
  does: the server's `start_drain()` announces GOAWAY(NO_ERROR, 2^31-1) with
  a PING and goes on serving; when the PING's ACK shows the client has read
  the announcement (or the adapter gives up waiting: `finish_drain()`), the
  final GOAWAY names the last stream processed, later CONNECTs get
  RST_STREAM REFUSED_STREAM, and `drained` tells the adapter when the last
  stream is gone (then `close()`). A client receiving a GOAWAY refuses
  (StreamReset REFUSED_STREAM, safe to retry) only its streams above the
  last id; the others complete normally.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import TYPE_CHECKING

import h2.events as h2e
import h2.exceptions as h2x
from h2.config import H2Configuration
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from shoal.core.addr import parse_authority
from shoal.core.hbone import events as ev
from shoal.core.hbone import fastpath
from shoal.core.hbone.h2fast import H2ConnectionFast
from shoal.core.hbone.h2limits import HEADER_BLOCK_EXPANSION, FloodError
from shoal.core.hbone.errors import LocalProtocolError, RemoteProtocolError
from shoal.core.hbone.settings import (DEFAULT_SETTINGS, HEADER_DECODE_HARD_LIMIT, SEND_FRAME_SIZE,
                                 HboneSettings)

# h2's default initial window (RFC 9113 §6.9.2); we grow the connection window
# from it to CONNECTION_WINDOW with one WINDOW_UPDATE right after the preface.
_H2_DEFAULT_WINDOW = 65_535
# RFC 9113 §6.5.2: each header field costs name + value + 32 octets.
_HEADER_OVERHEAD = 32
# The graceful shutdown's first GOAWAY names the highest stream id there is
# (RFC 9113 §6.8): "stop opening streams", while nothing sent is refused yet.
GOAWAY_ANNOUNCE_ID = 2**31 - 1
PENDING, OPEN, CLOSED = "PENDING", "OPEN", "CLOSED"




class _PythonStreamFields:
    """The pure-Python path's stand-in for the C CoreStream: the same fields."""

    __slots__ = ("state", "local_ended", "remote_ended")


# The fields the C data paths read per DATA frame (core/hbone/native/flow.c),
# as C struct fields when the C module loads: reached by pointer there. (mypy
# checks against the Python stand-ins, which have the same fields.)
if TYPE_CHECKING:
    _StreamFields = _PythonStreamFields
    _CoreFlags = fastpath.PythonFields
else:
    _StreamFields = fastpath.fields_base("CoreStream", _PythonStreamFields)
    _CoreFlags = fastpath.fields_base("CoreFlags")


class _Stream(_StreamFields):
    """Per-stream bookkeeping: state plus which halves are closed."""

    __slots__ = ()

    def __init__(self) -> None:
        self.state = PENDING
        self.local_ended = False
        self.remote_ended = False


def _header_list_size(headers) -> int:
    return sum(len(n) + len(v) + _HEADER_OVERHEAD for n, v in headers)


def _split(headers) -> tuple[dict[bytes, bytes], dict[str, str]]:
    pseudo: dict[bytes, bytes] = {}
    regular: dict[str, str] = {}
    for name, value in headers:
        if name[:1] == b":":
            pseudo[name] = value
        else:
            regular[name.decode("latin-1").lower()] = value.decode("latin-1")
    return pseudo, regular


class _HboneCore(_CoreFlags):
    """What client and server share: h2 setup, flow control, data, resets."""

    client_side = False

    def __init__(self, settings: HboneSettings = DEFAULT_SETTINGS, *, clock=None) -> None:
        self.settings = settings
        # A header block that cannot decode under our header-list limit is
        # refused while it arrives (h2limits.HEADER_BLOCK_EXPANSION).
        own_list = (settings.client_max_header_list if self.client_side
                    else settings.server_max_header_list)
        limits = dataclasses.replace(settings.h2_limits, max_header_block=min(
            settings.h2_limits.max_header_block, HEADER_BLOCK_EXPANSION * own_list))
        self._h2 = H2ConnectionFast(H2Configuration(
            client_side=self.client_side, header_encoding=None,
            # We validate CONNECT requests ourselves so that a bad request
            # costs one stream (400), not the whole connection (h2 would GOAWAY).
            validate_inbound_headers=False), limits=limits, clock=clock)
        # clock: seconds, monotonic (the rate limits' time); None: the real one.
        self._h2.local_settings = Settings(client=self.client_side,
                                           initial_values=self._local_settings())
        # h2 copied the frame limit from the settings it had at __init__; ours
        # apply from the start (a peer may only be stricter until it sees them).
        self._h2.max_inbound_frame_size = settings.max_frame_size
        self._streams: dict[int, _Stream] = {}
        # The largest connection send window seen: the peer's connection
        # window is at least this (window_update_owed).
        self._conn_window_peak = _H2_DEFAULT_WINDOW
        self._ping_counter = 0
        self.dead = False
        self.goaway_received = False
        self.draining = False                  # we sent a graceful GOAWAY
        self._goaway_last_id: int | None = None    # set by the final GOAWAY
        self._drain_ping: bytes | None = None      # the announcement's PING
        self._drain_reason = b""
        # Streams requested / reset within the current receive_data call.
        self._batch_requests: set[int] = set()
        self._batch_dropped: set[int] = set()
        self._dispatch = {
            h2e.RequestReceived: self._on_request,
            h2e.ResponseReceived: self._on_response,
            h2e.DataReceived: self._on_data,
            h2e.StreamEnded: self._on_stream_ended,
            h2e.StreamReset: self._on_stream_reset,
            h2e.WindowUpdated: self._on_window,
            h2e.RemoteSettingsChanged: self._on_settings,
            h2e.PingAckReceived: self._on_ping_ack,
            h2e.ConnectionTerminated: self._on_terminated,
        }

    def _local_settings(self) -> dict[SettingCodes, int]:
        s = self.settings
        return {SettingCodes.INITIAL_WINDOW_SIZE: s.stream_window,
                SettingCodes.MAX_FRAME_SIZE: s.max_frame_size}

    # -- connection ---------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface/SETTINGS and grow the connection window."""
        self._h2.initiate_connection()
        grow = self.settings.connection_window - _H2_DEFAULT_WINDOW
        if grow > 0:
            self._h2.increment_flow_control_window(grow)

    def receive_data(self, data: bytes) -> list[ev.Event]:
        """Feed bytes from the peer.

        Returns:
            The events they caused, in order.
        Raises:
            RemoteProtocolError: the peer broke HTTP/2 (a GOAWAY is queued:
                send `data_to_send()` then close). Any other exception is a bug.
        """
        if self.dead:
            return []
        return self._receive(self._h2.receive_data, data)

    def receive_buffer(self) -> memoryview | None:
        """A writable view where the next received bytes belong (the rest of
        a large DATA body), or None: then use `receive_data`. Write into it,
        then call `received_into(n)`; the view is invalid after that."""
        return None if self.dead else self._h2.body_buffer()

    def received_into(self, n: int) -> list[ev.Event]:
        """`n` bytes were written into the `receive_buffer()` view; like
        `receive_data`, returns the events (raises RemoteProtocolError)."""
        if self.dead:
            return []
        return self._receive(self._h2.receive_filled, n)

    def _receive(self, feed, arg) -> list[ev.Event]:
        try:
            h2_events = feed(arg)
            out: list[ev.Event] = []
            self._batch_requests.clear()
            self._batch_dropped.clear()
            for h2_event in h2_events:
                handler = self._dispatch.get(type(h2_event))
                if handler is not None:
                    handler(h2_event, out)
        except h2x.ProtocolError as e:
            self.dead = True
            code = getattr(e, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
            if self._h2.state_machine.state != ConnectionState.CLOSED:
                # e.g. a bad preface (h2 raised before queueing its GOAWAY),
                # or a limit hit while we handled h2's events.
                self._h2.close_connection(code)
            what = (f"peer exceeded the HTTP/2 {e}" if isinstance(e, FloodError)
                    else f"peer sent invalid HTTP/2: {e}")
            raise RemoteProtocolError(what, error_code=code,
                                      limit=getattr(e, "limit", None)) from e
        finally:
            # h2 resets the HPACK limit to our advertised one when our SETTINGS
            # are acked; we keep a higher hard limit and refuse oversized header
            # blocks per stream instead (see settings.HEADER_DECODE_HARD_LIMIT).
            self._h2.decoder.max_header_list_size = HEADER_DECODE_HARD_LIMIT
        if self._batch_dropped:
            # Requests reset in the same read (rapid reset): the application
            # never sees them, so no upstream work starts for them at all.
            dropped = self._batch_dropped
            out = [e for e in out if not (type(e) is ev.TunnelRequested
                                          and e.stream_id in dropped)]
        return out

    def output_drained(self) -> None:
        """The transport has written everything queued: control frames the
        peer has not read yet are no longer counted against it."""
        self._h2.output_drained()

    @property
    def refused_streams(self) -> int:
        """Streams refused above SETTINGS_MAX_CONCURRENT_STREAMS (REFUSED_STREAM)."""
        return self._h2.refused_streams

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport (empty when nothing is queued)."""
        return self._h2.data_to_send()

    def chunks_to_send(self) -> list:
        """The same bytes as `data_to_send()`, as a list of buffers; large DATA
        payloads are the caller's own buffers (write them before they change)."""
        return self._h2.chunks_to_send()

    def ping(self) -> bytes:
        """Queue a PING; returns its payload (PingAcked carries it back)."""
        self._ping_counter += 1
        payload = struct.pack(">Q", self._ping_counter)
        self._h2.ping(payload)
        return payload

    def close(self, error_code: int = ErrorCodes.NO_ERROR, reason: str = "") -> None:
        """Queue a GOAWAY; no new streams either way afterwards."""
        if not self.dead:
            self.dead = True
            # RFC 9113 §6.8: a second GOAWAY must not raise the last stream id.
            self._h2.close_connection(error_code, additional_data=reason.encode()[:256] or None,
                                      last_stream_id=self._goaway_last_id)

    def start_drain(self, reason: str = "graceful shutdown") -> None:
        """Graceful shutdown, first step: queue GOAWAY(NO_ERROR, 2^31-1) and a
        PING. Every stream keeps working and CONNECTs still arrive: one the
        client sent before it read the announcement is served, not refused
        (a client refused twice in a row, e.g. by two draining workers during
        an upgrade, gives up). Idempotent."""
        if self.dead or self.draining:
            return
        self.draining = True
        self._drain_reason = reason.encode()[:256]
        self._h2.send_graceful_goaway(GOAWAY_ANNOUNCE_ID, self._drain_reason)
        self._drain_ping = self.ping()

    def finish_drain(self) -> None:
        """Second step, at the PING's ACK (the core does it) or when the
        adapter stops waiting for it: GOAWAY(NO_ERROR, last stream
        processed); later CONNECTs are refused. Idempotent."""
        if self.dead or not self.draining or self._goaway_last_id is not None:
            return
        self._drain_ping = None
        self._goaway_last_id = self._h2.highest_inbound_stream_id
        self._h2.send_graceful_goaway(self._goaway_last_id, self._drain_reason)

    @property
    def drained(self) -> bool:
        """The final GOAWAY is out and no stream is left: time to close."""
        return self._goaway_last_id is not None and not self._streams

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def remote_max_concurrent_streams(self) -> int:
        return self._h2.remote_settings.max_concurrent_streams

    # -- streams ------------------------------------------------------------

    def send_window(self, stream_id: int) -> int:
        """How many bytes `send_data` would take now (stream and connection window)."""
        try:
            return self._h2.local_flow_control_window(stream_id)
        except h2x.StreamClosedError:
            return 0

    @property
    def max_outbound_frame_size(self) -> int:
        """The peer's SETTINGS_MAX_FRAME_SIZE: the largest DATA frame we may send."""
        return self._h2.max_outbound_frame_size

    def window_update_owed(self, stream_id: int) -> bool:
        """Does the peer owe us a WINDOW_UPDATE (stream or connection) once
        it has consumed what we sent? True when at most half of either send
        window is left: receivers update once half a window is consumed
        (nghttp2, h2, hyper's h2), and no sooner, so with more left a
        sender that waits for an update can wait for good. The peer's
        windows are at least the stream's initial size from its SETTINGS
        and the largest connection window we saw."""
        h2 = self._h2
        stream = h2.streams.get(stream_id)
        return (h2.outbound_flow_control_window <= self._conn_window_peak // 2
                or (stream is not None and stream.outbound_flow_control_window
                    <= h2.remote_settings.initial_window_size // 2))

    def send_data(self, stream_id: int, data, end_stream: bool = False) -> int:
        """Queue as much of `data` as the flow-control windows allow.

        Returns:
            Bytes taken. END_STREAM is sent only once all of `data` is taken.
        Raises:
            LocalProtocolError: the stream is not open for sending.
        """
        stream = self._open_stream(stream_id)
        total = len(data)
        try:
            n = min(total, self._h2.local_flow_control_window(stream_id))
            step = min(self._h2.max_outbound_frame_size, SEND_FRAME_SIZE)
            if 0 < n == total <= step and isinstance(data, bytes):
                # The common case (one read = one frame): hand h2 the object
                # itself; h2 copies memoryviews (tobytes) but not bytes.
                self._h2.send_data(stream_id, data, end_stream=end_stream)
                n = total
                off = n
            else:
                off = 0
            view = memoryview(data)
            while off < n:
                chunk = view[off:min(off + step, n)]
                off += len(chunk)
                self._h2.send_data(stream_id, chunk, end_stream=end_stream and off == total)
            if end_stream and total == 0:
                self._h2.end_stream(stream_id)
        except h2x.ProtocolError as e:
            raise LocalProtocolError(f"cannot send on stream {stream_id}: {e}") from e
        if end_stream and n == total:
            self._ended_locally(stream_id, stream)
        return n

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (TCP FIN seen on the plaintext side)."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort a stream (TCP RST seen on the plaintext side). Idempotent."""
        self._streams.pop(stream_id, None)
        if self.dead:
            return
        try:
            self._h2.reset_stream(stream_id, error_code)
        except (h2x.StreamClosedError, h2x.ProtocolError):
            pass

    def acknowledge(self, stream_id: int, size: int) -> None:
        """`size` flow-controlled bytes of `stream_id` were consumed; h2 sends
        WINDOW_UPDATEs in batches (once half a window is consumed)."""
        if size and not self.dead:
            self._h2.acknowledge_received_data(size, stream_id)

    def stream_state(self, stream_id: int) -> str:
        s = self._streams.get(stream_id)
        return s.state if s else CLOSED

    def _open_stream(self, stream_id: int) -> _Stream:
        s = self._streams.get(stream_id)
        if s is None or s.state != OPEN or s.local_ended or self.dead:
            raise LocalProtocolError(f"stream {stream_id} is not open for sending")
        return s

    def _ended_locally(self, stream_id: int, stream: _Stream) -> None:
        stream.local_ended = True
        if stream.remote_ended:
            self._streams.pop(stream_id, None)

    # -- h2 event handlers: each appends our events to `out` -----------------

    def _on_data(self, e: h2e.DataReceived, out: list) -> None:
        s = self._streams.get(e.stream_id)
        if s is None or s.state == CLOSED:
            # A stream we refused or reset: drop, but give the window back.
            self.acknowledge(e.stream_id, e.flow_controlled_length)
            return
        if e.data:
            out.append(ev.DataReceived(stream_id=e.stream_id, data=e.data,
                                       flow_controlled_length=e.flow_controlled_length))
        elif e.flow_controlled_length:
            self.acknowledge(e.stream_id, e.flow_controlled_length)   # padding only

    def _on_stream_ended(self, e: h2e.StreamEnded, out: list) -> None:
        s = self._streams.get(e.stream_id)
        if s is None or s.state == CLOSED:
            return
        s.remote_ended = True
        if s.local_ended:
            self._streams.pop(e.stream_id, None)
        out.append(ev.StreamEnded(stream_id=e.stream_id))

    def _on_stream_reset(self, e: h2e.StreamReset, out: list) -> None:
        s = self._streams.pop(e.stream_id, None)
        if s is None or s.state == CLOSED:
            return
        if e.stream_id in self._batch_requests:
            # Opened and reset in one read: drop both events (see _receive).
            self._batch_dropped.add(e.stream_id)
            return
        out.append(ev.StreamReset(stream_id=e.stream_id, error_code=int(e.error_code),
                                  remote=e.remote_reset))

    def _on_window(self, e: h2e.WindowUpdated, out: list) -> None:
        if e.stream_id == 0:
            self._conn_window_peak = max(self._conn_window_peak,
                                         self._h2.outbound_flow_control_window)
        out.append(ev.WindowOpened(stream_id=e.stream_id))

    def _on_settings(self, e: h2e.RemoteSettingsChanged, out: list) -> None:
        changed = e.changed_settings
        if SettingCodes.INITIAL_WINDOW_SIZE in changed:
            out.append(ev.WindowOpened(stream_id=0))
        mcs = changed.get(SettingCodes.MAX_CONCURRENT_STREAMS)
        out.append(ev.SettingsChanged(max_concurrent_streams=mcs.new_value if mcs else None))

    def _on_ping_ack(self, e: h2e.PingAckReceived, out: list) -> None:
        if self._drain_ping is not None and e.ping_data == self._drain_ping:
            self.finish_drain()         # the client has read the announcement
        out.append(ev.PingAcked(payload=e.ping_data))

    def _on_terminated(self, e: h2e.ConnectionTerminated, out: list) -> None:
        self.goaway_received = True
        last = e.last_stream_id or 0
        if e.error_code == ErrorCodes.NO_ERROR and self.client_side:
            # Graceful: the server never processed our streams above `last`
            # (RFC 9113 §6.8), so they are refused and safe to retry; the
            # others go on. (An error GOAWAY closed h2: everything is dead.)
            for sid in sorted(sid for sid in self._streams if sid > last):
                del self._streams[sid]
                out.append(ev.StreamReset(stream_id=sid, remote=True,
                                          error_code=int(ErrorCodes.REFUSED_STREAM)))
        extra = (e.additional_data or b"").decode("latin-1", "replace")
        # h2 sets error_code on every ConnectionTerminated it emits (from the
        # GOAWAY frame); typeshed-wise the event's field defaults to None.
        out.append(ev.ConnectionClosed(error_code=int(e.error_code),  # type: ignore[arg-type]
                                       last_stream_id=last, reason=extra))

    def _on_request(self, e, out: list) -> None:   # pragma: no cover - role specific
        self.reset_stream(e.stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _on_response(self, e, out: list) -> None:   # pragma: no cover - role specific
        self.reset_stream(e.stream_id, ErrorCodes.PROTOCOL_ERROR)


class HboneClientProtocol(_HboneCore):
    """The tunnel initiator (ztunnel outbound, waypoint to pod)."""

    client_side = True

    def _local_settings(self) -> dict[SettingCodes, int]:
        values = super()._local_settings()
        values[SettingCodes.ENABLE_PUSH] = 0
        values[SettingCodes.MAX_HEADER_LIST_SIZE] = self.settings.client_max_header_list
        return values

    def open_tunnel(self, authority: str, headers=()) -> int:
        """Queue a CONNECT for `authority` (`ip:port`).

        Args:
            authority: the target; validated like the server would.
            headers: (name, value) str pairs: forwarded, baggage, traceparent...
        Returns:
            The new stream id; wait for TunnelOpened/TunnelRefused.
        Raises:
            LocalProtocolError: bad authority, dead connection or too many streams.
        """
        try:
            parse_authority(authority)
        except ValueError as e:
            raise LocalProtocolError(str(e), status=400) from e
        if self.dead or self.goaway_received:
            raise LocalProtocolError("HBONE connection is closing; open a new one")
        block = [(b":method", b"CONNECT"), (b":authority", authority.encode())]
        block += [(n.lower().encode(), v.encode()) for n, v in headers]
        try:
            stream_id = self._h2.get_next_available_stream_id()
            self._h2.send_headers(stream_id, block)
        except h2x.ProtocolError as e:
            raise LocalProtocolError(f"cannot open CONNECT stream: {e}") from e
        self._streams[stream_id] = _Stream()
        return stream_id

    def _on_response(self, e: h2e.ResponseReceived, out: list) -> None:
        s = self._streams.get(e.stream_id)
        if s is None or s.state != PENDING:
            return
        size = _header_list_size(e.headers)
        pseudo, regular = _split(e.headers)
        status_b = pseudo.get(b":status", b"")
        status = int(status_b) if status_b.isdigit() else 0
        if size > self.settings.client_max_header_list:
            reason = (f"response headers are {size} bytes, above the client limit "
                      f"{self.settings.client_max_header_list}")
            self._refuse(e.stream_id, s, 0, reason, out)
        elif status == 200:
            s.state = OPEN
            out.append(ev.TunnelOpened(stream_id=e.stream_id, headers=regular))
        else:
            self._refuse(e.stream_id, s, status, f"server answered {status or status_b!r}", out)

    def _refuse(self, stream_id: int, s: _Stream, status: int, reason: str, out: list) -> None:
        s.state = CLOSED
        self.reset_stream(stream_id, ErrorCodes.CANCEL)
        out.append(ev.TunnelRefused(stream_id=stream_id, status=status, reason=reason))


class HboneServerProtocol(_HboneCore):
    """The tunnel terminator (ztunnel inbound :15008, waypoints)."""

    client_side = False

    def _local_settings(self) -> dict[SettingCodes, int]:
        values = super()._local_settings()
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = self.settings.server_max_concurrent_streams
        values[SettingCodes.MAX_HEADER_LIST_SIZE] = self.settings.server_max_header_list
        return values

    def accept(self, stream_id: int, headers=()) -> None:
        """Answer 200: authorization passed and the upstream is connected."""
        s = self._streams.get(stream_id)
        if s is None or s.state != PENDING:
            raise LocalProtocolError(f"stream {stream_id} is not awaiting an answer")
        block = [(b":status", b"200")] + [(n.lower().encode(), v.encode()) for n, v in headers]
        self._h2.send_headers(stream_id, block)
        s.state = OPEN

    def reject(self, stream_id: int, status: int) -> None:
        """Answer `status` (401 denied, 503 upstream unreachable, 400...) and
        drop the stream; other streams are untouched. Idempotent."""
        s = self._streams.get(stream_id)
        if s is None or s.state != PENDING or self.dead:
            return
        self._respond_and_close(stream_id, status)

    def _respond_and_close(self, stream_id: int, status: int) -> None:
        self._streams.pop(stream_id, None)
        try:
            self._h2.send_headers(stream_id, [(b":status", str(status).encode())],
                                  end_stream=True)
        except h2x.ProtocolError:
            return
        # The request side may still be open: RST_STREAM NO_ERROR tells the
        # client we will read nothing more (RFC 9113 §8.1).
        try:
            self._h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        except (h2x.StreamClosedError, h2x.ProtocolError):
            pass

    def _on_request(self, e: h2e.RequestReceived, out: list) -> None:
        if self._goaway_last_id is not None and e.stream_id > self._goaway_last_id:
            # Sent before the client saw our GOAWAY: not processed, so the
            # client may retry it on another connection (RFC 9113 §8.7).
            self.reset_stream(e.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        status, reason, request = self._check_request(e)
        if status:
            self._streams[e.stream_id] = _Stream()
            self._respond_and_close(e.stream_id, status)
            out.append(ev.TunnelRejected(stream_id=e.stream_id, status=status, reason=reason))
            self._h2.guard.glitch("malformed CONNECT requests")
            return
        # A request with END_STREAM is followed by h2's StreamEnded event.
        self._streams[e.stream_id] = _Stream()
        self._batch_requests.add(e.stream_id)
        out.append(request)

    def _check_request(self, e: h2e.RequestReceived):
        size = _header_list_size(e.headers)
        if size > self.settings.server_max_header_list:
            return 431, (f"request headers are {size} bytes, above the server limit "
                         f"{self.settings.server_max_header_list}"), None
        pseudo, regular = _split(e.headers)
        method = pseudo.get(b":method", b"")
        if method != b"CONNECT":
            return 400, f"method {method.decode('latin-1')!r} is not CONNECT", None
        extra = sorted(k.decode() for k in pseudo if k not in (b":method", b":authority"))
        if extra:
            return 400, f"plain CONNECT must not carry {', '.join(extra)}", None
        authority = pseudo.get(b":authority", b"").decode("latin-1")
        try:
            host, port = parse_authority(authority)
        except ValueError as err:
            return 400, str(err), None
        return 0, "", ev.TunnelRequested(stream_id=e.stream_id, authority=authority, host=host,
                                         port=port, headers=regular,
                                         stream_ended=bool(e.stream_ended))
