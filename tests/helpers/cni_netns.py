"""Network namespaces for CNI tests: unique names, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
from typing import Iterator

from shoal.core.netns import in_netns, open_netns


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=10).stdout


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 10000}{secrets.token_hex(2)}"


@contextlib.contextmanager
def netns_pair(pod_ip="10.77.0.2", peer_ip="10.77.0.1") -> Iterator[tuple[str, str]]:
    """Two netns joined by a veth: (pod netns name, peer netns name).

    The pod's default route points at the peer, so any destination is
    routable from the pod (the redirect must catch it before it leaves).
    """
    pod, peer = unique("sp"), unique("sq")
    a, b = unique("va"), unique("vb")
    sh("ip", "netns", "add", pod)
    sh("ip", "netns", "add", peer)
    try:
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", pod)
        sh("ip", "link", "set", b, "netns", peer)
        for ns, dev, ip in ((pod, a, pod_ip), (peer, b, peer_ip)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", pod, "route", "add", "default", "via", peer_ip)
        yield pod, peer
    finally:
        subprocess.run(["ip", "netns", "del", pod], capture_output=True)
        subprocess.run(["ip", "netns", "del", peer], capture_output=True)


def ns_socket(name: str, family=socket.AF_INET) -> socket.socket:
    fd = open_netns(f"/run/netns/{name}")
    try:
        with in_netns(fd):
            return socket.socket(family, socket.SOCK_STREAM)
    finally:
        os.close(fd)


def ns_listener(name: str, host: str, port: int) -> socket.socket:
    s = ns_socket(name)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)
    s.settimeout(5)
    return s
