"""CPU cost of the sans-IO HBONE core (no sockets, no TLS).

- CONNECT stream open/close: CONNECT, 200, END_STREAM both ways, bytes moved
  between an in-memory client and server; one benchmarked call = STREAMS tunnels.
- DATA framing per MB: 1 MiB through send_data -> bytes -> receive_data ->
  acknowledge (WINDOW_UPDATEs included). Peer in the same run: the raw cost of
  copying 1 MiB twice (`bytes(bytearray)`), the floor any framing pays.
"""

from __future__ import annotations

import pytest
from h2.events import DataReceived

from shoal.core.hbone.protocol import HboneClientProtocol, HboneServerProtocol
from shoal.core.hbone import events as ev

STREAMS = 100
MB = 1024 * 1024


def _pair():
    c, s = HboneClientProtocol(), HboneServerProtocol()
    c.initiate()
    s.initiate()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    s.receive_data(c.data_to_send())
    return c, s


def _open_close(c, s):
    for _ in range(STREAMS):
        sid = c.open_tunnel("10.0.0.5:8080", (("traceparent", "00-" + "a" * 32 + "-" + "b" * 16
                                               + "-01"), ("forwarded", 'for="10.0.0.1:4000"')))
        s.receive_data(c.data_to_send())
        s.accept(sid)
        c.receive_data(s.data_to_send())
        c.end_stream(sid)
        s.end_stream(sid)
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())


def test_connect_stream_open_close(benchmark):
    c, s = _pair()
    benchmark(_open_close, c, s)
    assert c.open_streams == 0 and s.open_streams == 0


def _move_mb(c, s, sid, payload):
    sent = 0
    while sent < len(payload):
        sent += c.send_data(sid, memoryview(payload)[sent:])
        for e in s.receive_data(b"".join(c.chunks_to_send())):
            if type(e) is ev.DataReceived:
                s.acknowledge(sid, e.flow_controlled_length)
        c.receive_data(s.data_to_send())


def test_data_framing_per_mb(benchmark):
    c, s = _pair()
    sid = c.open_tunnel("10.0.0.5:8080")
    s.receive_data(c.data_to_send())
    s.accept(sid)
    c.receive_data(s.data_to_send())
    payload = bytes(MB)
    benchmark(_move_mb, c, s, sid, payload)


def test_copy_mb_twice_peer(benchmark):
    buf = bytearray(MB)
    benchmark(lambda: bytes(bytes(buf)))


# -- small DATA frames: one 1 KB request and response on an open stream ------
# The ztunnel's per-request cost at 1 KB is mostly this framing. Peer in the
# same run: h2's own path (the H2Connection that H2ConnectionFast extends).

def _h2_pair(cls):
    from h2.config import H2Configuration
    c = cls(H2Configuration(client_side=True, header_encoding=None))
    s = cls(H2Configuration(client_side=False, header_encoding=None))
    c.initiate_connection()
    s.initiate_connection()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    s.receive_data(c.data_to_send())
    c.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.5:8080")])
    s.receive_data(c.data_to_send())
    s.send_headers(1, [(":status", "200")])
    c.receive_data(s.data_to_send())
    return c, s


def _rr_1kb(c, s, payload=bytes(1024), n=100):
    for _ in range(n):
        c.send_data(1, payload)
        for e in s.receive_data(c.data_to_send()):
            if type(e) is DataReceived:
                s.acknowledge_received_data(e.flow_controlled_length, 1)
        s.send_data(1, payload)
        for e in c.receive_data(s.data_to_send()):
            if type(e) is DataReceived:
                c.acknowledge_received_data(e.flow_controlled_length, 1)


@pytest.mark.parametrize("path", ["h2fast", "h2"])
def test_data_1kb_round_trips(benchmark, path):
    """100 round trips of 1 KB each way, both ends; h2fast vs h2 itself."""
    from h2.connection import H2Connection

    from shoal.core.hbone.h2fast import H2ConnectionFast
    c, s = _h2_pair(H2ConnectionFast if path == "h2fast" else H2Connection)
    benchmark(_rr_1kb, c, s)
