"""One ztunnel proxy: the listeners of one network namespace (I/O adapter).

Thin glue between sockets and the pure decisions (outbound.resolve,
inbound.decide_*): a `Proxy` serves either the node's own netns
(dedicated mode: the scope is every workload on the node) or one pod's
netns (in-pod mode: the scope is that pod). Sockets come from the injected
`SocketFactory`, so the same code runs in both; every socket carries
SO_MARK 0x539 (the factory's options) so the pod's redirection rules skip it.

Listeners:
- 15001 outbound capture: original destination from SO_ORIGINAL_DST, or a
  TEST-ONLY fixed target (options.FixedTarget);
- 15006 plaintext inbound: authorized with no identity, piped to the app;
- 15008 HBONE inbound: in dedicated mode one listener per local workload IP
  (reconciled when the routing generation changes); the server certificate
  is picked per connection by the accepted socket's local IP, i.e. the
  destination workload (no SNI in HBONE), so renewals apply to new
  connections at once.

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
import random
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from shoal.core import log as shoal_log
from shoal.core.hbone import HboneError
from shoal.core.hbone.pool import HbonePool
from shoal.core.hbone.server import Accept, ConnectRequest, HboneServer, Reject
from shoal.core.pipe import PipeReset, TcpEnd, pipe
from shoal.core.sockets import LISTEN_BACKLOG, configure_accepted
from shoal.core.records import Workload
from shoal.ztunnel import inbound, outbound, telemetry
from shoal.ztunnel.connections import ConnectionManager
from shoal.ztunnel.options import OUTBOUND, ZtunnelOptions
from shoal.ztunnel.origdst import original_dst
from shoal.ztunnel.outbound import OutboundError, hostport
from shoal.ztunnel.podsockets import SpoofUnavailable
from shoal.ztunnel.spoof import SpoofState
from shoal.ztunnel.telemetry import LiveBytes

ACCESS = shoal_log.get("access")
LOG = shoal_log.get("ztunnel")

# Connections one readable event accepts on an HBONE listener: bounded so a
# burst cannot starve the loop's other callbacks (same as shards.listener).
ACCEPT_BATCH = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """Which workloads a proxy serves: a node's (dedicated) or one pod's (in-pod)."""
    node: str
    pod_uid: str = ""

    def local_workloads(self, view: Any) -> list[Workload]:
        if self.pod_uid:
            w = view.workload_by_uid(self.pod_uid)
            return [w] if w is not None else []
        return [w for w in view.workloads_on_node(self.node) if w.protocol == "HBONE" and w.ips]

    def source_for(self, view: Any, peer_ip: str) -> Workload | None:
        if self.pod_uid:
            return view.workload_by_uid(self.pod_uid)
        w = view.workload_by_ip(peer_ip)
        return w if w is not None and w.node == self.node else None


class CountingEnd(TcpEnd):
    """A TcpEnd that counts the bytes read from it (exact even after a reset)
    and the bytes written to it (handed to the transport)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0
        self.bytes_written = 0

    async def read(self, n: int = 256 * 1024) -> bytes:
        data = await super().read(n)
        self.bytes_read += len(data)
        return data

    async def write(self, data) -> None:
        await super().write(data)
        self.bytes_written += len(data)


class Shared:
    """What every proxy of a worker shares: view, certificates, metrics, options."""

    def __init__(self, *, options: ZtunnelOptions, view: Callable[[], Any], certs: Any,
                 metrics: Any, rng: random.Random | None = None) -> None:
        self.options = options
        self.view = view
        self.certs = certs
        self.metrics = metrics
        self.rng = rng or random.Random()


class Proxy:
    """The listeners and connections of one netns (see module docstring)."""

    def __init__(self, shared: Shared, sockets: Any, scope: Scope, *,
                 fixed_targets: tuple = (), bind: str = "0.0.0.0") -> None:
        self.shared = shared
        self.opts = shared.options
        self.sockets = sockets
        self.scope = scope
        self.bind = bind
        self.fixed_targets = fixed_targets
        self.connections = ConnectionManager()
        self.pool = HbonePool(self._client_context, socket_factory=self._raw_socket)
        # One HBONE server per local IP: the handler must know which workload
        # the connection reached, and ConnectRequest.local_address is not
        # filled in under uvloop's start_tls (reported to core/hbone).
        self._hbone_servers: dict[str, HboneServer] = {}
        self._listeners: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._hbone_socks: dict[str, socket.socket] = {}
        self._tasks: set[asyncio.Task] = set()
        self._local_ips: frozenset[str] = frozenset()
        # In-pod only: the inner factory knows how to check the pod's routing.
        check = getattr(getattr(sockets, "inner", sockets), "spoof_routing", None)
        self.spoof = SpoofState(check if scope.pod_uid else None, log=LOG, pod=scope.pod_uid)
        self._live: dict[LiveBytes, telemetry.ConnectionMeta] = {}
        self._reporter: asyncio.Task | None = None
        self.loop = asyncio.get_running_loop()

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        o = self.opts
        await self._serve_tcp(self.bind, o.outbound_port,
                              lambda: self._capture_end(self._outbound, None))
        await self._serve_tcp(self.bind, o.inbound_port,
                              lambda: self._capture_end(self._plaintext, None))
        for f in self.fixed_targets:
            handler = self._outbound if f.kind == OUTBOUND else self._plaintext
            await self._serve_tcp(self.bind, f.port,
                                  lambda t=f.target, h=handler: self._capture_end(h, t))
        if self.scope.pod_uid:
            self._listen_hbone(self.bind)
        self.reconcile()
        self._reporter = self.loop.create_task(self._report_bytes())

    async def _serve_tcp(self, host: str, port: int, factory: Callable[[], TcpEnd]) -> None:
        sock = self.sockets.listen(host, port)
        self._listeners.append(sock)
        # The server gets its own fd: closing the server stops accepting while
        # `sock` stays open for the factory to give up (close_listener needs
        # it open to know its key) or, on a drain, to leave to the slot.
        served = sock.dup()
        try:
            # asyncio re-listens with its own default backlog (100) unless told.
            server = await self.loop.create_server(factory, sock=served, backlog=LISTEN_BACKLOG)
        except BaseException:
            served.close()
            raise
        self._servers.append(server)

    def reconcile(self) -> None:
        """Routing generation changed: HBONE listeners, certificates, live connections."""
        view = self.shared.view()
        local = self.scope.local_workloads(view)
        self._local_ips = frozenset(ip for w in local for ip in w.ips)
        for w in local:
            self.shared.certs.prefetch(w.identity)
        if not self.scope.pod_uid:
            want = {ip for w in local for ip in w.ips}
            for ip in want - set(self._hbone_socks):
                try:
                    self._listen_hbone(ip)
                except OSError as e:
                    LOG.error("cannot open HBONE listener", extra={"fields": {
                        "address": hostport(ip, self.opts.hbone_port), "error": str(e)}})
            for ip in set(self._hbone_socks) - want:
                self._close_hbone(ip)
        for conn, rejected in self.connections.observe(view):
            LOG.info("connection closed by a policy change", extra={"fields": {
                "src.addr": f"{conn.src_ip}:{conn.src_port}", "src.identity": conn.src_identity,
                "dst.addr": f"{conn.dst_ip}:{conn.dst_port}", "reason": rejected.reason,
                "error": "AuthorizationPolicyLateRejection"}})

    def ready(self) -> bool:
        view = self.shared.view()
        return all(self.shared.certs.get(w.identity) is not None
                   for w in self.scope.local_workloads(view))

    def close_listeners(self, *, release: bool = False) -> None:
        """Stop accepting. `release`: for good (the pod left the mesh), so the
        shards slot gives the listeners up too; otherwise (a drain) the slot
        keeps them for the next worker."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        for sock in self._listeners:
            self._give_up(sock, release)
        self._listeners.clear()
        for ip in list(self._hbone_socks):
            self._close_hbone(ip, release=release)
        if release:
            forget = getattr(self.sockets, "release_namespace", None)
            if forget is not None:
                forget()

    def _give_up(self, sock: socket.socket, release: bool) -> None:
        close = getattr(self.sockets, "close_listener", None) if release else None
        close(sock) if close else sock.close()

    async def close(self, grace: float = 1.0) -> None:
        """Stop accepting, give tunnels `grace` seconds, then close everything.

        Inbound HBONE drains gracefully (GOAWAY NO_ERROR: the peers' running
        tunnels finish, their new ones go to a new connection)."""
        deadline = time.monotonic() + grace
        self.close_listeners()
        await asyncio.gather(*(h.close(grace) for h in self._hbone_servers.values()),
                             return_exceptions=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        for t in list(self._tasks):
            t.cancel()
        if self._reporter is not None:
            self._reporter.cancel()
        await self.pool.close()

    # -- sockets --------------------------------------------------------------
    def _raw_socket(self, family: int) -> socket.socket:
        """An unconnected socket with the factory's options (mark, netns) for the pool."""
        inner = getattr(self.sockets, "inner", self.sockets)
        new = getattr(inner, "_new_socket", None)
        sock = new(family) if new else socket.socket(family, socket.SOCK_STREAM)
        apply = getattr(inner, "_apply", None)
        if apply is not None:
            apply(sock, family)
        return sock

    def _client_context(self, src: Any):
        ctx = self.shared.certs.client_context(src)
        if ctx is None:
            raise HboneError(f"no certificate for {src} yet")
        return ctx

    async def _connect_tcp(self, host: str, port: int) -> CountingEnd:
        sock = await self.sockets.connect(host, port)
        _, end = await self.loop.create_connection(CountingEnd, sock=sock)
        return end

    async def _connect_app(self, host: str, port: int, client_ip: str) -> CountingEnd:
        """Inbound: connect to the app, in in-pod mode from the client's own
        address when the pod's routing allows (the app sees the real peer)."""
        source = await self.spoof.source(host, client_ip)
        if source is None:
            return await self._connect_tcp(host, port)
        try:
            sock = await self.sockets.connect(host, port, source=source)
        except SpoofUnavailable as e:
            self.spoof.failed(e.strerror)
            return await self._connect_tcp(host, port)
        _, end = await self.loop.create_connection(CountingEnd, sock=sock)
        return end

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- HBONE listener (accept loop picking the certificate per connection) ----
    def _listen_hbone(self, ip: str) -> None:
        sock = self.sockets.listen(ip, self.opts.hbone_port)
        self._hbone_socks[ip] = sock
        self.loop.add_reader(sock.fileno(), self._accept_hbone, sock)

    def _close_hbone(self, ip: str, *, release: bool = True) -> None:
        sock = self._hbone_socks.pop(ip)
        self.loop.remove_reader(sock.fileno())
        self._give_up(sock, release)

    def _accept_hbone(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                LOG.error("HBONE accept failed", extra={"fields": {"error": str(e)}})
                return
            configure_accepted(conn)
            self._spawn(self._start_tls(conn))

    async def _start_tls(self, conn: socket.socket) -> None:
        local_ip = conn.getsockname()[0]
        view = self.shared.view()
        w = view.workload_by_ip(local_ip) if not self.scope.pod_uid else \
            view.workload_by_uid(self.scope.pod_uid)
        ctx = None
        if w is not None:
            try:
                ctx = await self.shared.certs.server_context_for(w.identity)
            except Exception as e:   # CertUnavailable: the CA is down or refused
                LOG.warning("no server certificate", extra={"fields": {
                    "workload": w.name, "identity": w.identity, "error": str(e)}})
        if ctx is None:
            conn.close()
            return
        # The server runs the TLS handshake itself (and logs refusals).
        server = self._hbone_servers.get(local_ip)
        if server is None:
            server = self._hbone_servers[local_ip] = HboneServer(
                lambda req, ip=local_ip: self._on_connect(req, ip), log=LOG)
        factory = server.protocol_factory(ctx, trust_domain=w.trust_domain)
        try:
            await self.loop.connect_accepted_socket(factory, conn)
        except (OSError, ConnectionError) as e:
            LOG.debug("HBONE connection setup failed: %s", e)
            conn.close()

    # -- capture listeners (15001, 15006) ----------------------------------------
    def _capture_end(self, handler, fixed: tuple[str, int] | None) -> TcpEnd:
        """A captured connection: `handler(end, original destination)` runs
        once the transport exists (`fixed` stands in for SO_ORIGINAL_DST in
        the loopback test mode)."""
        end = CountingEnd()
        end.made.add_done_callback(lambda _f: self._spawn(self._captured(end, fixed, handler)))
        return end

    async def _captured(self, down: CountingEnd, fixed: tuple[str, int] | None, handler) -> None:
        started = time.monotonic()
        try:
            dst = fixed or original_dst(down.transport.get_extra_info("socket"))
        except OSError as e:
            peer = down.transport.get_extra_info("peername")
            LOG.warning("no original destination (not a redirected connection?)",
                        extra={"fields": {"src.addr": hostport(*peer[:2]), "error": str(e)}})
            down.abort()
            return
        await handler(down, dst, started)

    # -- outbound (15001) ----------------------------------------------------------
    async def _outbound(self, down: CountingEnd, dst: tuple[str, int], started: float) -> None:
        peer = down.transport.get_extra_info("peername")
        view = self.shared.view()
        source = self.scope.source_for(view, peer[0])
        meta = telemetry.ConnectionMeta(reporter=telemetry.SOURCE, src_addr=hostport(*peer[:2]),
                                        dst_addr=hostport(*dst), src_workload=source,
                                        src_identity=source.identity if source else "")
        try:
            route = outbound.resolve(view, source=source, dst=dst, rng=self.shared.rng,
                                     local_ips=self._local_ips, proxy_ports=self.opts.proxy_ports,
                                     hbone_port=self.opts.hbone_port)
        except OutboundError as e:
            self._finish(meta, down, started, error=f"{e.code}: {e.message}",
                         flags=e.response_flag, reset=True)
            return
        meta = telemetry.ConnectionMeta(
            reporter=telemetry.SOURCE, src_addr=meta.src_addr, dst_addr=hostport(*route.address),
            hbone_addr=route.authority, src_workload=source, src_identity=meta.src_identity,
            dst_workload=route.workload, dst_service=route.service,
            dst_identity=route.expected_identities[0] if route.expected_identities else "",
            mtls=route.kind == outbound.HBONE)
        self._count(self.shared.metrics.tcp_opened, meta)
        if route.kind == outbound.HBONE:
            await self._outbound_hbone(down, route, source, peer, meta, started)
        else:
            await self._outbound_plain(down, route, meta, started)

    async def _outbound_plain(self, down, route, meta, started) -> None:
        try:
            up = await self._connect_tcp(*route.address)
        except (OSError, TimeoutError) as e:
            self._finish(meta, down, started, error=f"connect {meta.dst_addr}: {e}",
                         flags="CONNECT", reset=True, opened=True)
            return
        await self._relay(meta, down, up, lambda: up.bytes_read, started)

    async def _outbound_hbone(self, down, route, source, peer, meta, started) -> None:
        if source is None:
            self._finish(meta, down, started, flags="IDENTITY_ERROR", reset=True,
                         opened=True, error=f"unknown source workload {peer[0]}: no identity "
                         "to present for HBONE (is the pod in the config and on this node?)")
            return
        try:
            await self.shared.certs.fetch(source.identity)
            stream = await self.pool.open(
                src=source.identity, dst_identities=route.expected_identities,
                address=route.address, authority=route.authority, forwarded_for=peer[:2],
                host=route.service.hostname if route.service else None,
                baggage=telemetry.baggage(source))
        except HboneError as e:
            flag = "DENY" if e.status == 401 else "CONNECT"
            self._finish(meta, down, started, flags=flag, reset=True, opened=True,
                         error=f"HBONE {route.authority} via {meta.dst_addr}: {e.reason}"
                         + (f" (status {e.status})" if e.status else ""))
            return
        except Exception as e:   # CertUnavailable
            self._finish(meta, down, started, flags="IDENTITY_ERROR", reset=True,
                         opened=True, error=str(e))
            return
        await self._relay(meta, down, stream, lambda: stream.bytes_received, started)

    # -- plaintext inbound (15006) --------------------------------------------------
    async def _plaintext(self, down: CountingEnd, dst: tuple[str, int], started: float) -> None:
        peer = down.transport.get_extra_info("peername")
        view = self.shared.view()
        d = inbound.decide_plaintext(view, dst=dst, src_addr=peer[:2],
                                     proxy_ports=self.opts.proxy_ports)
        meta = telemetry.ConnectionMeta(reporter=telemetry.DESTINATION,
                                        src_addr=hostport(*peer[:2]), dst_addr=hostport(*dst),
                                        src_workload=view.workload_by_ip(peer[0]),
                                        dst_workload=d.workload,
                                        dst_identity=d.workload.identity if d.workload else "")
        self._count(self.shared.metrics.tcp_opened, meta)
        if isinstance(d, inbound.Rejected):
            self._finish(meta, down, started, error=d.reason, flags=d.response_flag,
                         reset=True, opened=True)
            return
        try:
            up = await self._connect_app(*d.upstream, client_ip=peer[0])
        except (OSError, TimeoutError) as e:
            self._finish(meta, down, started, error=f"app unreachable: {e}",
                         flags="CONNECT", reset=True, opened=True)
            return
        token = self.connections.register(dst[0], d.conn, lambda reason: up.abort())
        try:
            await self._relay(meta, down, up, lambda: up.bytes_read, started)
        finally:
            self.connections.release(token)

    # -- HBONE inbound (15008) ---------------------------------------------------------
    async def _on_connect(self, req: ConnectRequest, local_ip: str) -> Accept | Reject:
        started = time.monotonic()
        view = self.shared.view()
        src_identity = req.peer_identity.uri if req.peer_identity is not None else ""
        src_addr = _client_addr(view, req, src_identity)
        local = view.workload_by_uid(self.scope.pod_uid) if self.scope.pod_uid else None
        d = inbound.decide_hbone(view, authority=req.authority, local_ip=local_ip,
                                 src_identity=src_identity, src_addr=src_addr,
                                 proxy_ports=self.opts.proxy_ports, local=local)
        src_w = view.workload_by_ip(src_addr[0])
        meta = telemetry.ConnectionMeta(
            reporter=telemetry.DESTINATION, src_addr=hostport(*src_addr),
            dst_addr=hostport(local_ip, req.port), hbone_addr=req.authority,
            src_workload=src_w if src_w is not None and src_w.identity == src_identity else None,
            src_identity=src_identity, dst_workload=d.workload,
            dst_identity=d.workload.identity if d.workload else "", mtls=True)
        self._count(self.shared.metrics.tcp_opened, meta)
        if isinstance(d, inbound.Rejected):
            self._finish(meta, None, started, error=d.reason, flags=d.response_flag,
                         opened=True)
            return Reject(status=d.status, reason=d.reason)
        try:
            up = await self._connect_app(*d.upstream, client_ip=src_addr[0])
        except (OSError, TimeoutError) as e:
            reason = f"app {hostport(*d.upstream)} unreachable: {e}"
            self._finish(meta, None, started, error=reason, flags="CONNECT", opened=True)
            return Reject(status=inbound.SERVICE_UNAVAILABLE, reason=reason)
        token = self.connections.register(local_ip, d.conn, lambda reason: up.abort())
        live = self._track(meta, lambda: up.bytes_written, lambda: up.bytes_read,
                           gone=lambda: up.transport is None or up.transport.is_closing())

        def done(sent: int, received: int) -> None:
            self.connections.release(token)
            self._record(meta, started, request_bytes=received, response_bytes=sent, live=live)
        bag = telemetry.baggage(d.workload)
        return Accept(upstream=up, on_done=done, headers=(("baggage", bag),) if bag else ())

    # -- telemetry -------------------------------------------------------------------
    def _track(self, meta, request: Callable[[], int], response: Callable[[], int],
               gone: Callable[[], bool] | None = None) -> LiveBytes:
        """Report this open connection's bytes periodically (see _report_bytes)."""
        live = LiveBytes(request, response, gone)
        self._live[live] = meta
        return live

    async def _report_bytes(self) -> None:
        while True:
            await asyncio.sleep(self.opts.bytes_report_interval)
            self.report_live_bytes()

    def report_live_bytes(self) -> None:
        """Add the bytes open connections moved since the last report."""
        for live, meta in list(self._live.items()):
            self._add_bytes(telemetry.tcp_labels(meta), *live.take())
            if live.gone is not None and live.gone():
                del self._live[live]

    def _add_bytes(self, labels: dict, request: int, response: int) -> None:
        m = self.shared.metrics
        if request:
            m.inc(m.tcp_received, labels, request)
        if response:
            m.inc(m.tcp_sent, labels, response)

    def _count(self, metric, meta: telemetry.ConnectionMeta, amount: float = 1,
               flags: str = "-") -> None:
        if amount:
            self.shared.metrics.inc(metric, telemetry.tcp_labels(meta, flags), amount)

    async def _relay(self, meta, down, up, received: Callable[[], int], started: float) -> None:
        """Pipe both ways (half-close aware) with live byte reports, then
        record the connection; `received` reads what came back from `up`
        (a TCP end or an HBONE stream)."""
        live = self._track(meta, lambda: down.bytes_read, received)
        error = ""
        try:
            await pipe(down, up)
        except PipeReset as e:
            error = f"connection reset: {e}"
        self._finish(meta, down, started, error=error, opened=True,
                     response_bytes=received(), live=live)

    def _finish(self, meta, down, started, *, error: str = "", flags: str = "-",
                reset: bool = False, opened: bool = False, response_bytes: int = 0,
                live: LiveBytes | None = None) -> None:
        if reset and down is not None:
            down.abort()
        request = down.bytes_read if down is not None else 0
        response = response_bytes
        if not opened:
            self._count(self.shared.metrics.tcp_opened, meta, flags=flags)
        self._record(meta, started, request_bytes=request, response_bytes=response,
                     error=error, flags=flags, live=live)

    def _record(self, meta, started, *, request_bytes: int, response_bytes: int,
                error: str = "", flags: str = "-", live: LiveBytes | None = None) -> None:
        m = self.shared.metrics
        labels = telemetry.tcp_labels(meta, flags)
        m.inc(m.tcp_closed, labels)
        new_request, new_response = request_bytes, response_bytes
        if live is not None:     # part of it was reported while it was open
            self._live.pop(live, None)
            new_request, new_response = live.take(request_bytes, response_bytes)
        self._add_bytes(labels, new_request, new_response)
        outbound_side = meta.reporter == telemetry.SOURCE
        fields = telemetry.access_fields(
            meta, bytes_sent=request_bytes if outbound_side else response_bytes,
            bytes_recv=response_bytes if outbound_side else request_bytes,
            duration=time.monotonic() - started, error=error)
        if error:
            ACCESS.error("connection complete", extra={"fields": fields})
        else:
            ACCESS.info("connection complete", extra={"fields": fields})


def _client_addr(view: Any, req: ConnectRequest, src_identity: str) -> tuple[str, int]:
    """The original client address: `forwarded: for=` when it names a workload
    with the peer's identity (the peer proxy vouches for it), else the peer."""
    fwd = req.forwarded_for
    if fwd:
        ip, _, port = fwd.rpartition(":")
        ip = ip.strip("[]")
        w = view.workload_by_ip(ip)
        if w is not None and w.identity == src_identity and port.isdigit():
            return ip, int(port)
    peer = req.peer_address or ("", 0)
    return peer[0], peer[1]
