"""The C struct fields under h2's and shoal's per-frame objects
(core/hbone/native/flow.c): Python sees the same attributes, cycles through
them are collected, and the pure-Python path keeps plain attributes."""

from __future__ import annotations

import gc
import weakref

import pytest
from h2.config import H2Configuration
from h2.stream import StreamState

from shoal.core import pipe
from shoal.core.hbone import fastpath, h2fast, h2limits, protocol, stream
from shoal.ztunnel.proxy.inputs import CountingEnd

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
    assert issubclass(pipe.TcpEnd, native.PlainEndFields)
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


async def test_tcp_end_keeps_its_fields_through_the_c_base():
    """TcpEnd's transport, _drain_waiter, bytes_written and _can_write start,
    change and read back as plain attributes on either path; a subclass keeps
    its own attributes beside them (ztunnel's CountingEnd)."""
    end = CountingEnd()
    assert (end.transport, end._drain_waiter, end.bytes_written, end._can_write) == \
        (None, None, 0, True)
    end.pause_writing()
    assert end._can_write is False
    end.resume_writing()
    assert end._can_write is True
    end.bytes_written += 5
    end.bytes_read += 7
    assert (end.bytes_written, end.bytes_read) == (5, 7)
    end.connection_lost(None)
    assert end.closed.done() and end.at_eof


@pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")
def test_bool_fields_take_only_bools():
    """dead, local_ended, _writing... are C bools: anything else is refused,
    never stored as something C would read differently."""
    s = protocol._Stream()
    with pytest.raises(TypeError):
        s.local_ended = 1
    assert s.local_ended is False
    end = pipe.TcpEnd.__new__(pipe.TcpEnd)
    with pytest.raises(TypeError):
        end._can_write = 1
    assert end._can_write is False                 # C's zeroed field, before __init__


@pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")
def test_cycles_through_c_fields_are_collected():
    c = _conn()
    c._chunks = [c]                                      # connection → list → connection
    st = c.streams.setdefault(1, h2fast._H2Stream(1, c.config, 65_535, 65_535))
    st._inbound_window_manager = st                      # a field pointing at its owner
    s = protocol._Stream()
    s.state = [s]
    end = pipe.TcpEnd.__new__(pipe.TcpEnd)
    end.transport = [end]                                # a field pointing back at its end
    refs = [weakref.ref(c), weakref.ref(st), weakref.ref(end)]
    del c, st, s, end
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_flood_guard_counts_through_its_fields():
    g = h2limits.FloodGuard(server=True)
    g.empty_in_a_row += 1
    g.outbound_control = 3
    g.output_drained()
    assert (g.empty_in_a_row, g.outbound_control, g.data_frames_sent) == (1, 0, 0)
