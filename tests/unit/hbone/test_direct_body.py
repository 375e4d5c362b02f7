"""The direct-receive path of the sans-IO core: a large DATA body that has not
fully arrived gets its own buffer (`receive_buffer`/`received_into`), byte exact
against the plain `receive_data` path."""

import os
import struct

import pytest

from shoal.core.hbone import events as ev
from shoal.core.hbone.errors import RemoteProtocolError
from shoal.core.hbone.h2fast import DIRECT_BODY_MIN
from shoal.core.hbone.settings import MAX_FRAME_SIZE
from tests.unit.hbone.test_protocol import pair, xfer


def _open_pair():
    c, s = pair()
    sid = c.open_tunnel("10.0.0.5:8080", ())
    xfer(c, s)
    s.accept(sid)
    xfer(s, c)
    return c, s, sid


def _data_frame(sid, body, flags=0):
    n = len(body)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, 0, flags, sid) + body


def _feed_direct(dst, wire, piece):
    """Feed `wire` as a TLS layer would: into the core's body buffer when it
    offers one, else through receive_data; `piece` bytes at a time."""
    events, off = [], 0
    while off < len(wire):
        target = dst.receive_buffer()
        if target is not None:
            n = min(piece, len(target), len(wire) - off)
            target[:n] = wire[off:off + n]
            target.release()
            events += dst.received_into(n)
        else:
            n = min(piece, len(wire) - off)
            events += dst.receive_data(wire[off:off + n])
        off += n
    return events


def _data(events):
    return [e for e in events if isinstance(e, ev.DataReceived)]


@pytest.mark.parametrize("piece", [1000, 16 * 1024, 100_000])
def test_large_body_filled_directly_is_byte_exact(piece):
    c, s, sid = _open_pair()
    body1, body2 = os.urandom(300_000), os.urandom(DIRECT_BODY_MIN + 7)
    small = b"tail"
    wire = _data_frame(sid, body1) + _data_frame(sid, body2) + _data_frame(sid, small)
    got = _data(_feed_direct(s, wire, piece))
    assert [bytes(e.data) for e in got] == [body1, body2, small]
    assert [e.flow_controlled_length for e in got] == [len(body1), len(body2), len(small)]
    assert s.receive_buffer() is None            # nothing half-received


def test_body_buffer_offered_only_for_large_unfinished_frames():
    c, s, sid = _open_pair()
    s.receive_data(_data_frame(sid, b"x" * (DIRECT_BODY_MIN - 1))[:100])
    assert s.receive_buffer() is None            # small frame: copy path
    c, s, sid = _open_pair()
    s.receive_data(_data_frame(sid, b"x" * DIRECT_BODY_MIN)[:100])
    view = s.receive_buffer()
    assert view is not None and len(view) == DIRECT_BODY_MIN - 91
    view.release()


def test_padded_large_frame_takes_the_copy_path():
    c, s, sid = _open_pair()
    body = os.urandom(DIRECT_BODY_MIN * 2)
    padded = bytes([5]) + body + b"\0" * 5
    wire = _data_frame(sid, padded, flags=0x8)
    assert s.receive_data(wire[:1000]) == []
    assert s.receive_buffer() is None
    got = _data(s.receive_data(wire[1000:]))
    assert bytes(got[0].data) == body and got[0].flow_controlled_length == len(padded)


def test_receive_data_completes_a_started_body_and_keeps_what_follows():
    c, s, sid = _open_pair()
    body = os.urandom(DIRECT_BODY_MIN * 3)
    wire = _data_frame(sid, body) + _data_frame(sid, b"next")
    assert s.receive_data(wire[:50]) == []
    assert s.receive_buffer() is not None
    got = _data(s.receive_data(wire[50:]))        # rest of body + the next frame at once
    assert [bytes(e.data) for e in got] == [body, b"next"]


def test_oversized_frame_refused_before_any_body_buffer():
    c, s, sid = _open_pair()
    header = struct.pack(">HBBBL", (MAX_FRAME_SIZE + 1) >> 8, (MAX_FRAME_SIZE + 1) & 0xFF,
                         0, 0, sid)
    with pytest.raises(RemoteProtocolError):
        s.receive_data(header + b"x" * 100)
    assert s.receive_buffer() is None            # dead connection offers nothing


def test_data_on_stream_zero_refused_at_its_header():
    c, s, sid = _open_pair()
    with pytest.raises(RemoteProtocolError):
        s.receive_data(_data_frame(0, b"x" * DIRECT_BODY_MIN)[:100])


def test_fast_send_path_matches_h2_bytes_and_windows():
    import hyperframe.frame as hf
    c, s, sid = _open_pair()
    h2c = c._h2
    body = os.urandom(DIRECT_BODY_MIN * 2)
    conn_before, stream_before = h2c.outbound_flow_control_window, c.send_window(sid)
    assert c.send_data(sid, body) == len(body)
    wire = c.data_to_send()
    assert wire == hf.DataFrame(sid, body).serialize()
    assert h2c.outbound_flow_control_window == conn_before - len(body)
    assert c.send_window(sid) == stream_before - len(body)
    got = _data(s.receive_data(wire))
    assert bytes(got[0].data) == body
    # END_STREAM and small frames still take h2's own path
    assert c.send_data(sid, b"end", end_stream=True) == 3
    assert [bytes(e.data) for e in _data(xfer(c, s))] == [b"end"]


def test_allocator_tuning_applies_once_and_respects_env(monkeypatch):
    from shoal.core.hbone import alloc
    monkeypatch.setattr(alloc, "_done", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert alloc.tune_allocator() is False        # the operator's setting wins
    assert alloc.tune_allocator() is False        # and it is decided once
