"""Adapter: `cni.netns.NetnsSocketFactory` as a `core.sockets.SocketFactory`.

The CNI package's factory offers `listener()` / `socket()`; the proxy and
shards expect `listen()` / `async connect()` plus a `namespace_key` so
listeners of different pods on the same address are told apart. Every
socket is created in the pod's netns and marked 0x539 by the inner factory.
"""

from __future__ import annotations

import asyncio
import socket

from core.sockets import CONNECT_TIMEOUT, LISTEN_BACKLOG, set_keepalive


class PodSocketFactory:
    def __init__(self, netns_fd: int, uid: str) -> None:
        from cni.netns import NetnsSocketFactory
        self.inner = NetnsSocketFactory(netns_fd)
        self.namespace_key = f"pod:{uid}"

    def _new_socket(self, family: int) -> socket.socket:
        return self.inner.socket(family)

    def _apply(self, sock: socket.socket, family: int) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_keepalive(sock)

    def listen(self, host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
        return self.inner.listener(host, port, backlog=backlog)

    async def connect(self, host: str, port: int, *, source=None,
                      timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self._new_socket(family)
        try:
            self._apply(sock, family)
            if source is not None:
                sock.bind(source)
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except TimeoutError:
            sock.close()
            raise TimeoutError(f"connect to {host}:{port} timed out after {timeout:g} s") from None
        except BaseException:
            sock.close()
            raise
        return sock
