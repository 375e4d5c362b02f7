"""The waypoint as a shards app: `shoal waypoint run --name NAME --namespace NS`.

Per worker (post-fork): an HBONE server on :15008 (SO_REUSEPORT, shared by
every worker) whose CONNECTs are checked against the routing table (the
`:authority` must be a service or workload that uses this waypoint) and
served as HTTP by `waypoint.server`; upstream requests leave as new HBONE
tunnels to the chosen pod's :15008 (pooled), or plaintext to pods outside
the mesh.

TEST / benchmark mode: `--plaintext-port` adds a plain HTTP listener whose
requests name their destination in the Host header (a service name or VIP);
`--upstream-plaintext` sends upstream requests as plain TCP to podIP:port.
Both exist so the L7 path can be measured and tested without TLS; they are
off by default.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from shoal.core import log as core_log
from shoal.core.constants import CA_PORT, DEFAULT_TRUST_DOMAIN, HBONE_PORT
from shoal.core.authz import strip_spiffe
from shoal.core.pipe import TcpEnd
from shoal.core.records import WaypointRef, spiffe_id
from shoal.shards.app import App, WorkerContext
from shoal.shards.ticker import WhileBusy
from shoal.waypoint import fastpath
from shoal.waypoint.destination import NotForUs, resolve
from shoal.waypoint.downstream import Downstream
from shoal.waypoint.frontdoor import serve_stream
from shoal.waypoint.lb import MODES, ROUND_ROBIN
from shoal.waypoint.proxy import Proxy
from shoal.waypoint.telemetry import (ACCESS_LOG_FLUSH, DEFAULT_TRACE_SAMPLING_PERCENT, FLUSH_INTERVAL,
                                      Telemetry)
from shoal.waypoint.tracing import SpanExporter, otlp_config
from shoal.waypoint.upstream import Connector, H1Pool, HboneConnector, TcpConnector

if TYPE_CHECKING:
    from shoal.core.hbone.server import HboneServer
    from shoal.core.identity import CertManager, WorkloadCert

LOG = core_log.get("waypoint")
# Accept queue of the HBONE listener: ztunnels open few, long-lived pooled
# connections, but a node restart reconnects all of them at once.
HBONE_BACKLOG = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class WaypointOptions:
    """Validated options (plain values: they cross the fork)."""
    name: str
    namespace: str
    bind: str = "0.0.0.0"
    hbone_port: int = HBONE_PORT           # 0 disables
    plaintext_port: int = 0                # TEST/bench plain HTTP listener; 0 disables
    upstream_plaintext: bool = False       # TEST/bench: no HBONE to endpoints
    cert_dir: str | None = None            # key.pem, cert-chain.pem, root-cert.pem
    ca_address: str = f"127.0.0.1:{CA_PORT}"
    ca_protocol: str = "grpc"
    ca_credential_dir: str | None = None
    ca_token: str | None = None            # on a cluster: the projected token (audience istio-ca)
    ca_root_cert: str | None = None        # ... and the CA's trust bundle
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    service_account: str = ""              # default: the Gateway name, as istiod does
    lb_mode: str = ROUND_ROBIN
    access_log: bool = True
    trace_sampling: float = DEFAULT_TRACE_SAMPLING_PERCENT   # % of new traces sampled
    otlp_endpoint: str | None = None       # collector URL (else the OTEL_* variables)
    otlp_protocol: str | None = None       # "grpc" | "http/protobuf" (else OTEL_*; grpc)

    def __post_init__(self) -> None:
        if not self.name or not self.namespace:
            raise ValueError("--name and --namespace are required: the waypoint Gateway's "
                             "name and namespace")
        for flag in ("hbone_port", "plaintext_port"):
            if not 0 <= getattr(self, flag) <= 65535:
                raise ValueError(f"--{flag.replace('_', '-')} must be a TCP port (0 disables)")
        if not self.hbone_port and not self.plaintext_port:
            raise ValueError("nothing to serve: --hbone-port and --plaintext-port are both 0")
        if not 0.0 <= self.trace_sampling <= 100.0:
            raise ValueError("--trace-sampling is a percentage between 0 and 100")
        otlp_config(self.otlp_endpoint, self.otlp_protocol)     # raises on a bad value
        if self.lb_mode not in MODES:
            raise ValueError(f"--lb-mode must be one of {', '.join(MODES)}")
        if bool(self.ca_token) != bool(self.ca_root_cert):
            raise ValueError("--ca-token needs --ca-root-cert (the CA's trust bundle) and back")
        if self.hbone_port and not (self.cert_dir or self.ca_credential_dir or self.ca_token):
            raise ValueError("HBONE needs a certificate: give --cert-dir (the waypoint's "
                             "credential), --ca-credential or --ca-token (to ask the CA), "
                             "or use --hbone-port 0 with --plaintext-port for a test listener")

    @property
    def identity(self) -> str:
        return spiffe_id(self.trust_domain, self.namespace, self.service_account or self.name)


class WaypointApp(App):
    name = "waypoint"

    def __init__(self, options: WaypointOptions) -> None:
        super().__init__(options)
        self.ref = WaypointRef(namespace=options.namespace, name=options.name)
        self.ctx: WorkerContext            # set by start() (post-fork)
        self.proxy: Proxy | None = None
        self.hbone: HboneServer | None = None
        self.certs: CertManager | None = None
        self.cert: WorkloadCert | None = None
        self._client_ctx = None
        self._server_ctx = None
        self._hbone_listener: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._flusher: WhileBusy | None = None
        self.spans: SpanExporter | None = None
        self._socks: list[socket.socket] = []

    # -- lifecycle -------------------------------------------------------------
    async def start(self, ctx: WorkerContext) -> None:
        o: WaypointOptions = self.options
        self.ctx = ctx
        otlp = otlp_config(o.otlp_endpoint, o.otlp_protocol)
        if otlp is not None:    # per worker: the processor's thread does not survive a fork
            self.spans = SpanExporter(otlp, canonical_service=o.name, namespace=o.namespace)
        telemetry = Telemetry(ctx.metrics, access_log=o.access_log, spans=self.spans)
        plain = TcpConnector(sockets=ctx.sockets)
        connector: Connector = plain
        if o.hbone_port:
            await self._load_cert()
            if not o.upstream_plaintext:
                from shoal.core.hbone.pool import HbonePool
                pool = HbonePool(lambda _src: self._client_context(), log=LOG)
                connector = HboneConnector(pool, o.identity, plaintext=plain)
        self.proxy = Proxy(view=ctx.routing, waypoint=self.ref, pool=H1Pool(connector),
                           telemetry=telemetry, lb_mode=o.lb_mode, rng=random.Random(),
                           namespace=o.namespace, trace_sampling=o.trace_sampling)
        if o.hbone_port:
            await self._listen_hbone()
        if o.plaintext_port:
            ctx.serve(o.bind, o.plaintext_port, self._plain_protocol, name="http-plaintext")
        # A timer only while there is traffic (shards/ticker.py): each new
        # downstream connection arms it, it stops once nothing is left to
        # flush or sweep, so an idle waypoint worker wakes at heartbeat pace.
        self._flusher = WhileBusy(ACCESS_LOG_FLUSH, functools.partial(self._flush_telemetry,
                                                                      telemetry))
        LOG.info("waypoint worker serving", extra={"fields": {
            "waypoint": self.ref.key, "worker": ctx.worker_id, "hbone_port": o.hbone_port,
            "plaintext_port": o.plaintext_port, "identity": o.identity}})

    def _flush_telemetry(self, telemetry: Telemetry, now: float) -> bool:
        """Push aggregated metrics and buffered access-log lines out regularly
        (every ACCESS_LOG_FLUSH), also when traffic stops (record() only
        flushes on the next request). True (stay armed) while downstream
        connections are open or pooled upstream ones wait for their sweep;
        the last pass, with nothing open, flushes the metrics whatever
        their interval, so no count waits for the next request."""
        serving = self._serving()
        telemetry.log.flush()
        if not serving or telemetry.clock() - telemetry._last_flush >= FLUSH_INTERVAL:
            telemetry.flush_metrics()
            if self.proxy is not None:
                self.proxy.pool.sweep()     # idle upstream connections past their time
                self.proxy.h2pool.sweep()
        return serving or self._pooled()

    def _serving(self) -> bool:
        """Any downstream connection open (a request can still end on it)."""
        if self.hbone is not None and self.hbone.connections:
            return True
        return any(lst.open_connections for lst in self.ctx.listeners)

    def _pooled(self) -> bool:
        """Upstream connections kept for reuse (each needs its idle sweep)."""
        return self.proxy is not None and bool(self.proxy.pool.idle_count()
                                               or self.proxy.h2pool.count())

    async def drain(self, deadline: float) -> None:
        grace = max(deadline - time.monotonic(), 0.0)
        if self.proxy is not None:
            self.proxy.start_drain()
        if self._hbone_listener is not None:
            self._hbone_listener.close()
        if self.hbone is not None:
            # GOAWAY(NO_ERROR): tunnels serving requests finish (up to the
            # deadline), then each connection closes; what is left is reset.
            await self.hbone.close(grace)
        for sock in self._socks:
            sock.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(deadline - time.monotonic(), 0.0))
        if self.proxy is not None:
            await self.proxy.close()
        if self._flusher is not None:
            self._flusher.stop()
        if self.certs is not None:
            await self.certs.close()
        if self.spans is not None:
            # The last spans go out within what is left of the drain time.
            left = max(deadline - time.monotonic(), 0.0)
            try:
                async with asyncio.timeout(left):
                    await asyncio.get_running_loop().run_in_executor(None, self.spans.shutdown)
            except TimeoutError:
                LOG.warning("spans not exported before the drain deadline")

    def ready(self) -> bool:
        return self.proxy is not None

    def admin_sections(self) -> dict[str, Callable[[], object]]:
        def section() -> dict:
            view = self.ctx.routing
            wp = view.waypoint(self.ref)
            return {"waypoint": self.ref.key, "known": wp is not None,
                    "identity": self.options.identity,
                    "routes": [r.key for r in view.routes_for_waypoint(wp)] if wp else [],
                    "idle_upstream_connections": self.proxy.pool.idle_count() if self.proxy else 0}
        return {"waypoint": section}

    # -- certificates ----------------------------------------------------------
    async def _load_cert(self) -> None:
        o: WaypointOptions = self.options
        if o.cert_dir:
            from shoal.core.identity.caclient import load_credential
            self.cert = load_credential(o.cert_dir)
            return
        from shoal.core.identity import CertManager
        from shoal.core.identity.options import make_ca_client
        from shoal.core.identity.store import CertStore
        ca = make_ca_client(o.ca_address, o.ca_protocol, credential_dir=o.ca_credential_dir,
                            token_file=o.ca_token, root_cert=o.ca_root_cert,
                            trust_domain=o.trust_domain)
        # The store shared by every worker of this waypoint: a restarted or
        # reloaded worker starts on the certificate it holds, CA or no CA.
        certs = self.certs = CertManager(ca, node_name=o.name, store=CertStore.inherited(),
                                         metrics=self.ctx.metrics)
        self.cert = await certs.fetch(o.identity)

    def _current_cert(self):
        if self.certs is not None:
            return self.certs.get(self.options.identity) or self.cert
        return self.cert

    def _client_context(self):
        """For each new upstream HBONE connection: the current certificate
        (the CertManager renews it at half-life and caches its contexts)."""
        if self.certs is not None:
            ctx = self.certs.client_context(self.options.identity)
            if ctx is not None:
                return ctx
        if self._client_ctx is None:
            from shoal.core.identity.tls import client_context
            self._client_ctx = client_context(self.cert)
        return self._client_ctx

    def _server_context(self):
        """For each accepted HBONE connection (so a renewed certificate is
        served from the next handshake on, without restarting listeners)."""
        if self.certs is not None:
            ctx = self.certs.server_context(self.options.identity)
            if ctx is not None:
                return ctx
        if self._server_ctx is None:
            from shoal.core.identity.tls import server_context
            self._server_ctx = server_context(self.cert)
        return self._server_ctx

    # -- listeners ---------------------------------------------------------------
    async def _listen_hbone(self) -> None:
        from shoal.core.hbone.server import HboneServer
        o: WaypointOptions = self.options
        hbone = self.hbone = HboneServer(self._on_connect, log=LOG)
        sock = self.ctx.sockets.listen(o.bind, o.hbone_port)
        self._socks.append(sock)
        assert self.cert is not None, "start() loads the certificate before the HBONE listener"
        trust_domain = self.cert.trust_domain

        def factory():
            self._arm_flusher()
            # The TLS context is looked up per connection: certificate renewal.
            return hbone.protocol_factory(self._server_context(),
                                               trust_domain=trust_domain)()
        loop = asyncio.get_running_loop()
        self._hbone_listener = await loop.create_server(factory, sock=sock,
                                                        backlog=HBONE_BACKLOG)

    async def _on_connect(self, req):
        from shoal.core.hbone.server import Accept, Reject
        view = self.ctx.routing
        if not view.generation:
            return Reject(503, "waypoint has no configuration yet (routing generation 0)")
        try:
            target = resolve(view, self.ref, req.host, req.port)
        except NotForUs as e:
            return Reject(e.status, e.reason)
        client = req.forwarded_for
        src_ip = client[0] if client else (req.peer_address[0] if req.peer_address else "")
        principal = str(req.peer_identity) if req.peer_identity else None
        # Source labels only from the verified peer: the workload at the
        # client address counts only when its identity is the certificate's
        # (the forwarded address alone is not proof, as in ztunnel).
        src_w = view.workload_by_ip(src_ip)
        if src_w is not None and (principal is None or
                                  strip_spiffe(src_w.identity) != strip_spiffe(principal)):
            src_w = None
        down = Downstream(source_principal=principal, source_ip=src_ip, source_workload=src_w,
                          target=target)
        proxy = self.proxy
        return Accept(serve=lambda stream: serve_stream(stream, down, proxy))

    def _arm_flusher(self) -> None:
        """A new downstream connection: telemetry to flush from now on."""
        if self._flusher is not None:
            self._flusher.arm()

    def _plain_protocol(self) -> asyncio.Protocol:
        assert self.proxy is not None, "start() builds the proxy before it listens"
        self._arm_flusher()
        if fastpath.enabled():
            return fastpath.FastSession(self.proxy, self._tasks)
        return _PlainConnection(self)


class _PlainConnection(TcpEnd):
    """TEST/bench plaintext HTTP: destination from the Host header."""

    def __init__(self, app: WaypointApp) -> None:
        super().__init__()
        self.app = app

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        down = Downstream(source_ip=peer[0])
        task = asyncio.ensure_future(serve_stream(self, down, self.app.proxy))
        self.app._tasks.add(task)
        task.add_done_callback(self.app._tasks.discard)
