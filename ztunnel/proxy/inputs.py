"""What the three listeners of one netns share (istio/ztunnel's `ProxyInputs`).

`Shared` is one worker's (options, routing view, certificates, metrics,
randomness); `ProxyInputs` adds one netns's: the socket factory, which
workloads are local (`Scope`), the HBONE pool, the live inbound
connections (policy re-check), source spoofing and the telemetry records.
Also here: the plaintext endpoint that counts its bytes, and the relay
that pipes a connection and closes its record.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

from shoal.core import log as shoal_log
from shoal.core.hbone import HboneError
from shoal.core.hbone.pool import HbonePool
from shoal.core.pipe import PipeReset, TcpEnd, pipe
from shoal.core.records import Workload
from shoal.core.sockets import SocketFactory
from shoal.routing.view import View
from shoal.ztunnel.connections import ConnectionManager
from shoal.ztunnel.options import ZtunnelOptions
from shoal.ztunnel.podsockets import SpoofUnavailable
from shoal.ztunnel.proxy.record import ConnectionRecord, Tracker
from shoal.ztunnel.spoof import SpoofState

LOG = shoal_log.get("ztunnel")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """Which workloads a proxy serves: a node's (dedicated) or one pod's (in-pod)."""
    node: str
    pod_uid: str = ""

    def local_workloads(self, view: View) -> list[Workload]:
        if self.pod_uid:
            w = view.workload_by_uid(self.pod_uid)
            return [w] if w is not None else []
        return [w for w in view.workloads_on_node(self.node) if w.protocol == "HBONE" and w.ips]

    def source_for(self, view: View, peer_ip: str) -> Workload | None:
        if self.pod_uid:
            return view.workload_by_uid(self.pod_uid)
        w = view.workload_by_ip(peer_ip)
        return w if w is not None and w.node == self.node else None

    def workload_at(self, view: View, local_ip: str) -> Workload | None:
        """The workload a connection to `local_ip` (an HBONE listener) reached."""
        if self.pod_uid:
            return view.workload_by_uid(self.pod_uid)
        return view.workload_by_ip(local_ip)


class CountingEnd(TcpEnd):
    """A TcpEnd that counts the bytes read from it (exact even after a reset);
    TcpEnd itself counts those written to it (`bytes_written`)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0

    async def read(self, n: int = 256 * 1024) -> bytes:
        data = await super().read(n)
        self.bytes_read += len(data)
        return data

    taken_counter = "bytes_read"       # bytes that went straight to the sink

    def info(self, name: str) -> Any:
        """The transport's extra info ("peername", "socket"); handlers run
        once the connection is made, so the transport is there."""
        assert self.transport is not None
        return self.transport.get_extra_info(name)


class Shared:
    """What every proxy of a worker shares: view, certificates, metrics, options."""

    def __init__(self, *, options: ZtunnelOptions, view: Callable[[], View], certs: Any,
                 metrics: Any, rng: random.Random | None = None) -> None:
        self.options = options
        self.view = view
        self.certs = certs
        self.metrics = metrics
        self.rng = rng or random.Random()


class ProxyInputs:
    """One netns's inputs (see the module docstring)."""

    def __init__(self, shared: Shared, sockets: SocketFactory, scope: Scope) -> None:
        self.options = shared.options
        self.view = shared.view
        self.certs = shared.certs
        self.metrics = shared.metrics
        self.rng = shared.rng
        self.sockets = sockets
        self.scope = scope
        self.loop = asyncio.get_running_loop()
        self.pool = HbonePool(self._client_context, socket_factory=sockets.new_socket)
        self.connections = ConnectionManager()
        self.tracker = Tracker(shared.metrics)
        self.local_ips: frozenset[str] = frozenset()     # set by Proxy.reconcile
        # In-pod only: the inner factory knows how to check the pod's routing.
        check = getattr(getattr(sockets, "inner", sockets), "spoof_routing", None)
        self.spoof = SpoofState(check if scope.pod_uid else None, log=LOG, pod=scope.pod_uid)
        self.tasks: set[asyncio.Task] = set()
        # Captured connections accepted whose task is not spawned yet (it
        # starts when the transport is made, a callback or two after the
        # accept): `Proxy.close` waits for these too.
        self.arriving: set[asyncio.Future] = set()

    def spawn(self, coro: Coroutine) -> None:
        """Run a connection's task; `Proxy.close` waits for (then cancels) them."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _client_context(self, src: Any):
        ctx = self.certs.client_context(src)
        if ctx is None:
            raise HboneError(f"no certificate for {src} yet")
        return ctx

    async def connect_tcp(self, host: str, port: int) -> CountingEnd:
        sock = await self.sockets.connect(host, port)
        _, end = await self.loop.create_connection(CountingEnd, sock=sock)
        return end

    async def connect_app(self, host: str, port: int, client_ip: str) -> CountingEnd:
        """Inbound: connect to the app, in in-pod mode from the client's own
        address when the pod's routing allows (the app sees the real peer)."""
        source = await self.spoof.source(host, client_ip)
        if source is None:
            return await self.connect_tcp(host, port)
        try:
            sock = await self.sockets.connect(host, port, source=source)
        except SpoofUnavailable as e:
            self.spoof.failed(e.strerror or str(e))
            return await self.connect_tcp(host, port)
        _, end = await self.loop.create_connection(CountingEnd, sock=sock)
        return end


async def relay(rec: ConnectionRecord, down: CountingEnd, up: Any,
                received: Callable[[], int]) -> None:
    """Pipe both ways (half-close aware) with live byte reports, then close
    the record; `received` reads what came back from `up` (a TCP end or an
    HBONE stream)."""
    rec.track(lambda: down.bytes_read, received)
    error = ""
    try:
        await pipe(down, up)
    except PipeReset as e:
        error = f"connection reset: {e}"
    rec.close(request_bytes=down.bytes_read, response_bytes=received(), error=error)


def refuse(rec: ConnectionRecord, down: CountingEnd, flags: str, error: str) -> None:
    """End a captured connection that goes nowhere: RST to the client."""
    down.abort()
    rec.close(request_bytes=down.bytes_read, response_bytes=0, error=error, flags=flags)
