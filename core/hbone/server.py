"""HboneServer: terminates HBONE (ztunnel inbound :15008, waypoints).

    async def handler(req: ConnectRequest) -> Accept | Reject:
        if not authorized(req.peer_identity, req.host, req.port):
            return Reject(401, "denied by policy")
        try:
            upstream = await core.pipe.connect_tcp(req.host, req.port)
        except OSError as e:
            return Reject(503, f"upstream {req.authority} unreachable: {e}")
        return Accept(upstream=upstream)

    server = HboneServer(handler)
    await server.listen("0.0.0.0", 15008, server_context(cert), trust_domain=cert.trust_domain)

The 200 goes out only when the handler returns Accept, i.e. after it
authorized and connected upstream; 401/503/... are the handler's Reject;
400/431 for malformed requests come from the protocol core without calling
the handler. A handler exception answers 503 and is logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from shoal.core import drain
from shoal.core.addr import forwarded_for
from shoal.core.hbone import events as ev
from shoal.core.hbone import tlsio
from shoal.core.hbone.connection import LOG, HboneConnection, _addr
from shoal.core.hbone.errors import HboneError
from shoal.core.hbone.settings import DEFAULT_SETTINGS, HboneSettings
from shoal.core.hbone.stream import HboneStream
from shoal.core.overload import Overload, worker_overload
from shoal.core.pipe import PipeReset, endpoint, pipe


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequest:
    """One CONNECT, as the handler sees it (already well-formed)."""

    authority: str                  # "ip:port" as sent
    host: str                       # IP literal or DNS name
    port: int
    peer_identity: Any              # core.identity.Identity of the client proxy
    peer_address: tuple | None      # (ip, port) of the client proxy
    local_address: tuple | None     # our (ip, port): tells which pod/netns accepted it
    headers: dict[str, str] = field(default_factory=dict)
    stream_id: int = 0

    @property
    def forwarded(self) -> str | None:
        return self.headers.get("forwarded")

    @property
    def forwarded_for(self) -> tuple[str, int] | None:
        """The original client (ip, port) from `forwarded: for="..."` (port 0
        when it names none), or None (core.addr.forwarded_for)."""
        return forwarded_for(self.headers.get("forwarded", ""))

    @property
    def baggage(self) -> str | None:
        return self.headers.get("baggage")

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """Answer 200, then either pipe the tunnel to `upstream` (a pipe endpoint,
    e.g. a TcpEnd or a (reader, writer) pair) or hand it to `serve`
    (`async (HboneStream) -> None`, e.g. a waypoint's HTTP server).
    `on_done(sent_to_client, received_from_client, error)` reports byte
    counts and, when the tunnel ended in a reset, why ("" when it ended
    cleanly): ztunnel's inbound access log names the error of a failed copy."""

    upstream: Any = None
    serve: Callable[[HboneStream], Awaitable[None]] | None = None
    headers: tuple[tuple[str, str], ...] = ()        # e.g. (("baggage", "..."),)
    on_done: Callable[[int, int, str], None] | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer `status` (401 denied, 503 unreachable/unknown, 400 malformed)."""

    status: int
    reason: str = ""

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"Reject status must be 4xx/5xx, got {self.status}")


Handler = Callable[[ConnectRequest], Awaitable["Accept | Reject"]]


class _Refused(asyncio.Protocol):
    """A connection above the worker's overload limits: closed at once
    (FIN, not RST: the client sees a clean refusal and may retry)."""

    def connection_made(self, transport) -> None:
        transport.close()


class HboneServer:
    """Serves HBONE connections; one handler call per CONNECT.

    Args:
        handler: decides each CONNECT (see module docstring).
        settings: limits and timers (tests shrink the keepalive).
        log: logger for refusals and errors.
    """

    def __init__(self, handler: Handler, *, settings: HboneSettings = DEFAULT_SETTINGS,
                 log: logging.Logger = LOG, overload: Overload | None = None) -> None:
        self.handler = handler
        self.settings = settings
        self.log = log
        # The worker's limits, shared by all its HBONE servers (one per pod
        # netns in ztunnel): core.overload.
        self.overload = overload or worker_overload()
        self.connections: set[HboneConnection] = set()
        # The handshake futures of accepted connections still in their TLS
        # handshake: a drain waits for them too (each becomes a connection,
        # drained at once by _connection, or fails).
        self.handshaking: set[asyncio.Future] = set()
        self._tasks: set[asyncio.Task] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self.draining = False

    def protocol_factory(self, ssl_context: ssl.SSLContext, *,
                         trust_domain: str | None = None) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory for a *plain* `loop.create_server(...)`.

        TLS runs in our own layer (core.hbone.tlsio) so that every refused
        handshake (no client cert, unknown CA, expired, not TLS at all) gets
        a log line naming the peer and the reason.

        Args:
            ssl_context: core.identity.tls.server_context(cert).
            trust_domain: clients must be in it (the server cert's trust domain).
        """
        overload = self.overload

        def factory() -> asyncio.BaseProtocol:
            proto = tlsio.server_protocol(
                ssl_context, lambda: self._connection(trust_domain),
                handshake_timeout=self.settings.connect_timeout,
                on_failure=self._handshake_failed,
                on_handshake=lambda: overload.handshake_done(proto),
                on_close=lambda _done: overload.closed(proto))
            if overload.admit(proto, proto.evict) is not None:
                return _Refused()
            # Resolved when the handshake passes (after _connection ran),
            # fails, times out or its connection goes.
            self.handshaking.add(proto.handshake)
            proto.handshake.add_done_callback(self.handshaking.discard)
            return proto
        return factory

    async def listen(self, host: str | None, port: int, ssl_context: ssl.SSLContext, *,
                     trust_domain: str | None = None, sock=None, **kw) -> asyncio.AbstractServer:
        """Listen for HBONE on host:port (or on `sock`, e.g. a SO_REUSEPORT socket)."""
        loop = asyncio.get_running_loop()
        factory = self.protocol_factory(ssl_context, trust_domain=trust_domain)
        kw.setdefault("backlog", 1024)
        if sock is not None:
            server = await loop.create_server(factory, sock=sock, **kw)
        else:
            server = await loop.create_server(factory, host, port, **kw)
        self._servers.append(server)
        return server

    def _connection(self, trust_domain: str | None) -> HboneConnection:
        conn = HboneConnection(client=False, settings=self.settings,
                               trust_domain=trust_domain, on_request=self._on_request,
                               log=self.log)
        self.connections.add(conn)
        conn.closed.add_done_callback(lambda _f: self.connections.discard(conn))
        if self.draining:                 # a handshake that finished during a drain
            conn.start_drain()
        return conn

    def _handshake_failed(self, proto, exc: Exception) -> None:
        if isinstance(exc, ConnectionAbortedError):
            return          # evicted at the overload limit: core.overload logs those
        peer = _addr(proto.raw.get_extra_info("peername") if proto.raw else None)
        what = str(exc) or repr(exc)
        self.log.warning("HBONE TLS handshake from %s refused: %s", peer, what,
                         extra={"fields": {"peer": peer, "reason": what}})

    async def close(self, grace: float = 1.0) -> None:
        """Graceful shutdown: stop listening, GOAWAY(NO_ERROR) on every
        connection (open tunnels go on, new CONNECTs are refused and retried
        by the clients elsewhere), wait up to `grace` seconds for the tunnels
        to finish (each connection closes after its last one) and for the
        handshakes under way to become connections and drain too, then close
        what is left: those tunnels are reset."""
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.start_drain()
        # Handshakes under way become connections during the drain: asked
        # again after each wait (drain.wait_while).
        await drain.wait_while(lambda: {c.closed for c in self.connections}
                               | self._tasks | self.handshaking, time.monotonic() + grace)
        left = [c for c in self.connections if c.streams]
        if left:
            self.log.info("HBONE drain: grace of %gs over, resetting %d tunnels", grace,
                          sum(len(c.streams) for c in left))
        for conn in list(self.connections):
            conn.close()
        for task in list(self._tasks):
            task.cancel()

    # -- per request ----------------------------------------------------------

    def _on_request(self, conn: HboneConnection, stream: HboneStream,
                    e: ev.TunnelRequested) -> None:
        req = ConnectRequest(authority=e.authority, host=e.host, port=e.port,
                             peer_identity=conn.peer_identity, peer_address=conn.peer_address,
                             local_address=conn.local_address, headers=e.headers,
                             stream_id=e.stream_id)
        task = conn.loop.create_task(self._serve(conn, stream, req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A stream reset before we answered (rapid reset) cancels the
        # handler: its upstream connect stops and its socket is released.
        stream.on_fail = task.cancel

    async def _serve(self, conn: HboneConnection, stream: HboneStream,
                     req: ConnectRequest) -> None:
        try:
            decision = await self.handler(req)
        except asyncio.CancelledError:
            stream._finish()          # reset by the client while we decided
            raise
        except Exception as e:   # a handler bug must cost one stream, not the server
            self.log.exception("HBONE handler failed for %s", req.authority)
            decision = Reject(503, f"handler error: {e}")
        stream.on_fail = None
        if isinstance(decision, Reject) or stream._error is not None or conn.core.dead:
            self._reject(conn, stream, req, decision)
            return
        # a server's HboneConnection has an HboneServerProtocol core
        conn.core.accept(req.stream_id, decision.headers)  # type: ignore[union-attr]
        conn.flush()
        error = ""
        try:
            if decision.serve is not None:
                await decision.serve(stream)
                sent, received = stream.bytes_sent, stream.bytes_received
            else:
                received, sent = await pipe(stream, endpoint(decision.upstream))
        except (PipeReset, HboneError, ConnectionError) as e:
            self.log.debug("tunnel %s from %s reset: %s", req.authority,
                           _addr(req.peer_address), e)
            sent, received = stream.bytes_sent, stream.bytes_received
            error = f"connection reset: {e}"
        finally:
            stream.close()
        if decision.on_done is not None:
            decision.on_done(sent, received, error)

    def _reject(self, conn, stream, req, decision) -> None:
        if not isinstance(decision, Reject):      # tunnel died while deciding
            upstream = getattr(decision, "upstream", None)
            if upstream is not None:
                endpoint(upstream).abort()
            decision = Reject(503, "tunnel closed before it was accepted")
        self.log.info("HBONE CONNECT %s refused with %d: %s", req.authority, decision.status,
                      decision.reason, extra={"fields": {
                          "peer": _addr(req.peer_address), "status": decision.status,
                          "peer_identity": str(req.peer_identity)}})
        conn.core.reject(req.stream_id, decision.status)
        conn.flush()
        stream._finish()

