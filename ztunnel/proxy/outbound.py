"""Outbound (15001): a captured connection to its destination (I/O adapter).

The route is the pure `ztunnel.outbound.resolve` (service -> endpoint or
waypoint, identities); this module opens it (an HBONE tunnel from the pool,
or plaintext TCP for destinations outside the mesh) and relays bytes.
Reporter "source": the open is counted once the destination is known; a
connection with no route is refused (RST) and counted at its close.
"""

from __future__ import annotations

from typing import Any, Callable

from shoal.core.addr import hostport
from shoal.core.hbone import HboneError
from shoal.core.records import Workload
from shoal.ztunnel import outbound, telemetry
from shoal.ztunnel.outbound import OutboundError, Route
from shoal.ztunnel.proxy.inputs import CountingEnd, ProxyInputs, refuse, relay
from shoal.ztunnel.proxy.record import ConnectionRecord, Refused


class Outbound:
    """Serves the connections captured on one netns's 15001."""

    def __init__(self, inputs: ProxyInputs) -> None:
        self.inputs = inputs

    async def handle(self, down: CountingEnd, dst: tuple[str, int], started: float) -> None:
        """Route, connect and relay one captured connection to `dst`."""
        pi = self.inputs
        peer = down.info("peername")
        view = pi.view()
        source = pi.scope.source_for(view, peer[0])
        rec = pi.tracker.start(telemetry.ConnectionMeta(
            reporter=telemetry.SOURCE, src_addr=hostport(*peer[:2]), dst_addr=hostport(*dst),
            src_workload=source, src_identity=source.identity if source else ""), started)
        try:
            route = outbound.resolve(view, source=source, dst=dst, rng=pi.rng,
                                     local_ips=pi.local_ips, proxy_ports=pi.options.proxy_ports,
                                     hbone_port=pi.options.hbone_port)
        except OutboundError as e:
            refuse(rec, down, e.response_flag, f"{e.code}: {e.message}")
            return
        rec.open(route_meta(rec.meta, route))
        try:
            if route.kind == outbound.HBONE:
                up, received = await self._open_hbone(route, source, peer, rec)
            else:
                up, received = await self._open_plain(route, rec)
        except Refused as r:
            refuse(rec, down, r.flags, r.error)
            return
        await relay(rec, down, up, received)

    async def _open_plain(self, route: Route,
                          rec: ConnectionRecord) -> tuple[CountingEnd, Callable[[], int]]:
        try:
            up = await self.inputs.connect_tcp(*route.address)
        except (OSError, TimeoutError) as e:
            raise Refused("CONNECT", f"connect {rec.meta.dst_addr}: {e}") from None
        return up, lambda: up.bytes_read

    async def _open_hbone(self, route: Route, source: Workload | None, peer: tuple,
                          rec: ConnectionRecord) -> tuple[Any, Callable[[], int]]:
        if source is None:
            raise Refused("IDENTITY_ERROR", f"unknown source workload {peer[0]}: no identity "
                          "to present for HBONE (is the pod in the config and on this node?)")
        pi = self.inputs
        try:
            await pi.certs.fetch(source.identity)
            stream = await pi.pool.open(
                src=source.identity, dst_identities=route.expected_identities,
                address=route.address, authority=route.authority, forwarded_for=peer[:2],
                host=route.service.hostname if route.service else None,
                baggage=telemetry.baggage(source))
        except HboneError as e:
            raise Refused("DENY" if e.status == 401 else "CONNECT",
                          f"HBONE {route.authority} via {rec.meta.dst_addr}: {e.reason}"
                          + (f" (status {e.status})" if e.status else "")) from None
        except Exception as e:   # CertUnavailable
            raise Refused("IDENTITY_ERROR", str(e)) from None
        return stream, lambda: stream.bytes_received


def route_meta(meta: telemetry.ConnectionMeta, route: Route) -> telemetry.ConnectionMeta:
    """The labels of a routed connection: the next hop and what it reaches."""
    return telemetry.ConnectionMeta(
        reporter=telemetry.SOURCE, src_addr=meta.src_addr, dst_addr=hostport(*route.address),
        hbone_addr=route.authority, src_workload=meta.src_workload,
        src_identity=meta.src_identity, dst_workload=route.workload, dst_service=route.service,
        dst_identity=route.expected_identities[0] if route.expected_identities else "",
        mtls=route.kind == outbound.HBONE)
