"""Inbound (15008): the HBONE server of one netns (I/O adapter).

In dedicated mode one listener per local workload IP (reconciled when the
routing generation changes); in in-pod mode one for the pod. The server
certificate is picked per connection by the accepted socket's local IP,
i.e. the destination workload (HBONE has no SNI), so renewals apply to new
connections at once. Each CONNECT is decided by the pure
`ztunnel.inbound.decide_hbone`; the core HBONE server answers 200 only
after the app connect succeeded.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any

from shoal.core import log as shoal_log
from shoal.core.addr import hostport
from shoal.core.hbone.server import Accept, ConnectRequest, HboneServer, Reject
from shoal.core.sockets import configure_accepted
from shoal.routing.view import View
from shoal.ztunnel import inbound, telemetry
from shoal.ztunnel.proxy.inputs import ProxyInputs

LOG = shoal_log.get("ztunnel")

# Connections one readable event accepts on an HBONE listener: bounded so a
# burst cannot starve the loop's other callbacks (same as shards.listener).
ACCEPT_BATCH = 64


class Inbound:
    """The HBONE listeners and tunnels of one netns."""

    def __init__(self, inputs: ProxyInputs) -> None:
        self.inputs = inputs
        # One HBONE server per local IP: the handler must know which workload
        # the connection reached, and ConnectRequest.local_address is not
        # filled in under uvloop's start_tls (reported to core/hbone).
        self._servers: dict[str, HboneServer] = {}
        self.sockets: dict[str, socket.socket] = {}     # local IP -> listener

    # -- listeners ----------------------------------------------------------------
    def listen(self, ip: str) -> None:
        pi = self.inputs
        sock = pi.sockets.listen(ip, pi.options.hbone_port)
        self.sockets[ip] = sock
        pi.loop.add_reader(sock.fileno(), self._accept, sock)

    def reconcile(self, want: set[str]) -> None:
        """Listen on exactly the IPs in `want` (dedicated mode)."""
        for ip in want - set(self.sockets):
            try:
                self.listen(ip)
            except OSError as e:
                LOG.error("cannot open HBONE listener", extra={"fields": {
                    "address": hostport(ip, self.inputs.options.hbone_port), "error": str(e)}})
        for ip in set(self.sockets) - want:
            self.stop(ip)

    def stop(self, ip: str, *, release: bool = True) -> None:
        sock = self.sockets.pop(ip)
        self.inputs.loop.remove_reader(sock.fileno())
        give_up(self.inputs.sockets, sock, release)

    def stop_all(self, *, release: bool) -> None:
        for ip in list(self.sockets):
            self.stop(ip, release=release)

    async def close(self, grace: float) -> None:
        """Drain the tunnels gracefully (GOAWAY NO_ERROR: running tunnels
        finish, the peers' new ones go to a new connection)."""
        await asyncio.gather(*(h.close(grace) for h in self._servers.values()),
                             return_exceptions=True)

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                LOG.error("HBONE accept failed", extra={"fields": {"error": str(e)}})
                return
            configure_accepted(conn)
            self.inputs.spawn(self._start_tls(conn))

    async def _start_tls(self, conn: socket.socket) -> None:
        pi = self.inputs
        local_ip = conn.getsockname()[0]
        w = pi.scope.workload_at(pi.view(), local_ip)
        ctx = None
        if w is not None:
            try:
                ctx = await pi.certs.server_context_for(w.identity)
            except Exception as e:   # CertUnavailable: the CA is down or refused
                LOG.warning("no server certificate", extra={"fields": {
                    "workload": w.name, "identity": w.identity, "error": str(e)}})
        if w is None or ctx is None:
            conn.close()
            return
        # The server runs the TLS handshake itself (and logs refusals).
        server = self._servers.get(local_ip)
        if server is None:
            server = self._servers[local_ip] = HboneServer(
                functools.partial(self.on_connect, local_ip=local_ip), log=LOG)
        factory = server.protocol_factory(ctx, trust_domain=w.trust_domain)
        try:
            await pi.loop.connect_accepted_socket(factory, conn)
        except (OSError, ConnectionError) as e:
            LOG.debug("HBONE connection setup failed: %s", e)
            conn.close()

    # -- one tunnel -------------------------------------------------------------------
    async def on_connect(self, req: ConnectRequest, local_ip: str) -> Accept | Reject:
        """Authorize one CONNECT that reached `local_ip` and connect to the app."""
        pi = self.inputs
        started = pi.tracker.clock()
        view = pi.view()
        src_identity = req.peer_identity.uri if req.peer_identity is not None else ""
        src_addr = client_addr(view, req, src_identity)
        local = view.workload_by_uid(pi.scope.pod_uid) if pi.scope.pod_uid else None
        d = inbound.decide_hbone(view, authority=req.authority, local_ip=local_ip,
                                 src_identity=src_identity, src_addr=src_addr,
                                 proxy_ports=pi.options.inbound_refused_ports, local=local)
        src_w = view.workload_by_ip(src_addr[0])
        rec = pi.tracker.start(telemetry.ConnectionMeta(
            reporter=telemetry.DESTINATION, src_addr=hostport(*src_addr),
            # As ztunnel: dst.addr is the HBONE address reached (:15008), the
            # target is dst.hbone_addr.
            dst_addr=hostport(local_ip, pi.options.hbone_port), hbone_addr=req.authority,
            src_workload=src_w if src_w is not None and src_w.identity == src_identity else None,
            src_identity=src_identity, dst_workload=d.workload,
            dst_identity=d.workload.identity if d.workload else "",
            dst_service=inbound.guess_service(view, d.workload, req.port), mtls=True), started)
        rec.open()
        if isinstance(d, inbound.Rejected):
            rec.close(request_bytes=0, response_bytes=0, error=d.reason, flags=d.response_flag)
            return Reject(status=d.status, reason=d.reason)
        try:
            up = await pi.connect_app(*d.upstream, client_ip=src_addr[0])
        except (OSError, TimeoutError) as e:
            reason = f"app {hostport(*d.upstream)} unreachable: {e}"
            rec.close(request_bytes=0, response_bytes=0, error=reason, flags="CONNECT")
            return Reject(status=inbound.SERVICE_UNAVAILABLE, reason=reason)
        token = pi.connections.register(local_ip, d.conn, lambda reason: up.abort())
        rec.track(lambda: up.bytes_written, lambda: up.bytes_read,
                  gone=lambda: up.transport is None or up.transport.is_closing())

        def done(sent: int, received: int, error: str) -> None:
            pi.connections.release(token)
            rec.close(request_bytes=received, response_bytes=sent, error=error)
        bag = telemetry.baggage(d.workload)
        return Accept(upstream=up, on_done=done, headers=(("baggage", bag),) if bag else ())


def give_up(sockets: Any, sock: socket.socket, release: bool) -> None:
    """Close a listener; `release`: for good, so the shards slot drops it too."""
    close = getattr(sockets, "close_listener", None) if release else None
    close(sock) if close else sock.close()


def client_addr(view: View, req: ConnectRequest, src_identity: str) -> tuple[str, int]:
    """The original client address: `forwarded: for=` when it names a workload
    with the peer's identity (the peer proxy vouches for it), else the peer."""
    fwd = req.forwarded_for
    if fwd is not None and fwd[1]:
        w = view.workload_by_ip(fwd[0])
        if w is not None and w.identity == src_identity:
            return fwd
    peer = req.peer_address or ("", 0)
    return peer[0], peer[1]
