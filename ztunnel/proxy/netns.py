"""One ztunnel proxy: the listeners of one network namespace (I/O adapter).

A `Proxy` serves either the node's own netns (dedicated mode: the scope is
every workload on the node) or one pod's netns (in-pod mode: the scope is
that pod). Sockets come from the injected `SocketFactory`, so the same code
runs in both; every socket carries SO_MARK 0x539 (the factory's options) so
the pod's redirection rules skip it.

Listeners, each served by its own class over the shared `ProxyInputs`:
- 15001 outbound capture (`Outbound`): original destination from
  SO_ORIGINAL_DST, or a TEST-ONLY fixed target (options.FixedTarget);
- 15006 plaintext inbound (`InboundPassthrough`): authorized with no
  identity, piped to the app;
- 15008 HBONE inbound (`Inbound`): one listener per local workload IP in
  dedicated mode, one for the pod in in-pod mode.

Listeners are shards slot listeners: a drain (`close_listeners()`) leaves
them to the slot's next worker; `close_listeners(release=True)` (a pod left
the mesh) gives them up for good, the supervisor's copies included.

In in-pod mode the inbound connection to the app (15006 and 15008) binds the
original client address (IP_TRANSPARENT, mark 0x539, in the pod netns) so the
app sees its real peer; the pod's policy routing brings the replies back.
Without that routing or the capability: no spoofing, logged once per pod.

Byte counters (istio_tcp_{received,sent}_bytes_total) of open connections
are updated every `bytes_report_interval`, and settled exactly at close.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Awaitable, Callable

from shoal.core import drain
from shoal.core import log as shoal_log
from shoal.core.addr import hostport
from shoal.core.overload import worker_overload
from shoal.core.sockets import LISTEN_BACKLOG, SocketFactory
from shoal.shards.ticker import WhileBusy
from shoal.ztunnel.options import OUTBOUND
from shoal.ztunnel.origdst import original_dst
from shoal.ztunnel.proxy.inbound import Inbound, give_up
from shoal.ztunnel.proxy.inputs import CountingEnd, ProxyInputs, Scope, Shared
from shoal.ztunnel.proxy.outbound import Outbound
from shoal.ztunnel.proxy.passthrough import InboundPassthrough

LOG = shoal_log.get("ztunnel")

# A captured connection's handler: (client end, original destination, accept time).
Handler = Callable[[CountingEnd, tuple[str, int], float], Awaitable[None]]


class Proxy:
    """The listeners and connections of one netns (see module docstring)."""

    def __init__(self, shared: Shared, sockets: SocketFactory, scope: Scope, *,
                 fixed_targets: tuple = (), bind: str = "0.0.0.0") -> None:
        self.inputs = ProxyInputs(shared, sockets, scope)
        self.bind = bind
        self.fixed_targets = fixed_targets
        self.outbound = Outbound(self.inputs)
        self.passthrough = InboundPassthrough(self.inputs)
        self.inbound = Inbound(self.inputs)
        self._listeners: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        # Byte reports only while connections are tracked (shards/ticker.py).
        self._reporter = WhileBusy(self.inputs.options.bytes_report_interval, self._report_bytes)
        self.inputs.tracker.on_live = self._reporter.arm

    @property
    def scope(self) -> Scope:
        return self.inputs.scope

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        o = self.inputs.options
        await self._serve_tcp(o.outbound_port, self.outbound.handle, None)
        await self._serve_tcp(o.inbound_port, self.passthrough.handle, None)
        for f in self.fixed_targets:
            handler = self.outbound.handle if f.kind == OUTBOUND else self.passthrough.handle
            await self._serve_tcp(f.port, handler, f.target)
        if self.scope.pod_uid:
            self.inbound.listen(self.bind)
        self.reconcile()

    async def _serve_tcp(self, port: int, handler: Handler,
                         fixed: tuple[str, int] | None) -> None:
        sock = self.inputs.sockets.listen(self.bind, port)
        self._listeners.append(sock)
        # The server gets its own fd: closing the server stops accepting while
        # `sock` stays open for the factory to give up (close_listener needs
        # it open to know its key) or, on a drain, to leave to the slot.
        served = sock.dup()
        try:
            # asyncio re-listens with its own default backlog (100) unless told.
            server = await self.inputs.loop.create_server(
                lambda: self._capture_end(handler, fixed), sock=served, backlog=LISTEN_BACKLOG)
        except BaseException:
            served.close()
            raise
        self._servers.append(server)

    def listening_sockets(self) -> list[socket.socket]:
        """Every listener this proxy holds (capture and HBONE)."""
        return [*self._listeners, *self.inbound.sockets.values()]

    def reconcile(self) -> None:
        """Routing generation changed: HBONE listeners, certificates, live connections."""
        pi = self.inputs
        view = pi.view()
        local = self.scope.local_workloads(view)
        pi.local_ips = frozenset(ip for w in local for ip in w.ips)
        for w in local:
            pi.certs.prefetch(w.identity)
        if not self.scope.pod_uid:
            self.inbound.reconcile(set(pi.local_ips))
        for conn, rejected in pi.connections.observe(view):
            LOG.info("connection closed by a policy change", extra={"fields": {
                "src.addr": f"{conn.src_ip}:{conn.src_port}", "src.identity": conn.src_identity,
                "dst.addr": f"{conn.dst_ip}:{conn.dst_port}", "reason": rejected.reason,
                "error": "AuthorizationPolicyLateRejection"}})

    def ready(self) -> bool:
        pi = self.inputs
        return all(pi.certs.get(w.identity) is not None
                   for w in self.scope.local_workloads(pi.view()))

    def close_listeners(self, *, release: bool = False) -> None:
        """Stop accepting. `release`: for good (the pod left the mesh), so the
        shards slot gives the listeners up too; otherwise (a drain) the slot
        keeps them for the next worker."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        for sock in self._listeners:
            give_up(self.inputs.sockets, sock, release)
        self._listeners.clear()
        self.inbound.stop_all(release=release)
        if release:
            forget = getattr(self.inputs.sockets, "release_namespace", None)
            if forget is not None:
                forget()

    async def close(self, grace: float = 1.0) -> None:
        """Stop accepting, give tunnels `grace` seconds, then close everything.

        Inbound HBONE drains gracefully (GOAWAY NO_ERROR: the peers' running
        tunnels finish, their new ones go to a new connection)."""
        pi = self.inputs
        deadline = time.monotonic() + grace
        self.close_listeners()
        await self.inbound.close(grace)
        # A connection accepted just before the listeners closed spawns its
        # task after a first wait began: wait_while waits for it too.
        await drain.wait_while(lambda: pi.tasks | pi.arriving, deadline)
        for t in list(pi.tasks):
            t.cancel()
        self._reporter.stop()
        await pi.pool.close()

    def _report_bytes(self, now: float) -> bool:
        """True (report again next interval) while connections are tracked."""
        self.inputs.tracker.report()
        return self.inputs.tracker.open_count() > 0

    # -- capture listeners (15001, 15006) ----------------------------------------
    def _capture_end(self, handler: Handler, fixed: tuple[str, int] | None) -> CountingEnd:
        """A captured connection: `handler(end, original destination)` runs
        once the transport exists (`fixed` stands in for SO_ORIGINAL_DST in
        the loopback test mode)."""
        end = CountingEnd()
        pi = self.inputs
        pi.arriving.add(end.made)

        def start(made: asyncio.Future) -> None:
            pi.arriving.discard(made)
            pi.spawn(self._captured(end, fixed, handler))
        end.made.add_done_callback(start)
        return end

    async def _captured(self, down: CountingEnd, fixed: tuple[str, int] | None,
                        handler: Handler) -> None:
        overload = worker_overload()
        if overload.admit_plain() is not None:
            down.close()                # FIN: a clean refusal the app may retry
            return
        try:
            await self._captured_admitted(down, fixed, handler)
        finally:
            overload.closed(down)

    async def _captured_admitted(self, down: CountingEnd, fixed: tuple[str, int] | None,
                                 handler: Handler) -> None:
        started = time.monotonic()
        try:
            dst = fixed or original_dst(down.info("socket"))
        except OSError as e:
            peer = down.info("peername")
            LOG.warning("no original destination (not a redirected connection?)",
                        extra={"fields": {"src.addr": hostport(*peer[:2]), "error": str(e)}})
            down.abort()
            return
        await handler(down, dst, started)
