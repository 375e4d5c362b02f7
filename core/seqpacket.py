"""Async send/receive of SOCK_SEQPACKET datagrams with SCM_RIGHTS fds.

asyncio has no `sock_recvmsg`, so this waits for readiness with
`add_reader`/`add_writer` and then calls the non-blocking syscall. The
socket must be non-blocking. Received fds are O_CLOEXEC (MSG_CMSG_CLOEXEC)
so they never leak into processes we spawn.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket

from shoal.core.zds import MAX_FDS, MAX_MESSAGE_BYTES


async def _ready(sock: socket.socket, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    fd = sock.fileno()   # captured: the socket may be closed while we wait

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    add(fd, wake)
    try:
        await fut
    finally:
        remove(fd)


async def recv(sock: socket.socket) -> tuple[bytes, list[int], bool]:
    """(data, fds, truncated). data == b"" with no fds means the peer closed.

    The caller owns the returned fds (close them when refusing the message).
    """
    while True:
        try:
            data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE_BYTES + 1,
                                               socket.CMSG_SPACE(MAX_FDS * 4),
                                               socket.MSG_CMSG_CLOEXEC)
            break
        except (BlockingIOError, InterruptedError):
            await _ready(sock, write=False)
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
            fds.extend(a)
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)) or len(data) > MAX_MESSAGE_BYTES
    return data, fds, truncated


async def send(sock: socket.socket, data: bytes, fds: tuple[int, ...] = ()) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    while True:
        try:
            sock.sendmsg([data], anc)
            return
        except (BlockingIOError, InterruptedError):
            await _ready(sock, write=True)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
