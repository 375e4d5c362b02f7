"""Upstream connections: connectors (HBONE or plaintext) and an HTTP/1.1
keep-alive pool, plus the errors Envoy users know.

Invariants (pool):
- A connection is reused only after its previous response was read to the
  end and both sides said keep-alive; it holds no unread bytes then.
- At most `MAX_IDLE_PER_ENDPOINT` idle connections per endpoint; extra ones
  are closed, and idle ones older than `IDLE_TIMEOUT` are dropped on use.
- A reused connection that fails before any response byte arrives is
  replaced once by a fresh one without counting as a retry (the server may
  have closed it while idle; every HTTP client does this).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from shoal.core.constants import HBONE_PORT
from shoal.core.hbone import HboneError
from shoal.core.pipe import Endpoint, TcpEnd
from shoal.waypoint.destination import Endpoint as UpstreamEndpoint

# Idle upstream connections kept per endpoint: enough for a burst of
# concurrent requests on one worker without reconnecting.
MAX_IDLE_PER_ENDPOINT = 64
# Envoy's default idle_timeout for upstream HTTP connections is 1 h; pods
# (and the ztunnel/HBONE in between) close idle keep-alives much sooner,
# so we drop ours after 60 s to avoid racing their close.
IDLE_TIMEOUT = 60.0
# Connect timeout: Istio's default connectTimeout for clusters is 10 s.
CONNECT_TIMEOUT = 10.0

RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. reset reason: "


class UpstreamError(Exception):
    """A request could not get a response from upstream.

    Attributes: status (what the client gets), flags (Envoy response flag),
    body (Envoy's text), retriable (a retry may help).
    """
    status = 502
    flags = "UC"
    retriable = True

    def __init__(self, detail: str = ""):
        super().__init__(detail or self.body)
        self.detail = detail

    @property
    def body(self) -> str:
        return RESET_BEFORE_HEADERS + "connection termination"


class ConnectFailed(UpstreamError):
    status = 503
    flags = "UF"

    @property
    def body(self) -> str:
        return RESET_BEFORE_HEADERS + "connection failure"


class UpstreamReset(UpstreamError):
    status = 502
    flags = "UC"


class UpstreamProtocolError(UpstreamError):
    status = 502
    flags = "UPE"
    retriable = False

    @property
    def body(self) -> str:
        return RESET_BEFORE_HEADERS + "protocol error"


class UpstreamTimeout(UpstreamError):
    status = 504
    flags = "UT"
    retriable = False

    @property
    def body(self) -> str:
        return "upstream request timeout"


# --------------------------------------------------------------------------
# connectors

class Connector(Protocol):
    """Opens a byte stream to an endpoint (TCP, or an HBONE tunnel)."""

    async def open(self, ep: UpstreamEndpoint, *, source_ip: str = "",
                   host: str = "") -> Endpoint:
        """Raises ConnectFailed (503 UF) when the endpoint cannot be reached."""
        ...

    def plain(self, eps) -> bool:
        """Do all of `eps` get plain TCP connections (`PlainUpstream`)?"""
        ...


class PlainUpstream(TcpEnd):
    """A plaintext upstream connection that can also be driven by callbacks.

    While `receiver` is set (the fast path's exchange, fastpath.py), bytes,
    EOF and loss go to it instead of the read queue; otherwise it is the
    ordinary `TcpEnd` the coroutine path reads from.
    """

    receiver: Any = None      # fastexchange.Exchange while it drives this connection

    def data_received(self, data: bytes) -> None:
        r = self.receiver
        if r is not None:
            r.upstream_data(data)
        else:
            TcpEnd.data_received(self, data)

    def eof_received(self) -> bool:
        r = self.receiver
        if r is not None:
            self._eof = True
            r.upstream_data(b"")
            return True
        return TcpEnd.eof_received(self)

    def connection_lost(self, exc) -> None:
        TcpEnd.connection_lost(self, exc)
        r = self.receiver
        if r is not None:
            r.upstream_lost(exc)

    @property
    def idle_clean(self) -> bool:
        """Nothing arrived while it sat idle: safe to send a request on."""
        return not self._chunks and not self._eof and self.transport is not None \
            and not self.transport.is_closing()


class TcpConnector:
    """Plaintext TCP to ip:port (endpoints outside the mesh, test mode)."""

    def plain(self, eps) -> bool:
        """Do these endpoints get plain TCP connections (`PlainUpstream`)?"""
        return True

    def __init__(self, sockets=None, timeout: float = CONNECT_TIMEOUT):
        self.sockets = sockets
        self.timeout = timeout

    async def open(self, ep: UpstreamEndpoint, *, source_ip: str = "",
                   host: str = "") -> Endpoint:
        loop = asyncio.get_running_loop()
        try:
            if self.sockets is not None:
                sock = await self.sockets.connect(ep.ip, ep.port, timeout=self.timeout)
                _, proto = await loop.create_connection(PlainUpstream, sock=sock)
            else:
                async with asyncio.timeout(self.timeout):
                    _, proto = await loop.create_connection(PlainUpstream, ep.ip, ep.port)
        except (OSError, TimeoutError) as e:
            raise ConnectFailed(f"connect to {ep.key}: {e}") from None
        return proto


class HboneConnector:
    """HBONE to the pod's ztunnel: CONNECT podIP:targetPort via podIP:15008.

    Falls back to plaintext for endpoints not in the mesh, as Istio's
    waypoint does for non-ambient pods.
    """

    def __init__(self, pool, identity, plaintext: TcpConnector | None = None):
        self.pool = pool
        self.identity = identity
        self.plaintext = plaintext or TcpConnector()

    def plain(self, eps) -> bool:
        return not any(ep.hbone for ep in eps)

    async def open(self, ep: UpstreamEndpoint, *, source_ip: str = "",
                   host: str = "") -> Endpoint:
        if ep.workload is None or not ep.hbone:
            return await self.plaintext.open(ep, source_ip=source_ip)
        try:
            return await self.pool.open(
                src=self.identity, dst_identities=(ep.workload.identity,),
                address=(ep.ip, HBONE_PORT), authority=ep.key,
                forwarded_for=(source_ip, 0) if source_ip else None, host=host or None)
        except HboneError as e:
            raise ConnectFailed(f"HBONE to {ep.key}: {e.reason}") from None
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(f"HBONE to {ep.key}: {e}") from None


# --------------------------------------------------------------------------
# keep-alive pool

@dataclass(slots=True, eq=False)
class UpstreamConn:
    stream: Endpoint               # TcpEnd or HboneStream
    endpoint: UpstreamEndpoint
    reused: bool = False
    idle_since: float = 0.0
    requests: int = 0


@dataclass(slots=True)
class H1Pool:
    connector: Connector
    clock: Callable[[], float] = time.monotonic
    _idle: dict = field(default_factory=dict)

    async def acquire(self, ep: UpstreamEndpoint, *, source_ip: str = "", host: str = "",
                      fresh: bool = False) -> UpstreamConn:
        if not fresh:
            conn = self.take_idle(ep)
            if conn is not None:
                return conn
        stream = await self.connector.open(ep, source_ip=source_ip, host=host)
        return UpstreamConn(stream=stream, endpoint=ep)

    def take_idle(self, ep: UpstreamEndpoint) -> UpstreamConn | None:
        """A live idle connection to `ep` (marked reused), or None."""
        idle = self._idle.get(ep.key)
        if idle:
            now = self.clock()
            while idle:
                conn = idle.pop()
                if now - conn.idle_since < IDLE_TIMEOUT and not conn.stream.at_eof:
                    conn.reused = True
                    return conn
                _close(conn.stream)
        return None

    def release(self, conn: UpstreamConn, reusable: bool) -> None:
        if not reusable:
            _close(conn.stream)
            return
        conn.requests += 1
        conn.idle_since = self.clock()
        idle = self._idle.setdefault(conn.endpoint.key, deque())
        if len(idle) >= MAX_IDLE_PER_ENDPOINT:
            _close(conn.stream)
            return
        idle.append(conn)

    def sweep(self) -> int:
        """Close idle connections older than IDLE_TIMEOUT (also those to
        endpoints no longer used, which acquire() would never look at).
        Returns how many were closed."""
        now = self.clock()
        closed = 0
        for key in list(self._idle):
            idle = self._idle[key]
            keep = deque(c for c in idle if now - c.idle_since < IDLE_TIMEOUT)
            for c in idle:
                if now - c.idle_since >= IDLE_TIMEOUT:
                    _close(c.stream)
                    closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def discard(self, conn: UpstreamConn) -> None:
        _abort(conn.stream)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                _close(conn.stream)
        self._idle.clear()

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())


def _close(stream) -> None:
    try:
        stream.close()
    except Exception:   # closing a dead stream must not fail a request
        pass


def _abort(stream) -> None:
    try:
        stream.abort()
    except Exception:
        _close(stream)
