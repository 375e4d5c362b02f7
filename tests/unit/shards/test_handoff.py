"""shards.handoff: slot listeners are reused by key and reported once."""

import os
import socket

import pytest

from shoal.core.sockets import (NO_CPU, SO_INCOMING_CPU, DefaultSocketFactory, listener_key,
                                set_incoming_cpu)
from shoal.shards import handoff
from shoal.shards.handoff import SlotSocketFactory
from shoal.shards.options import steering_cpu


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


def incoming_cpu(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU)


@pytest.mark.parametrize("inherited", [False, True])
def test_a_slots_listeners_are_steered_to_its_cpu(inherited):
    key = listener_key("ns1", "127.0.0.1", 15008)
    old = socket.socket()
    f = SlotSocketFactory(FakeFactory(), {key: old} if inherited else {},
                          lambda text, fds: None, incoming_cpu=1)
    s = f.listen("127.0.0.1", 15008)
    assert (s is old) == inherited
    assert incoming_cpu(s) == 1
    s.close()


def test_without_steering_an_inherited_listener_is_unsteered():
    """A SIGUSR2 to a supervisor started with --no-cpu-steering resets the
    CPU its predecessor gave the slot's listeners."""
    key = listener_key("ns1", "127.0.0.1", 15008)
    old = socket.socket()
    set_incoming_cpu(old, 1)
    f = SlotSocketFactory(FakeFactory(), {key: old}, lambda text, fds: None)
    assert incoming_cpu(f.listen("127.0.0.1", 15008)) == NO_CPU
    old.close()


def test_slots_take_the_allowed_cpus_in_turn(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {6, 4, 5})
    assert [steering_cpu(slot) for slot in range(5)] == [4, 5, 6, 4, 5]
