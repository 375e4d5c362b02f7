"""The ztunnel side of ZDS: receive enrolled pods' netns from the node agent.

    client = InPodClient("/var/run/ztunnel/ztunnel.sock", on_event)
    await client.run()          # connects (retrying with backoff), forever

`on_event` (sync or async) gets, in order:
- `WorkloadAdded(uid, info, netns_fd, netns_path)`: build the pod's listeners
  (e.g. with `core.netns.NetnsSocketFactory(netns_fd)`). The fd is valid only
  during the callback: `os.dup()` it to keep it. It was checked to be a
  network namespace.
- `WorkloadKept(uid)`: during a snapshot, keep this pod's proxy as it is.
- `SnapshotDone()`: drop every pod not added or kept since the (re)connect.
- `WorkloadDeleted(uid)`: close the pod's listeners and drain.

The ack is sent after the callback returns; an exception becomes the ack's
error text (the agent logs it and, for an add, fails the pod's CNI ADD).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable, Union

from shoal.core import seqpacket, zds
from shoal.core.netns import is_netns
from shoal.core.zds import WorkloadInfo, ZdsError
from shoal.core import log

# ztunnel retries the connect with backoff up to 15 s (inpod/workloadmanager.rs).
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadAdded:
    uid: str
    info: WorkloadInfo
    netns_fd: int
    netns_path: str = ""


# The other events are the ZDS messages themselves: they carry nothing the
# ztunnel side adds (WorkloadAdded adds the received netns fd).
WorkloadKept = zds.Keep
WorkloadDeleted = zds.Del
SnapshotDone = zds.SnapshotSent


Event = Union[WorkloadAdded, WorkloadKept, WorkloadDeleted, SnapshotDone]
Callback = Callable[[Event], Union[None, Awaitable[None]]]


class InPodClient:
    def __init__(self, path: str, callback: Callback, *, instance: str | None = None,
                 backoff_initial: float = BACKOFF_INITIAL_S,
                 backoff_max: float = BACKOFF_MAX_S) -> None:
        """`instance` names the ztunnel this connection belongs to: the agent
        sends adds to every connection of the newest instance. The default,
        the parent pid, groups the worker processes of one shards supervisor
        (and separates an upgraded supervisor's workers from the old ones)."""
        self.path = path
        self.instance = f"ppid-{os.getppid()}" if instance is None else instance
        self._callback = callback
        self._backoff = (backoff_initial, backoff_max)
        self._sock: socket.socket | None = None
        self._stopping = False
        self._log = log.get("ztunnel.inpod")
        self.connected = asyncio.Event()      # first snapshot received
        self.connections = 0                  # successful connects, for tests/metrics
        self.failures = 0                     # failed connects or lost connections

    async def run(self) -> None:
        """Connect, serve, reconnect on loss; returns only after `stop()`."""
        delay = self._backoff[0]
        while not self._stopping:
            try:
                await self._connect()
                delay = self._backoff[0]
                await self._serve()
            except (OSError, ZdsError) as e:
                if self._stopping:
                    break
                self.failures += 1
                self._log.warning("node agent connection failed; retrying",
                                  extra={"fields": {"path": self.path, "error": str(e),
                                                    "retry_in_s": round(delay, 2)}})
            finally:
                self.connected.clear()
                if self._sock:
                    self._sock.close()
                    self._sock = None
            if self._stopping:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    def stop(self) -> None:
        self._stopping = True
        if self._sock:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    async def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.setblocking(False)
        self._sock = s
        await asyncio.get_running_loop().sock_connect(s, self.path)
        await seqpacket.send(s, zds.encode(zds.Hello(instance=self.instance)))
        self.connections += 1

    async def _serve(self) -> None:
        state = zds.ClientState()
        assert self._sock is not None
        while True:
            data, fds, trunc = await seqpacket.recv(self._sock)
            if not data and not fds:
                raise ConnectionResetError("node agent closed the ZDS connection")
            try:
                msg = zds.decode(data, len(fds), truncated=trunc)
                state.check(msg)
            except ZdsError:
                seqpacket.close_fds(fds)
                raise     # a peer that breaks the protocol gets a fresh start
            error = await self._deliver(msg, fds)
            await seqpacket.send(self._sock, zds.encode(zds.Ack(error=error)))
            if isinstance(msg, zds.SnapshotSent):
                self.connected.set()

    async def _deliver(self, msg: zds.Message, fds: list[int]) -> str:
        try:
            if isinstance(msg, zds.Add):
                if not is_netns(fds[0]):
                    return "fd is not a network namespace"
                event: Event = WorkloadAdded(uid=msg.uid, info=msg.info, netns_fd=fds[0],
                                             netns_path=msg.netns_path)
            else:
                assert not isinstance(msg, (zds.Hello, zds.Ack))   # ClientState.check refused them
                event = msg
            result = self._callback(event)
            if inspect.isawaitable(result):
                await result
            return ""
        except Exception as e:  # noqa: BLE001 - reported to the agent in the ack
            self._log.error("in-pod event failed", extra={"fields": {"event": repr(msg),
                                                                    "error": str(e)}})
            return f"{type(e).__name__}: {e}" or "error"
        finally:
            seqpacket.close_fds(fds)
