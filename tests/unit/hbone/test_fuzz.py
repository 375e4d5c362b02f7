"""Whatever bytes arrive, the core raises only RemoteProtocolError (h11's contract)."""

import hyperframe.frame as hf
from hypothesis import given, settings, strategies as st

from shoal.core.hbone.errors import RemoteProtocolError
from shoal.core.hbone.protocol import HboneClientProtocol, HboneServerProtocol

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _settings_frame() -> bytes:
    return hf.SettingsFrame(0).serialize()


def _feed(proto, data: bytes, step: int) -> None:
    try:
        for i in range(0, len(data), step):
            proto.receive_data(data[i:i + step])
    except RemoteProtocolError as e:
        assert e.error_code is not None
        assert proto.dead
        proto.data_to_send()            # the GOAWAY can be drained


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_server_survives_any_bytes_after_preface(garbage, step):
    s = HboneServerProtocol()
    s.initiate()
    _feed(s, PREFACE + _settings_frame() + garbage, step)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_client_survives_any_bytes(garbage, step):
    c = HboneClientProtocol()
    c.initiate()
    c.open_tunnel("10.0.0.1:80")
    _feed(c, _settings_frame() + garbage, step)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9]),
                          st.integers(0, 0xFF), st.integers(0, 7), st.binary(max_size=40)),
                max_size=8))
def test_server_survives_random_frames(frames):
    s = HboneServerProtocol()
    s.initiate()
    raw = PREFACE + _settings_frame()
    for ftype, flags, sid, body in frames:
        raw += len(body).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + body
    _feed(s, raw, 7)
