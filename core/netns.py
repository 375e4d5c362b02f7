"""Network namespaces: enter one on this thread, make sockets inside it.

Python 3.11 has no `os.setns`, so this calls libc's `setns(2)` through ctypes.
`setns(fd, CLONE_NEWNET)` switches only the **calling thread**; a socket keeps
the namespace it was created in for life, so a process can serve listeners in
many pods from one event loop (ztunnel's `inpod/netns.rs::run` does the same).

Invariants:
- `in_netns` always returns the thread to the namespace it came from, even on
  error; if it cannot, the thread is unusable and we abort the process rather
  than let it open sockets in the wrong pod.
- Only the thread that entered uses the namespace: do not `await` inside
  `in_netns` (another coroutine would run in the pod's netns).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
from typing import Iterator

from shoal.core.constants import PROXY_MARK
from shoal.core.sockets import enable_listener_migration

CLONE_NEWNET = 0x40000000
# NSFS_MAGIC from linux/magic.h: what statfs reports for /proc/*/ns/* and
# their bind mounts under /run/netns; ztunnel checks it to validate a ZDS fd.
NSFS_MAGIC = 0x6E736673
# ztunnel's in-pod listener backlog (inpod/config.rs).
INPOD_LISTEN_BACKLOG = 128
# NetnsSocketFactory's `socket` method shadows the module in its class body.
Socket = socket.socket

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace `fd` refers to."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({fd}): {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An O_CLOEXEC fd for a netns path (/run/netns/x or /proc/PID/ns/net)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def netns_id(fd_or_path: int | str) -> tuple[int, int]:
    """(dev, inode): the identity of a namespace, stable across fds and paths."""
    st = os.stat(fd_or_path)
    return st.st_dev, st.st_ino


def is_netns(fd: int) -> bool:
    """True when fd refers to a network namespace (nsfs, and setns-able)."""
    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == NSFS_MAGIC


@contextlib.contextmanager
def in_netns(fd: int) -> Iterator[None]:
    """Run the body on this thread inside the netns `fd`; then switch back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            try:
                setns(home)
            except OSError:
                # A thread stuck in a pod's netns would open later sockets
                # there; that is worse than dying.
                os.abort()
    finally:
        os.close(home)


class NetnsSocketFactory:
    """Sockets inside one pod's netns, each marked so capture skips it.

    Matches `core.sockets.SocketFactory`: `listener(...)` for in-pod listeners
    (SO_REUSEPORT so every worker and an upgrading ztunnel bind the same port)
    and `socket(...)` / `connect_socket(...)` for upstream connections opened
    from the pod (they must carry SO_MARK 0x539 or the pod's own rules would
    send them back to 15001).
    """

    def __init__(self, netns_fd: int, *, mark: int = PROXY_MARK) -> None:
        self.netns_fd = netns_fd
        self.mark = mark

    def _mark(self, s: socket.socket) -> socket.socket:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        return s

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """An unconnected, marked, non-blocking socket created in the pod netns."""
        with in_netns(self.netns_fd):
            s = socket.socket(family, type)
        try:
            s.setblocking(False)
            return self._mark(s)
        except BaseException:
            s.close()
            raise

    connect_socket = socket

    def listener(self, host: str, port: int, *, backlog: int = INPOD_LISTEN_BACKLOG,
                 reuse_port: bool = True, transparent: bool = False) -> Socket:
        """A bound, listening, non-blocking TCP socket inside the pod netns."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with in_netns(self.netns_fd):
            if reuse_port:
                enable_listener_migration()   # this pod netns's own setting
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if transparent:
                    s.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
                self._mark(s)
                s.bind((host, port))
                s.listen(backlog)
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
        return s

    tcp_listener = listener
