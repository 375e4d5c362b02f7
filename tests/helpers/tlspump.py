"""A TLS client connection whose one SSL object is touched by one thread only.

Why: OpenSSL forbids using one SSL object from two threads at once. A reader
thread in `SSLSocket.recv` while another thread is in `SSLSocket.sendall`
(the old attack harness) sometimes ended the reader with a clean EOF before
it had decrypted the GOAWAY the server sent, and a failed write (EPIPE once
the server closed) can put the shared SSL object in an error state that
loses the bytes still to be read.

Here one pump thread owns a non-blocking socket and an `ssl.SSLObject` over
a pair of `MemoryBIO`s: it encrypts what callers queued, writes ciphertext
when the socket takes it, and reads and decrypts whatever arrives, in one
select loop. A failed write ends only the sending side: the pump keeps
reading until the server's EOF or reset, so every byte the server sent
before closing is kept (Linux returns queued data before an RST's error).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading

# Bytes taken from the socket or decrypted per call: a TLS record is at most
# 16 KiB, so a few records per pass.
READ_CHUNK = 65536
# The pump wakes this often without an event, so `close()` is never missed
# for long even if the wake-up byte is lost.
PUMP_TICK = 0.5


class TlsPump:
    """`send(data)` blocks until the data is on the wire (or the connection
    can take no more) and returns whether it went; `received` grows as the
    server writes; `closed` is set once the server's side has ended."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 10.0,
                 host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side=False)
        self._handshake()
        self.sock.setblocking(False)
        self.received = bytearray()
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._plain = bytearray()        # queued by send(), not yet encrypted
        self._cipher = bytearray()       # encrypted, not yet written
        self._queued = 0                 # plaintext bytes ever queued
        self._sent = 0                   # ... of which on the wire
        self._pending_plain = 0          # ... of which in self._cipher
        self._write_failed = False
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _handshake(self) -> None:
        """Blocking, before the pump starts (no other thread yet)."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self._out.read())
                data = self.sock.recv(READ_CHUNK)
                if not data:
                    raise ConnectionError("the server closed during the TLS handshake")
                self._in.write(data)
        self.sock.sendall(self._out.read())

    # -- callers' side -----------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """False once writing failed (the server closed the connection)."""
        with self._cond:
            if self._write_failed:
                return False
            self._plain += data
            self._queued += len(data)
            target = self._queued
        self._wake()
        with self._cond:
            self._cond.wait_for(lambda: self._sent >= target or self._write_failed)
            return self._sent >= target

    def close(self) -> None:
        with self._cond:
            self._stop = True
        self._wake()
        self._thread.join(5)
        for s in (self.sock, self._wake_r, self._wake_w):
            s.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass                          # a byte is already pending, or closed

    # -- the pump thread: the only user of self._tls ------------------------------

    def _pump(self) -> None:
        try:
            # The server's first bytes may have come with the handshake's last.
            if not self._decrypt():
                return
            while not self._stop:
                self._encrypt_queued()
                want_write = bool(self._cipher) and not self._write_failed
                readable, writable, _ = select.select(
                    [self.sock, self._wake_r], [self.sock] if want_write else [], [], PUMP_TICK)
                if self._wake_r in readable:
                    self._drain_wake()
                if writable:
                    self._write()
                if self.sock in readable and not self._read():
                    break
        finally:
            self._fail_writes()
            self.closed.set()

    def _encrypt_queued(self) -> None:
        # Only once the previous ciphertext is out: a send() returns when its
        # bytes reached the kernel, so a flood goes at the pace TCP takes it.
        with self._cond:
            if self._cipher or not self._plain or self._write_failed:
                return
            plain, self._plain = bytes(self._plain), bytearray()
        self._tls.write(plain)
        self._cipher += self._out.read()
        self._pending_plain = len(plain)

    def _write(self) -> None:
        try:
            n = self.sock.send(self._cipher)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:                   # EPIPE / ECONNRESET: the server is gone
            self._fail_writes()
            return
        del self._cipher[:n]
        if not self._cipher:
            with self._cond:
                self._sent += self._pending_plain
                self._pending_plain = 0
                self._cond.notify_all()

    def _read(self) -> bool:
        """Take what arrived; False once the server's side has ended."""
        try:
            data = self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:                   # reset: what was queued before it was read
            return False
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        return self._decrypt() and bool(data)

    def _decrypt(self) -> bool:
        """Decrypt what the BIO holds; False once the server's side has ended."""
        while True:
            try:
                chunk = self._tls.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLError):
                return False
            if not chunk:
                return False
            self.received += chunk
        # TLS 1.3 may answer while reading (a KeyUpdate): send it with the rest.
        self._cipher += self._out.read()
        return True

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _fail_writes(self) -> None:
        with self._cond:
            self._write_failed = True
            self._cipher.clear()
            self._cond.notify_all()
