"""The C record calls (core/hbone/native/_native.c) against Python's ssl.

Two SSLObjects with memory BIOs shake hands in memory (real TLS 1.3, the
mesh's own contexts); then every byte one side's native `write` produces must
decrypt, on the other side, to exactly what Python's `SSLObject.write` of the
same chunks gives, and native `read_into` must return exactly what
`SSLObject.read` returns, fed whole, in records, and one byte at a time.
"""

from __future__ import annotations

import os
import ssl
import sys

import pytest

from shoal.core.hbone import fastpath
from shoal.core.identity.tls import client_context, server_context
from tests.helpers.pki import TestPKI

native = fastpath.native

RECORD = 16 * 1024
RECORD_HEADER = 5
# TLS 1.3 with AES-GCM: 1 byte of inner content type + a 16-byte tag per record.
RECORD_OVERHEAD = RECORD_HEADER + 1 + 16


def test_the_module_is_built_on_cpython_311():
    """A CPython 3.11 install that lost the module would silently run slower."""
    if os.environ.get(fastpath.ENV) == "0":
        pytest.skip("native path switched off")
    assert sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
    assert native is not None


class Pair:
    """A TLS 1.3 client/server pair over memory BIOs, handshake done."""

    def __init__(self) -> None:
        if native is None:
            pytest.skip("native path off (SHOAL_NATIVE=0)")
        pki = TestPKI()
        c_ctx = client_context(pki.issue("spiffe://cluster.local/ns/a/sa/client"))
        s_ctx = server_context(pki.issue("spiffe://cluster.local/ns/a/sa/server"))
        c_ctx.check_hostname = False
        self.bios = {side: (ssl.MemoryBIO(), ssl.MemoryBIO()) for side in ("c", "s")}
        self.c = c_ctx.wrap_bio(*self.bios["c"], server_side=False, server_hostname=None)
        self.s = s_ctx.wrap_bio(*self.bios["s"], server_side=True)
        for _ in range(10):
            done = 0
            for obj in (self.c, self.s):
                try:
                    obj.do_handshake()
                    done += 1
                except ssl.SSLWantReadError:
                    pass
            self.move("c", "s")
            self.move("s", "c")
            if done == 2:
                break
        assert self.c.version() == "TLSv1.3"
        # Session tickets the server sent after the handshake: drained here.
        self.read_python(self.c)

    def move(self, src: str, dst: str) -> None:
        data = self.bios[src][1].read()
        if data:
            self.bios[dst][0].write(data)

    def attach(self, side: str) -> object:
        obj = self.c if side == "c" else self.s
        assert native.attach(obj._sslobj, *self.bios[side])
        return obj._sslobj

    @staticmethod
    def read_python(obj) -> bytes:
        out = bytearray()
        while True:
            try:
                got = obj.read(1 << 20)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return bytes(out)
            if not got:
                return bytes(out)
            out += got


def records(stream: bytes) -> list[int]:
    """The plaintext-carrying lengths of the TLS records in `stream`."""
    out, i = [], 0
    while i < len(stream):
        assert stream[i] == 23, "application_data record expected"
        n = int.from_bytes(stream[i + 3:i + 5], "big")
        out.append(n - 17)
        i += RECORD_HEADER + n
    assert i == len(stream)
    return out


CHUNKS = [
    [b"x" * 1024],                                          # one 1 KB request
    [b"\0" * 9, b"a" * 1024, b"\0" * 9, b"b" * 3],          # small frames coalesced
    [b"\0" * 9, bytes(range(256)) * 256],                   # header + 64 KiB body
    [bytearray(b"h" * 9), memoryview(b"p" * 40000)[5:], b"t" * (RECORD - 1), b"u" * 2],
    [b"y" * (RECORD * 3)],                                  # exactly whole records
]


@pytest.mark.parametrize("chunks", CHUNKS)
def test_native_write_decrypts_to_the_same_bytes_as_python_write(chunks):
    pair = Pair()
    sslsock = pair.attach("c")
    out = native.write(sslsock, chunks)
    pair.bios["s"][0].write(out)
    assert Pair.read_python(pair.s) == b"".join(bytes(c) for c in chunks)
    # Full records except the last: small chunks share records.
    sizes = records(out)
    total = sum(len(c) for c in chunks)
    assert sizes == [RECORD] * (total // RECORD) + ([total % RECORD] if total % RECORD else [])


def test_native_write_returns_records_queued_before_it_first():
    pair = Pair()
    sslsock = pair.attach("c")
    pair.c.write(b"first")                      # left in the write BIO by Python
    out = native.write(sslsock, [b"second"])
    pair.bios["s"][0].write(out)
    assert Pair.read_python(pair.s) == b"firstsecond"
    assert native.write(sslsock, []) == b""


@pytest.mark.parametrize("step", [None, 1, 7, RECORD + RECORD_OVERHEAD])
def test_native_read_into_returns_what_python_read_returns(step):
    pair = Pair()
    payload = bytes(range(256)) * 300                    # 76,800 bytes: five records
    pair.c.write(payload)
    wire = pair.bios["c"][1].read()
    sslsock = pair.attach("s")
    buf = bytearray(len(payload) + 100)
    got = 0
    parts = [wire] if step is None else [wire[i:i + step] for i in range(0, len(wire), step)]
    for part in parts:
        pair.bios["s"][0].write(part)
        n, status, error = native.read_into(sslsock, buf, got)
        assert error is None and status == native.NEED_INPUT
        got += n
    assert bytes(buf[:got]) == payload


def test_read_into_stops_when_the_buffer_is_full_and_resumes():
    pair = Pair()
    pair.c.write(b"abcdefghij")
    pair.move("c", "s")
    sslsock = pair.attach("s")
    small = bytearray(4)
    assert native.read_into(sslsock, small, 0) == (4, native.FULL, None)
    assert small == b"abcd"
    rest = bytearray(10)
    assert native.read_into(sslsock, rest, 2) == (6, native.NEED_INPUT, None)
    assert rest[2:8] == b"efghij"


def test_close_notify_is_reported_after_the_data_before_it():
    pair = Pair()
    pair.c.write(b"last words")
    try:
        pair.c.unwrap()
    except ssl.SSLWantReadError:
        pass
    pair.move("c", "s")
    sslsock = pair.attach("s")
    buf = bytearray(100)
    assert native.read_into(sslsock, buf, 0) == (10, native.CLOSED, None)
    assert buf[:10] == b"last words"


def test_a_tampered_record_fails_with_ssl_error_after_the_good_bytes():
    pair = Pair()
    pair.c.write(b"good")
    pair.c.write(b"evil")
    wire = bytearray(pair.bios["c"][1].read())
    wire[-3] ^= 0x40                                       # inside the second record's tag
    pair.bios["s"][0].write(bytes(wire))
    sslsock = pair.attach("s")
    buf = bytearray(100)
    n, status, error = native.read_into(sslsock, buf, 0)
    assert (n, bytes(buf[:n]), status) == (4, b"good", native.FAILED)
    assert isinstance(error, ssl.SSLError)
    assert "bad record mac" in str(error).lower() or "decrypt" in str(error).lower()


def test_a_truncated_stream_is_an_eof_error():
    pair = Pair()
    pair.c.write(b"cut short")
    wire = pair.bios["c"][1].read()
    pair.bios["s"][0].write(wire[:-4])
    pair.bios["s"][0].write_eof()
    sslsock = pair.attach("s")
    n, status, error = native.read_into(sslsock, bytearray(100), 0)
    assert (n, status) == (0, native.FAILED)
    assert isinstance(error, ssl.SSLEOFError)


def test_attach_refuses_anything_but_the_sslobjects_own_bios():
    pair = Pair()
    cin, cout = pair.bios["c"]
    assert not native.attach(pair.c._sslobj, cout, cin)           # swapped
    assert not native.attach(pair.c._sslobj, *pair.bios["s"])     # another connection's
    assert not native.attach(object(), cin, cout)
    with pytest.raises(TypeError):
        native.write(object(), [b"x"])
    with pytest.raises(TypeError):
        native.read_into(b"not an ssl object", bytearray(1), 0)


# -- Channel: the SSL on its own buffer BIO after the handshake ---------------

def _channel(pair: Pair, side: str):
    sslsock = pair.attach(side)
    return sslsock, native.Channel(sslsock, *pair.bios[side])


def _recv_into(chan, wire: bytes, step: int) -> None:
    """Feed `wire` the way the transport does: recv_into get_buffer()."""
    for i in range(0, len(wire), step):
        part = wire[i:i + step]
        view = chan.get_buffer()
        assert len(view) >= len(part)
        view[:len(part)] = part
        chan.received(len(part))


@pytest.mark.parametrize("chunks", CHUNKS)
def test_channel_write_gives_the_same_records_as_the_memory_bio(chunks):
    pair = Pair()
    sslsock, chan = _channel(pair, "c")
    out = native.write(sslsock, chunks)
    assert type(out) is bytes
    pair.bios["s"][0].write(out)
    assert Pair.read_python(pair.s) == b"".join(bytes(c) for c in chunks)
    total = sum(len(c) for c in chunks)
    assert records(out) == [RECORD] * (total // RECORD) + ([total % RECORD] if total % RECORD else [])
    assert chan.output() == b""


def test_channel_takes_what_the_memory_bios_held():
    pair = Pair()
    pair.s.write(b"early")                          # from the peer, not read yet
    pair.move("s", "c")
    pair.c.write(b"queued")                         # ours, not flushed yet
    sslsock, chan = _channel(pair, "c")
    assert chan.pending > 0 and not pair.bios["c"][0].pending
    buf = bytearray(100)
    assert native.read_into(sslsock, buf, 0) == (5, native.NEED_INPUT, None)
    assert buf[:5] == b"early"
    out = native.write(sslsock, [b"-then"])         # what was queued goes first
    pair.bios["s"][0].write(out)
    assert Pair.read_python(pair.s) == b"queued-then"


@pytest.mark.parametrize("step", [7, 5000, RECORD + RECORD_OVERHEAD, 1 << 20])
def test_channel_read_into_decrypts_socket_reads_in_any_pieces(step):
    pair = Pair()
    payload = os.urandom(RECORD * 5 + 123)
    pair.c.write(payload)
    wire = pair.bios["c"][1].read()
    sslsock, chan = _channel(pair, "s")
    buf = bytearray(len(payload) + 100)
    got = 0
    for i in range(0, len(wire), step):
        _recv_into(chan, wire[i:i + step], step)
        n, status, error = native.read_into(sslsock, buf, got)
        assert error is None and status == native.NEED_INPUT
        got += n
        chan.release()
    assert bytes(buf[:got]) == payload
    assert chan.pending == 0


def test_channel_release_keeps_a_partial_record():
    pair = Pair()
    pair.c.write(b"split across reads")
    wire = pair.bios["c"][1].read()
    sslsock, chan = _channel(pair, "s")
    _recv_into(chan, wire[:10], 10)
    assert native.read_into(sslsock, bytearray(100), 0) == (0, native.NEED_INPUT, None)
    chan.release()                                  # 10 bytes unread: kept
    chan.feed(wire[10:])
    buf = bytearray(100)
    assert native.read_into(sslsock, buf, 0)[0] == 18 and buf[:18] == b"split across reads"


def test_channel_close_notify_and_alerts_come_out_of_output():
    pair = Pair()
    sslsock, chan = _channel(pair, "c")
    with pytest.raises(ssl.SSLError):
        pair.c.unwrap()                             # close_notify, then wants the peer's
    alert = chan.output()
    assert alert[:1] == b"\x17" and chan.output() == b""
    pair.bios["s"][0].write(alert)
    assert native.read_into(pair.attach("s"), bytearray(10), 0) == (0, native.CLOSED, None)


def test_channel_eof_in_a_record_is_an_eof_error():
    pair = Pair()
    pair.c.write(b"cut short")
    wire = pair.bios["c"][1].read()
    sslsock, chan = _channel(pair, "s")
    chan.feed(wire[:-4])
    chan.write_eof()
    n, status, error = native.read_into(sslsock, bytearray(100), 0)
    assert (n, status) == (0, native.FAILED)
    assert isinstance(error, ssl.SSLEOFError)


def test_channel_refuses_bios_that_are_not_the_sslobjects_own():
    pair = Pair()
    cin, cout = pair.bios["c"]
    sslsock = pair.attach("c")
    with pytest.raises(TypeError):
        native.Channel(sslsock, cout, cin)
    with pytest.raises(TypeError):
        native.Channel(sslsock, *pair.bios["s"])
    with pytest.raises(TypeError):
        native.Channel(object(), cin, cout)
    chan = native.Channel(sslsock, cin, cout)
    with pytest.raises(ValueError):
        chan.received(len(chan.get_buffer()) + 1)
    with pytest.raises(TypeError):                  # the SSL's BIOs are no longer these
        native.Channel(sslsock, cin, cout)


def test_channel_outlives_or_predeceases_its_ssl():
    """The BIO's buffers belong to the BIO: freeing either holder first is safe."""
    pair = Pair()
    _, chan = _channel(pair, "c")
    del pair                                        # the SSL goes first
    assert chan.output() == b""
    chan.feed(b"x")
    assert chan.pending == 1
    pair = Pair()
    sslsock, chan = _channel(pair, "c")
    del chan                                        # the Channel goes first
    pair.bios["s"][0].write(native.write(sslsock, [b"still works"]))
    assert Pair.read_python(pair.s) == b"still works"


def test_body_is_a_bytearray_of_the_size_asked():
    if native is None:
        pytest.skip("native path off (SHOAL_NATIVE=0)")
    body = native.body(40000)
    assert type(body) is bytearray and len(body) == 40000
    assert native.body(0) == bytearray()
    with pytest.raises(ValueError):
        native.body(-1)


def test_channel_keeps_the_order_of_records_sealed_outside_native_write():
    """Python's own SSLObject.write (as unwrap() writes its alert) goes to
    the Channel's overflow buffer; later records must follow it."""
    pair = Pair()
    sslsock, chan = _channel(pair, "c")
    pair.c.write(b"python ")
    out = native.write(sslsock, [b"then ", b"native"])
    pair.bios["s"][0].write(out)
    assert Pair.read_python(pair.s) == b"python then native"
