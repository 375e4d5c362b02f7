"""The node agent's ZDS server: hands enrolled pods' netns to ztunnel(s).

The agent listens on a SOCK_SEQPACKET unix socket; each ztunnel connects and
says hello; the agent answers with a snapshot (add for every enrolled pod,
keep where the netns cannot be opened, then snapshot_sent) and from then on
streams add/del. Every message waits for ztunnel's ack.

Invariants (Istio `nodeagent/ztunnelserver.go`):
- Adds go to the **newest** ztunnel only; deletes go to **all** of them.
  During a ztunnel upgrade the new process gets new pods while the old one
  still learns about deleted ones and drains. A ztunnel is an *instance*:
  every worker process of one ztunnel connects on its own (it builds its own
  SO_REUSEPORT listeners in each pod) and says the same `instance` in its
  hello; an add goes to every connection of the newest instance.
- One request in flight per connection (a lock), so acks pair with requests.
- A connection that fails to ack within ACK_TIMEOUT_S is dropped: ztunnel
  reconnects and gets a fresh snapshot, which is always correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable

from shoal.core import seqpacket, zds
from shoal.core.zds import WorkloadInfo, ZdsError
from shoal.core import log

# Istio waits 5 s for each ack (ztunnelserver.go readWorkloadResponse).
ACK_TIMEOUT_S = 5.0
# A client that connects but never says hello is not a ztunnel.
HELLO_TIMEOUT_S = 5.0
# Kernel backlog for ztunnel connections: one per ztunnel process on the node.
LISTEN_BACKLOG = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class PodEntry:
    """One enrolled pod as the snapshot sends it."""
    uid: str
    info: WorkloadInfo
    netns_path: str


class NoZtunnel(ZdsError):
    """No ztunnel is connected, so a pod cannot be handed over."""


class _Conn:
    """One ztunnel connection: a reader task feeds acks to the request side."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.instance = ""
        self.lock = asyncio.Lock()
        self.connected_at = time.monotonic()
        self.ready = asyncio.Event()     # snapshot delivered
        self.closed = False
        self._inbox: asyncio.Queue = asyncio.Queue()

    async def read_loop(self) -> None:
        """Reads every datagram; None in the inbox means the peer is gone.

        One reader per socket: asyncio allows one add_reader per fd.
        """
        try:
            while True:
                data, fds, trunc = await seqpacket.recv(self.sock)
                if not data and not fds:
                    return
                self._inbox.put_nowait((data, fds, trunc))
        except OSError:
            return
        finally:
            self._inbox.put_nowait(None)

    async def receive(self, timeout: float) -> zds.Message:
        async with asyncio.timeout(timeout):
            item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)    # stay closed for later callers
            raise ConnectionResetError("ztunnel closed the ZDS connection")
        data, fds, trunc = item
        seqpacket.close_fds(fds)
        return zds.decode(data, len(fds), truncated=trunc)

    async def request(self, msg: zds.Message, fds: tuple[int, ...] = ()) -> str:
        """Send one message and return the ack's error text ("" = ok)."""
        async with self.lock:
            if self.closed:
                raise ConnectionResetError("ZDS connection closed")
            await seqpacket.send(self.sock, zds.encode(msg), fds)
            reply = await self.receive(ACK_TIMEOUT_S)
            if not isinstance(reply, zds.Ack):
                raise ZdsError(f"expected ack, got {type(reply).__name__}")
            return reply.error

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class ZdsServer:
    """asyncio ZDS server. `snapshot()` lists the pods a new ztunnel must get."""

    def __init__(self, path: str, snapshot: Callable[[], list[PodEntry]],
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self._snapshot = snapshot
        self._on_change = on_change      # a ztunnel came or went
        self._conns: list[_Conn] = []
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._log = log.get("cni.zds")
        self._instance_seen: dict[str, float] = {}   # instance -> first connect time
        self.connected = asyncio.Event()   # at least one ztunnel has its snapshot

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(self.path)
        os.chmod(self.path, 0o600)
        s.listen(LISTEN_BACKLOG)
        s.setblocking(False)
        self._listener = s
        self._accept_task = asyncio.create_task(self._accept_loop(s))

    async def close(self) -> None:
        if self._accept_task:
            self._accept_task.cancel()
        for t in list(self._tasks):
            t.cancel()
        for c in self._conns:
            c.close()
        self._conns.clear()
        if self._listener:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    @property
    def ztunnels(self) -> int:
        return sum(1 for c in self._conns if c.ready.is_set())

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            t = asyncio.create_task(self._serve(_Conn(sock)))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: _Conn) -> None:
        reader = asyncio.create_task(conn.read_loop())
        try:
            hello = await conn.receive(HELLO_TIMEOUT_S)
            if not isinstance(hello, zds.Hello):
                raise ZdsError(f"expected hello, got {type(hello).__name__}")
            # An anonymous client is an instance of its own.
            conn.instance = hello.instance or f"conn-{id(conn)}"
            if not any(c.instance == conn.instance for c in self._conns):
                self._instance_seen[conn.instance] = time.monotonic()
            self._conns.append(conn)
            await self._send_snapshot(conn)
            conn.ready.set()
            self.connected.set()
            self._on_change()
            self._log.info("ztunnel connected", extra={"fields": {"version": hello.version,
                                                                   "ztunnels": self.ztunnels}})
            await reader
            self._log.info("ztunnel disconnected")
        except (OSError, ZdsError, asyncio.TimeoutError) as e:
            self._log.warning("ztunnel connection dropped", extra={"fields": {"error": str(e)}})
        finally:
            reader.cancel()
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        if not any(c.instance == conn.instance for c in self._conns):
            self._instance_seen.pop(conn.instance, None)
        if not conn.closed:
            conn.close()
        if not self.ztunnels:
            self.connected.clear()
        self._on_change()

    async def _send_snapshot(self, conn: _Conn) -> None:
        for pod in self._snapshot():
            await self._add_on(conn, pod, snapshot=True)
        err = await conn.request(zds.SnapshotSent())
        if err:
            raise ZdsError(f"ztunnel refused the snapshot: {err}")

    async def _add_on(self, conn: _Conn, pod: PodEntry, *, snapshot: bool) -> str:
        try:
            fd = os.open(pod.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            if snapshot:
                # Istio sends keep for a pod whose netns is not at hand.
                return await conn.request(zds.Keep(uid=pod.uid))
            raise
        try:
            return await conn.request(zds.Add(uid=pod.uid, info=pod.info,
                                              netns_path=pod.netns_path), (fd,))
        finally:
            os.close(fd)

    def _newest(self) -> list[_Conn]:
        """Every ready connection of the most recently seen instance."""
        ready = [c for c in self._conns if c.ready.is_set() and not c.closed]
        if not ready:
            return []
        newest = max({c.instance for c in ready}, key=lambda i: self._instance_seen.get(i, 0.0))
        return [c for c in ready if c.instance == newest]

    @property
    def instances(self) -> int:
        return len({c.instance for c in self._conns if c.ready.is_set()})

    async def add(self, pod: PodEntry) -> None:
        """Hand a pod to the newest ztunnel and wait for its ack.

        Raises:
            NoZtunnel: none connected. ZdsError: ztunnel refused (ack error).
            OSError / TimeoutError: the connection failed (it is dropped).
        """
        conns = self._newest()
        if not conns:
            raise NoZtunnel("no ztunnel connected to the node agent "
                            f"({self.path}); is `shoal ztunnel run` up on this node?")
        results = await asyncio.gather(*(self._add_on(c, pod, snapshot=False) for c in conns),
                                       return_exceptions=True)
        for conn, res in zip(conns, results):
            if isinstance(res, BaseException):
                self._drop(conn)
                raise res
            if res:
                raise ZdsError(f"ztunnel refused pod {pod.uid}: {res}")

    async def delete(self, uid: str) -> None:
        """Tell every ztunnel the pod is gone (errors only drop that connection)."""
        for conn in [c for c in self._conns if c.ready.is_set()]:
            try:
                err = await conn.request(zds.Del(uid=uid))
                if err:
                    self._log.warning("ztunnel refused delete",
                                      extra={"fields": {"uid": uid, "error": err}})
            except (OSError, asyncio.TimeoutError, ZdsError) as e:
                self._log.warning("ztunnel connection dropped",
                                  extra={"fields": {"error": str(e)}})
                self._drop(conn)
