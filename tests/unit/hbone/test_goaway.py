"""Graceful GOAWAY (RFC 9113 §6.8) in the sans-IO core: an in-memory
client/server pair, byte by byte where it fits."""

import hyperframe.frame as hf
import pytest
from h2.errors import ErrorCodes

from shoal.core.hbone import events as ev
from shoal.core.hbone.errors import HboneError, LocalProtocolError, StreamResetError
from shoal.core.hbone.protocol import GOAWAY_ANNOUNCE_ID
from tests.unit.hbone.test_protocol import pair, xfer


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def _open(c, s, one_byte=False):
    sid = c.open_tunnel("10.0.0.5:8080")
    assert _of(xfer(c, s, one_byte), ev.TunnelRequested)
    s.accept(sid)
    assert _of(xfer(s, c, one_byte), ev.TunnelOpened)
    return sid


def _drain(c, s, one_byte=False):
    """Both steps of the server's graceful shutdown: the announcement and
    its PING go to the client, its ACK comes back, the final GOAWAY goes
    out. Returns the client's events."""
    s.start_drain()
    got = xfer(s, c, one_byte)
    xfer(c, s, one_byte)                            # the PING's ACK
    return got + xfer(s, c, one_byte)


def _frames(data: bytes):
    out = []
    while data:
        frame, length = hf.Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


def test_drain_announces_then_names_the_last_processed_stream_at_the_ping_ack():
    c, s = pair()
    first, second = _open(c, s), _open(c, s)
    s.start_drain()
    frames = _frames(s.data_to_send())
    assert [(type(f), getattr(f, "last_stream_id", None), getattr(f, "error_code", None))
            for f in frames] == [(hf.GoAwayFrame, GOAWAY_ANNOUNCE_ID, 0), (hf.PingFrame, None, None)]
    assert "ACK" not in frames[1].flags
    assert s.draining and not s.dead and not s.drained
    s.start_drain()                                  # idempotent: no second frame
    assert s.data_to_send() == b""
    c.receive_data(b"".join(f.serialize() for f in frames))
    s.receive_data(c.data_to_send())                 # the PING's ACK
    goaways = [f for f in _frames(s.data_to_send()) if isinstance(f, hf.GoAwayFrame)]
    assert [(g.last_stream_id, g.error_code) for g in goaways] == [(second, 0)]
    assert second > first and not s.drained          # both tunnels still open
    s.finish_drain()                                 # idempotent too
    assert s.data_to_send() == b""


@pytest.mark.parametrize("one_byte", [False, True])
def test_connect_crossing_the_announcement_is_served(one_byte):
    """The client opened a tunnel before it read the announcement: the
    server processes it (a single GOAWAY naming the last id would have
    refused it) and the final GOAWAY names it."""
    c, s = pair(one_byte)
    s.start_drain()
    announcement = s.data_to_send()
    late = c.open_tunnel("10.0.0.6:80")
    assert [e.stream_id for e in _of(xfer(c, s, one_byte), ev.TunnelRequested)] == [late]
    s.accept(late)
    c.receive_data(announcement)
    assert c.goaway_received and c.stream_state(late) == "PENDING"
    assert _of(xfer(s, c, one_byte), ev.TunnelOpened)
    xfer(c, s, one_byte)                            # the PING's ACK
    closed = _of(xfer(s, c, one_byte), ev.ConnectionClosed)
    assert [e.last_stream_id for e in closed] == [late]
    assert c.stream_state(late) == "OPEN" and s.stream_state(late) == "OPEN"


@pytest.mark.parametrize("one_byte", [False, True])
def test_open_streams_complete_both_ways_after_goaway(one_byte):
    c, s = pair(one_byte)
    sid = _open(c, s, one_byte)
    closed = _of(_drain(c, s, one_byte), ev.ConnectionClosed)
    assert closed == [ev.ConnectionClosed(error_code=0, last_stream_id=last,
                                          reason="graceful shutdown")
                      for last in (GOAWAY_ANNOUNCE_ID, sid)]
    assert c.goaway_received and c.stream_state(sid) == "OPEN"
    # client -> server data, then the client's half-close
    assert c.send_data(sid, b"request") == 7
    c.end_stream(sid)
    got = xfer(c, s, one_byte)
    assert b"".join(e.data for e in _of(got, ev.DataReceived)) == b"request"
    assert _of(got, ev.StreamEnded) == [ev.StreamEnded(stream_id=sid)]
    assert not s.drained                              # our half is still open
    # server -> client data after the client's FIN, then the server's FIN
    assert s.send_data(sid, b"response", end_stream=True) == 8
    got = xfer(s, c, one_byte)
    assert b"".join(e.data for e in _of(got, ev.DataReceived)) == b"response"
    assert _of(got, ev.StreamEnded) == [ev.StreamEnded(stream_id=sid)]
    assert s.drained and c.open_streams == 0


def test_flow_control_keeps_working_during_drain():
    c, s = pair()
    sid = _open(c, s)
    _drain(c, s)
    window = c.send_window(sid)
    payload = b"x" * window
    assert c.send_data(sid, payload) == window
    got = xfer(c, s)
    received = _of(got, ev.DataReceived)
    assert sum(len(e.data) for e in received) == window
    assert c.send_window(sid) == 0
    for e in received:                               # acknowledging reopens the window
        s.acknowledge(sid, e.flow_controlled_length)
    assert _of(xfer(s, c), ev.WindowOpened)
    assert c.send_window(sid) > 0


def test_server_may_half_close_first_during_drain():
    c, s = pair()
    sid = _open(c, s)
    _drain(c, s)
    s.end_stream(sid)
    assert _of(xfer(s, c), ev.StreamEnded)
    assert c.send_data(sid, b"late", end_stream=True) == 4
    got = xfer(c, s)
    assert [e.data for e in _of(got, ev.DataReceived)] == [b"late"]
    assert s.drained


def test_reset_during_drain_counts_as_the_stream_ending():
    c, s = pair()
    sid = _open(c, s)
    _drain(c, s)
    c.reset_stream(sid, ErrorCodes.CANCEL)
    resets = _of(xfer(c, s), ev.StreamReset)
    assert [r.error_code for r in resets] == [ErrorCodes.CANCEL]
    assert s.drained


@pytest.mark.parametrize("one_byte", [False, True])
def test_connect_after_the_final_goaway_is_refused_with_refused_stream(one_byte):
    c, s = pair(one_byte)
    kept = _open(c, s, one_byte)
    s.start_drain()
    s.finish_drain()                                  # stopped waiting for the ACK
    late = c.open_tunnel("10.0.0.6:80")             # sent before the GOAWAYs arrived
    got = xfer(c, s, one_byte)
    assert not _of(got, ev.TunnelRequested)           # the handler never sees it
    rst = [f for f in _frames(s.data_to_send()) if isinstance(f, hf.RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in rst] == [(late, ErrorCodes.REFUSED_STREAM)]
    assert s.stream_state(kept) == "OPEN" and not s.drained


def test_client_refuses_only_streams_above_last_stream_id():
    c, s = pair()
    kept = _open(c, s)
    s.start_drain()
    s.finish_drain()
    late = c.open_tunnel("10.0.0.6:80")               # crosses the final GOAWAY
    pending = c.data_to_send()
    got = xfer(s, c)
    resets = _of(got, ev.StreamReset)
    assert resets == [ev.StreamReset(stream_id=late, remote=True,
                                     error_code=ErrorCodes.REFUSED_STREAM)]
    assert [e.last_stream_id for e in _of(got, ev.ConnectionClosed)] == [GOAWAY_ANNOUNCE_ID, kept]
    assert c.stream_state(kept) == "OPEN" and c.stream_state(late) == "CLOSED"
    # The server refuses the late HEADERS too; the client ignores that RST.
    s.receive_data(pending)
    assert not _of(xfer(s, c), ev.StreamReset)
    # The kept stream still works; no new stream may start on this connection.
    assert c.send_data(kept, b"ok") == 2
    assert [e.data for e in _of(xfer(c, s), ev.DataReceived)] == [b"ok"]
    with pytest.raises(LocalProtocolError, match="closing"):
        c.open_tunnel("10.0.0.7:80")


def test_close_after_drain_does_not_raise_last_stream_id():
    c, s = pair()
    sid = _open(c, s)
    s.start_drain()
    s.finish_drain()
    s.data_to_send()
    c.open_tunnel("10.0.0.6:80")                     # refused: higher id seen by h2
    xfer(c, s)
    s.data_to_send()
    s.close()
    goaway = [f for f in _frames(s.data_to_send()) if isinstance(f, hf.GoAwayFrame)]
    assert [g.last_stream_id for g in goaway] == [sid]
    assert s.dead


def test_error_goaway_still_kills_every_stream():
    c, s = pair()
    sid = _open(c, s)
    s.close(ErrorCodes.INTERNAL_ERROR, "boom")
    got = xfer(s, c)
    closed = _of(got, ev.ConnectionClosed)
    assert closed[0].error_code == ErrorCodes.INTERNAL_ERROR
    with pytest.raises(LocalProtocolError):
        c.send_data(sid, b"x")


def test_drain_before_any_stream_is_drained_once_the_ping_comes_back():
    c, s = pair()
    s.start_drain()
    assert not s.drained                             # a CONNECT may be on the wire
    got = _drain(c, s)
    assert s.drained
    assert [e.last_stream_id for e in _of(got, ev.ConnectionClosed)] == [GOAWAY_ANNOUNCE_ID, 0]


def test_refused_errors_are_retryable_others_not():
    assert StreamResetError("x", error_code=ErrorCodes.REFUSED_STREAM).retryable
    assert not StreamResetError("x", error_code=ErrorCodes.CANCEL).retryable
    assert not HboneError("denied", status=401).retryable
