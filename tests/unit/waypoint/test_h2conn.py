"""waypoint/h2conn.py: the response fast path queues the bytes h2 would queue
and leaves h2's state as h2 would leave it (two connections fed the same
client bytes, one answered through h2's methods, one through the fast ones)."""

from __future__ import annotations

import re

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame as hf
import pytest

from shoal.core.hbone.h2limits import GuardedH2Connection
from shoal.waypoint.h2conn import DownstreamH2Connection
from tests.helpers.h2raw import PREFACE, RawFrames

SERVER_CFG = dict(client_side=False, header_encoding=None, validate_inbound_headers=True,
                  validate_outbound_headers=False, normalize_outbound_headers=False)
REQUEST = [(":method", "GET"), (":path", "/x"), (":scheme", "http"), (":authority", "echo:8080")]


def _pair(n_streams: int = 1, end_stream: bool = True, window: int | None = None):
    """Two identical servers that received the same requests (stream 1, 3...)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    if window is not None:
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    for i in range(n_streams):
        client.send_headers(1 + 2 * i, REQUEST, end_stream=end_stream)
    wire = client.data_to_send()
    servers = []
    for _ in range(2):
        s = DownstreamH2Connection(h2.config.H2Configuration(**SERVER_CFG))
        s.initiate_connection()
        s.receive_data(wire)
        s.data_to_send()
        servers.append(s)
    return servers


def _state(s: DownstreamH2Connection) -> tuple:
    streams = {sid: (st.state_machine.state, st.state_machine.headers_sent,
                     st.state_machine.stream_closed_by, st.outbound_flow_control_window,
                     st.request_method)
               for sid, st in s.streams.items()}
    return (streams, s.outbound_flow_control_window, s.guard.streams_opened,
            s.guard.data_frames_sent, s.open_inbound_streams, dict(s._closed_streams),
            s.encoder.header_table.dynamic_entries)


def _block(status: bytes = b"200", extra: int = 0) -> list:
    block = [(b":status", status), (b"content-type", b"text/plain"),
             (b"content-length", b"5"), (b"x-backend", b"v1")]
    block += [(b"x-filler-%d" % i, b"y" * 200) for i in range(extra)]
    return block


@pytest.mark.parametrize("data,end", [(b"hello", True), (b"hello", False), (b"", True),
                                      (None, True), (None, False)])
def test_send_response_matches_h2(data, end):
    slow, fast = _pair()
    slow.send_headers(1, _block(), end_stream=end and data is None)
    if data is not None:
        slow.send_data(1, data, end_stream=end)
    assert fast.send_response(1, _block(), data, end)
    assert fast.data_to_send() == slow.data_to_send()
    assert _state(fast) == _state(slow)


def test_a_header_block_past_the_max_frame_size_is_split_as_h2_splits_it():
    slow, fast = _pair()
    big = _block(extra=120)                 # ~26 KB of fields, above 16 KiB
    slow.send_headers(1, big)
    slow.send_data(1, b"hello", end_stream=True)
    assert fast.send_response(1, big, b"hello", True)
    out = fast.data_to_send()
    assert out == slow.data_to_send()
    assert out[3] == 0x1 and out[4] == 0x0      # HEADERS without END_HEADERS first


def test_send_body_matches_h2_and_the_closed_stream_is_forgotten_the_same_way():
    slow, fast = _pair(n_streams=2)
    for s in (slow, fast):
        s.send_headers(1, _block())
    slow.send_data(1, b"abc")
    slow.send_data(1, b"de", end_stream=True)
    assert fast.send_body(1, b"abc", False) and fast.send_body(1, b"de", True)
    assert fast.data_to_send() == slow.data_to_send()
    assert _state(fast) == _state(slow)
    # An empty DATA with END_STREAM is h2's end_stream.
    for s in (slow, fast):
        s.send_headers(3, _block())
    slow.end_stream(3)
    assert fast.send_body(3, b"", True)
    assert fast.data_to_send() == slow.data_to_send()
    assert _state(fast) == _state(slow) and 1 not in fast.streams and 3 not in fast.streams


def test_the_fast_path_declines_what_it_does_not_cover():
    (s,) = _pair()[:1]
    assert not s.send_response(1, _block(b"103"), None, False)    # informational
    assert not s.send_response(9, _block(), b"x", True)           # no such stream
    assert not s.send_body(1, b"x", False)                        # head not sent yet
    (open_req,) = _pair(end_stream=False)[:1]                      # request body to come
    assert not open_req.send_response(1, _block(), b"x", True)
    (small,) = _pair(window=3)[:1]                    # window too small
    before = _state(small)
    assert not small.send_response(1, _block(), b"hello", True)
    assert _state(small) == before and small.data_to_send() == b""
    assert small.send_response(1, _block(), b"hel", False)         # what fits goes
    assert not small.send_body(1, b"lo", True)
    assert not small.send_response(1, _block(), None, True)        # HEADERS already sent


def test_the_client_decodes_what_the_fast_path_sent():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for sid in (1, 3):
        client.send_headers(sid, REQUEST, end_stream=True)
    server = DownstreamH2Connection(h2.config.H2Configuration(**SERVER_CFG))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    for sid in (1, 3):                    # the second block uses the dynamic table
        assert server.send_response(sid, _block(), b"hello", True)
    events = client.receive_data(server.data_to_send())
    got = [(type(e).__name__, e.stream_id) for e in events
           if not isinstance(e, (h2.events.RemoteSettingsChanged, h2.events.SettingsAcknowledged))]
    assert got == [("ResponseReceived", 1), ("DataReceived", 1), ("StreamEnded", 1),
                   ("ResponseReceived", 3), ("DataReceived", 3), ("StreamEnded", 3)]
    heads = [e.headers for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert heads[0] == heads[1] == [(b":status", b"200"), (b"content-type", b"text/plain"),
                                    (b"content-length", b"5"), (b"x-backend", b"v1")]


# -- receiving ---------------------------------------------------------------------

def _ev(events) -> list:
    out = []
    for e in events:
        d = {k: repr(v) for k, v in vars(e).items()
             if k not in ("stream_ended", "priority_updated")}
        if getattr(e, "stream_ended", None) is not None:
            d["stream_ended"] = e.stream_ended.stream_id
        out.append((type(e).__name__, d))
    return out


def _recv_state(s) -> tuple:
    streams = {sid: (st.state_machine.state, st.state_machine.headers_received,
                     st.inbound_flow_control_window, st._expected_content_length)
               for sid, st in s.streams.items()}
    g = s.guard
    return (streams, s.highest_inbound_stream_id, g.streams_opened, g.empty_in_a_row,
            s.refused_streams, s.decoder.header_table.dynamic_entries, s.state_machine.state)


def _servers(max_streams: int | None = None):
    out = []
    for cls in (DownstreamH2Connection, GuardedH2Connection):
        s = cls(h2.config.H2Configuration(**SERVER_CFG))
        if max_streams is not None:
            s.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        s.initiate_connection()
        s.data_to_send()
        out.append(s)
    return out


def _feed_both(wire: bytes, *, one_byte: bool = False, max_streams: int | None = None):
    got = []
    for s in _servers(max_streams):
        events, error = [], None
        chunks = [wire[i:i + 1] for i in range(len(wire))] if one_byte else [wire]
        try:
            for c in chunks:
                events += s.receive_data(c)
        except h2.exceptions.ProtocolError as e:
            error = (type(e).__name__, re.sub(r"0x[0-9a-f]+", "0x?", str(e)))
        got.append((_ev(events), error, s.data_to_send(), _recv_state(s)))
    return got


def _client_wire(n: int = 3, body_on: tuple = (), extra_headers=()) -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for i in range(n):
        sid = 1 + 2 * i
        hdrs = REQUEST + [("user-agent", "test"), *extra_headers] + \
            ([("content-length", "3")] if i in body_on else [])
        client.send_headers(sid, hdrs, end_stream=i not in body_on)
        if i in body_on:
            client.send_data(sid, b"abc", end_stream=True)
    return client.data_to_send()


@pytest.mark.parametrize("one_byte", [False, True])
def test_new_stream_headers_give_h2s_events_and_state(one_byte):
    fast, slow = _feed_both(_client_wire(4, body_on=(1,)), one_byte=one_byte)
    assert fast == slow
    assert [name for name, _ in fast[0]].count("RequestReceived") == 4


def test_headers_h2_must_see_go_to_h2():
    raw = RawFrames()
    block = raw.enc.encode(REQUEST)
    padded = hf.HeadersFrame(1, data=block, pad_length=4, flags=["END_HEADERS", "END_STREAM",
                                                                 "PADDED"]).serialize()
    prio = hf.HeadersFrame(3, data=raw.enc.encode(REQUEST), stream_weight=16,
                           flags=["END_HEADERS", "END_STREAM", "PRIORITY"]).serialize()
    cont_block = raw.enc.encode(REQUEST)
    split = raw.headers(5, cont_block[:4], end_headers=False, end_stream=True) + \
        raw.continuation(5, cont_block[4:], end_headers=True)
    wire = PREFACE + hf.SettingsFrame(0).serialize() + padded + prio + split
    fast, slow = _feed_both(wire)
    assert fast == slow
    assert [e[1]["stream_id"] for e in fast[0] if e[0] == "RequestReceived"] == ["1", "3", "5"]


@pytest.mark.parametrize("bad", [
    [(":method", "GET"), (":path", "/x"), (":scheme", "http"), ("Upper", "x")],   # validation
    [(":method", "GET"), (":scheme", "http")],                                   # no :path
    [(":method", "GET"), (":path", "/x"), (":scheme", "http"), ("connection", "close")],
])
def test_a_bad_request_block_is_the_same_connection_error(bad):
    raw = RawFrames()
    wire = PREFACE + hf.SettingsFrame(0).serialize() + \
        raw.headers(1, raw.enc.encode(REQUEST), end_stream=True) + \
        raw.headers(3, raw.enc.encode(bad), end_stream=True) + \
        raw.headers(5, raw.enc.encode(REQUEST), end_stream=True)
    fast, slow = _feed_both(wire)
    assert fast == slow
    assert fast[1] is not None and fast[2]        # an error, and a GOAWAY queued


def test_hpack_garbage_reused_and_even_ids_are_handled_as_h2_does():
    raw = RawFrames()
    ok = raw.headers(3, raw.enc.encode(REQUEST), end_stream=True)
    for tail, connection_error in (
            (raw.headers(5, b"\xff\xff\xff\xff", end_stream=True), True),     # bad HPACK
            (ok, False),                           # id 3 again: h2 resets that stream
            (raw.headers(1, RawFrames().enc.encode(REQUEST), end_stream=True), True),  # lower id
            (raw.headers(8, RawFrames().enc.encode(REQUEST), end_stream=True), True)):  # even id
        wire = PREFACE + hf.SettingsFrame(0).serialize() + ok + tail
        fast, slow = _feed_both(wire)
        assert fast == slow
        assert (fast[1] is not None) == connection_error


def test_streams_above_the_limit_are_refused_the_same_way():
    fast, slow = _feed_both(_client_wire(5), max_streams=2)
    assert fast == slow
    assert fast[3][4] == 3                  # refused_streams: 3, 4 and 5th request


def test_plain_request_headers_skip_h2s_frame_dispatch(monkeypatch):
    seen = []
    orig = GuardedH2Connection._receive_headers_frame
    monkeypatch.setattr(GuardedH2Connection, "_receive_headers_frame",
                        lambda self, frame: seen.append(type(self).__name__) or orig(self, frame))
    _feed_both(_client_wire(3))
    # The first HEADERS moves the connection machine from IDLE to SERVER_OPEN:
    # h2 takes it; the fast path takes the others.
    assert seen == ["DownstreamH2Connection"] + ["GuardedH2Connection"] * 3


def test_a_repeated_indexed_block_is_decoded_once_and_table_changes_are_seen():
    raw = RawFrames()
    first = raw.enc.encode(REQUEST + [("x-a", "1")])          # literals: fill the table
    again = raw.enc.encode(REQUEST + [("x-a", "1")])          # now all indexed
    assert first != again and all(0x80 < b < 0xFF for b in again)
    new = raw.enc.encode(REQUEST + [("x-a", "2")])            # a literal: the table changes
    after = raw.enc.encode(REQUEST + [("x-a", "1")])          # indexed, other indices now
    wire = PREFACE + hf.SettingsFrame(0).serialize() + b"".join(
        raw.headers(sid, block, end_stream=True)
        for sid, block in ((1, first), (3, again), (5, again), (7, new), (9, after), (11, after)))
    fast, slow = _feed_both(wire)
    assert fast == slow
    fields = [e[1]["headers"] for e in fast[0] if e[0] == "RequestReceived"]
    assert len(fields) == 6 and fields[3] != fields[4] == fields[0]
    s = _servers()[0]
    s.receive_data(wire)
    assert s.decoder.generation == 4      # blocks 1, 3, 7, 9: 5 and 11 were reused


def test_a_table_size_change_drops_the_reused_block():
    s = _servers()[0]
    raw = RawFrames()
    s.receive_data(PREFACE + hf.SettingsFrame(0).serialize()
                   + raw.headers(1, raw.enc.encode(REQUEST), end_stream=True)
                   + raw.headers(3, raw.enc.encode(REQUEST), end_stream=True))
    gen = s.decoder.generation
    s.decoder.header_table_size = 4096    # the same size: only the reuse is dropped
    s.receive_data(raw.headers(5, raw.enc.encode(REQUEST), end_stream=True))
    assert s.decoder.generation == gen + 2


def test_repeated_response_heads_reuse_their_bytes_and_see_table_changes():
    slow, fast = _pair(n_streams=6)
    blocks = [_block(), _block(), _block(), _block(b"404"), _block(), _block()]
    for i, block in enumerate(blocks):
        sid = 1 + 2 * i
        slow.send_headers(sid, block)
        slow.send_data(sid, b"hello", end_stream=True)
        assert fast.send_response(sid, block, b"hello", True)
        assert fast.data_to_send() == slow.data_to_send()
    assert _state(fast) == _state(slow)
    # Encoded: 1 (literals), 2 (all indexed: kept, 3 reuses it), 4 (another
    # :status), 5 (the 200 head again; 6 reuses it).
    assert fast.encoder.generation == 5
    gen = fast.encoder.generation
    fast.encoder.header_table_size = 4096          # what h2 does on the client's SETTINGS
    assert fast.encoder.generation == gen + 1      # so the next head is encoded again


def test_a_reused_block_with_and_without_end_stream_gives_h2s_events():
    raw = RawFrames()
    block = raw.enc.encode(REQUEST + [("content-length", "3")])
    again = raw.enc.encode(REQUEST + [("content-length", "3")])
    wire = PREFACE + hf.SettingsFrame(0).serialize() + raw.headers(1, block) + \
        raw.data(1, b"abc", end_stream=True) + raw.headers(3, again) + \
        raw.data(3, b"abc", end_stream=True) + raw.headers(5, again) + \
        raw.data(5, b"abcd", end_stream=True)          # more than its content-length
    fast, slow = _feed_both(wire, one_byte=True)
    assert fast == slow
    assert [e[0] for e in fast[0]].count("RequestReceived") == 3
    assert fast[1] is not None                        # stream 5's body: h2's error
