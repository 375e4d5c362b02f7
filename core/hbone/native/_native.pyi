# Types of the C module shoal.core.hbone.native._native (_native.c, channel.c,
# relay.c, send.c), from their method tables and docstrings. The `object`
# arguments are what the C code takes by reference: an ssl.SSLObject's
# `_sslobj` (_ssl._SSLSocket), ssl.MemoryBIO, the HBONE connection and stream,
# the TLS protocol and its TCP transport.
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
    def __init__(self, sslsock: object, conn: object, raw: object,
                 conn_states: tuple[Any, ...], stream_states: tuple[Any, ...],
                 closed: object, keep_max: int, /) -> None: ...
    # feed() -> None | (rest, status, error) | NotImplemented
    def feed(self) -> Any: ...

class Sender:
    """A stream's C send path (send.c); called as core.pipe's push."""
    frames: int
    def __init__(self, stream: object, fallback: Callable[[bytes], bool], pushed: list[Any],
                 index: int, conn: object, tls: object, sslsock: object, raw: object,
                 conn_states: tuple[Any, ...], stream_states: tuple[Any, ...], open: object,
                 send_max: int, /) -> None: ...
    def __call__(self, data: Buffer, /) -> bool: ...
