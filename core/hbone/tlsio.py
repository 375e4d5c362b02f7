"""TLS over a TCP transport with memory BIOs, for HBONE's own use.

Why not `create_server(ssl=...)`: asyncio/uvloop only debug-log a refused
handshake, and we must log every one (no client cert, unknown CA, expired,
not TLS at all) with the peer and reason; uvloop's server-side `start_tls`
also stalls here. Owning the TLS layer also lets us read large batches:
all decrypted records available are handed up in one `data_received`.

`TlsTransport` is what the application protocol (HboneConnection) sees; the
`_TlsProtocol` sits on the TCP transport. TLS has no half-close, and HBONE
needs none (half-close lives in HTTP/2 END_STREAM).

After the handshake, the record calls (encrypt a batch of chunks, decrypt a
batch) go to the C module of core/hbone/fastpath.py when it accepts the
connection: the same OpenSSL calls on the same SSL object, without a Python
call per record and an SSLWantReadError per batch (docs/bench/profiles/).
There the handshake's memory BIOs are then swapped for the C module's
`Channel`: the socket read lands in the buffer OpenSSL reads ciphertext
from (BufferedProtocol), and sealed records go straight into the bytes
object handed to the socket write, with no zero-fill and two copies fewer per
byte than ssl.MemoryBIO.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any, Callable, cast

from shoal.core.hbone import fastpath
from shoal.core.hbone.alloc import tune_allocator

if TYPE_CHECKING:
    from shoal.core.hbone.native._native import Channel

# Decrypt up to this much per data_received call: large batches mean fewer
# h2/Python round trips per byte (uvloop uses the same 256 KiB). The buffer
# is one per process, not per connection: the app copies what it keeps
# before data_received returns, so it is free again after each delivery.
READ_BATCH = 256 * 1024
# One TLS record carries at most 16 KiB of plaintext (RFC 8446 §5.1).
_RECORD = 16 * 1024
# TLS record header: type (22 = handshake), version (2), length (2).
_RECORD_HEADER = 5
_HANDSHAKE = 0x16
# For apps that take DATA bodies directly (`receive_buffer`): hand our batch
# up after this much, so a large frame's header is seen early and the rest of
# its body is decrypted into the app's buffer, not copied through ours.
DIRECT_BATCH = _RECORD
# Socket reads before the Channel (the handshake) and on the pure-Python path
# land in one process-wide buffer of this size (uvloop's own read size), from
# which ssl.MemoryBIO copies them: a read is consumed before the next starts.
RAW_READ = 256 * 1024
# After an error GOAWAY the peer may still be sending. Closing a socket with
# unread bytes makes the kernel answer RST, which can destroy the GOAWAY
# before the peer reads it. So, as Envoy's delayed close
# (delayed_close_timeout, 1 s by default): send FIN, drop what arrives, and
# close when the peer does or after this long.
LINGER_CLOSE = 1.0


class _ReadBuffer:
    """The process's READ_BATCH buffer, lent to one `_read_app` at a time.

    Per connection it cost 256 KiB before the peer even sent a ClientHello
    (2,250 silent connections: +692 MB). A nested read (an app that makes
    another connection read from inside data_received) gets a buffer of its
    own for that one call."""

    def __init__(self) -> None:
        self._buf: bytearray | None = None
        self._busy = False

    def take(self) -> bytearray:
        if self._busy:
            return bytearray(READ_BATCH)
        self._busy = True
        if self._buf is None:
            self._buf = bytearray(READ_BATCH)
        return self._buf

    def give(self, buf: bytearray) -> None:
        if buf is self._buf:
            self._busy = False


_READ_BUFFER = _ReadBuffer()
_RAW = memoryview(bytearray(RAW_READ))


class TlsTransport(asyncio.Transport):
    """The application-facing side of a TLS connection."""

    def __init__(self, proto: "_TlsProtocol") -> None:
        super().__init__()
        self._p = proto

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self._p.sslobj
        if name == "sslcontext":
            return self._p.context
        return self._p.raw.get_extra_info(name, default)

    def write(self, data) -> None:
        self._p.app_write(data)

    def writelines(self, chunks) -> None:
        self._p.app_writelines(chunks)

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._p.closing or self._p.raw.is_closing()

    def close(self) -> None:
        self._p.app_close()

    def linger_close(self) -> None:
        """Close after an error the peer must learn (see LINGER_CLOSE)."""
        self._p.app_linger_close()

    def abort(self) -> None:
        self._p.closing = True
        self._p.raw.abort()

    def pause_reading(self) -> None:
        self._p.raw.pause_reading()

    def resume_reading(self) -> None:
        self._p.raw.resume_reading()

    def is_reading(self) -> bool:
        return self._p.raw.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._p.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._p.raw.get_write_buffer_size()

    def set_protocol(self, protocol) -> None:
        self._p.app = protocol
        self._p._direct = hasattr(protocol, "receive_buffer")
        self._p._start_relay()

    def get_protocol(self):
        return self._p.app

    def native_tls(self):
        """(protocol, _ssl socket, TCP transport) when this connection's
        record calls are the C ones (for core/hbone/native/send.c), else None."""
        p = self._p
        return (p, p._ssl, p.raw) if p._native is not None else None


# _chan, _linger, _relay, _app_transport and closing in a C struct when the
# C path loaded (core/hbone/native/flow.c): its TlsPump reads them by pointer
# on every TLS read (tlspump.c); plain attributes otherwise.
_TlsFields: Any = fastpath.fields_base("TlsFields")


class _TlsProtocol(_TlsFields, asyncio.BufferedProtocol):
    """Runs the handshake, then encrypts/decrypts for `app`.

    Memory before the handshake is what a peer without a certificate can
    make us hold, so a server-side connection allocates nothing until the
    peer's first bytes arrive (then the TLS objects), and the application
    (`app_factory`: HTTP/2 state, stream tables) only once the handshake
    passed. Reads borrow the process's one read buffer (_ReadBuffer).
    """

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 app: asyncio.Protocol | None = None, app_factory=None,
                 handshake_timeout: float, on_close=None) -> None:
        tune_allocator()                  # once per process; see core.hbone.alloc
        self.loop = asyncio.get_running_loop()
        self.context = context
        self.server_side = server_side
        # An asyncio.Protocol; HboneConnection's also has receive_buffer,
        # received_into and native_relay, which are looked up with hasattr.
        self.app: Any = app
        self._app_factory = app_factory
        self.handshake_timeout = handshake_timeout
        self.handshake: asyncio.Future = self.loop.create_future()
        # raw and _timer are set by connection_made, the first call asyncio
        # makes; sslobj, _in and _out by _start_tls, before any TLS work
        # (data_received tests sslobj for None to know whether it ran).
        self.raw: asyncio.Transport = None          # type: ignore[assignment]  # see above
        self.sslobj: ssl.SSLObject = None           # type: ignore[assignment]  # see above
        self.closing = False
        self._in: ssl.MemoryBIO = None              # type: ignore[assignment]  # see above
        self._out: ssl.MemoryBIO = None             # type: ignore[assignment]  # see above
        self._app_transport: TlsTransport | None = None
        self._timer: asyncio.TimerHandle = None     # type: ignore[assignment]  # see above
        self._direct = False
        self._on_close = on_close         # (handshake_done: bool) -> None, once
        self._handshook = False
        self._linger: asyncio.TimerHandle | None = None    # set while lingering
        # fastpath.native (a module, so Any to mypy), once it accepted sslobj
        self._native: Any = None
        self._relay: Any = None           # the app's C receive path (native_relay), if any
        self._ssl: Any = None             # sslobj's _ssl._SSLSocket, for _native
        self._chan: Channel | None = None  # _native.Channel, after the handshake

    # -- raw TCP side -------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.raw = transport
        self._timer = self.loop.call_later(self.handshake_timeout, self._handshake_timeout)
        if not self.server_side:
            self._start_tls()
            self._do_handshake()          # the ClientHello

    _hello: bytearray | None = None

    def _have_client_hello(self, data) -> bool:
        """Server: keep the first TLS record's bytes (the ClientHello, a few
        hundred bytes) until it is whole; only then make the TLS objects
        (~45 KiB in OpenSSL once it starts reading a record). Anything that
        is not a TLS handshake record goes to OpenSSL at once for its error."""
        if self._hello is None:
            self._hello = bytearray()
        hello = self._hello
        hello += data
        if hello[0] != _HANDSHAKE:
            return True
        if len(hello) < _RECORD_HEADER:
            return False
        need = _RECORD_HEADER + int.from_bytes(hello[3:5], "big")
        return len(hello) >= need or need > _RECORD_HEADER + _RECORD

    def _start_tls(self) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        # server_hostname=None: no SNI (ztunnel sends none).
        self.sslobj = self.context.wrap_bio(self._in, self._out, server_side=self.server_side,
                                            server_hostname=None)
        native = fastpath.native
        # _sslobj: the _ssl._SSLSocket under ssl.SSLObject, private to ssl
        # and absent from typeshed; _native.attach checks its layout.
        sslsock = self.sslobj._sslobj               # type: ignore[attr-defined]  # see above
        if native is not None and native.attach(sslsock, self._in, self._out):
            self._native, self._ssl = native, sslsock

    def get_buffer(self, sizehint: int) -> memoryview:
        chan = self._chan
        return chan.get_buffer() if chan is not None else _RAW

    def buffer_updated(self, nbytes: int) -> None:
        chan = self._chan
        if chan is None:
            self.data_received(_RAW[:nbytes])
        elif self._linger is None:
            chan.received(nbytes)
            self._read_app()
            chan.release()

    def data_received(self, data) -> None:
        if self._linger is not None:
            return                        # closing after an error: dropped
        if self._chan is not None:
            self._chan.feed(data)
            self._read_app()
            return
        if self.sslobj is None:
            if self.closing or not self._have_client_hello(data):
                return
            data, self._hello = bytes(cast(bytearray, self._hello)), None
            self._start_tls()
        self._in.write(data)
        if not self.handshake.done():
            self._do_handshake()
        else:
            self._read_app()

    def eof_received(self):
        if self._linger is not None or self._in is None:
            return False
        if self._chan is not None:
            self._chan.write_eof()
        else:
            self._in.write_eof()
        if self.handshake.done() and self._app_transport is not None:
            self._read_app()
            self.app.eof_received()
        return False

    def connection_lost(self, exc) -> None:
        self.closing = True
        self._relay = None
        if self._timer is not None:
            self._timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed during TLS handshake"))
            self.handshake.exception()
        elif self._app_transport is not None:
            self.app.connection_lost(exc)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self._handshook)

    def pause_writing(self) -> None:
        if self._app_transport is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_transport is not None:
            self.app.resume_writing()

    # -- handshake ----------------------------------------------------------

    def _do_handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as e:
            self._flush()                      # the alert, if any
            self._fail_handshake(e)
            return
        self._flush()
        if self._native is not None:
            self._chan = self._native.Channel(self._ssl, self._in, self._out)
        self._timer.cancel()
        self._handshook = True
        if self.app is None:
            self.app = self._app_factory()
        self._app_transport = TlsTransport(self)
        self.handshake.set_result(self._app_transport)
        self._direct = hasattr(self.app, "receive_buffer")
        self.app.connection_made(self._app_transport)
        self._start_relay()
        get_protocol = getattr(self.raw, "get_protocol", None)    # not on in-memory test transports
        if self._chan is not None and get_protocol is not None and get_protocol() is self:
            # Reading in C from now on (core/hbone/native/tlspump.c): what
            # get_buffer, buffer_updated and _read_app do, without their frames.
            self.raw.set_protocol(self._native.TlsPump(self))
        if (self._chan or self._in).pending:
            self._read_app()

    def _start_relay(self) -> None:
        """Ask the app for its C receive path (HboneConnection.native_relay)."""
        make = getattr(self.app, "native_relay", None)
        self._relay = None
        if make is not None and self._native is not None and self._app_transport is not None:
            self._relay = make(self._ssl, self.raw)

    def _fail_handshake(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()
        self.closing = True
        if self.raw is not None:
            self.raw.close()

    def abandon(self) -> None:
        """The caller of `connect` stopped waiting: close the connection,
        whether the handshake is still running or has just finished."""
        if self._handshook:
            self.app_close()
        else:
            self._fail_handshake(ConnectionAbortedError("TLS handshake abandoned by its caller"))

    def evict(self) -> None:
        """Abort an unfinished handshake (the worker needs the room)."""
        if not self.handshake.done():
            self._fail_handshake(ConnectionAbortedError(
                "TLS handshake aborted: too many pending handshakes on this worker"))
            if self.raw is not None:
                self.raw.abort()

    def _handshake_timeout(self) -> None:
        if not self.handshake.done():
            self._fail_handshake(TimeoutError(
                f"TLS handshake not done after {self.handshake_timeout:g}s"))
            self.raw.abort()

    # -- application data ---------------------------------------------------

    def _read_app(self) -> None:
        # Apps with `receive_buffer()`/`received_into(n)` (HboneConnection) may
        # ask for bytes to be decrypted straight into their own buffer (a large
        # DATA body); everything else is batched in our buffer. While the app
        # could start such a buffer, our batch is handed up after every
        # DIRECT_BATCH bytes, so at most that much of a body takes the copy path.
        relay = self._relay
        if relay is not None and self._app_transport is not None and not self.closing:
            # The app's C receive path (HboneConnection.native_relay): it
            # relays the frames it may take and hands back, in order, the
            # plaintext from the first it may not (None: nothing left).
            rest = relay.feed()
            if rest is not None:
                self._relayed_rest(*rest)
            return
        self._read_batched()

    def _read_batched(self) -> None:
        """Decrypt what is buffered into the process's read buffer, batch by batch."""
        buf = _READ_BUFFER.take()
        try:
            if self._native is not None:
                self._read_batches_native(buf)
            else:
                self._read_batches(buf)
        finally:
            _READ_BUFFER.give(buf)

    def _relayed_rest(self, rest: bytes, status: int, error) -> None:
        """What the relay's feed() left: the plaintext to the app, then the
        rest of the input (also called by core/hbone/native/tlspump.c).

        The app takes what the relay could not (a control frame, a frame
        for a stream without a plain socket); then the relay goes on with
        the rest of the read, unless it handed nothing over (it could not
        start: the app's frame buffer holds a partial frame), in which case
        the loop below reads on in Python. A loop, not a recursion: a read
        may hold thousands of control frames."""
        while True:
            if rest and self._app_transport is not None and not self.closing:
                self.app.data_received(rest)
            if error is not None:
                self._read_failed(error)
                return
            if status != self._native.FULL or self.closing:
                self._flush()                    # key updates, etc.
                return
            relay = self._relay
            if not rest or relay is None or self._app_transport is None:
                self._read_batched()             # the relay exists only on the C path
                return
            more = relay.feed()
            if more is None:
                return
            rest, status, error = more

    def _read_batches_native(self, buf: bytearray) -> None:
        """_read_batches in one C call per batch: the whole buffer, or
        DIRECT_BATCH of it while the app may take a body directly."""
        native, ssl_ = self._native, self._ssl
        direct = self._direct
        view = memoryview(buf)
        batch = view[:DIRECT_BATCH] if direct else view
        while True:
            if direct:
                target = self.app.receive_buffer()
                if target is not None:
                    if not self._read_into(target):
                        break
                    continue
            n, status, error = native.read_into(ssl_, batch, 0)
            self._deliver(view, n)
            if error is not None:
                self._read_failed(error)
                return
            if status != native.FULL or self.closing:
                break
        self._flush()                            # key updates, etc.

    def _read_batches(self, buf: bytearray) -> None:
        direct = self._direct
        view, size, n = memoryview(buf), len(buf), 0
        while True:
            if direct and n == 0:
                target = self.app.receive_buffer()
                if target is not None:
                    if not self._read_into(target):
                        break
                    continue
            if n > size - _RECORD or (direct and n >= DIRECT_BATCH):
                self._deliver(view, n)
                n = 0
                continue
            try:
                # with a buffer, read() returns the count (typeshed: bytes only)
                got: int = self.sslobj.read(size - n, view[n:])  # type: ignore[assignment]
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:       # close_notify
                break
            except ssl.SSLError as e:
                self._deliver(view, n)
                self._read_failed(e)
                return
            if not got:
                break
            n += got
        self._deliver(view, n)
        self._flush()                            # key updates, etc.

    def _read_into(self, target: memoryview) -> bool:
        """Decrypt into the app's `target` until it is full or no more input
        is available; returns False when no more input is available."""
        if self._native is not None:
            return self._read_into_native(target)
        total, filled, more = len(target), 0, True
        read = self.sslobj.read
        try:
            while filled < total:
                try:
                    # with a buffer, read() returns the count (typeshed: bytes only)
                    got: int = read(total - filled, target[filled:])  # type: ignore[assignment]
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    more = False
                    break
                if not got:
                    more = False
                    break
                filled += got
        except ssl.SSLError as e:
            target.release()
            self._read_failed(e)
            return False
        target.release()
        if filled and self._app_transport is not None and not self.closing:
            self.app.received_into(filled)
        return more and not self.closing

    def _read_into_native(self, target: memoryview) -> bool:
        filled, status, error = self._native.read_into(self._ssl, target, 0)
        target.release()
        if error is not None:
            self._read_failed(error)
            return False
        if filled and self._app_transport is not None and not self.closing:
            self.app.received_into(filled)
        return status == self._native.FULL and not self.closing

    def _read_failed(self, e: ssl.SSLError) -> None:
        self.closing = True
        self.raw.abort()
        self.app.connection_lost(e)
        self._app_transport = None

    def _deliver(self, view: memoryview, n: int) -> None:
        # A view into our reused buffer, not a copy: HBONE's app (h2) copies
        # what it keeps before returning. Other apps must do the same.
        if n and self._app_transport is not None and not self.closing:
            self.app.data_received(view[:n])

    def app_write(self, data) -> None:
        if self.closing or self.raw.is_closing():
            return
        if self._native is not None:
            self._write_native((data,))
            return
        try:
            self.sslobj.write(data)
        except ssl.SSLError:
            self.raw.abort()
            return
        self._flush()

    def app_writelines(self, chunks) -> None:
        """Encrypt `chunks` in order: small ones coalesced into one record
        batch, large ones passed to OpenSSL as they are (no extra copy)."""
        if self.closing or self.raw.is_closing():
            return
        if self._native is not None:
            self._write_native(chunks)
            return
        small: list = []
        write = self.sslobj.write
        try:
            for c in chunks:
                if len(c) < _RECORD:
                    small.append(c)
                    continue
                if small:
                    write(b"".join(small))
                    small = []
                write(c)
            if small:
                write(b"".join(small) if len(small) > 1 else small[0])
        except ssl.SSLError:
            self.raw.abort()
            return
        self._flush()

    def _write_native(self, chunks) -> None:
        """Encrypt in C (small chunks gathered into full records) and write
        every record queued, earlier ones (a handshake's) first."""
        try:
            records = self._native.write(self._ssl, chunks)
        except ssl.SSLError:
            self.raw.abort()
            return
        if records:
            self.raw.write(records)

    def app_close(self) -> None:
        if self._close_notify():
            self.raw.close()

    def _close_notify(self) -> bool:
        """Queue and flush close_notify once; False if already closing."""
        if self.closing:
            return False
        self.closing = True
        try:
            self.sslobj.unwrap()
        except (ssl.SSLError, ValueError):
            pass
        self._flush()
        return True

    def app_linger_close(self) -> None:
        if not self._close_notify():
            return
        try:
            self.raw.write_eof()                 # FIN after what is queued
        except (OSError, RuntimeError, NotImplementedError):
            self.raw.close()
            return
        self._linger = self.loop.call_later(LINGER_CLOSE, self.raw.close)

    def _flush(self) -> None:
        if self._chan is not None:
            records = self._chan.output()
            if records:
                self.raw.write(records)
            return
        if self._out is not None and self._out.pending:
            self.raw.write(self._out.read())


def server_protocol(context: ssl.SSLContext, app_factory: Callable[[], asyncio.Protocol], *,
                    handshake_timeout: float,
                    on_failure: Callable[[_TlsProtocol, Exception], None],
                    on_handshake: Callable[[], None] | None = None,
                    on_close: Callable[[bool], None] | None = None) -> _TlsProtocol:
    """A protocol for a plain TCP server: TLS first, then `app_factory()`
    (called once the handshake passed). `on_handshake()` when it passed,
    `on_close(handshake_done)` once when the TCP connection is gone."""
    proto = _TlsProtocol(context, server_side=True, app_factory=app_factory,
                         handshake_timeout=handshake_timeout, on_close=on_close)

    def done(f: asyncio.Future) -> None:
        if f.exception() is not None:
            # set_exception is only ever given an Exception here (typeshed: BaseException)
            on_failure(proto, f.exception())  # type: ignore[arg-type]
        elif on_handshake is not None:
            on_handshake()
    proto.handshake.add_done_callback(done)
    return proto


async def connect(loop: asyncio.AbstractEventLoop, app: asyncio.Protocol,
                  context: ssl.SSLContext, *, host: str | None = None, port: int | None = None,
                  sock=None, timeout: float) -> TlsTransport:
    """Open TCP (or use a connected `sock`), run the client handshake, hand
    the connection to `app`. Raises ssl.SSLError/OSError/TimeoutError."""
    proto = _TlsProtocol(context, server_side=False, app=app, handshake_timeout=timeout)
    if sock is not None:
        await loop.create_connection(lambda: proto, sock=sock)
    else:
        # host/port None with no sock: the loop raises its ValueError
        await loop.create_connection(lambda: proto, host, port)  # type: ignore[arg-type]
    try:
        return await proto.handshake
    except asyncio.CancelledError:
        # The caller gave up (its task was cancelled): nobody will own this
        # connection, so close it now rather than when the handshake ends
        # (a set_result on the cancelled future would then fail in
        # data_received and leave the close to the loop's error path).
        proto.abandon()
        raise
