"""In-pod ztunnel on a real node: the real node agent enrolls network
namespaces wired by the real CNI chain, a `ztunnel run --mode inpod` with two
workers serves them.

- un-enrollment leaves no 15001/15006/15008 listener in the pod netns (the
  shards supervisor gives up its copies too), and re-adding works;
- a worker restart keeps the very same listening sockets of enrolled pods;
- the app sees the client's own address (source spoofing with the pod's
  policy routing), and the address of the pod itself when the routing is
  missing (fallback, logged once).
"""

import os
import signal
import socket
import sys

import pytest

from shoal.core.netns import in_netns, open_netns
from tests.helpers.cni_netns import sh
from tests.helpers.ztunnel_inpod import (PROXY_PORTS, InPodNode, deadline_poll, listeners,
                                         ns_popen, proxy_listeners, stop_popen)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

# Inside each pod's own netns: no other test can hold it.
APP_PORT = 8080
# Listener changes follow a ZDS message within milliseconds; generous for a busy CI.
RELEASE_DEADLINE = 10.0

ECHO = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
while True:
    c, a = s.accept()
    c.sendall(f"peer={a[0]}:{a[1]}\\n".encode())
    c.close()
"""


def running(n: InPodNode):
    """Start a node for one test; show the ztunnel's log tail if it fails."""
    try:
        n.start()
        yield n
    except BaseException:
        if n.ztunnel is not None:
            print(n.logs_tail())
        raise
    finally:
        n.stop()


@pytest.fixture
def node(tmp_path):
    yield from running(InPodNode(tmp_path, workers=2))


def ports(found):
    return sorted(x.port for x in found)


def test_released_pod_leaves_no_listener_and_readd_works(node):
    pod = node.add_pod("amb", "web-0")
    got = proxy_listeners(pod.ns)
    # One SO_REUSEPORT socket per worker and port...
    assert ports(got) == sorted(PROXY_PORTS * 2), got
    # ...each also held by the supervisor, so a restarted worker reuses it.
    assert all(node.ztunnel.pid in x.pids for x in got)

    node.delete(pod)
    deadline_poll(lambda: not proxy_listeners(pod.ns), RELEASE_DEADLINE,
                  f"no proxy listener left in {pod.ns} (still: {proxy_listeners(pod.ns)})")

    node.add(pod)
    assert ports(proxy_listeners(pod.ns)) == sorted(PROXY_PORTS * 2)
    node.delete(pod)
    deadline_poll(lambda: not proxy_listeners(pod.ns), RELEASE_DEADLINE, "released again")


@pytest.mark.parametrize("how", ["kill-worker", "sighup"])
def test_worker_restart_keeps_enrolled_pod_listeners(node, how):
    pod = node.add_pod("amb", "web-1")
    before = proxy_listeners(pod.ns)
    assert ports(before) == sorted(PROXY_PORTS * 2)
    sup = node.ztunnel.pid
    holders = set().union(*(x.pids for x in before)) - {sup}
    booted = node.ztunnel.tail(10 ** 6).count("ztunnel worker serving")
    if how == "kill-worker":
        gone, fresh = {min(holders)}, 1
        os.kill(min(holders), signal.SIGKILL)
    else:                    # roll every worker (the old ones drain, then exit)
        gone, fresh = holders, node.workers
        os.kill(sup, signal.SIGHUP)
    # A new worker logs "serving" once start() (ZDS snapshot applied) returned.
    deadline_poll(lambda: node.ztunnel.tail(10 ** 6).count("ztunnel worker serving") >= booted + fresh,
                  30, "the new workers")
    after = deadline_poll(
        lambda: (lambda now: now if not gone & set().union(*(x.pids for x in now)) else None)(
            proxy_listeners(pod.ns)), 15, "the old workers gone from the holders")
    # The very same sockets (no accept queue reset), held by the new workers.
    assert {x.inode for x in after} == {x.inode for x in before}
    assert ports(after) == sorted(PROXY_PORTS * 2)
    assert all(sup in x.pids for x in after)
    new = set().union(*(x.pids for x in after)) - holders - {sup}
    assert len(new) == fresh

    node.delete(pod)
    deadline_poll(lambda: not proxy_listeners(pod.ns), RELEASE_DEADLINE, "released after restart")


def ask_peer(ns: str, ip: str, port: int) -> str:
    fd = open_netns(f"/run/netns/{ns}")
    try:
        with in_netns(fd):
            s = socket.socket()
    finally:
        os.close(fd)
    with s:
        s.settimeout(10)
        s.connect((ip, port))
        return s.makefile("rb").readline().decode().strip()


def serve_echo(node, name):
    pod = node.add_pod("amb", name)
    node.publish(pod, port=APP_PORT)
    app = ns_popen(pod.ns, [sys.executable, "-c", ECHO, str(APP_PORT)])
    deadline_poll(lambda: any(x.port == APP_PORT for x in listeners(pod.ns)), 10, "echo app")
    return pod, app


def test_app_sees_client_address_or_pod_address_without_routing(node):
    apps = []
    try:
        server, app = serve_echo(node, "echo")
        apps.append(app)
        bare, app = serve_echo(node, "echo-bare")
        apps.append(app)
        # This pod lost its policy routing: replies to a spoofed source
        # would leave the pod, so the ztunnel must not spoof there.
        sh("ip", "-n", bare.ns, "rule", "del", "fwmark", "0x111/0xfff", "lookup", "100")
        client = node.add_pod("plain", "client")       # not captured: plaintext in
        deadline_poll(lambda: node.knows(server.ip) and node.knows(bare.ip), 15,
                      "the pods in the ztunnel's routing table")

        for _ in range(3):     # every worker may take one (SO_REUSEPORT)
            peer = ask_peer(client.ns, server.ip, APP_PORT)
            assert peer.startswith(f"peer={client.ip}:"), peer
        assert ask_peer(client.ns, bare.ip, APP_PORT).startswith(f"peer={bare.ip}:")
        log = node.ztunnel.tail(10 ** 6)
        # Through the ztunnel (its access log), with the fallback said once per worker.
        assert f"{client.ip}" in log and "connection complete" in log
        assert 1 <= log.count("source spoofing unavailable") <= node.workers
    finally:
        for app in apps:
            stop_popen(app)


@pytest.fixture
def mesh_node(tmp_path):
    yield from running(InPodNode(tmp_path, workers=1, ca=True))


def test_hbone_inbound_app_sees_the_calling_pod_address(mesh_node):
    node = mesh_node
    server, app = serve_echo(node, "echo")
    try:
        caller = node.add_pod("amb", "caller")     # ambient: captured, HBONE out
        node.publish(caller)
        deadline_poll(lambda: node.knows(server.ip) and node.knows(caller.ip), 15,
                      "the pods in the ztunnel's routing table")

        def ask():
            try:
                return ask_peer(caller.ns, server.ip, APP_PORT)
            except OSError:
                return ""      # certificates still being issued
        peer = deadline_poll(ask, 30, "caller -> echo over HBONE")
        assert peer.startswith(f"peer={caller.ip}:"), peer
        log = node.ztunnel.tail(10 ** 6)
        # Both legs went through the ztunnel: the outbound one over mTLS (HBONE).
        assert "spiffe://cluster.local/ns/amb/sa/caller" in log
        assert "source spoofing unavailable" not in log
        # The tunnel came from the caller pod's own HBONE pool (one pool per pod).
        conns = node.config_dump()["connections"]
        assert any(f"@{server.ip}:15008" in key for key in conns[caller.uid]["pool"]), conns
        assert not conns[server.uid]["pool"]
    finally:
        stop_popen(app)
