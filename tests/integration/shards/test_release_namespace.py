"""A namespace's listeners given up for good (a pod left the mesh): the
worker's `SlotSocketFactory.release_namespace()` and the supervisor's
handling of it, over a real SEQPACKET control channel with real listeners.
Only that namespace's sockets close; the slot keeps every other one."""

import os
import socket
import time

import pytest

from shoal.core.sockets import DefaultSocketFactory, listener_key
from tests.helpers.ports import free_port
from shoal.shards.app import App
from shoal.shards.handoff import SlotSocketFactory, namespace_prefix, send_message
from shoal.shards.options import SupervisorOptions
from shoal.shards.supervisor import Supervisor, WorkerProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


class NsFactory(DefaultSocketFactory):
    """Loopback listeners labelled as another namespace (stands in for a pod netns)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.namespace_key = key


def is_closed(sock: socket.socket) -> bool:
    return sock.fileno() == -1


@pytest.fixture
def channel():
    worker_end, sup_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sup_end.setblocking(False)
    sup = Supervisor(App(None), SupervisorOptions(workers=1))
    w = WorkerProc(pid=1, slot=0, generation=1, hb=0, ctrl=sup_end, started=time.monotonic())
    yield sup, w, worker_end
    worker_end.close()
    sup_end.close()
    for socks in sup.slot_socks.values():
        for s in socks.values():
            s.close()


def test_release_closes_the_namespace_everywhere_and_nothing_else(channel):
    sup, w, ctrl = channel
    notify = lambda text, fds=(): send_message(ctrl, text, fds)   # noqa: E731
    p_pod, p_other, p_node = free_port(), free_port(), free_port()
    # What the previous worker of the slot left: one listener of the pod that
    # this worker never re-opens (e.g. its ZDS add had not come yet).
    p_left = free_port()
    left = NsFactory("pod:a").listen("127.0.0.1", p_left)
    inherited = {listener_key("pod:a", "127.0.0.1", p_left): left}
    pod = SlotSocketFactory(NsFactory("pod:a"), inherited, notify)
    other = SlotSocketFactory(NsFactory("pod:ab"), inherited, notify)   # a prefix of it: kept
    node = SlotSocketFactory(DefaultSocketFactory(), inherited, notify)
    mine = pod.listen("127.0.0.1", p_pod)
    kept = other.listen("127.0.0.1", p_other)
    node_sock = node.listen("127.0.0.1", p_node)
    sup._read_ctrl(w)
    assert len(sup.slot_socks[0]) == 3           # the supervisor holds a copy of each
    # The supervisor's copy of the inherited one (it had it before the fork).
    sup.slot_socks[0][next(iter(inherited))] = socket.socket(fileno=os.dup(left.fileno()))

    pod.close_listener(mine)
    pod.release_namespace()
    sup._read_ctrl(w)

    assert is_closed(mine) and is_closed(left) and not inherited
    assert sorted(sup.slot_socks[0]) == sorted([listener_key("pod:ab", "127.0.0.1", p_other),
                                                listener_key("", "127.0.0.1", p_node)])
    # Nobody holds the pod's ports any more: they bind without SO_REUSEPORT.
    for port in (p_pod, p_left):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()
    for s in (kept, node_sock):
        s.close()


def test_node_namespace_is_never_released(channel):
    sup, w, ctrl = channel
    node = SlotSocketFactory(DefaultSocketFactory(), {},
                             lambda text, fds=(): send_message(ctrl, text, fds))
    s = node.listen("127.0.0.1", free_port())
    node.release_namespace()
    sup._read_ctrl(w)
    assert len(sup.slot_socks[0]) == 1
    s.close()


def test_namespace_prefix_matches_listener_key():
    assert listener_key("pod:x", "0.0.0.0", 15001).startswith(namespace_prefix("pod:x"))
    assert not listener_key("pod:xy", "0.0.0.0", 15001).startswith(namespace_prefix("pod:x"))
