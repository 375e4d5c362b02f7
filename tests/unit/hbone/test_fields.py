"""The C struct fields under h2's and shoal's per-frame objects
(core/hbone/native/flow.c): Python sees the same attributes, cycles through
them are collected, and the pure-Python path keeps plain attributes."""

from __future__ import annotations

import gc
import weakref

import pytest
from h2.config import H2Configuration
from h2.stream import StreamState

from shoal.core.hbone import fastpath, h2fast, h2limits, protocol, stream

native = fastpath.native


def _conn() -> h2fast.H2ConnectionFast:
    c = h2fast.H2ConnectionFast(H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    return c


@pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")
def test_each_per_frame_class_has_its_fields_in_c():
    c = _conn()
    c.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    st = c.streams[1]
    pairs = [(c, native.ConnectionWindows), (st, native.StreamWindows),
             (c._inbound_flow_control_window_manager, native.Window),
             (st._inbound_window_manager, native.Window),
             (c.state_machine, native.StateMachine), (st.state_machine, native.StateMachine),
             (c.guard, native.GuardCounters), (protocol._Stream(), native.CoreStream)]
    for obj, base in pairs:
        assert isinstance(obj, base), (obj, base)
    assert issubclass(protocol._HboneCore, native.CoreFlags)
    assert issubclass(stream.HboneStream, native.TunnelFields)
    assert st.state_machine.state is StreamState.OPEN


def test_h2_keeps_its_windows_through_the_fields():
    """What h2 does with the windows (send, receive settings) reads back as
    plain Python values, on either path."""
    c = _conn()
    c.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    before = c.outbound_flow_control_window
    c.send_data(1, b"x" * 1000)
    assert c.outbound_flow_control_window == before - 1000
    assert c.streams[1].outbound_flow_control_window == 65_535 - 1000
    assert c.guard.data_frames_sent == 1
    wm = c._inbound_flow_control_window_manager
    wm.window_consumed(40_000)
    assert wm.process_bytes(40_000) == 40_000        # past half the window: an update
    assert (wm.current_window_size, wm.max_window_size, wm._bytes_processed) == (65_535, 65_535, 0)
    assert c.max_inbound_frame_size == 16_384
    queued = b"".join(c.chunks_to_send())               # the preface, HEADERS, DATA
    assert queued.endswith(b"x" * 1000) and c._chunks == [] and not c._data_to_send
    s = protocol._Stream()
    assert (s.state, s.local_ended, s.remote_ended) == (protocol.PENDING, False, False)


@pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")
def test_bool_fields_take_only_bools():
    """dead, local_ended, _writing... are C bools: anything else is refused,
    never stored as something C would read differently."""
    s = protocol._Stream()
    with pytest.raises(TypeError):
        s.local_ended = 1
    assert s.local_ended is False


@pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")
def test_cycles_through_c_fields_are_collected():
    c = _conn()
    c._chunks = [c]                                      # connection → list → connection
    st = c.streams.setdefault(1, h2fast._H2Stream(1, c.config, 65_535, 65_535))
    st._inbound_window_manager = st                      # a field pointing at its owner
    s = protocol._Stream()
    s.state = [s]
    refs = [weakref.ref(c), weakref.ref(st)]
    del c, st, s
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_flood_guard_counts_through_its_fields():
    g = h2limits.FloodGuard(server=True)
    g.empty_in_a_row += 1
    g.outbound_control = 3
    g.output_drained()
    assert (g.empty_in_a_row, g.outbound_control, g.data_frames_sent) == (1, 0, 0)
