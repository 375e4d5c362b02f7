"""HTTP/2 abuse limits for every h2 endpoint of shoal (HBONE both roles, the
waypoint's h2 front end): sans-IO, shared by `GuardedH2Connection`.

The attacks are the HTTP/2 CVEs of 2019-2024 (Netflix's floods, rapid reset
CVE-2023-44487, CONTINUATION flood CVE-2024-27316). Each limit answers one and
follows what Envoy and nghttp2 ship, so a peer that works against them works
against us:

- a peer whose resets (RST_STREAM received, server role) or "glitches"
  (streams we had to refuse or reject as malformed) exceed a token
  bucket loses the connection: GOAWAY(ENHANCE_YOUR_CALM);
- control frames (PING, SETTINGS, PRIORITY, unknown types) share a token
  bucket; WINDOW_UPDATEs are bounded by the DATA we sent (Envoy's formula);
  frames with an empty payload and no END_STREAM may not follow each other;
- a header block (HEADERS/PUSH_PROMISE + CONTINUATION) is bounded in bytes
  while it arrives, frame header by frame header, not once it is whole;
- control frames we queue (PING/SETTINGS ACKs, RST_STREAMs) while the peer
  does not read are bounded: a peer that floods without reading is cut off;
- a stream above our SETTINGS_MAX_CONCURRENT_STREAMS is refused alone
  (RST_STREAM REFUSED_STREAM, RFC 9113 §5.1.2), the others go on.

Every limit raises `FloodError` (an h2 ProtocolError carrying
ENHANCE_YOUR_CALM and the limit's name), so the owner's one receive boundary
queues the GOAWAY and closes. Time comes from an injected clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import h2.exceptions as h2x
import hyperframe.frame as hf
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.frame_buffer import FrameBuffer
from h2.stream import StreamClosedBy

from shoal.core.hbone import fastpath

# Stream resets received, as a token bucket: nghttp2's defaults since 1.57
# (nghttp2_option_set_stream_reset_rate_limit; Node's streamResetBurst/Rate):
# 1000 at once, 33 per second after that. An honest client resets a few
# streams per second; rapid reset sends thousands per 10 ms.
RESET_BURST = 1000
RESET_RATE = 33.0
# Streams we refused (above the concurrency limit) or rejected as malformed
# (400, 431): nghttp2's "glitch" budget
# (nghttp2_option_set_glitch_rate_limit, same 1000 / 33 per second). Envoy's
# rapid-reset advisory counts malformed requests answered with a reset too.
GLITCH_BURST = 1000
GLITCH_RATE = 33.0
# PING, SETTINGS, PRIORITY and unknown frame types: an HBONE peer sends a
# PING every 10 s and SETTINGS once or twice per connection; gRPC's BDP pings
# stay at a few per second. 1000 at once and 100 per second leave two orders
# of magnitude for honest peers while a flood (the probe sent 16-30k/s) is
# cut off within a second. nghttp2/Envoy bound these only through the
# outbound ACK queue; that alone lets a peer that reads burn a core.
CONTROL_BURST = 1000
CONTROL_RATE = 100.0
# Envoy's max_inbound_window_update_frames_per_data_frame_sent (default 10):
# WINDOW_UPDATEs may exceed 5 + 2 * (streams opened + 10 * DATA frames sent)
# only in a flood. An honest HBONE receiver sends one per 2 MiB of a stream.
WINDOW_UPDATES_PER_DATA_FRAME = 10
# Envoy's max_consecutive_inbound_frames_with_empty_payload (default 1):
# DATA/HEADERS/CONTINUATION without payload and without END_STREAM do
# nothing but cost CPU; two in a row are a flood.
MAX_CONSECUTIVE_EMPTY_FRAMES = 1
# Envoy's max_outbound_control_frames (default 1000): control frames we have
# queued (ACKs, RST_STREAMs, WINDOW_UPDATEs) that the peer has not read.
MAX_OUTBOUND_CONTROL_FRAMES = 1000
# HPACK's Huffman code is at most 30 bits per octet (RFC 7541 Appendix B), so
# an encoded field is at most 3.75x its decoded size (plus a few prefix
# octets). A header block longer than 4x the decoded limit can therefore never
# decode under it; it is refused as soon as its frame headers say so, before
# the bytes are buffered. With the server's 64 KiB this is 256 KiB (Envoy
# accepts 60 KiB decoded by default, at most 8 MiB; nghttp2 closes after 8
# CONTINUATION frames).
HEADER_BLOCK_EXPANSION = 4
# h2's own bound on CONTINUATION frames per block, kept as the frame count
# bound (bytes are the real bound above; empty ones hit the empty-frame rule).
MAX_CONTINUATIONS = 64

_HEADER_TYPES = frozenset({0x1, 0x5, 0x9})    # HEADERS, PUSH_PROMISE, CONTINUATION
_CONTROL = (hf.PingFrame, hf.SettingsFrame, hf.PriorityFrame, hf.ExtensionFrame)
_OUT_COUNTED = (hf.PingFrame, hf.SettingsFrame, hf.RstStreamFrame, hf.WindowUpdateFrame,
                hf.PriorityFrame, hf.GoAwayFrame)


class FloodError(h2x.ProtocolError):
    """The peer exceeded one of the limits: connection error ENHANCE_YOUR_CALM.

    Attributes:
        limit: which one ("resets", "glitches", "control_frames",
            "window_updates", "empty_frames", "header_block",
            "outbound_control_frames").
    """

    error_code = ErrorCodes.ENHANCE_YOUR_CALM

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"{limit} limit: {detail}")
        self.limit = limit


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Limits:
    """The budgets of one connection; validated, nothing else."""

    reset_burst: int = RESET_BURST
    reset_rate: float = RESET_RATE
    glitch_burst: int = GLITCH_BURST
    glitch_rate: float = GLITCH_RATE
    control_burst: int = CONTROL_BURST
    control_rate: float = CONTROL_RATE
    window_updates_per_data_frame: int = WINDOW_UPDATES_PER_DATA_FRAME
    max_consecutive_empty_frames: int = MAX_CONSECUTIVE_EMPTY_FRAMES
    max_outbound_control_frames: int = MAX_OUTBOUND_CONTROL_FRAMES
    max_header_block: int = 256 * 1024       # bytes of one encoded header block
    max_continuations: int = MAX_CONTINUATIONS

    def __post_init__(self) -> None:
        for name in ("reset_burst", "glitch_burst", "control_burst",
                     "max_outbound_control_frames", "max_header_block", "max_continuations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("reset_rate", "glitch_rate", "control_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.window_updates_per_data_frame < 1 or self.max_consecutive_empty_frames < 0:
            raise ValueError("window update and empty-frame limits out of range")


DEFAULT_LIMITS = H2Limits()


class TokenBucket:
    """`burst` tokens at first, `rate` more per second, never above `burst`."""

    __slots__ = ("burst", "rate", "tokens", "stamp")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst, self.rate = burst, rate
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token; False when none is left."""
        if self.tokens < 1.0:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1.0:
                return False
        self.tokens -= 1.0
        return True


# data_frames_sent, empty_in_a_row and outbound_control as C fields
# (core/hbone/native/flow.c) when the C module loads: its data paths count
# every DATA frame in them by pointer.
_GuardBase: Any = fastpath.fields_base("GuardCounters")


class FloodGuard(_GuardBase):
    """Counts what the peer makes us do; raises FloodError past a limit."""

    def __init__(self, limits: H2Limits = DEFAULT_LIMITS, *, server: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        now = clock()
        self.limits = limits
        self.server = server
        self.clock = clock
        self.resets = TokenBucket(limits.reset_burst, limits.reset_rate, now)
        self.glitches = TokenBucket(limits.glitch_burst, limits.glitch_rate, now)
        self.control = TokenBucket(limits.control_burst, limits.control_rate, now)
        self.window_updates = 0
        self.data_frames_sent = 0
        self.streams_opened = 0
        self.empty_in_a_row = 0
        self.outbound_control = 0

    def _spend(self, bucket: TokenBucket, limit: str, what: str) -> None:
        if not bucket.take(self.clock()):
            raise FloodError(limit, f"{what} above {bucket.burst} at once or "
                                    f"{bucket.rate:g}/s")

    def _check_outbound(self) -> None:
        if self.outbound_control > self.limits.max_outbound_control_frames:
            raise FloodError("outbound_control_frames",
                             f"{self.outbound_control} control frames queued that the peer "
                             f"did not read")

    def on_frame(self, frame) -> None:
        """Every received frame, before h2 handles it."""
        self._check_outbound()
        kind = type(frame)
        if kind is hf.DataFrame or kind is hf.HeadersFrame or kind is hf.ContinuationFrame:
            self._payload(frame, kind)
        elif kind is hf.RstStreamFrame:
            if self.server:
                self._spend(self.resets, "resets", "RST_STREAM frames")
        elif kind is hf.WindowUpdateFrame:
            self.window_updates += 1
            allowed = 5 + 2 * (self.streams_opened + self.limits.window_updates_per_data_frame
                               * self.data_frames_sent)
            if self.window_updates > allowed:
                raise FloodError("window_updates", f"{self.window_updates} WINDOW_UPDATE "
                                 f"frames for {self.data_frames_sent} DATA frames sent")
        elif isinstance(frame, _CONTROL):
            self._spend(self.control, "control_frames", "PING/SETTINGS/PRIORITY frames")

    def on_data_payload(self) -> None:
        """A DATA frame with payload, received on the fast path (h2fast):
        what `on_frame` checks for it."""
        self._check_outbound()
        self.empty_in_a_row = 0

    def _payload(self, frame, kind) -> None:
        if kind is hf.HeadersFrame:
            self.streams_opened += 1
        if frame.data or "END_STREAM" in frame.flags or "END_HEADERS" in frame.flags:
            self.empty_in_a_row = 0
            return
        self.empty_in_a_row += 1
        if self.empty_in_a_row > self.limits.max_consecutive_empty_frames:
            raise FloodError("empty_frames", f"{self.empty_in_a_row} frames in a row "
                                             f"without payload or END_STREAM")

    def glitch(self, what: str) -> None:
        """A refused/rejected stream or a frame for a dead stream."""
        self._spend(self.glitches, "glitches", what)

    def on_sent(self, frames) -> None:
        """Frames h2 queued: count DATA (window-update credit), streams we
        opened and control frames. Never raises: the check is made on the
        next received frame, where a GOAWAY can be queued cleanly."""
        for f in frames:
            kind = type(f)
            if kind is hf.DataFrame:
                self.data_frames_sent += 1
            elif kind is hf.HeadersFrame:
                self.streams_opened += 1
            elif kind in _OUT_COUNTED:
                self.outbound_control += 1

    def output_drained(self) -> None:
        """The transport wrote everything we queued."""
        self.outbound_control = 0


class GuardedFrameBuffer(FrameBuffer):
    """h2's frame buffer; a header block is bounded in bytes (and frames) as
    its frame headers arrive, before its bodies are buffered."""

    max_header_block = DEFAULT_LIMITS.max_header_block
    max_continuations = DEFAULT_LIMITS.max_continuations

    def _check_header_frame(self) -> None:
        buf = self._data
        if len(buf) < 9 or buf[3] not in _HEADER_TYPES:
            return
        length = int.from_bytes(buf[0:3], "big")
        pending = sum(len(f.data) for f in self._headers_buffer)
        if pending + length > self.max_header_block:
            raise FloodError("header_block", f"header block of at least {pending + length} "
                                             f"bytes, limit {self.max_header_block}")
        if len(self._headers_buffer) > self.max_continuations:
            raise FloodError("header_block", f"more than {self.max_continuations} "
                                             f"CONTINUATION frames in one header block")

    def __next__(self):
        self._check_header_frame()
        return super().__next__()


# h2 remembers how each closed stream ended (so a frame arriving on it just
# after the close gets a stream error, not a connection error) for the last
# 2**16 streams. On a long-lived connection that carries one stream per
# proxied TCP connection (a pooled HBONE connection) or per request (a
# waypoint's h2 upstream), that history was the worker's memory growth: ~135 B
# per stream, linear up to 65,536 streams per connection. Late frames arrive
# within a round trip of the close; 1,024 closes in one round trip is far
# beyond a node's rate, and caps the history at ~140 KiB per connection.
# (Rust's h2, under Istio's ztunnel, keeps only a handful of reset streams.)
MAX_CLOSED_STREAMS = 1024


class GuardedH2Connection(H2Connection):
    """h2's connection with the limits of this module.

    Owners call `output_drained()` when their transport's write buffer is
    empty. `guard` is the FloodGuard; `refused_streams` counts RFC 9113
    §5.1.2 refusals (for metrics and tests).
    """

    frame_buffer_class = GuardedFrameBuffer
    MAX_CLOSED_STREAMS = MAX_CLOSED_STREAMS

    def __init__(self, config, *, limits: H2Limits = DEFAULT_LIMITS,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(config=config)
        self.guard = FloodGuard(limits, server=not config.client_side,
                                clock=clock or time.monotonic)
        self.refused_streams = 0
        buf = self.incoming_buffer = self.frame_buffer_class(server=not config.client_side)
        buf.max_header_block = limits.max_header_block
        buf.max_continuations = limits.max_continuations

    def _receive_frame(self, frame):
        self.guard.on_frame(frame)
        return super()._receive_frame(frame)

    def _prepare_for_sending(self, frames) -> None:
        if frames:
            self.guard.on_sent(frames)
        super()._prepare_for_sending(frames)

    def _receive_headers_frame(self, frame):
        if frame.stream_id not in self.streams and not self.config.client_side \
                and frame.stream_id > self.highest_inbound_stream_id \
                and frame.stream_id % 2 == 1 \
                and self.open_inbound_streams >= self.local_settings.max_concurrent_streams:
            return self._refuse_stream(frame)
        return super()._receive_headers_frame(frame)

    def _refuse_stream(self, frame):
        """RFC 9113 §5.1.2: a stream above our limit gets RST_STREAM
        REFUSED_STREAM (safe to retry); the connection and its other streams
        are untouched. The block is still decoded: HPACK state is shared."""
        from h2.connection import _decode_headers
        _decode_headers(self.decoder, frame.data)
        self.highest_inbound_stream_id = frame.stream_id
        self._closed_streams[frame.stream_id] = StreamClosedBy.SEND_RST_STREAM
        self.refused_streams += 1
        self.guard.glitch("streams above SETTINGS_MAX_CONCURRENT_STREAMS")
        rst = hf.RstStreamFrame(frame.stream_id)
        rst.error_code = ErrorCodes.REFUSED_STREAM
        return [rst], []

    def output_drained(self) -> None:
        """The owner's transport has written everything: reset the count of
        control frames waiting for the peer to read them."""
        self.guard.output_drained()
