"""Socket creation for every shoal proxy: listeners and outbound connections.

Apps never call `socket.socket()` themselves; they ask a `SocketFactory`
(ztunnel's `SocketFactory` trait, `proxy.rs`). That keeps the socket options
a mesh proxy needs in one place and lets callers swap the factory:
- `DefaultSocketFactory`: SO_REUSEPORT listeners, TCP_NODELAY, keepalive,
  optional SO_MARK / IP_TRANSPARENT / IP_FREEBIND.
- a netns variant (ztunnel/podsockets.py): creates every socket inside a
  pod's network namespace; its `namespace_key` tells listeners opened in
  different namespaces on the same address apart for the supervisor.
- shards/ wraps a factory so a worker slot's listeners outlive the worker
  (see shards/handoff.py).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from shoal.core.constants import PROXY_MARK

# Accept queue length. The kernel caps it at net.core.somaxconn (4096 on
# current kernels); Envoy and ztunnel ask for 1024-and-up, and a short queue
# turns a burst of connections during a worker restart into SYN drops.
LISTEN_BACKLOG = 4096

# Outbound connect timeout: ztunnel's default `connect_timeout` is 10 s.
CONNECT_TIMEOUT = 10.0

# TCP keepalive as ztunnel sets it on every proxied socket (socket.rs):
# 180 s idle, 180 s between probes, 9 probes, so a dead peer is noticed
# well inside the conntrack timeout without chatty probing.
KEEPALIVE_IDLE = 180
KEEPALIVE_INTERVAL = 180
KEEPALIVE_PROBES = 9

# Linux constants Python's socket module does not export everywhere.
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)
# SO_INCOMING_CPU's "no CPU": the listener is picked by the reuseport hash only.
NO_CPU = -1


def set_incoming_cpu(sock: socket.socket, cpu: int) -> None:
    """Prefer `sock` among its SO_REUSEPORT group for connections whose SYN
    the kernel handles on `cpu` (NO_CPU: none). socket(7)'s intended use: one
    listener per CPU. Since Linux 6.2 the reuseport lookup picks the member
    whose CPU matches, else its hash pick; older kernels ignore it there."""
    sock.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, cpu)


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketOptions:
    """Options applied to every socket a factory makes (validated here)."""
    mark: int | None = None          # SO_MARK; core.constants.PROXY_MARK for proxies
    transparent: bool = False        # IP_TRANSPARENT: bind/accept non-local addresses (TPROXY)
    freebind: bool = False           # IP_FREEBIND: bind before the address exists
    nodelay: bool = True             # proxies forward small writes immediately
    keepalive: bool = True

    def __post_init__(self) -> None:
        if self.mark is not None and not 0 <= self.mark <= 0xFFFFFFFF:
            raise ValueError(f"SO_MARK {self.mark!r} is not a 32-bit value")


PROXY_SOCKET_OPTIONS = SocketOptions(mark=PROXY_MARK)


@runtime_checkable
class SocketFactory(Protocol):
    """What apps use to open sockets. Sockets returned are non-blocking."""

    namespace_key: str

    def new_socket(self, family: int) -> socket.socket:
        """Return an unbound, unconnected TCP socket with the factory's
        options (mark, namespace), for callers that connect it themselves
        (the HBONE pool).

        Raises:
            OSError: an option cannot be set (e.g. SO_MARK without CAP_NET_ADMIN).
        """
        ...

    def listen(self, host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
        """Return a bound, listening SO_REUSEPORT TCP socket.

        Raises:
            OSError: the address cannot be bound (message names it).
        """
        ...

    async def connect(self, host: str, port: int, *, source: tuple[str, int] | None = None,
                      timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        """Return a connected TCP socket, bound to `source` first if given.

        Raises:
            TimeoutError: no answer within `timeout` seconds.
            OSError: refused, unreachable, ...
        """
        ...


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class DefaultSocketFactory:
    """Sockets in the current network namespace with `options` applied."""

    namespace_key = ""

    def __init__(self, options: SocketOptions = SocketOptions()) -> None:
        self.options = options

    def new_socket(self, family: int) -> socket.socket:
        sock = self._create(family)
        try:
            self._apply(sock, family)
        except BaseException:
            sock.close()
            raise
        return sock

    def _create(self, family: int) -> socket.socket:
        # The one place a socket is created (a subclass may create it elsewhere).
        return socket.socket(family, socket.SOCK_STREAM)

    def _apply(self, sock: socket.socket, family: int) -> None:
        o = self.options
        if o.mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, o.mark)
        level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.IPPROTO_IP
        if o.transparent:
            sock.setsockopt(level, IP_TRANSPARENT, 1)
        if o.freebind:
            sock.setsockopt(level, IP_FREEBIND, 1)
        if o.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if o.keepalive:
            set_keepalive(sock)

    def listen(self, host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
        family = family_of(host)
        sock = self._create(family)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Before bind: the kernel only groups sockets that all set it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._apply(sock, family)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror} "
                          "(is another program using this port?)") from e
        return sock

    async def connect(self, host: str, port: int, *, source: tuple[str, int] | None = None,
                      timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        family = family_of(host)
        sock = self._create(family)
        try:
            self._apply(sock, family)
            sock.setblocking(False)
            if source is not None:
                sock.bind(source)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
        except TimeoutError:
            sock.close()
            raise TimeoutError(f"connect to {host}:{port} timed out after {timeout:g} s "
                               "(is a firewall or NetworkPolicy dropping it?)") from None
        except BaseException:
            sock.close()
            raise
        return sock


def set_keepalive(sock: socket.socket) -> None:
    """ztunnel's keepalive settings (see the constants above)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def configure_accepted(sock: socket.socket) -> None:
    """Options for a socket returned by accept(): no delay, keepalive.

    Only needed when the listener was not made by a SocketFactory: Linux
    copies a listener's TCP_NODELAY and keepalive settings to the sockets
    it accepts.
    """
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    set_keepalive(sock)


def listener_key(namespace_key: str, host: str, port: int) -> str:
    """Identity of a listener across worker generations (same ns + address)."""
    return f"{namespace_key}|{host}:{port}"


# Linux >= 5.14: when a listener of an SO_REUSEPORT group closes, the kernel
# moves its accept queue and its half-open handshakes to another listener of
# the group instead of resetting them. A shard slot closed by SIGTTOU (or the
# first workers to close on a stop) then loses no queued connection. The
# setting is per network namespace, so it is set in every netns a proxy
# listens in (the node's, and each enrolled pod's).
TCP_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def enable_listener_migration() -> bool:
    """Turn on TCP_MIGRATE_REQ in the calling thread's netns. Returns whether it
    is on (False: an older kernel, or no permission; closing a listener may
    then reset what is queued on it)."""
    try:
        with open(TCP_MIGRATE_REQ, "r+b", buffering=0) as f:
            if f.read().strip() == b"1":
                return True
            f.seek(0)
            f.write(b"1")
        return True
    except OSError:
        return False
