"""cni.protocol: the plugin ↔ agent messages."""

import pytest

from shoal.cni import protocol
from shoal.cni.protocol import ProtocolError, Reply, Request


def test_request_roundtrip_bytes():
    req = Request(cmd="add", container_id="c", netns="/run/netns/p", ifname="eth0",
                  pod_name="a", pod_namespace="ns", ips=("10.0.0.2",))
    data = protocol.encode_request(req)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert data.startswith(b'{"cmd":"add","container_id":"c","netns":"/run/netns/p"')
    assert protocol.decode_request(data) == req


def test_gc_valid_roundtrip():
    req = Request(cmd="gc", valid=(("c1", "eth0"),))
    assert protocol.decode_request(protocol.encode_request(req)) == req


def test_reply_roundtrip():
    rep = Reply(ok=False, code=100, error="nope")
    assert protocol.encode_reply(rep) == b'{"ok":false,"enrolled":false,"code":100,"error":"nope"}\n'
    assert protocol.decode_reply(protocol.encode_reply(rep)) == rep


@pytest.mark.parametrize("bad", [b'{"cmd":"add"}', b'{"cmd":"zap"}\n', b'[1]\n', b'{\n',
                                 b'{"cmd":"add","ips":"x"}\n', b'{"cmd":"gc","valid":[["a"]]}\n',
                                 b'{"cmd":"add","netns":5}\n'])
def test_bad_requests_refused(bad):
    with pytest.raises(ProtocolError):
        protocol.decode_request(bad)


def test_bad_reply_refused():
    with pytest.raises(ProtocolError):
        protocol.decode_reply(b'{"ok":"yes"}\n')


def test_line_reader_byte_at_a_time():
    data = protocol.encode_request(Request(cmd="status"))
    r = protocol.LineReader()
    out = None
    for i in range(len(data)):
        out = r.feed(data[i:i + 1])
        if i < len(data) - 1:
            assert out is None
    assert protocol.decode_request(out).cmd == "status"


def test_line_reader_bounded():
    r = protocol.LineReader()
    with pytest.raises(ProtocolError):
        r.feed(b"x" * (protocol.MAX_MESSAGE_BYTES + 1))
