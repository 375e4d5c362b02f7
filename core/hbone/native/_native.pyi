# Types of the C module shoal.core.hbone.native._native (_native.c, channel.c,
# relay.c, send.c, plain.c, tlspump.c), from their method tables and docstrings. The `object`
# arguments are what the C code takes by reference: an ssl.SSLObject's
# `_sslobj` (_ssl._SSLSocket), ssl.MemoryBIO, the HBONE connection and stream,
# the TLS protocol and its TCP transport.
import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from typing_extensions import Buffer

# read_into statuses (ST_* in _native.h) and the TLS record size.
NEED_INPUT: int
FULL: int
CLOSED: int
FAILED: int
RECORD: int

# attach(sslsock, inbio, outbio) -> bool: may this connection use the native calls
def attach(sslsock: object, inbio: object, outbio: object, /) -> bool: ...
# write(sslsock, chunks) -> bytes: encrypt chunks, return the pending TLS records
def write(sslsock: object, chunks: Iterable[Buffer], /) -> bytes: ...
# read_into(sslsock, buffer, offset) -> (n, status, error): decrypt into
# buffer[offset:]; error is the ssl.SSLError that ended the read, else None.
def read_into(sslsock: object, buffer: Buffer, offset: int, /) -> tuple[int, int, Any]: ...
# body(n) -> bytearray: n bytes, not zero-filled, for a DATA body to be written whole
def body(n: int, /) -> bytearray: ...

class Channel:
    """After the handshake, the SSL on a buffer BIO of its own."""
    def __init__(self, sslsock: object, inbio: object, outbio: object, /) -> None: ...
    @property
    def pending(self) -> int: ...
    def get_buffer(self) -> memoryview: ...
    def received(self, n: int, /) -> None: ...
    def feed(self, data: Buffer, /) -> None: ...
    def release(self) -> None: ...
    def write_eof(self) -> None: ...
    def output(self) -> bytes: ...

class Relay:
    """The HBONE connection's C receive path (relay.c)."""
    frames: int
    parts: int
    part_left: int
    def __init__(self, sslsock: object, conn: object, raw: object,
                 conn_states: tuple[Any, ...], stream_states: tuple[Any, ...],
                 closed: object, keep_max: int, /) -> None: ...
    # feed() -> None | (rest, status, error)
    def feed(self) -> Any: ...

class Sender:
    """A stream's C send path (send.c); called as core.pipe's push."""
    frames: int
    in_place: int
    def __init__(self, stream: object, fallback: Callable[[bytes], bool], pushed: list[Any],
                 index: int, conn: object, tls: object, sslsock: object, raw: object,
                 conn_states: tuple[Any, ...], stream_states: tuple[Any, ...], open: object,
                 send_max: int, /) -> None: ...
    def __call__(self, data: Buffer, /) -> bool: ...

PUMP_READ: int
SIZED_HOLD_WINDOW: int

class TcpPump:
    """A piped TcpEnd's protocol with data_received in C (plain.c)."""
    end: Any
    sink: Any
    def __init__(self, end: object, sink: Callable[[bytes], bool], chunks: object,
                 taken: Callable[[int], None] | None, counter: str | None, /) -> None: ...
    def data_received(self, data: bytes, /) -> None: ...
    def get_buffer(self, sizehint: int, /) -> memoryview: ...
    def buffer_updated(self, nbytes: int, /) -> None: ...
    def eof_received(self) -> Any: ...
    def connection_lost(self, exc: BaseException | None, /) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...

class TlsPump(asyncio.BufferedProtocol):
    """An HBONE connection's TLS protocol with its reading in C (tlspump.c)."""
    proto: Any
    def __init__(self, proto: object, /) -> None: ...

# flow.c: the per-frame fields of h2's and shoal's objects as C struct fields;
# base classes only (h2fast, h2limits, protocol and stream subclass them).
class Window:
    max_window_size: int
    current_window_size: int
    _bytes_processed: int

class StreamWindows:
    outbound_flow_control_window: int
    _inbound_window_manager: Any
    state_machine: Any
    _expected_content_length: int | None

class ConnectionWindows:
    outbound_flow_control_window: int
    _inbound_flow_control_window_manager: Any
    state_machine: Any
    _chunks: list[Any]
    _data_to_send: bytearray
    max_inbound_frame_size: int
    max_outbound_frame_size: int

class StateMachine:
    state: Any

class GuardCounters:
    data_frames_sent: int
    empty_in_a_row: int
    outbound_control: int

class CoreFlags:
    dead: bool
    draining: bool
    goaway_received: bool

class CoreStream:
    state: str
    local_ended: bool
    remote_ended: bool

class PlainEndFields:
    transport: Any
    _drain_waiter: Any
    bytes_written: int
    _can_write: bool

class TunnelFields:
    bytes_sent: int
    bytes_received: int
    _chunks: Any
    _sink: Any
    _error: Any
    _writing: bool
