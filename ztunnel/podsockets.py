"""Adapter: `core.netns.NetnsSocketFactory` as a `core.sockets.SocketFactory`.

The CNI package's factory offers `listener()` / `socket()`; the proxy and
shards expect `listen()` / `async connect()` plus a `namespace_key` so
listeners of different pods on the same address are told apart. Every
socket is created in the pod's netns and marked 0x539 by the inner factory.

Source spoofing (issue 5 §3, Istio's in-pod "original source"): a `connect`
given a `source` binds it with IP_TRANSPARENT + IP_FREEBIND, so the app sees
the original client's address. It only works when the pod's policy routing
(`ip rule fwmark 0x111/0xfff lookup 100` + a local default route in table
100, installed by `cni/redirect.py`) brings the app's replies back to us:
`spoof_routing()` checks that inside the pod netns.
"""

from __future__ import annotations

import asyncio
import socket

from shoal.core.constants import INBOUND_ROUTE_TABLE, TPROXY_MARK
from shoal.core.netns import NetnsSocketFactory
from shoal.core.sockets import CONNECT_TIMEOUT, LISTEN_BACKLOG, set_keepalive

# Linux socket options Python's socket module does not name
# (include/uapi/linux/in.h, in6.h).
IP_FREEBIND = 15
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78
# Addresses (TEST-NET / documentation ranges) whose route lookup with the
# reply mark must land in the local table for spoofing to be safe.
PROBE_ADDRESS: dict[int, str] = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}
# `ip route get` answers in milliseconds; a stuck one must not hold a connection.
ROUTE_CHECK_TIMEOUT = 2.0


class SpoofUnavailable(OSError):
    """The source address could not be taken (no CAP_NET_ADMIN, bad address)."""


class PodSocketFactory:
    def __init__(self, netns_fd: int, uid: str) -> None:
        self.inner = NetnsSocketFactory(netns_fd)
        self.netns_fd = netns_fd
        self.namespace_key = f"pod:{uid}"

    def new_socket(self, family: int) -> socket.socket:
        """A TCP socket in the pod netns, marked 0x539, no delay, keepalive."""
        sock = self.inner.socket(family)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_keepalive(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(self, host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
        return self.inner.listener(host, port, backlog=backlog)

    async def connect(self, host: str, port: int, *, source=None,
                      timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        """Connect from the pod netns; with `source`, from that (spoofed) address.

        Raises SpoofUnavailable when the source cannot be bound (the caller
        may retry without it), OSError/TimeoutError when the connect fails.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self.new_socket(family)
        try:
            if source is not None:
                _bind_transparent(sock, family, source)
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except TimeoutError:
            sock.close()
            raise TimeoutError(f"connect to {host}:{port} timed out after {timeout:g} s") from None
        except BaseException:
            sock.close()
            raise
        return sock

    async def spoof_routing(self, family: int) -> str:
        """"" when replies to a spoofed source come back to us, else why not."""
        return await spoof_routing(self.netns_fd, family)


def _bind_transparent(sock: socket.socket, family: int, source: tuple[str, int]) -> None:
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind(source)
    except OSError as e:
        raise SpoofUnavailable(e.errno, f"cannot bind the client address {source[0]} "
                               f"(IP_TRANSPARENT needs CAP_NET_ADMIN): {e.strerror}") from None


async def spoof_routing(netns_fd: int, family: int) -> str:
    """Ask the pod netns where a reply marked 0x111 goes: it must be the
    local table (Istio's in-pod policy routing). Returns "" when it does,
    else the reason (operator-facing)."""
    probe = PROBE_ADDRESS[family]
    flag = "-6" if family == socket.AF_INET6 else "-4"
    args = ["nsenter", f"--net=/proc/self/fd/{netns_fd}", "ip", flag, "route", "get", probe,
            "mark", hex(TPROXY_MARK)]
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            pass_fds=(netns_fd,))
        try:
            async with asyncio.timeout(ROUTE_CHECK_TIMEOUT):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    except (OSError, TimeoutError) as e:
        return f"cannot check the pod's policy routing ({' '.join(args[2:])}): {e}"
    text = out.decode(errors="replace").strip()
    if proc.returncode == 0 and text.startswith("local ") and f"table {INBOUND_ROUTE_TABLE}" in text:
        return ""
    return (f"replies marked {TPROXY_MARK:#x} do not route to the local table "
            f"{INBOUND_ROUTE_TABLE} in the pod netns ({text or 'no answer'}); "
            "is the pod's redirection (cni/redirect.py) installed?")
