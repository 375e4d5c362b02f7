"""In-pod redirection in a real netns: outbound → 15001, inbound → 15006,
HBONE 15008 and marked sockets bypass, rules removed on release."""

import os
import socket

import pytest

from shoal.cni import redirect
from shoal.core.netns import NetnsSocketFactory, netns_id, open_netns
from shoal.ztunnel.origdst import original_dst
from shoal.core.constants import PROXY_MARK
from tests.helpers.cni_netns import netns_pair, ns_listener, ns_socket, sh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def pod():
    with netns_pair() as (pod, peer):
        fd = open_netns(f"/run/netns/{pod}")
        try:
            yield pod, peer, fd
        finally:
            os.close(fd)


def accept_one(listener):
    listener.setblocking(True)
    listener.settimeout(5)
    conn, addr = listener.accept()
    return conn, addr


def test_outbound_lands_on_15001_with_original_dst(pod):
    name, peer, fd = pod
    redirect.install(f"/run/netns/{name}")
    lst = NetnsSocketFactory(fd).listener("0.0.0.0", 15001)
    client = ns_socket(name)
    client.settimeout(5)
    client.connect(("203.0.113.7", 80))     # nothing there: only the redirect answers
    conn, _ = accept_one(lst)
    assert original_dst(conn) == ("203.0.113.7", 80)
    client.sendall(b"ping")
    assert conn.recv(4) == b"ping"
    for s in (client, conn, lst):
        s.close()


def test_inbound_lands_on_15006_but_not_15008(pod):
    name, peer, fd = pod
    redirect.install(f"/run/netns/{name}")
    f = NetnsSocketFactory(fd)
    inbound, hbone = f.listener("0.0.0.0", 15006), f.listener("0.0.0.0", 15008)
    c = ns_socket(peer)
    c.settimeout(5)
    c.connect(("10.77.0.2", 8080))
    conn, addr = accept_one(inbound)
    assert original_dst(conn) == ("10.77.0.2", 8080) and addr[0] == "10.77.0.1"
    c2 = ns_socket(peer)
    c2.settimeout(5)
    c2.connect(("10.77.0.2", 15008))
    conn2, _ = accept_one(hbone)
    assert conn2.getsockname() == ("10.77.0.2", 15008)
    for s in (c, c2, conn, conn2, inbound, hbone):
        s.close()


def test_marked_socket_and_loopback_bypass(pod):
    name, peer, fd = pod
    redirect.install(f"/run/netns/{name}")
    capture = NetnsSocketFactory(fd).listener("0.0.0.0", 15001)
    direct = ns_listener(peer, "10.77.0.1", 9000)
    s = NetnsSocketFactory(fd).socket()
    s.setblocking(True)
    s.settimeout(5)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == PROXY_MARK
    s.connect(("10.77.0.1", 9000))
    conn, _ = accept_one(direct)
    assert conn.getsockname() == ("10.77.0.1", 9000)
    local = ns_listener(name, "127.0.0.1", 9001)
    c = ns_socket(name)
    c.settimeout(5)
    c.connect(("127.0.0.1", 9001))
    conn2, _ = accept_one(local)
    for x in (s, conn, direct, local, c, conn2, capture):
        x.close()


def test_rules_installed_and_removed(pod):
    name, peer, _ = pod
    path = f"/run/netns/{name}"
    assert redirect.check(path)
    redirect.install(path)
    redirect.install(path)        # idempotent
    assert redirect.check(path) == []
    assert "redirect to :15001" in sh("ip", "netns", "exec", name, "nft", "list", "ruleset")
    assert "fwmark 0x111/0xfff lookup 100" in sh("ip", "-n", name, "rule")
    redirect.remove(path)
    redirect.remove(path)         # idempotent
    assert "shoal" not in sh("ip", "netns", "exec", name, "nft", "list", "ruleset")
    assert "lookup 100" not in sh("ip", "-n", name, "rule")
    # Released: a connection goes straight to its destination again.
    direct = ns_listener(peer, "10.77.0.1", 9002)
    c = ns_socket(name)
    c.settimeout(5)
    c.connect(("10.77.0.1", 9002))
    conn, _ = accept_one(direct)
    for x in (c, conn, direct):
        x.close()


def test_netns_identity(pod):
    name, _, fd = pod
    assert netns_id(fd) == netns_id(f"/run/netns/{name}")
    from shoal.core.netns import is_netns
    assert is_netns(fd)
    with open("/etc/hostname", "rb") as f:
        assert not is_netns(f.fileno())
