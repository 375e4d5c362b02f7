"""shards.handoff: slot listeners are reused by key and reported once."""

import socket

import pytest

from shoal.core.sockets import DefaultSocketFactory, listener_key
from shoal.shards import handoff
from shoal.shards.handoff import SlotSocketFactory


class FakeFactory:
    namespace_key = "ns1"

    def __init__(self):
        self.made = []

    def listen(self, host, port, *, backlog=0):
        s = socket.socket()
        self.made.append((host, port))
        return s

    async def connect(self, host, port, *, source=None, timeout=0):
        raise AssertionError("not used")


def test_new_listener_is_created_and_reported():
    inner, sent = FakeFactory(), []
    f = SlotSocketFactory(inner, {}, lambda text, fds: sent.append((text, list(fds))))
    s = f.listen("127.0.0.1", 15008)
    assert inner.made == [("127.0.0.1", 15008)]
    assert sent == [(f"listen {listener_key('ns1', '127.0.0.1', 15008)}", [s.fileno()])]
    s.close()


def test_inherited_listener_is_reused_not_recreated():
    inner, sent = FakeFactory(), []
    old = socket.socket()
    key = listener_key("ns1", "0.0.0.0", 15001)
    inherited = {key: old}
    f = SlotSocketFactory(inner, inherited, lambda text, fds: sent.append(text))
    assert f.listen("0.0.0.0", 15001) is old
    assert inner.made == [] and sent == [] and inherited == {}
    f.close_listener(old)
    assert sent == [f"drop {key}"]


def test_port_zero_bypasses_the_slot():
    inner, sent = FakeFactory(), []
    f = SlotSocketFactory(inner, {}, lambda text, fds: sent.append(text))
    f.listen("127.0.0.1", 0).close()
    assert sent == []


def test_listen_fds_roundtrip_through_the_environment_format():
    real = DefaultSocketFactory().listen("127.0.0.1", 0)
    import json
    import os
    text = handoff.encode_listen_fds({1: {"|127.0.0.1:1": real}})
    assert json.loads(text) == {"1": {"|127.0.0.1:1": real.fileno()}}
    got = handoff.decode_listen_fds(json.dumps({"1": {"|127.0.0.1:1": os.dup(real.fileno())}}))
    sock = got[1]["|127.0.0.1:1"]
    assert sock.getsockname() == real.getsockname()
    assert not sock.get_inheritable()
    sock.close()
    real.close()


@pytest.mark.parametrize("bad", ["not json", '{"x": {}}', '{"1": {"k": "fd"}}', "[]"])
def test_malformed_listen_fds_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="SHOAL_LISTEN_FDS is malformed"):
        handoff.decode_listen_fds(bad)


def test_control_messages_carry_fds():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lst = DefaultSocketFactory().listen("127.0.0.1", 0)
    handoff.send_message(a, "listen k", [lst.fileno()])
    handoff.send_message(a, "ready")
    text, fds = handoff.recv_message(b)
    assert text == "listen k" and len(fds) == 1
    assert socket.socket(fileno=fds[0]).getsockname() == lst.getsockname()
    assert handoff.recv_message(b) == ("ready", [])
    a.close()
    assert handoff.recv_message(b) is None
    b.close()
    lst.close()
