"""The per-read fields in C that the C read path reads by pointer
(core/hbone/native/flow.c): _TlsProtocol's (TlsFields: the TlsPump in
tlspump.c and the Sender in send.c read them, and TlsPump calls the
Channel's and the Relay's C functions directly) and h2fast._FrameBuffer's
(FrameBufferFields: relay.c checks them before each read it takes).
Differential: the same scripts as test_relay_differential's, on the classes
with their fields in C and on twins with the same methods and plain
attributes (the layout SHOAL_NATIVE=0 gives them), which the C paths read by
name."""

from __future__ import annotations

import asyncio
import random
import types

import pytest

from shoal.core.hbone import fastpath, h2fast, tlsio
from shoal.core.hbone.h2limits import GuardedFrameBuffer
from shoal.core.hbone.settings import HboneSettings
from tests.unit.hbone.test_relay_differential import (SendRun, random_script, run_script,
                                                      send_op)

native = fastpath.native
pytestmark = pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")

FIELDS = ("_chan", "_linger", "_relay", "_app_transport", "closing")


def python_fields_twin(cls: type, base: type) -> type:
    """`cls`'s own methods on `base`, without cls's C fields base: its
    fields are plain attributes. Methods using super() get the twin as
    their class."""
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    twin = type(cls.__name__ + "PythonFields", (base,), body)
    for k, v in body.items():
        if isinstance(v, types.FunctionType) and "__class__" in v.__code__.co_freevars:
            cells = tuple(types.CellType(twin) if name == "__class__" else c for name, c
                          in zip(v.__code__.co_freevars, v.__closure__ or ()))
            setattr(twin, k, types.FunctionType(v.__code__, v.__globals__, v.__name__,
                                                v.__defaults__, cells))
    return twin


def tls_twin() -> type:
    return python_fields_twin(tlsio._TlsProtocol, asyncio.BufferedProtocol)


def frame_buffer_twin() -> type:
    return python_fields_twin(h2fast._FrameBuffer, GuardedFrameBuffer)


async def test_fields_start_and_read_back_as_plain_attributes():
    ctx = tlsio.ssl.create_default_context()
    for cls in (tlsio._TlsProtocol, tls_twin()):
        p = cls(ctx, server_side=False, handshake_timeout=1)
        assert isinstance(p, native.TlsFields) == (cls is tlsio._TlsProtocol)
        assert [getattr(p, f) for f in FIELDS] == [None, None, None, None, False]
        marker = object()
        for f in FIELDS[:4]:
            setattr(p, f, marker)
            assert getattr(p, f) is marker
            setattr(p, f, None)
        p.closing = True
        assert p.closing is True
        assert "closing" not in vars(p) or cls is not tlsio._TlsProtocol


async def _relay_run(twin: str, script, monkeypatch):
    if twin == "tls":
        monkeypatch.setattr(tlsio, "_TlsProtocol", tls_twin())
    elif twin == "frame_buffer":
        monkeypatch.setattr(h2fast.H2ConnectionFast, "frame_buffer_class", frame_buffer_twin())
    return await run_script(True, script, HboneSettings(), monkeypatch)


@pytest.mark.parametrize("twin", ("tls", "frame_buffer"))
@pytest.mark.parametrize("seed,hostile", [(0, False), (1, False), (100, True), (101, True)])
async def test_reads_are_the_same_through_c_fields_and_by_name(twin, seed, hostile, monkeypatch):
    """Every read through TlsPump (get_buffer, buffer_updated, Relay.feed and
    its frame buffer check): the same snapshots and the same frames relayed
    in C, with the fields in C or as plain attributes."""
    script = random_script(seed, 25, hostile)
    c_snaps, c_frames = await _relay_run("", script, monkeypatch)
    py_snaps, py_frames = await _relay_run(twin, script, monkeypatch)
    assert c_frames == py_frames and c_frames > 0
    for i, (c, p) in enumerate(zip(c_snaps, py_snaps)):
        assert c == p, f"step {i}: " + str({k: (c[k], p[k]) for k in c if c[k] != p[k]})[:2000]


async def test_frame_buffer_fields_start_and_read_back_as_plain_attributes():
    for cls in (h2fast._FrameBuffer, frame_buffer_twin()):
        b = cls(server=True)
        assert isinstance(b, native.FrameBufferFields) == (cls is h2fast._FrameBuffer)
        assert (bytes(b._data), b._body, b._headers_buffer, b._preamble_len) == (b"", None, [], 24)
        b.add_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4]) + bytes(5))
        assert (len(b._data), b._preamble_len) == (9, 0)
        assert type(next(b)).__name__ == "SettingsFrame" and len(b._data) == 0


class _ClosingSendRun(SendRun):
    def do(self, op):
        if op[0] == "tls_closing":          # what app_close sets first
            self.client.closing = True
            op = ("push", 100)
        return super().do(op)


async def _send_run(twin: bool, ops, monkeypatch):
    if twin:
        monkeypatch.setattr(tlsio, "_TlsProtocol", tls_twin())
    run = _ClosingSendRun(True, HboneSettings())
    await run.start(monkeypatch)
    try:
        await run.setup_push()
        assert isinstance(run.client, native.TlsFields) != twin
        steps = [run.do(op) for op in ops]
        return steps, run.push.frames
    finally:
        run.close()


@pytest.mark.parametrize("seed", (300, 301))
async def test_sender_sees_the_tls_closing_flag_the_same_through_c_fields(seed, monkeypatch):
    """The Sender's per-frame TLS check: frames go out while the protocol is
    open and none once it is closing, the same through the pointer and by name."""
    rnd = random.Random(seed)
    ops = [("push", 100)] + [send_op(rnd) for _ in range(30)] + [("push", 100)]
    c_steps, c_frames = await _send_run(False, ops + [("tls_closing",)], monkeypatch)
    py_steps, py_frames = await _send_run(True, ops + [("tls_closing",)], monkeypatch)
    assert c_frames == py_frames and c_frames > 0
    for i, (c, p) in enumerate(zip(c_steps, py_steps)):
        assert c == p, f"step {i}: " + str({k: (c[k], p[k]) for k in c if c[k] != p[k]})[:1500]
    before, _ = await _send_run(False, ops, monkeypatch)
    assert c_steps[-1]["counts"] == before[-1]["counts"]     # the push after closing: not sent


class _Chan:
    """A Channel double (not the C type): TlsPump calls it by name."""

    def __init__(self) -> None:
        self.calls: list = []
        self.buf = bytearray(16)

    def get_buffer(self):
        self.calls.append("get_buffer")
        return memoryview(self.buf)

    def received(self, n):
        self.calls.append(("received", n))

    def release(self):
        self.calls.append("release")


class _Relay:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def feed(self):
        self.calls.append("feed")


@pytest.mark.parametrize("twin", (False, True))
async def test_tls_pump_calls_other_channel_and_relay_types_by_name(twin):
    """Only the module's own Channel and Relay get the direct C call; any
    other object gets its methods called by name, through either field layout."""
    cls = tls_twin() if twin else tlsio._TlsProtocol
    p = cls(tlsio.ssl.create_default_context(), server_side=False, handshake_timeout=1)
    p._chan = chan = _Chan()
    p._relay, p._app_transport = _Relay(chan.calls), object()
    pump = native.TlsPump(p)
    assert len(pump.get_buffer(-1)) == 16
    pump.buffer_updated(5)
    assert chan.calls == ["get_buffer", ("received", 5), "feed", "release"]
    p._linger = object()                     # lingering: the read is dropped
    pump.buffer_updated(3)
    assert chan.calls == ["get_buffer", ("received", 5), "feed", "release"]
