"""The sans-IO HBONE core: an in-memory client/server pair, byte by byte too."""

import ast
import pathlib

import hyperframe.frame as hf
import pytest
from h2.errors import ErrorCodes

from shoal.core.hbone import events as ev
from shoal.core.hbone.errors import LocalProtocolError, RemoteProtocolError
from shoal.core.hbone.protocol import HboneClientProtocol, HboneServerProtocol, _Stream
from shoal.core.hbone.settings import HboneSettings, MIB

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def xfer(src, dst, one_byte=False):
    """Move everything `src` queued into `dst`; returns dst's events."""
    data = src.data_to_send()
    if not one_byte:
        return dst.receive_data(data)
    out = []
    for i in range(len(data)):
        out += dst.receive_data(data[i:i + 1])
    return out


def pair(one_byte=False, settings=None):
    """A client and a server that have exchanged their prefaces and SETTINGS
    (and ACKs), `one_byte` at a time if asked; test_goaway and
    test_direct_body start from it too."""
    kw = {"settings": settings} if settings else {}
    c, s = HboneClientProtocol(**kw), HboneServerProtocol(**kw)
    c.initiate()
    s.initiate()
    xfer(c, s, one_byte)
    xfer(s, c, one_byte)
    xfer(c, s, one_byte)   # settings ACKs
    return c, s


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def _open(c, s, authority="10.0.0.5:8080", headers=(), one_byte=False):
    sid = c.open_tunnel(authority, headers)
    req = _of(xfer(c, s, one_byte), ev.TunnelRequested)
    assert len(req) == 1
    s.accept(sid)
    opened = _of(xfer(s, c, one_byte), ev.TunnelOpened)
    assert [o.stream_id for o in opened] == [sid]
    return sid, req[0]


@pytest.mark.parametrize("one_byte", [False, True])
def test_connect_carries_authority_and_headers(one_byte):
    c, s = pair(one_byte)
    hdrs = [("forwarded", 'for="10.0.0.1:4444";host=web.default.svc.cluster.local'),
            ("baggage", "k8s.namespace.name=default"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    sid, req = _open(c, s, "10.0.0.5:8080", hdrs, one_byte)
    assert (req.host, req.port, req.authority) == ("10.0.0.5", 8080, "10.0.0.5:8080")
    assert req.headers["forwarded"].startswith('for="10.0.0.1:4444"')
    assert req.headers["baggage"] == "k8s.namespace.name=default"
    assert "traceparent" in req.headers
    assert c.open_streams == s.open_streams == 1


@pytest.mark.parametrize("one_byte", [False, True])
def test_data_both_ways_and_half_close(one_byte):
    c, s = pair()
    sid, _ = _open(c, s)
    assert c.send_data(sid, b"hello") == 5
    got = xfer(c, s, one_byte)
    assert b"".join(e.data for e in _of(got, ev.DataReceived)) == b"hello"
    c.end_stream(sid)                           # client FIN
    assert _of(xfer(c, s, one_byte), ev.StreamEnded) == [ev.StreamEnded(stream_id=sid)]
    assert s.send_data(sid, b"world", end_stream=True) == 5   # server data + FIN
    got = xfer(s, c, one_byte)
    assert b"".join(e.data for e in _of(got, ev.DataReceived)) == b"world"
    assert _of(got, ev.StreamEnded)
    assert c.open_streams == 0 and s.open_streams == 0


def test_server_half_close_first_then_client_still_sends():
    c, s = pair()
    sid, _ = _open(c, s)
    s.end_stream(sid)
    assert _of(xfer(s, c), ev.StreamEnded)
    assert c.send_data(sid, b"late") == 4
    assert b"late" in b"".join(e.data for e in _of(xfer(c, s), ev.DataReceived))


@pytest.mark.parametrize("by", ["client", "server"])
def test_reset_is_carried_and_other_streams_live(by):
    c, s = pair()
    a, _ = _open(c, s)
    b, _ = _open(c, s)
    src, dst = (c, s) if by == "client" else (s, c)
    src.reset_stream(a, ErrorCodes.CANCEL)
    resets = _of(xfer(src, dst), ev.StreamReset)
    assert resets == [ev.StreamReset(stream_id=a, error_code=ErrorCodes.CANCEL, remote=True)]
    assert c.send_data(b, b"still") == 5
    assert _of(xfer(c, s), ev.DataReceived)[0].data == b"still"


@pytest.mark.parametrize("status", [401, 503, 400])
def test_reject_statuses_reach_client(status):
    c, s = pair()
    ok, _ = _open(c, s)
    sid = c.open_tunnel("10.0.0.9:80")
    xfer(c, s)
    s.reject(sid, status)
    refused = _of(xfer(s, c), ev.TunnelRefused)
    assert [(r.stream_id, r.status) for r in refused] == [(sid, status)]
    xfer(c, s)
    assert s.open_streams == 1 and c.open_streams == 1   # the good stream stays
    assert c.send_data(ok, b"x") == 1


def _raw_request(c, s, block, end_stream=False):
    """Send a hand-made HEADERS frame from the client's connection state."""
    sid = c._h2.get_next_available_stream_id()
    c._h2.config.validate_outbound_headers = False
    c._h2.send_headers(sid, block, end_stream=end_stream)
    c._streams[sid] = _Stream()        # so the client reports the answer
    return sid, xfer(c, s)


@pytest.mark.parametrize("block,why", [
    ([(":method", "GET"), (":authority", "10.0.0.1:80"), (":scheme", "https"), (":path", "/")],
     "not CONNECT"),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1")], "not host:port"),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1:99999")], "port"),
    ([(":method", "CONNECT"), (":authority", "bad_host!:80")], "neither"),
    ([(":method", "CONNECT")], "not host:port"),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":path", "/")], "must not"),
])
def test_malformed_request_is_400_on_that_stream_only(block, why):
    c, s = pair()
    good, _ = _open(c, s)
    sid, events = _raw_request(c, s, block)
    rej = _of(events, ev.TunnelRejected)
    assert rej[0].status == 400 and why in rej[0].reason
    refused = _of(xfer(s, c), ev.TunnelRefused)
    assert [(r.stream_id, r.status) for r in refused] == [(sid, 400)]
    assert c.send_data(good, b"ok") == 2
    assert _of(xfer(c, s), ev.DataReceived)[0].data == b"ok"


def test_oversized_request_headers_get_431_and_connection_survives():
    c, s = pair()
    good, _ = _open(c, s)
    big = [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("x-big", "a" * 70_000)]
    sid, events = _raw_request(c, s, big)
    assert _of(events, ev.TunnelRejected)[0].status == 431
    assert _of(xfer(s, c), ev.TunnelRefused)[0].status == 431
    assert c.send_data(good, b"ok") == 2
    assert _of(xfer(c, s), ev.DataReceived)[0].data == b"ok"


def test_oversized_response_headers_refused_by_client():
    c, s = pair()
    sid = c.open_tunnel("10.0.0.1:80")
    xfer(c, s)
    s.accept(sid, [("x-big", "b" * 20_000)])
    refused = _of(xfer(s, c), ev.TunnelRefused)
    assert refused[0].status == 0 and "above the client limit" in refused[0].reason


def test_garbage_instead_of_http2_is_remote_error_with_goaway():
    s = HboneServerProtocol()
    s.initiate()
    s.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert info.value.error_code == ErrorCodes.PROTOCOL_ERROR
    frame, _ = hf.Frame.parse_frame_header(memoryview(s.data_to_send()[:9]))
    assert isinstance(frame, hf.GoAwayFrame)
    assert s.receive_data(b"more") == []          # dead: ignored, no crash


def test_garbage_after_preface_is_remote_error():
    s = HboneServerProtocol()
    s.initiate()
    with pytest.raises(RemoteProtocolError):
        # DATA on stream 0 is a connection error (RFC 9113 §6.1)
        s.receive_data(PREFACE + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    assert s.dead


def test_settings_advertised():
    c, s = pair()
    assert s._h2.remote_settings.initial_window_size == 4 * MIB
    assert s._h2.remote_settings.max_frame_size == 1 * MIB
    assert c._h2.remote_settings.max_concurrent_streams == 200
    assert c.remote_max_concurrent_streams == 200
    assert c._h2.remote_settings.max_header_list_size == 64 * 1024
    assert s._h2.remote_settings.max_header_list_size == 16 * 1024
    assert c._h2.outbound_flow_control_window == 16 * MIB
    assert s._h2.outbound_flow_control_window == 16 * MIB


def test_flow_control_bounds_sender_until_acknowledged():
    c, s = pair()
    sid, _ = _open(c, s)
    payload = b"z" * (5 * MIB)
    sent = c.send_data(sid, payload)
    assert sent == 4 * MIB                      # stream window, not more
    data = _of(xfer(c, s), ev.DataReceived)
    assert sum(len(d.data) for d in data) == 4 * MIB
    assert c.send_data(sid, payload[sent:]) == 0   # blocked: nothing acknowledged
    assert not s.data_to_send()                  # no WINDOW_UPDATE without acks
    for d in data:
        s.acknowledge(sid, d.flow_controlled_length)
    opened = _of(xfer(s, c), ev.WindowOpened)
    assert {o.stream_id for o in opened} >= {sid}
    assert c.send_data(sid, payload[sent:]) == 1 * MIB


def test_window_updates_are_batched():
    c, s = pair()
    sid, _ = _open(c, s)
    for _ in range(16):
        c.send_data(sid, b"q" * 1024)
    for d in _of(xfer(c, s), ev.DataReceived):
        s.acknowledge(sid, d.flow_controlled_length)
    assert s.data_to_send() == b""              # 16 KiB of 4 MiB: no update yet


def test_window_update_owed_once_half_a_window_is_outstanding():
    """window_update_owed: a receiver updates once it consumed half a window
    (h2 as here, nghttp2), not before, so an update is owed only with at
    most half of the stream window (the peer's SETTINGS) or of the
    connection window (the largest seen) left."""
    c, s = pair(settings=HboneSettings(stream_window=65_535, connection_window=131_070))
    a, _ = _open(c, s)
    c.send_data(a, b"x" * 1000)
    assert not c.window_update_owed(a)
    for d in _of(xfer(c, s), ev.DataReceived):
        s.acknowledge(a, d.flow_controlled_length)
    assert s.data_to_send() == b""               # all consumed, and no update comes
    c.send_data(a, b"x" * 31_768)                # 32_767 left: half the stream window
    assert c.window_update_owed(a)
    for d in _of(xfer(c, s), ev.DataReceived):
        s.acknowledge(a, d.flow_controlled_length)
    assert {o.stream_id for o in _of(xfer(s, c), ev.WindowOpened)} == {a}
    assert not c.window_update_owed(a)
    b, _ = _open(c, s)
    x, _ = _open(c, s)
    c.send_data(b, b"y" * 22_000)                # connection: 75_302 of 131_070 left
    assert not c.window_update_owed(b)
    c.send_data(x, b"y" * 22_000)                # 53_302: under half
    assert c.window_update_owed(b) and c.window_update_owed(a)


def test_ping_ack():
    c, s = pair()
    payload = c.ping()
    xfer(c, s)
    assert _of(xfer(s, c), ev.PingAcked) == [ev.PingAcked(payload=payload)]


def test_goaway_reported_and_blocks_new_streams():
    c, s = pair()
    s.close(ErrorCodes.NO_ERROR, "draining")
    closed = _of(xfer(s, c), ev.ConnectionClosed)
    assert closed and closed[0].reason == "draining"
    with pytest.raises(LocalProtocolError):
        c.open_tunnel("10.0.0.1:80")


def test_max_concurrent_streams_enforced_locally():
    c, s = pair(settings=HboneSettings(server_max_concurrent_streams=2))
    _open(c, s)
    _open(c, s)
    with pytest.raises(LocalProtocolError):
        c.open_tunnel("10.0.0.1:80")


def test_data_before_200_is_held_by_flow_control():
    c, s = pair()
    sid = c.open_tunnel("10.0.0.1:80")
    xfer(c, s)
    # the client may not send before 200 (stream not OPEN locally)
    with pytest.raises(LocalProtocolError):
        c.send_data(sid, b"early")


def test_client_refuses_bad_authority():
    c, _ = pair()
    with pytest.raises(LocalProtocolError) as info:
        c.open_tunnel("nohostport")
    assert info.value.status == 400


def test_protocol_module_is_sans_io():
    src = pathlib.Path(__file__).parents[3] / "core" / "hbone" / "protocol.py"
    names = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert not names & {"socket", "asyncio", "os", "signal", "mmap", "ssl", "time"}


def test_closed_stream_history_is_bounded_on_a_long_lived_connection():
    # One pooled connection carries one stream per proxied TCP connection:
    # h2's memory of closed streams must not grow with every one of them.
    from shoal.core.hbone.h2fast import H2ConnectionFast
    c, s = pair()
    n = H2ConnectionFast.MAX_CLOSED_STREAMS + 500
    for i in range(n):
        sid, _ = _open(c, s)
        if i % 2:
            c.reset_stream(sid)
            xfer(c, s)
        else:
            c.end_stream(sid)
            xfer(c, s)
            s.send_data(sid, b"x", end_stream=True)
            xfer(s, c)
    assert c.open_streams == 0 and s.open_streams == 0
    assert len(c._h2._closed_streams) == len(s._h2._closed_streams) == H2ConnectionFast.MAX_CLOSED_STREAMS
