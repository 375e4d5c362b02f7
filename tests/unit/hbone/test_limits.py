"""HTTP/2 abuse limits (core.hbone.h2limits) on the sans-IO HBONE server,
fed raw frames written by the test, whole and byte by byte."""

import hyperframe.frame as hf
import pytest
from h2.errors import ErrorCodes

from shoal.core.hbone import events as ev
from shoal.core.hbone.errors import RemoteProtocolError
from shoal.core.hbone.h2limits import (CONTROL_BURST, RESET_BURST, FloodGuard, H2Limits,
                                       TokenBucket)
from shoal.core.hbone.protocol import HboneServerProtocol
from shoal.core.hbone.settings import HboneSettings
from tests.helpers.h2raw import RawFrames, goaway_code, parse_frames


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _server(settings=None, clock=None):
    s = HboneServerProtocol(settings or HboneSettings(), clock=clock)
    s.initiate()
    s.data_to_send()
    s.output_drained()
    return s


def _feed(s, data: bytes, one_byte: bool = False) -> list:
    if not one_byte:
        return s.receive_data(data)
    out = []
    for i in range(len(data)):
        out += s.receive_data(data[i:i + 1])
    return out


def _expect_calm(s, data: bytes, limit: str, one_byte: bool = False) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        _feed(s, data, one_byte)
    assert info.value.limit == limit
    assert info.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert goaway_code(s.data_to_send()) == ErrorCodes.ENHANCE_YOUR_CALM
    assert s.dead


def test_token_bucket_burst_then_rate():
    b = TokenBucket(3, 2.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)          # 2/s: one token per 0.5 s
    assert b.take(100.0)
    assert b.tokens <= 3                            # never above the burst


@pytest.mark.parametrize("one_byte", [False, True])
def test_rapid_reset_closes_with_enhance_your_calm_and_requests_never_surface(one_byte):
    limits = H2Limits(reset_burst=20, reset_rate=1.0)
    s = _server(HboneSettings(h2_limits=limits), Clock())
    raw = RawFrames()
    events = _feed(s, raw.preface(), one_byte)
    batch = b"".join(raw.headers(sid) + raw.rst(sid) for sid in
                     (raw.new_id() for _ in range(10)))
    events += _feed(s, batch, one_byte=False)
    # Opened and reset in the same read: the application is never asked.
    assert not [e for e in events if isinstance(e, ev.TunnelRequested)]
    more = b"".join(raw.headers(sid) + raw.rst(sid) for sid in
                    (raw.new_id() for _ in range(11)))
    _expect_calm(s, more, "resets", one_byte)


def test_reset_budget_refills_with_time():
    clock = Clock()
    s = _server(HboneSettings(h2_limits=H2Limits(reset_burst=5, reset_rate=10.0)), clock)
    raw = RawFrames()
    _feed(s, raw.preface())
    for _ in range(30):                      # 30 resets over 3 s: within 10/s
        sid = raw.new_id()
        _feed(s, raw.headers(sid))
        _feed(s, raw.rst(sid))
        clock.now += 0.1
    assert not s.dead


def test_request_then_reset_in_a_later_read_is_reported():
    s = _server()
    raw = RawFrames()
    _feed(s, raw.preface())
    sid = raw.new_id()
    assert [type(e) for e in _feed(s, raw.headers(sid))] == [ev.TunnelRequested]
    assert [type(e) for e in _feed(s, raw.rst(sid))] == [ev.StreamReset]


@pytest.mark.parametrize("frame", ["ping", "settings"])
def test_ping_and_settings_floods_close(frame):
    s = _server(clock=Clock())
    raw = RawFrames()
    _feed(s, raw.preface())
    one = raw.ping() if frame == "ping" else raw.settings()
    _feed(s, one * (CONTROL_BURST - 2))
    s.data_to_send()
    s.output_drained()
    _expect_calm(s, one * 10, "control_frames")


def test_pings_at_an_honest_rate_pass_forever():
    clock = Clock()
    s = _server(clock=clock)
    raw = RawFrames()
    _feed(s, raw.preface())
    for _ in range(1500):                     # 50/s for 30 s
        _feed(s, raw.ping())
        s.data_to_send()
        s.output_drained()
        clock.now += 0.02
    assert not s.dead


def test_window_update_flood_closes():
    s = _server()
    raw = RawFrames()
    _feed(s, raw.preface())
    _expect_calm(s, raw.window_update(0, 1) * 10, "window_updates")


def test_window_updates_earned_by_data_sent():
    g = FloodGuard(H2Limits(), server=True, clock=lambda: 0.0)
    g.on_sent([hf.DataFrame(1, data=b"x")] * 100)
    for _ in range(2000):                          # 5 + 2 * 10 * 100 allowed
        g.on_frame(hf.WindowUpdateFrame(1, window_increment=1))


@pytest.mark.parametrize("one_byte", [False, True])
def test_empty_data_frames_in_a_row_close(one_byte):
    s = _server()
    raw = RawFrames()
    _feed(s, raw.preface())
    sid = raw.new_id()
    _feed(s, raw.headers(sid))
    s.accept(sid)
    _feed(s, raw.data(sid, b"") + raw.data(sid, b"x"))      # one empty frame: fine
    _expect_calm(s, raw.data(sid, b"") * 2, "empty_frames", one_byte)


@pytest.mark.parametrize("one_byte", [False, True])
def test_continuation_flood_refused_at_the_frame_header(one_byte):
    s = _server(HboneSettings(server_max_header_list=4096))   # block limit 16 KiB
    raw = RawFrames()
    _feed(s, raw.preface())
    sid = raw.new_id()
    start = raw.headers(sid, raw.connect_block(), end_headers=False)
    chunk = b"\x00" * 4096
    cont = raw.continuation(sid, chunk) * 3
    _feed(s, start + cont, one_byte)
    # The 4th 4 KiB CONTINUATION would take the block past 16 KiB: refused
    # as soon as its 9-byte header is in, before its body is buffered.
    _expect_calm(s, raw.raw_header(len(chunk), 0x9, 0, sid), "header_block")


def test_huge_single_headers_frame_refused_from_its_header():
    s = _server()
    raw = RawFrames()
    _feed(s, raw.preface())
    _expect_calm(s, raw.raw_header(1024 * 1024, 0x1, 0x4, 1), "header_block")


def test_header_list_above_the_soft_limit_is_431_on_that_stream_only():
    s = _server(HboneSettings(server_max_header_list=4096))
    raw = RawFrames()
    _feed(s, raw.preface())
    big = raw.connect_block(extra=[("x-big", "a" * 5000)])
    sid = raw.new_id()
    events = _feed(s, raw.headers(sid, big))
    assert [(type(e), e.status) for e in events] == [(ev.TunnelRejected, 431)]
    assert not s.dead
    sid2 = raw.new_id()
    assert [type(e) for e in _feed(s, raw.headers(sid2))] == [ev.TunnelRequested]


def test_streams_above_the_limit_are_refused_alone():
    s = _server(HboneSettings(server_max_concurrent_streams=3))
    raw = RawFrames()
    _feed(s, raw.preface())
    ok = [raw.new_id() for _ in range(3)]
    assert len(_feed(s, b"".join(raw.headers(i) for i in ok))) == 3
    s.data_to_send()
    extra = [raw.new_id() for _ in range(2)]
    assert _feed(s, b"".join(raw.headers(i) for i in extra)) == []
    rsts = [f for f in parse_frames(s.data_to_send()) if isinstance(f, hf.RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in rsts] == \
        [(i, ErrorCodes.REFUSED_STREAM) for i in extra]
    assert s.refused_streams == 2 and not s.dead
    # HPACK state survived the refusals: the open streams still work, and a
    # new stream is accepted once one closes.
    s.accept(ok[0])
    _feed(s, raw.data(ok[0], b"hi", end_stream=True))
    s.reset_stream(ok[1])
    nxt = raw.new_id()
    assert [type(e) for e in _feed(s, raw.headers(nxt))] == [ev.TunnelRequested]


def test_refusing_too_many_streams_is_a_glitch_with_a_budget():
    s = _server(HboneSettings(server_max_concurrent_streams=1,
                              h2_limits=H2Limits(glitch_burst=5, glitch_rate=0.0)), Clock())
    raw = RawFrames()
    _feed(s, raw.preface())
    _feed(s, b"".join(raw.headers() for _ in range(6)))     # 1 open + 5 refused
    assert not s.dead
    _expect_calm(s, raw.headers(), "glitches")


def test_outbound_control_frames_bounded_when_the_peer_does_not_read():
    s = _server(HboneSettings(h2_limits=H2Limits(max_outbound_control_frames=50,
                                                 control_burst=10_000)))
    raw = RawFrames()
    _feed(s, raw.preface())
    _feed(s, raw.ping() * 48)                 # 48 PING ACKs + SETTINGS ACK queued
    # Never drained (no output_drained): the next frame is refused.
    _feed(s, raw.ping() * 2)                  # 51 queued, one above the limit
    with pytest.raises(RemoteProtocolError) as info:
        _feed(s, raw.ping())
    assert info.value.limit == "outbound_control_frames"


def test_outbound_count_resets_when_the_transport_drains():
    s = _server(HboneSettings(h2_limits=H2Limits(max_outbound_control_frames=50,
                                                 control_burst=10_000)))
    raw = RawFrames()
    _feed(s, raw.preface())
    for _ in range(10):
        _feed(s, raw.ping() * 40)
        s.data_to_send()
        s.output_drained()
    assert not s.dead


def test_malformed_requests_spend_the_glitch_budget():
    s = _server(HboneSettings(h2_limits=H2Limits(glitch_burst=3, glitch_rate=0.0)), Clock())
    raw = RawFrames()
    _feed(s, raw.preface())
    bad = raw.enc.encode([(":method", "GET"), (":path", "/"), (":scheme", "https"),
                          (":authority", "x:1")])
    for _ in range(3):
        _feed(s, raw.headers(raw.new_id(), bad))
    _expect_calm(s, raw.headers(raw.new_id(), raw.enc.encode(
        [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "x:1")])),
        "glitches")


def test_limits_validate():
    with pytest.raises(ValueError):
        H2Limits(reset_burst=0)
    with pytest.raises(ValueError):
        H2Limits(control_rate=-1)
    assert RESET_BURST == 1000
