"""_TlsProtocol's per-read fields in C (TlsFields, core/hbone/native/flow.c):
the C TlsPump (tlspump.c) and Sender (send.c) read them by pointer and call
the Channel's and the Relay's C functions directly. Differential: the same
scripts as test_relay_differential's, on the protocol with its fields in C
and on its twin with the same methods and plain attributes (the layout
SHOAL_NATIVE=0 gives it), which those C paths read by name."""

from __future__ import annotations

import asyncio
import random

import pytest

from shoal.core.hbone import fastpath, tlsio
from shoal.core.hbone.settings import HboneSettings
from tests.unit.hbone.test_relay_differential import (SendRun, random_script, run_script,
                                                      send_op)

native = fastpath.native
pytestmark = pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")

FIELDS = ("_chan", "_linger", "_relay", "_app_transport", "closing")


def python_fields_twin() -> type:
    """_TlsProtocol's methods on a class whose fields are plain attributes."""
    body = {k: v for k, v in vars(tlsio._TlsProtocol).items()
            if k not in ("__dict__", "__weakref__")}
    return type("TlsProtocolPythonFields", (asyncio.BufferedProtocol,), body)


async def test_fields_start_and_read_back_as_plain_attributes():
    ctx = tlsio.ssl.create_default_context()
    for cls in (tlsio._TlsProtocol, python_fields_twin()):
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


async def _relay_run(twin: bool, script, monkeypatch):
    if twin:
        monkeypatch.setattr(tlsio, "_TlsProtocol", python_fields_twin())
    return await run_script(True, script, HboneSettings(), monkeypatch)


@pytest.mark.parametrize("seed,hostile", [(0, False), (1, False), (100, True), (101, True)])
async def test_tls_pump_reads_the_same_through_c_fields_and_by_name(seed, hostile, monkeypatch):
    """Every read through TlsPump (get_buffer, buffer_updated, Relay.feed):
    the same snapshots and the same frames relayed in C either way."""
    script = random_script(seed, 25, hostile)
    c_snaps, c_frames = await _relay_run(False, script, monkeypatch)
    py_snaps, py_frames = await _relay_run(True, script, monkeypatch)
    assert c_frames == py_frames and c_frames > 0
    for i, (c, p) in enumerate(zip(c_snaps, py_snaps)):
        assert c == p, f"step {i}: " + str({k: (c[k], p[k]) for k in c if c[k] != p[k]})[:2000]


class _ClosingSendRun(SendRun):
    def do(self, op):
        if op[0] == "tls_closing":          # what app_close sets first
            self.client.closing = True
            op = ("push", 100)
        return super().do(op)


async def _send_run(twin: bool, ops, monkeypatch):
    if twin:
        monkeypatch.setattr(tlsio, "_TlsProtocol", python_fields_twin())
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
    cls = python_fields_twin() if twin else tlsio._TlsProtocol
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
