"""h2fast's open-stream DATA paths against h2's own: the same bytes on the
wire, the same events and windows, and h2's path for everything unusual."""

from __future__ import annotations

import h2.events as h2e
import h2.exceptions as h2x
import hyperframe.frame as hf
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.hbone.h2fast import ZERO_COPY_MIN, H2ConnectionFast
from shoal.core.hbone.h2limits import GuardedH2Connection


def _pair(server_cls):
    """A plain h2 client and a server of `server_cls` with stream 1 open."""
    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    s = server_cls(H2Configuration(client_side=False, header_encoding=None))
    c.initiate_connection()
    s.initiate_connection()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    s.receive_data(c.data_to_send())
    c.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    return c, s


def _summary(events):
    out = []
    for e in events:
        if isinstance(e, h2e.DataReceived):
            out.append(("data", e.stream_id, bytes(e.data), e.flow_controlled_length,
                        e.stream_ended is not None))
        elif isinstance(e, Exception):
            out.append((type(e).__name__, str(e)))
        else:
            out.append((type(e).__name__, getattr(e, "stream_id", None)))
    return out


def _windows(conn, sid=1):
    stream = conn.streams.get(sid)
    return (conn._inbound_flow_control_window_manager.current_window_size,
            stream and stream._inbound_window_manager.current_window_size,
            conn.outbound_flow_control_window,
            stream and stream.outbound_flow_control_window)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=0, max_size=3000), st.booleans()), max_size=6),
       st.integers(min_value=1, max_value=64))
def test_receiving_is_what_h2_receives(frames, split):
    """Any mix of DATA frames (empty, END_STREAM, sizes) fed in pieces: the fast
    connection's events and windows equal h2's."""
    sender, _ = _pair(H2Connection)
    wire = b""
    ended = False
    for body, end in frames:
        if ended:
            break
        sender.send_data(1, body, end_stream=end)
        ended = end
        wire += sender.data_to_send()
    results = []
    for cls in (GuardedH2Connection, H2ConnectionFast):
        _, s = _pair(cls)
        events = []
        try:
            for i in range(0, len(wire), split):
                events += s.receive_data(wire[i:i + split])
        except h2x.ProtocolError as err:       # e.g. the abuse guard's empty-frame limit
            events.append(err)
        results.append((_summary(events), _windows(s)))
    assert results[0] == results[1]


@pytest.mark.parametrize("size", [1, 1024, ZERO_COPY_MIN - 1, ZERO_COPY_MIN])
def test_sending_puts_h2s_bytes_on_the_wire(size):
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    wires = []
    for cls in (GuardedH2Connection, H2ConnectionFast):
        c = cls(H2Configuration(client_side=True, header_encoding=None))
        c.initiate_connection()
        c.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
        c.data_to_send()
        c.send_data(1, payload)
        c.send_data(1, b"tail", end_stream=True)
        wires.append((c.data_to_send(), _windows(c)))
    assert wires[0] == wires[1]


def test_data_past_the_window_is_a_flow_control_error_on_the_fast_path():
    _, s = _pair(H2ConnectionFast)
    window = s._inbound_flow_control_window_manager.current_window_size
    body = b"z" * 16_384
    frames = b"".join(hf.DataFrame(1, data=body).serialize()
                      for _ in range(window // len(body) + 1))
    with pytest.raises(h2x.FlowControlError):
        s.receive_data(frames)
    # h2's receive boundary queues GOAWAY(FLOW_CONTROL_ERROR) before raising.
    goaway = hf.Frame.parse_frame_header(memoryview(s.data_to_send()[-17:][:9]))[0]
    assert isinstance(goaway, hf.GoAwayFrame)


def test_data_on_a_reset_stream_takes_h2s_path():
    c, s = _pair(H2ConnectionFast)
    s.reset_stream(1)
    s.data_to_send()
    events = s.receive_data(hf.DataFrame(1, data=b"late").serialize())
    assert events == []                                  # h2: stream error only
    rst = hf.Frame.parse_frame_header(memoryview(s.data_to_send()[:9]))[0]
    assert isinstance(rst, hf.RstStreamFrame)


def test_open_stream_data_skips_h2s_frame_machinery(monkeypatch):
    """The point of the fast paths: plain DATA on an open stream never builds
    a hyperframe frame, either way."""
    c, s = _pair(H2ConnectionFast)
    built = []
    real_init = hf.DataFrame.__init__

    def counting_init(self, *a, **kw):
        built.append(1)
        real_init(self, *a, **kw)
    wire = b"".join(hf.DataFrame(1, data=b"q" * n).serialize() for n in (1, 1024, 16_000))
    monkeypatch.setattr(hf.DataFrame, "__init__", counting_init)
    events = s.receive_data(wire)
    s.send_data(1, b"r" * 1024)
    assert [len(e.data) for e in events] == [1, 1024, 16_000]
    assert built == []
    s.send_data(1, b"", end_stream=True)              # END_STREAM: h2's path
    assert built == [1]
