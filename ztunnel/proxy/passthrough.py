"""InboundPassthrough (15006): plaintext inbound to a local app (I/O adapter).

The decision is the pure `ztunnel.inbound.decide_plaintext` (no identity:
only policies that need none can allow it). Reporter "destination"; an
allowed connection is registered with the connection manager so a policy
change can close it later.
"""

from __future__ import annotations

from shoal.core.addr import hostport
from shoal.ztunnel import inbound, telemetry
from shoal.ztunnel.proxy.inputs import CountingEnd, ProxyInputs, refuse, relay


class InboundPassthrough:
    """Serves the plaintext connections captured on one netns's 15006."""

    def __init__(self, inputs: ProxyInputs) -> None:
        self.inputs = inputs

    async def handle(self, down: CountingEnd, dst: tuple[str, int], started: float) -> None:
        """Authorize, connect to the app and relay one connection to `dst`."""
        pi = self.inputs
        peer = down.info("peername")
        view = pi.view()
        d = inbound.decide_plaintext(view, dst=dst, src_addr=peer[:2],
                                     proxy_ports=pi.options.inbound_refused_ports)
        rec = pi.tracker.start(telemetry.ConnectionMeta(
            reporter=telemetry.DESTINATION, src_addr=hostport(*peer[:2]), dst_addr=hostport(*dst),
            # Plaintext: nothing verifies who the peer is, so no source workload.
            src_workload=None, dst_workload=d.workload,
            dst_identity=d.workload.identity if d.workload else "",
            dst_service=inbound.guess_service(view, d.workload, dst[1])), started)
        rec.open()
        if isinstance(d, inbound.Rejected):
            refuse(rec, down, d.response_flag, d.reason)
            return
        try:
            up = await pi.connect_app(*d.upstream, client_ip=peer[0])
        except (OSError, TimeoutError) as e:
            refuse(rec, down, "CONNECT", f"app unreachable: {e}")
            return
        token = pi.connections.register(dst[0], d.conn, lambda reason: up.abort())
        try:
            await relay(rec, down, up, lambda: up.bytes_read)
        finally:
            pi.connections.release(token)
